//! vramguard: a Prometheus exporter and admission sidecar for GPU generation pipelines.
//!
//! Data flows one way:
//!
//! ```text
//!  sysinfo, NVML ──▶ sampler ──▶ Arc<Snapshot> (watch) ──▶ app (service layer) ──▶ http ──▶ server
//!  (or scripted)    (blocking      │                        │ policy: pure decisions
//!                    pool,         │                        │ metrics: exposition
//!                    timeouts)     │                        │ leases + store: durable state
//!                                  └──────────────────────▶ │ history: recorder and queries
//! ```
//!
//! # Layers, lowest first
//!
//! A module may import only modules listed before it; `tests/architecture.rs` fails the build's
//! tests on a cycle or an upward import.
//!
//! 1. Leaves: [`units`] (GiB, rounding), [`time`] (clock, RFC 3339), [`limits`] (every accepted
//!    range and its sentence), [`error`] (configuration errors).
//! 2. [`config`]: the YAML configuration, its defaults (equal to the shipped `config.yaml`) and
//!    validation.
//! 3. [`snapshot`]: the immutable picture of the machine: plain data, `None` for readings that
//!    could not be taken.
//! 4. [`policy`]: pure decisions: workload estimate, shared per-resource verdicts, health,
//!    resource-check, GPU fault health.
//! 5. `sampler`: the only code that touches hardware; one collector per file behind one
//!    `Collector` trait (`host`, `gpu`, a scripted host for tests), each run on the blocking pool
//!    under a timeout. It sits above `policy` so that it can stamp each GPU's fault health on the
//!    snapshot with the same pure rule ([`policy::gpu_health::judge`]) everyone else reads.
//! 6. [`leases`]: the in-memory book of generation leases (pure data).
//! 7. [`history`]: history points and the Prometheus-backed history source.
//! 8. [`store`]: the SQLite state store: API overrides, history, leases (group-committed), its
//!    identity and whether it takes writes.
//! 9. [`metrics`]: renders a snapshot and the live constraints as Prometheus text, with
//!    vramguard's own process series; reuses what did not change since the last scrape.
//! 10. [`app`]: the service layer: shared state, the one write path, the lease ledger and its
//!     critical section (run and group-committed by the lease thread), the admission queue and
//!     its dispatcher, a memo of decisions kept until their inputs change, settings updates, tokens and
//!     roles, the reaper, the history recorder and configuration reload.
//! 11. [`http`]: the axum router ([`http::app`]), the one edge layer (the Host/Origin check, then
//!     tokens), thin handlers and the one `ApiError` type.
//! 12. [`server`]: wiring and graceful shutdown; [`server::run`] serves on a bound listener
//!     through vramguard's own accept loop (connection cap, timeouts, optional TLS), reloads
//!     the configuration on SIGHUP and hands freed heap memory back to the system.
//! 13. `runner`: `vramguard run`, a client of the HTTP API: takes a lease, runs a command on
//!     its GPU, follows it to its end and releases with the job's outcome.
//! 14. `demo`: `vramguard --demo`, simulated hardware: writes the embedded fake NVML and a
//!     two-GPU scenario that moves every second (it imports nothing of vramguard's).

pub(crate) mod units;
pub(crate) mod time;
pub(crate) mod limits;
pub(crate) mod error;
pub(crate) mod config;
pub mod snapshot;
pub(crate) mod policy;
pub(crate) mod sampler;
pub(crate) mod leases;
pub(crate) mod history;
pub(crate) mod store;
pub(crate) mod metrics;
pub(crate) mod app;
pub(crate) mod http;
pub(crate) mod server;
pub(crate) mod runner;
pub(crate) mod demo;

// The façade: everything outside `src/` may use. Only [`snapshot`] is a public module (the plain
// data the tests and benches build snapshots from); the rest is named here, one item at a time,
// so the compiler's `dead_code` and `unreachable_pub` see the true surface.

/// The binary: configuration, start-up and the state store's reset (`main.rs`).
pub use app::AppState;
pub use config::Config;
pub use demo::Demo;
pub use runner::{RunArgs, run as run_command};
pub use server::{Reload, SetLogFilter, bind, run, run_with, runtime};
pub use store::{StoreError, move_aside};

/// In-process tests: the router, tokens, the live settings' types.
pub use app::Credentials;
pub use config::{Constraints, Optimization, Quantization};
pub use http::app as router;

/// Tests and benches of the pure layers and the exposition: the policy's decision and
/// recommendation search, the exposition on its production path, the store's history.
pub use history::{GpuHistoryPoint, HistoryPoint};
pub use metrics::{LeaseFigures, Metrics};
pub use policy::admission::{CheckRequest, resource_check};
pub use policy::fit::generations_that_fit;
pub use policy::health::HealthStatus;
pub use policy::phases::Geometry;
pub use policy::search::{Job, search as recommendation_search};
pub use policy::{Context, gpu_views};
pub use store::{Store, StoreStatus};

/// `benches/cost_curve.rs`: one pass of the GPU collector (the `sampler` is crate-private), as each
/// sample makes it: a closure that reads every GPU through NVML at `nvml_library`, with
/// per-process readings. Not part of the API.
#[doc(hidden)]
pub fn bench_gpu_collector(
    nvml_library: std::path::PathBuf,
) -> impl FnMut() -> Result<Vec<snapshot::GpuStats>, String> {
    use sampler::Collector as _;
    let mut collector = sampler::GpuCollector::new(Some(nvml_library), true);
    move || match collector.collect()? {
        sampler::Reading::Gpu(reading) => Ok(reading.gpus),
        sampler::Reading::Host(_) => Err("the GPU collector read the host".to_owned()),
    }
}
