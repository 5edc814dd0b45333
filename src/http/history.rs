//! `GET /api/v1/system/stats/history` and `POST /api/v1/system/stats/save`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{Allowed, QueryParams, de};
use super::error::{ApiError, ErrorBody};
use super::stats::StatsBody;
use super::wire::{GpuHistoryPoint, HistoryPoint};
use crate::app::AppState;
use crate::limits::{self, HISTORY_DEFAULT_POINTS, HISTORY_MAX_POINTS};
use crate::time::{now_unix, rfc3339_unix};

/// Query of the history.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// How far back, hours (above 0, at most the retention; default 24 or the retention if shorter).
    #[serde(default, deserialize_with = "de::opt_f64")]
    #[param(value_type = Option<f64>, exclusive_minimum = 0.0)]
    pub hours: Option<f64>,
    /// Most points to return (1–10000, default 1000); more samples are averaged into buckets.
    #[serde(default, deserialize_with = "de::opt_u32")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub max_points: Option<u32>,
}

impl Allowed for HistoryQuery {
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("hours", "a number above 0 up to the history retention"), ("max_points", limits::HISTORY_MAX_POINTS_WORDS)];
}

/// The time range a history answer covers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TimeRange {
    /// Start (RFC 3339 UTC).
    pub start: String,
    /// End: now (RFC 3339 UTC).
    pub end: String,
    /// Length, hours.
    pub hours: f64,
}

/// One point of the history answer: the seed's nine fields, then each GPU's own figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HistoryPointBody {
    /// The nine seed fields (sums over GPUs; `gpu_percent` is the mean).
    #[serde(flatten)]
    pub point: HistoryPoint,
    /// Each GPU's utilization and VRAM %, by index, averaged over the same samples as the point
    /// (a reading a GPU lacked is null and left out of the average, never 0). Empty for points
    /// recorded before vramguard kept per-GPU history.
    pub gpus: Vec<GpuHistoryPoint>,
}

impl From<crate::history::HistoryPoint> for HistoryPointBody {
    /// The point rounded for display, its GPUs moved out into `gpus`.
    fn from(point: crate::history::HistoryPoint) -> Self {
        let mut point = point.rounded();
        let gpus = std::mem::take(&mut point.gpus).into_iter().map(GpuHistoryPoint::from).collect();
        Self { point: HistoryPoint::from(&point), gpus }
    }
}

/// Answer of the history query.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HistoryBody {
    /// Points, oldest first.
    pub stats: Vec<HistoryPointBody>,
    /// Samples in the range before bucketing.
    pub total_count: u64,
    /// The range.
    pub time_range: TimeRange,
    /// Seconds a point stands for.
    pub resolution_seconds: f64,
    /// `embedded` or `prometheus`.
    pub source: String,
    /// Why the embedded history answered although Prometheus is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Answer of `stats/save`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SavedBody {
    /// "System stats saved successfully".
    pub message: String,
    /// What was saved.
    pub stats: StatsBody,
}

/// Stats over time for charts, from the embedded history or Prometheus.
#[utoipa::path(get, path = "/api/v1/system/stats/history", tag = "stats",
    params(HistoryQuery),
    responses((status = 200, body = HistoryBody), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn get_history(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let retention_hours = state.config().history.retention.0.as_secs_f64() / 3600.0;
    let hours = q.hours.unwrap_or(24.0_f64.min(retention_hours));
    if !(hours > 0.0 && hours <= retention_hours) {
        return Err(ApiError::bad_request(format!(
            "hours: {hours} is out of range; allowed above 0 up to {retention_hours} (the history retention)"
        )));
    }
    let max_points = q.max_points.unwrap_or(HISTORY_DEFAULT_POINTS);
    if !HISTORY_MAX_POINTS.contains(&max_points) {
        return Err(ApiError::bad_request(format!(
            "max_points: {max_points} is out of range; allowed integers {} to {}",
            HISTORY_MAX_POINTS.start(),
            HISTORY_MAX_POINTS.end()
        )));
    }
    let end = now_unix();
    let start = end - hours * 3600.0;
    let answer = state.records().query_history(start, end, max_points).await?;
    Ok(Json(HistoryBody {
        stats: answer.series.points.into_iter().map(HistoryPointBody::from).collect(),
        total_count: answer.series.total_count,
        time_range: TimeRange { start: rfc3339_unix(start), end: rfc3339_unix(end), hours },
        resolution_seconds: answer.series.resolution_seconds,
        source: answer.source.to_owned(),
        warning: answer.warning,
    }))
}

/// Records the current snapshot durably (on disk before the 200) and returns it.
#[utoipa::path(post, path = "/api/v1/system/stats/save", tag = "stats",
    responses(
        (status = 200, body = SavedBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The token's role may not make this write"),
        (status = 503, body = ErrorBody,
            description = "No sample yet, or the state store cannot take writes now; nothing was changed (Retry-After)"),
    ))]
pub(crate) async fn save(State(state): State<AppState>) -> Result<Json<SavedBody>, ApiError> {
    let snapshot = state.records().save_snapshot().await?;
    Ok(Json(SavedBody {
        message: "System stats saved successfully".to_owned(),
        stats: StatsBody::from(snapshot.as_ref()),
    }))
}
