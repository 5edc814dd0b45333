//! vramguard: a Prometheus exporter and admission sidecar for GPU generation pipelines.
//!
//! Data flows one way:
//!
//! ```text
//!  sysinfo, NVML ──▶ sampler ──▶ Arc<Snapshot> (watch) ──▶ metrics  ──▶ http (/metrics)
//!                   (blocking                         └──▶ policy / API (later issues)
//!                    pool, timeouts)
//! ```
//!
//! # Layout
//!
//! - [`config`]: the YAML configuration, its defaults (equal to the shipped `config.yaml`) and
//!   validation.
//! - [`snapshot`]: the immutable picture of the machine: plain data, `None` for readings that
//!   could not be taken.
//! - [`sampler`]: the only code that touches hardware; one file per collector (`host`, `gpu`,
//!   `cgroup`), each run on the blocking pool under a timeout.
//! - [`metrics`]: renders a snapshot and the live constraints as Prometheus text.
//! - [`policy`]: pure decisions: workload estimate, recommendations, health, resource-check.
//! - [`history`]: the embedded history recorder and the Prometheus-backed history source.
//! - [`http`]: the axum router ([`http::app`]), its handlers and the one `ApiError` type.
//! - [`server`]: wiring and graceful shutdown; [`server::run`] is what `main` calls.
//! - [`leases`]: the in-memory book of generation leases and their VRAM reservations.
//! - [`store`]: the SQLite state store: API overrides (and later history and leases).
//! - [`error`]: start-up and configuration errors.

pub mod config;
pub mod error;
pub mod history;
pub mod http;
pub mod leases;
pub mod metrics;
pub mod policy;
pub mod sampler;
pub mod server;
pub mod snapshot;
pub mod store;
