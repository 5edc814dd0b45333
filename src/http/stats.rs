//! `GET /api/v1/system/stats`: the latest snapshot in the seed's shape (nine fields) plus the
//! per-GPU breakdown. Built from the snapshot only; never samples in the request.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::body::{Allowed, QueryParams};
use super::error::{ApiError, ErrorBody};
use super::wire::HistoryPoint;
use crate::app::AppState;
use crate::app::ServiceError;
use crate::snapshot::Snapshot;
use crate::units::{MIB, round1};

/// One GPU in the stats answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct GpuStatsBody {
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
    /// Product name, when NVML reports it.
    pub name: Option<String>,
    /// SM busy, percent.
    pub gpu_percent: Option<f64>,
    /// VRAM allocated, MiB.
    pub vram_used_mb: Option<f64>,
    /// VRAM capacity, MiB.
    pub vram_total_mb: Option<f64>,
    /// VRAM allocated, percent of capacity.
    pub vram_percent: Option<f64>,
    /// Core temperature, °C.
    pub temperature_c: Option<f64>,
    /// Board power draw, W.
    pub power_w: Option<f64>,
    /// Enforced power limit, W.
    pub power_limit_w: Option<f64>,
    /// Energy since the driver loaded, J.
    pub energy_j: Option<f64>,
    /// The fastest fan's speed, percent of its maximum; null without fans.
    pub fan_percent: Option<f64>,
    /// Video encoder busy, percent.
    pub encoder_percent: Option<f64>,
    /// Video decoder busy, percent.
    pub decoder_percent: Option<f64>,
    /// PCIe bytes per second sent by the GPU.
    pub pcie_tx_bytes_per_s: Option<f64>,
    /// PCIe bytes per second received by the GPU.
    pub pcie_rx_bytes_per_s: Option<f64>,
    /// Performance state, 0 (P0, fastest) to 15.
    pub pstate: Option<u8>,
    /// Whether the GPU may take new work: false while a fault (pending or failed row remap,
    /// uncorrected ECC errors, a recent fatal XID) takes it out of placement.
    pub healthy: bool,
    /// Why it is unhealthy, each with what to do (e.g. "row remap pending, reset the GPU");
    /// empty when healthy.
    pub health_reasons: Vec<String>,
}

/// The stats answer: the seed's nine fields, then `gpu_count` and `gpus`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct StatsBody {
    /// The nine seed fields (sums over GPUs; `gpu_percent` is the mean), as a history point.
    #[serde(flatten)]
    pub summary: HistoryPoint,
    /// GPUs visible now.
    pub gpu_count: usize,
    /// Per-GPU figures.
    pub gpus: Vec<GpuStatsBody>,
}

impl From<&Snapshot> for StatsBody {
    fn from(s: &Snapshot) -> Self {
        let gpus: Vec<GpuStatsBody> = s
            .gpus
            .iter()
            .map(|g| GpuStatsBody {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                gpu_percent: g.utilization_ratio.map(percent),
                vram_used_mb: g.memory.map(|m| round1(m.used_bytes as f64 / MIB)),
                vram_total_mb: g.memory.map(|m| round1(m.total_bytes as f64 / MIB)),
                vram_percent: g
                    .memory
                    .filter(|m| m.total_bytes > 0)
                    .map(|m| round1(m.used_bytes as f64 / m.total_bytes as f64 * 100.0)),
                temperature_c: g.temperature_celsius,
                power_w: g.power_watts,
                power_limit_w: g.telemetry.power_limit_watts,
                energy_j: g.telemetry.energy_joules.map(round1),
                fan_percent: g.telemetry.fan_ratios.iter().map(|(_, r)| r).copied().reduce(f64::max).map(percent),
                encoder_percent: g.telemetry.encoder_ratio.map(percent),
                decoder_percent: g.telemetry.decoder_ratio.map(percent),
                pcie_tx_bytes_per_s: g.telemetry.pcie_tx_bytes_per_second,
                pcie_rx_bytes_per_s: g.telemetry.pcie_rx_bytes_per_second,
                pstate: g.telemetry.performance_state,
                healthy: g.health.healthy,
                health_reasons: g.health.reasons.clone(),
            })
            .collect();
        Self {
            summary: (&crate::history::HistoryPoint::from_snapshot(s).rounded()).into(),
            gpu_count: s.gpus.len(),
            gpus,
        }
    }
}

/// A 0–1 ratio as a percent with one decimal.
fn percent(ratio: f64) -> f64 {
    round1(ratio * 100.0)
}

/// `stats` takes no query parameters; any is rejected, as on every other endpoint.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

impl Allowed for NoQuery {
    const FIELDS: &'static [(&'static str, &'static str)] = &[];
}

/// The latest snapshot as JSON.
#[utoipa::path(
    get,
    path = "/api/v1/system/stats",
    tag = "stats",
    responses(
        (status = 200, description = "The latest snapshot", body = StatsBody),
        (status = 400, description = "A query parameter was given", body = ErrorBody),
        (status = 401, description = "auth.protect_reads is on and no valid token was sent", body = ErrorBody),
        (status = 503, description = "No sample has been taken yet", body = ErrorBody),
    )
)]
pub(crate) async fn get_stats(
    State(state): State<AppState>,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Result<Json<StatsBody>, ApiError> {
    let snapshot = state.snapshot().ok_or(ServiceError::NotReady)?;
    Ok(Json(StatsBody::from(snapshot.as_ref())))
}
