//! Configuration: parsed from YAML (unknown keys rejected with their path), then validated into
//! the values the rest of the program trusts. The built-in defaults equal the shipped
//! `config.yaml`; a unit test holds the two together.

mod duration;
mod pipeline;
pub(crate) mod profiles;
mod sections;
#[cfg(test)]
mod tests;
mod validate;
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

pub(crate) use duration::Dur;
pub use pipeline::*;
pub(crate) use sections::*;
pub(crate) use workload::Workload;

/// The whole configuration file. Every section is optional; what is left out takes its default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the one HTTP listener (`/metrics` and the API).
    pub listen: SocketAddr,
    /// How often the sampler reads the hardware.
    pub sample_interval: Dur,
    /// Where the state store lives (API overrides, history, leases).
    pub state_dir: PathBuf,
    /// NVML settings.
    pub gpu: GpuConfig,
    /// Where host CPU and RAM readings come from.
    pub host: HostConfig,
    /// History recording and its backend.
    pub history: HistoryConfig,
    /// Optional bearer token for writes.
    pub auth: AuthConfig,
    /// Default resource constraints (the API can override them).
    pub constraints: Constraints,
    /// Default optimization settings (the API can override them).
    pub optimization: Optimization,
    /// The VRAM profile of one generation, for estimates and recommendations: the profile named
    /// `default`. A built-in profile's name, or a whole profile.
    #[serde(deserialize_with = "workload::deserialize_profile")]
    pub workload: Workload,
    /// More workload profiles by name, selected per request with `workload` (the built-in
    /// profiles are selectable too, unless a profile here takes their name).
    #[serde(deserialize_with = "workload::deserialize_profiles")]
    pub workloads: BTreeMap<String, Workload>,
    /// Estimates learned from observed peaks.
    pub learning: LearningConfig,
    /// Generation leases.
    pub leases: LeasesConfig,
    /// The live stats WebSocket.
    pub stream: StreamConfig,
    /// Generation requests that wait for room (`wait_seconds`).
    pub queue: QueueConfig,
    /// The HTTP listener's defences: allowed Host names, connection cap and timeouts.
    pub http: HttpConfig,
    /// Which GPU faults take a GPU out of placement.
    pub gpu_health: GpuHealthConfig,
    /// Serve HTTPS with this certificate; `null` serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Log filter (`info`, `debug`, `vramguard=debug,tower_http=warn`, ...); `RUST_LOG`, when
    /// set, takes its place.
    pub log_level: String,
}

/// Name of the profile given by the `workload` key.
pub(crate) const DEFAULT_WORKLOAD: &str = "default";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9842)),
            sample_interval: Dur::secs(1),
            state_dir: PathBuf::from("./vramguard-state"),
            gpu: GpuConfig::default(),
            host: HostConfig::default(),
            history: HistoryConfig::default(),
            auth: AuthConfig::default(),
            constraints: Constraints::default(),
            optimization: Optimization::default(),
            workload: Workload::default(),
            workloads: BTreeMap::new(),
            learning: LearningConfig::default(),
            leases: LeasesConfig::default(),
            stream: StreamConfig::default(),
            queue: QueueConfig::default(),
            http: HttpConfig::default(),
            gpu_health: GpuHealthConfig::default(),
            tls: None,
            log_level: "info".to_owned(),
        }
    }
}

impl Config {
    /// The workload profile called `name`: `default` is the `workload` key, then `workloads`,
    /// then the built-in profiles.
    pub fn profile(&self, name: &str) -> Option<&Workload> {
        if name == DEFAULT_WORKLOAD {
            return Some(&self.workload);
        }
        self.workloads.get(name).or_else(|| profiles::get(name))
    }

    /// Every profile name: `default`, the configured ones, then the built-in ones.
    pub fn profile_names(&self) -> Vec<&str> {
        let built_in = profiles::NAMES.into_iter().filter(|n| !self.workloads.contains_key(*n));
        std::iter::once(DEFAULT_WORKLOAD).chain(self.workloads.keys().map(String::as_str)).chain(built_in).collect()
    }

    /// The profiles this configuration sets up: `default`, then `workloads` (what metrics
    /// follow; the built-in ones are selectable without being listed).
    pub fn configured_profile_names(&self) -> Vec<&str> {
        std::iter::once(DEFAULT_WORKLOAD).chain(self.workloads.keys().map(String::as_str)).collect()
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.to_owned(), source: e })?;
        Self::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // An empty file is a valid config of all defaults.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let mut message = e.into_inner().to_string();
            // serde_norway already prefixes some messages with the path; say it once.
            if let Some(rest) = message.strip_prefix(&format!("{key}: ")) {
                message = rest.to_owned();
            }
            ConfigError::Invalid { key: if key == "." { "(top level)".to_owned() } else { key }, message }
        })?;
        config.validate()?;
        Ok(config)
    }
}
