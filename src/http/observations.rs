//! `/api/v1/system/observations`: the observed peaks of finished generations that learned
//! estimates rest on; `DELETE` forgets them (estimates are the model's again).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{Allowed, QueryParams, de};
use super::error::{ApiError, ErrorBody};
use super::wire::Quantization;
use crate::app::AppState;
use crate::limits;
use crate::time::rfc3339_unix;
use crate::units::round2;

/// One observed peak.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ObservationBody {
    /// Workload profile name.
    pub workload: String,
    /// Quantization in force at grant time.
    pub quantization: Quantization,
    /// Offload in force at grant time.
    pub enable_offload: bool,
    /// VAE tile size in force at grant time.
    pub vae_tile_size: u32,
    /// The worker already held its model.
    pub model_loaded: bool,
    /// Peak VRAM, GiB.
    pub peak_vram_gb: f64,
    /// `nvml` (vramguard's reading of the lease's pids) or `client` (the client's own figure).
    pub source: String,
    /// How the generation ended: `ok`, or `oom` (it died of out-of-memory at this peak, so it
    /// counts as peak × (1 + `learning.oom_margin`)).
    pub outcome: &'static str,
    /// It counts for estimates: false for a client's figure the evidence did not bear out (below
    /// what vramguard saw, or below `learning.min_ratio` of the model with nothing seen; above
    /// twice the reservation without vramguard's own reading).
    pub used: bool,
    /// When it was recorded (RFC 3339 UTC).
    pub recorded_at: String,
}

/// Answer of `GET /observations`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ObservationList {
    /// Newest first.
    pub observations: Vec<ObservationBody>,
}

/// Query of the listing.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ObservationsQuery {
    /// The newest this many (1–10000; default 1000). vramguard keeps the newest
    /// `learning.window` of each key and 10000 in all.
    #[serde(default, deserialize_with = "de::opt_u32")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

impl Allowed for ObservationsQuery {
    const FIELDS: &'static [(&'static str, &'static str)] = &[("limit", limits::OBSERVATIONS_LIMIT_WORDS)];
}

/// Observed peaks, newest first.
#[utoipa::path(get, path = "/api/v1/system/observations", tag = "leases", params(ObservationsQuery),
    responses((status = 200, body = ObservationList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ObservationsQuery>,
) -> Result<Json<ObservationList>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    limits::in_range(limit, &limits::OBSERVATIONS_LIMIT).map_err(|m| ApiError::bad_request(format!("limit: {m}")))?;
    let observations = state
        .records()
        .observations()
        .await?
        .into_iter()
        .take(limit as usize)
        .map(|o| ObservationBody {
            workload: o.key.workload,
            quantization: o.key.settings.quantization.into(),
            enable_offload: o.key.settings.enable_offload,
            vae_tile_size: o.key.settings.vae_tile_size,
            model_loaded: o.key.model_loaded,
            peak_vram_gb: round2(o.peak_vram_gb),
            source: o.source,
            outcome: o.outcome.as_str(),
            used: o.used,
            recorded_at: rfc3339_unix(o.recorded_at),
        })
        .collect();
    Ok(Json(ObservationList { observations }))
}

/// Forgets every observation.
#[utoipa::path(delete, path = "/api/v1/system/observations", tag = "leases",
    responses((status = 204, description = "Cleared"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The token's role may not make this write"), (status = 503, body = ErrorBody, description = "The state store cannot take writes now; nothing was changed (Retry-After)")))]
pub(crate) async fn clear(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.records().clear_observations().await?;
    Ok(StatusCode::NO_CONTENT)
}
