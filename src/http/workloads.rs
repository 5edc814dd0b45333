//! `GET /api/v1/system/workloads`: the workload profiles a request may name, with their default
//! video and vramguard's estimate of it under the live settings.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::wire::EstimateBody;
use crate::app::AppState;
use crate::units::round2;

/// One workload profile.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WorkloadBody {
    /// What the profile describes.
    pub description: String,
    /// One of vramguard's built-in profiles (Wan2.1 and Wan2.2 models), unchanged.
    pub built_in: bool,
    /// Its default job and vramguard's estimate of it under the live settings.
    pub estimate: EstimateBody,
    /// Host RAM offloading needs under the live settings, GiB (0 with `enable_offload` off).
    pub offload_host_ram_gb: f64,
}

/// Answer of `GET /workloads`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WorkloadList {
    /// `default` (the `workload` key) first, then the configured profiles, then the built-in ones.
    pub workloads: Vec<WorkloadBody>,
}

/// Every workload profile a request may name (`workload`), with its defaults.
#[utoipa::path(get, path = "/api/v1/system/workloads", tag = "policy",
    responses((status = 200, body = WorkloadList),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn list(State(state): State<AppState>) -> Json<WorkloadList> {
    let workloads = state
        .decisions()
        .workloads()
        .into_iter()
        .map(|w| WorkloadBody {
            description: w.description,
            built_in: w.built_in,
            estimate: EstimateBody {
                workload: w.name,
                width: w.geometry.width,
                height: w.geometry.height,
                frames: w.geometry.frames,
                vram_required_gb: round2(w.estimate.gb),
                source: w.estimate.source.as_str(),
                samples: w.estimate.samples,
            },
            offload_host_ram_gb: round2(w.offload_host_ram_gb),
        })
        .collect();
    Json(WorkloadList { workloads })
}
