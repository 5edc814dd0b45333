//! `GET /api/v1/system/health` and `GET /api/v1/system/resource-check`: the policy's answers on
//! the latest snapshot and the live settings, as the service layer gives them.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::body::{Allowed, de, parse_query};
use super::check_json;
use super::error::{ApiError, ErrorBody};
use super::wire::{Health, ResourceCheck};
use crate::app::AppState;
use crate::app::ServiceError;
use crate::limits;
use crate::policy::admission::CheckRequest;
use crate::policy::gang::Pins;
use crate::policy::phases::SizeAsk;

/// Health report: always 200 while vramguard can answer.
#[utoipa::path(get, path = "/api/v1/system/health", tag = "policy",
    responses((status = 200, body = Health),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn get_health(State(state): State<AppState>) -> Json<Health> {
    Json(state.decisions().health().into())
}

/// Query of the resource-check.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResourceCheckQuery {
    /// VRAM the job needs, GiB (above 0, at most 1024); default: the workload estimate.
    #[serde(default, deserialize_with = "de::opt_f64")]
    #[param(value_type = Option<f64>, exclusive_minimum = 0.0, maximum = 1024.0)]
    pub vram_required_gb: Option<f64>,
    /// The worker already holds its model, so only activations, VAE and overhead count.
    #[serde(default, deserialize_with = "de::opt_bool")]
    #[param(value_type = Option<bool>)]
    pub model_loaded: Option<bool>,
    /// Workload profile name (config `workloads` or a built-in profile; default `default`).
    pub workload: Option<String>,
    /// Video width, pixels (16–4096, multiples of 16); default: the profile's.
    #[serde(default, deserialize_with = "de::opt_u32")]
    #[param(value_type = Option<u32>, minimum = 16, maximum = 4096, multiple_of = 16)]
    pub width: Option<u32>,
    /// Video height, pixels (16–4096, multiples of 16); default: the profile's.
    #[serde(default, deserialize_with = "de::opt_u32")]
    #[param(value_type = Option<u32>, minimum = 16, maximum = 4096, multiple_of = 16)]
    pub height: Option<u32>,
    /// Frames (1–1001); default: the profile's.
    #[serde(default, deserialize_with = "de::opt_u32")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1001)]
    pub frames: Option<u32>,
    /// GPUs the one job is sharded over (1–16; default 1): the answer says where each rank would
    /// go (`gpus`), each GPU holding its rank's figure.
    #[serde(default, deserialize_with = "de::opt_u32")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 16)]
    pub gpus: Option<u32>,
    /// The GPUs the ranks must use, rank 0 first, comma-separated (as many as `gpus`).
    #[param(value_type = Option<String>, example = "0,1,2,3")]
    pub gpu_indices: Option<String>,
}

/// `gpus` and `gpu_indices` of a query, checked; the error names the field.
fn gang(q: &ResourceCheckQuery) -> Result<(u32, Option<Pins>), ServiceError> {
    let gpus = q.gpus.unwrap_or(1);
    limits::in_range(gpus, &limits::GANG).map_err(|m| ServiceError::Invalid(format!("gpus: {m}")))?;
    let Some(list) = &q.gpu_indices else { return Ok((gpus, None)) };
    let indices: Vec<u32> =
        list.split(',').map(|s| s.trim().parse::<u32>()).collect::<Result<_, _>>().map_err(|_| {
            ServiceError::Invalid(format!("gpu_indices: {list:?} is not a list; allowed {}", limits::GPU_INDICES_WORDS))
        })?;
    limits::check_pins(gpus, &indices).map_err(|m| ServiceError::Invalid(format!("gpu_indices: {m}")))?;
    Ok((gpus, Pins::new(&indices)))
}

impl Allowed for ResourceCheckQuery {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("vram_required_gb", limits::REQUIRED_GB_WORDS),
        ("model_loaded", "true or false"),
        ("workload", "the name of a workload profile"),
        ("width", limits::SIDE_WORDS),
        ("height", limits::SIDE_WORDS),
        ("frames", limits::FRAMES_WORDS),
        ("gpus", limits::GANG_WORDS),
        ("gpu_indices", limits::GPU_INDICES_WORDS),
    ];
}

/// May a generation start now, and on which GPU? Read-only: it records nothing but the
/// decision counter. A question asked again under unchanged inputs is answered from the kept
/// JSON.
#[utoipa::path(get, path = "/api/v1/system/resource-check", tag = "policy",
    params(ResourceCheckQuery),
    responses((status = 200, body = ResourceCheck), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn resource_check(
    State(state): State<AppState>,
    // The URI itself (shared, not copied): the raw query is the memo's key.
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = uri.query().unwrap_or("");
    let json = state.decisions().resource_check_json(
        query,
        || {
            let q: ResourceCheckQuery = parse_query(query).map_err(|e| ServiceError::Invalid(e.detail))?;
            if let Some(v) = q.vram_required_gb {
                limits::check_required_gb(v).map_err(|m| ServiceError::Invalid(format!("vram_required_gb: {m}")))?;
            }
            let size = SizeAsk { width: q.width, height: q.height, frames: q.frames };
            size.validate().map_err(ServiceError::Invalid)?;
            let (gpus, pins) = gang(&q)?;
            let request = CheckRequest {
                vram_required_gb: q.vram_required_gb,
                model_loaded: q.model_loaded.unwrap_or(false),
                // One pinned GPU is the single-GPU pin.
                gpu: pins.filter(|_| gpus == 1).map(|p| p.as_slice()[0]),
                size,
                gpus,
                pins: pins.filter(|_| gpus > 1),
            };
            Ok((request, q.workload))
        },
        check_json::to_vec,
    )?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response())
}
