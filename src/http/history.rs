//! `GET /api/v1/system/stats/history` and `POST /api/v1/system/stats/save`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{Allowed, QueryParams, de};
use super::error::{ApiError, ErrorBody};
use super::stats::StatsBody;
use super::{AppState, now_seconds};
use crate::config::HistoryBackend;
use crate::history::{HistoryPoint, HistorySeries};
use crate::snapshot::rfc3339;

/// Query of the history.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
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
        &[("hours", "a number above 0 up to the history retention"), ("max_points", "integers 1 to 10000")];
}

/// The time range a history answer covers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimeRange {
    /// Start (RFC 3339 UTC).
    pub start: String,
    /// End: now (RFC 3339 UTC).
    pub end: String,
    /// Length, hours.
    pub hours: f64,
}

/// Answer of the history query.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryBody {
    /// Points, oldest first.
    pub stats: Vec<HistoryPoint>,
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
pub struct SavedBody {
    /// "System stats saved successfully".
    pub message: String,
    /// What was saved.
    pub stats: StatsBody,
}

/// Stats over time for charts, from the embedded history or Prometheus.
#[utoipa::path(get, path = "/api/v1/system/stats/history", tag = "stats",
    params(HistoryQuery),
    responses((status = 200, body = HistoryBody), (status = 400, body = ErrorBody)))]
pub async fn get_history(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let retention_hours = state.config.history.retention.0.as_secs_f64() / 3600.0;
    let hours = q.hours.unwrap_or(24.0_f64.min(retention_hours));
    if !(hours > 0.0 && hours <= retention_hours) {
        return Err(ApiError::bad_request(format!(
            "hours: {hours} is out of range; allowed above 0 up to {retention_hours} (the history retention)"
        )));
    }
    let max_points = q.max_points.unwrap_or(1000);
    if !(1..=10_000).contains(&max_points) {
        return Err(ApiError::bad_request(format!(
            "max_points: {max_points} is out of range; allowed integers 1 to 10000"
        )));
    }
    let end = now_seconds();
    let start = end - hours * 3600.0;
    let mut warning = None;
    if state.config.history.backend == HistoryBackend::Prometheus
        && let Some(source) = &state.prometheus
    {
        match source.query(start, end, max_points).await {
            Ok(series) => return Ok(Json(answer(series, start, end, hours, "prometheus", None))),
            Err(e) => {
                tracing::warn!(error = %e, "Prometheus history failed; answering from the embedded history");
                warning = Some(format!("{e}; answered from the embedded history"));
            }
        }
    }
    let st = state.clone();
    let interval = state.config.history.interval.0.as_secs_f64();
    let series = tokio::task::spawn_blocking(move || {
        let reader = st.history_reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        reader.query_history(start, end, max_points, interval)
    })
    .await
    .map_err(|e| ApiError::internal("history query failed", e))?
    .map_err(|e| ApiError::internal("could not read the history", e))?;
    Ok(Json(answer(series, start, end, hours, "embedded", warning)))
}

fn answer(
    series: HistorySeries,
    start: f64,
    end: f64,
    hours: f64,
    source: &str,
    warning: Option<String>,
) -> HistoryBody {
    let at = |t: f64| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0)));
    HistoryBody {
        stats: series.points.into_iter().map(HistoryPoint::rounded).collect(),
        total_count: series.total_count,
        time_range: TimeRange { start: at(start), end: at(end), hours },
        resolution_seconds: series.resolution_seconds,
        source: source.to_owned(),
        warning,
    }
}

/// Records the current snapshot durably (on disk before the 200) and returns it.
#[utoipa::path(post, path = "/api/v1/system/stats/save", tag = "stats",
    responses(
        (status = 200, body = SavedBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub async fn save(State(state): State<AppState>) -> Result<Json<SavedBody>, ApiError> {
    let snapshot = state.snapshot().ok_or_else(ApiError::not_ready)?;
    let point = HistoryPoint::from_snapshot(&snapshot);
    let retention = state.config.history.retention.0.as_secs_f64();
    state
        .write("saving stats failed", move |_, store| {
            store
                .record_history(&point, true, now_seconds() - retention)
                .map_err(|e| ApiError::internal("could not write the state store", e))
        })
        .await?;
    Ok(Json(SavedBody {
        message: "System stats saved successfully".to_owned(),
        stats: StatsBody::from(snapshot.as_ref()),
    }))
}
