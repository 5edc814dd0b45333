//! Configuration: parsed from YAML (unknown keys rejected with their path), then validated into
//! the values the rest of the program trusts. The built-in defaults equal the shipped
//! `config.yaml`; a unit test holds the two together.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;
use crate::limits;

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
    /// `default`.
    pub workload: Workload,
    /// More workload profiles by name, selected per request with `workload`.
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

/// The listener's certificate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The HTTP listener's defences.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Host names accepted besides loopback names, the listen address and the machine's
    /// hostname (DNS-rebinding defence): e.g. `gpu-box.lan`.
    pub allowed_hosts: Vec<String>,
    /// Most connections open at once; past it the longest-idle connection is closed.
    pub max_connections: u32,
    /// How long a client may take to send a request's headers (from connecting, or from its
    /// first byte on a kept-alive connection).
    pub header_read_timeout: Dur,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Dur,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            max_connections: 512,
            header_read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
        }
    }
}

/// Who goes first among waiting generation requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueuePolicy {
    /// First come, first served: nothing overtakes the head of the queue.
    #[default]
    Fifo,
    /// A later request that fits may go while the head cannot, until the head has waited
    /// `max_bypass`.
    Backfill,
}

impl QueuePolicy {
    /// The name config and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            QueuePolicy::Fifo => "fifo",
            QueuePolicy::Backfill => "backfill",
        }
    }
}

/// The admission queue.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `fifo` or `backfill`.
    pub policy: QueuePolicy,
    /// With `backfill`: how long the head may be overtaken.
    pub max_bypass: Dur,
    /// Most requests waiting at once; more get 503.
    pub max_waiting: u32,
    /// The longest one request waits (at most 5m); a larger `wait_seconds` waits this long.
    pub max_wait: Dur,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { policy: QueuePolicy::Fifo, max_bypass: Dur::secs(120), max_waiting: 256, max_wait: Dur::secs(300) }
    }
}

/// NVML settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// `false` says this host has no GPU on purpose: no NVML, no gpu collector, and admission
    /// does not fail closed on VRAM.
    pub enabled: bool,
    /// Path of libnvidia-ml.so; `null` lets the loader find `libnvidia-ml.so`.
    pub nvml_library: Option<PathBuf>,
    /// Export VRAM per compute process.
    pub per_process: bool,
}

/// Host readings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Read CPU and RAM from this file instead of the machine (tests and demos; the format is in
    /// `tests/fake-nvml/README.md`). `null` reads the machine.
    pub scripted_file: Option<PathBuf>,
}

/// Where stats history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    /// vramguard's own store.
    Embedded,
    /// Query a Prometheus server that scrapes vramguard.
    Prometheus,
}

/// History recording.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Which backend answers history queries.
    pub backend: HistoryBackend,
    /// How often a snapshot is recorded into the embedded store.
    pub interval: Dur,
    /// How long recorded snapshots are kept.
    pub retention: Dur,
    /// Base URL of Prometheus, for `backend: prometheus`.
    pub prometheus_url: Option<String>,
    /// Label matchers that pick this vramguard's series in Prometheus, e.g. `job="vramguard"`.
    pub prometheus_selector: String,
    /// How long to wait for Prometheus before answering from the embedded store.
    pub prometheus_timeout: Dur,
}

/// The live stats WebSocket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Most WebSocket subscribers at once; further ones get 503.
    pub max_subscribers: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { max_subscribers: 64 }
    }
}

/// GPU fault health: which XIDs make a GPU unhealthy, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuHealthConfig {
    /// XID codes that make a GPU unhealthy while one was seen within `xid_window`.
    pub fatal_xids: Vec<u64>,
    /// How long a fatal XID keeps its GPU out of placement.
    pub xid_window: Dur,
}

impl Default for GpuHealthConfig {
    fn default() -> Self {
        Self { fatal_xids: limits::DEFAULT_FATAL_XIDS.to_vec(), xid_window: Dur::secs(3600) }
    }
}

/// API authentication.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the bearer token; `null` leaves writes open (bind to loopback then).
    pub token_file: Option<PathBuf>,
    /// Start on a non-loopback address without any token (anyone who reaches the port may then
    /// change settings and leases): only for a network that is trusted on purpose.
    pub allow_unauthenticated_remote: bool,
    /// Named tokens with a role each; `token_file` is one more, named `admin`, with role admin.
    pub tokens: Vec<TokenConfig>,
    /// GETs under `/api/`, `/metrics` and the stats WebSocket need a token too (any role).
    pub protect_reads: bool,
}

/// One named bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: recorded as the owner of the leases it takes.
    pub name: String,
    /// File whose first line is the token (mode 600, at least 16 characters).
    pub token_file: PathBuf,
    /// What it may do.
    pub role: Role,
}

/// What a token may do. Every token may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every write, on any lease.
    Admin,
    /// Take leases, and heartbeat and release its own.
    Client,
    /// Reads only (they need a token when `auth.protect_reads` is on).
    Reader,
}

impl Role {
    /// The name used in the config and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Reader => "reader",
        }
    }
}

/// The name `auth.token_file`'s token goes by.
pub const ADMIN_TOKEN_NAME: &str = "admin";

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        let mut names: Vec<&str> = self.token_file.iter().map(|_| ADMIN_TOKEN_NAME).collect();
        for (i, t) in self.tokens.iter().enumerate() {
            if let Err(m) = limits::check_token_name(&t.name) {
                return bad(format!("auth.tokens[{i}].name"), m);
            }
            if names.contains(&t.name.as_str()) {
                let by = if t.name == ADMIN_TOKEN_NAME && self.token_file.is_some() {
                    "auth.token_file's token".to_owned()
                } else {
                    "another token".to_owned()
                };
                return bad(format!("auth.tokens[{i}].name"), format!("{:?} is already the name of {by}", t.name));
            }
            if t.token_file.as_os_str().is_empty() {
                return bad(
                    format!("auth.tokens[{i}].token_file"),
                    "is empty; name the file holding the token".to_owned(),
                );
            }
            names.push(&t.name);
        }
        if self.protect_reads && names.is_empty() {
            return bad(
                "auth.protect_reads".to_owned(),
                "is true but no token is configured, so nothing could read; set auth.token_file or auth.tokens"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Resource constraints: thresholds are fractions 0.1–1.0.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Generation leases allowed at once (1–10).
    pub max_concurrent_generations: u32,
    /// VRAM fraction at or above which health warns.
    pub vram_warning_threshold: f64,
    /// VRAM fraction at or above which health is critical and admission refuses.
    pub vram_critical_threshold: f64,
    /// CPU busy fraction at or above which health warns and admission refuses.
    pub cpu_warning_threshold: f64,
    /// RAM fraction at or above which health warns and admission refuses.
    pub ram_warning_threshold: f64,
}

/// Weight precision of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 2 bytes a parameter.
    Fp16,
    /// 2 bytes a parameter (same memory as fp16, wider exponent).
    Bf16,
    /// 1 byte a parameter.
    Int8,
}

/// Optimization settings of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Optimization {
    /// Weight precision.
    pub quantization: Quantization,
    /// Move offloadable components (the text encoder) to the CPU.
    pub enable_offload: bool,
    /// VAE decode tile edge in pixels (128–512).
    pub vae_tile_size: u32,
    /// Most VRAM one generation may use, GiB.
    pub max_vram_usage_gb: f64,
}

/// One model component whose weights sit in VRAM.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// What it is, for messages.
    pub name: String,
    /// Parameter count in billions.
    pub params_billions: f64,
    /// Whether `enable_offload` moves it to the CPU.
    pub offloadable: bool,
}

/// The VRAM profile of one generation (SPEC §4.3).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// What the profile describes.
    pub name: String,
    /// Components kept on the GPU.
    pub components: Vec<Component>,
    /// Peak activation memory of a denoising step, GiB.
    pub activations_gb: f64,
    /// VAE decode memory at `vae_reference_tile_size`, GiB; scales with tile area.
    pub vae_decode_gb: f64,
    /// Tile edge at which `vae_decode_gb` was measured.
    pub vae_reference_tile_size: u32,
    /// CUDA context, allocator slack and other fixed cost, GiB.
    pub overhead_gb: f64,
}

/// Generation leases.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// Lease lifetime when the client does not ask for one.
    pub default_ttl: Dur,
    /// Removed in wave 2: only read so that an old config gets a clear error naming it.
    #[serde(skip_serializing, deserialize_with = "present")]
    pub reservation_grace: Option<serde_norway::Value>,
}

/// `Some` for any value the key holds, null included: an emptied key is still present, and still
/// a removed one. An absent key keeps the `default` (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_norway::Value>, D::Error> {
    serde_norway::Value::deserialize(d).map(Some)
}

/// Estimates learned from the peaks of finished generations.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Observations of the current key needed before they replace the model.
    pub min_samples: u32,
    /// How many of the newest observations of a key count.
    pub window: u32,
    /// Safety margin on the highest observed peak (0.10 = +10 %).
    pub margin: f64,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self { min_samples: 3, window: 20, margin: 0.10 }
    }
}

/// Name of the profile given by the `workload` key.
pub const DEFAULT_WORKLOAD: &str = "default";

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

impl Default for GpuConfig {
    fn default() -> Self {
        Self { enabled: true, nvml_library: None, per_process: true }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            backend: HistoryBackend::Embedded,
            interval: Dur::secs(5),
            retention: Dur::secs(7 * 86_400),
            prometheus_url: None,
            prometheus_selector: String::new(),
            prometheus_timeout: Dur::secs(5),
        }
    }
}

impl Default for Constraints {
    fn default() -> Self {
        Self {
            max_concurrent_generations: 2,
            vram_warning_threshold: 0.85,
            vram_critical_threshold: 0.95,
            cpu_warning_threshold: 0.90,
            ram_warning_threshold: 0.90,
        }
    }
}

impl Default for Optimization {
    fn default() -> Self {
        Self { quantization: Quantization::Bf16, enable_offload: true, vae_tile_size: 256, max_vram_usage_gb: 12.0 }
    }
}

impl Default for Workload {
    /// Wan2.2 TI2V-5B at 720p; the sources of each figure are in config.yaml.
    fn default() -> Self {
        Self {
            name: "Wan2.2 TI2V-5B, 1280x704, 121 frames".to_owned(),
            components: vec![
                Component { name: "transformer".to_owned(), params_billions: 5.0, offloadable: false },
                Component { name: "umt5-xxl text encoder".to_owned(), params_billions: 5.7, offloadable: true },
            ],
            activations_gb: 1.0,
            vae_decode_gb: 0.75,
            vae_reference_tile_size: 256,
            overhead_gb: 0.75,
        }
    }
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self { default_ttl: Dur::secs(900), reservation_grace: None }
    }
}

impl Config {
    /// The workload profile called `name` (`default` is the `workload` key).
    pub fn profile(&self, name: &str) -> Option<&Workload> {
        if name == DEFAULT_WORKLOAD { Some(&self.workload) } else { self.workloads.get(name) }
    }

    /// Every profile name, `default` first.
    pub fn profile_names(&self) -> Vec<&str> {
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

    /// Checks ranges and cross-field rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| Err(ConfigError::Invalid { key: key.to_owned(), message });
        if !limits::SAMPLE_INTERVAL.contains(&self.sample_interval.0) {
            return bad("sample_interval", format!("{} is out of range; allowed 200ms to 1h", self.sample_interval));
        }
        if self.history.interval.0 < Duration::from_secs(1) {
            return bad("history.interval", format!("{} is too short; allowed at least 1s", self.history.interval));
        }
        if self.history.retention.0 < self.history.interval.0 {
            return bad("history.retention", format!("{} is shorter than history.interval", self.history.retention));
        }
        if self.history.backend == HistoryBackend::Prometheus && self.history.prometheus_url.is_none() {
            return bad("history.prometheus_url", "is required when history.backend is prometheus".to_owned());
        }
        if let Some(url) = &self.history.prometheus_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("history.prometheus_url", format!("{url:?} must start with http:// or https://"));
        }
        if self.history.prometheus_selector.contains(['{', '}']) {
            return bad(
                "history.prometheus_selector",
                format!(
                    "{:?}: give the matchers without braces, e.g. job=\"vramguard\"",
                    self.history.prometheus_selector
                ),
            );
        }
        let pt = self.history.prometheus_timeout.0;
        if pt < Duration::from_millis(100) || pt > Duration::from_secs(60) {
            return bad(
                "history.prometheus_timeout",
                format!("{} is out of range; allowed 100ms to 1m", self.history.prometheus_timeout),
            );
        }
        if !limits::SUBSCRIBERS.contains(&self.stream.max_subscribers) {
            return bad(
                "stream.max_subscribers",
                format!("{} is out of range; allowed 1 to 10000", self.stream.max_subscribers),
            );
        }
        validate_constraints(&self.constraints)
            .map_err(|(key, message)| ConfigError::Invalid { key: format!("constraints.{key}"), message })?;
        validate_optimization(&self.optimization, limits::MAX_VRAM_GB)
            .map_err(|(key, message)| ConfigError::Invalid { key: format!("optimization.{key}"), message })?;
        self.workload.validate("workload")?;
        let ttl = self.leases.default_ttl.0;
        if ttl.subsec_nanos() != 0 || limits::check_ttl_seconds(ttl.as_secs()).is_err() {
            return bad(
                "leases.default_ttl",
                format!("{} is out of range; allowed 10s to 24h", self.leases.default_ttl),
            );
        }
        if self.leases.reservation_grace.is_some() {
            return bad(
                "leases.reservation_grace",
                "is no longer supported: a lease's reservation now lasts its whole life (what the job \
                 has not used yet counts against its GPU until the lease is released or expires); \
                 remove the key"
                    .to_owned(),
            );
        }
        if self.workloads.contains_key(DEFAULT_WORKLOAD) {
            return bad(
                "workloads.default",
                "the name default is taken by the `workload` key; give this profile another name".to_owned(),
            );
        }
        for (name, w) in &self.workloads {
            w.validate(&format!("workloads.{name}"))?;
        }
        let l = &self.learning;
        if !(1..=1000).contains(&l.min_samples) {
            return bad(
                "learning.min_samples",
                format!("{} is out of range; allowed integers 1 to 1000", l.min_samples),
            );
        }
        if !(l.min_samples..=1000).contains(&l.window) {
            return bad(
                "learning.window",
                format!(
                    "{} is out of range; allowed integers learning.min_samples ({}) to 1000",
                    l.window, l.min_samples
                ),
            );
        }
        if !(l.margin.is_finite() && (0.0..=1.0).contains(&l.margin)) {
            return bad("learning.margin", format!("{} is out of range; allowed 0 to 1", l.margin));
        }
        if self.queue.max_bypass.0 > Duration::from_secs(86_400) {
            return bad("queue.max_bypass", format!("{} is out of range; allowed 0s to 24h", self.queue.max_bypass));
        }
        if !limits::CONNECTIONS.contains(&self.http.max_connections) {
            return bad(
                "http.max_connections",
                format!("{} is out of range; allowed integers 1 to 100000", self.http.max_connections),
            );
        }
        for (key, d) in
            [("http.header_read_timeout", self.http.header_read_timeout), ("http.idle_timeout", self.http.idle_timeout)]
        {
            if !limits::CONNECTION_TIMEOUT.contains(&d.0) {
                return bad(key, format!("{d} is out of range; allowed 1s to 1h"));
            }
        }
        for (i, h) in self.http.allowed_hosts.iter().enumerate() {
            if h.is_empty() || h.len() > 253 || !h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) {
                return bad(
                    &format!("http.allowed_hosts[{i}]"),
                    format!("{h:?} is not a host name; allowed letters, digits, '-', '.', and an IP address"),
                );
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad(
                "log_level",
                format!("{:?} is not a log filter ({e}); e.g. info, debug, vramguard=debug", self.log_level),
            );
        }
        if limits::check_wait_seconds(self.queue.max_wait.0.as_secs_f64()).is_err() {
            return bad("queue.max_wait", format!("{} is out of range; allowed 0s to 5m", self.queue.max_wait));
        }
        if !limits::WAITING.contains(&self.queue.max_waiting) {
            return bad(
                "queue.max_waiting",
                format!("{} is out of range; allowed integers 1 to 100000", self.queue.max_waiting),
            );
        }
        self.auth.validate()?;
        self.gpu_health.validate()
    }
}

impl GpuHealthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if let Err((i, message)) = limits::check_fatal_xids(&self.fatal_xids) {
            return bad(format!("gpu_health.fatal_xids[{i}]"), message);
        }
        if !limits::XID_WINDOW.contains(&self.xid_window.0) {
            return bad(
                "gpu_health.xid_window".to_owned(),
                format!("{} is out of range; allowed 1s to 30d", self.xid_window),
            );
        }
        Ok(())
    }
}

impl Workload {
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        for (i, c) in self.components.iter().enumerate() {
            if !(c.params_billions.is_finite() && c.params_billions > 0.0 && c.params_billions <= 10_000.0) {
                return bad(
                    format!("{prefix}.components[{i}].params_billions"),
                    format!("{} is out of range; allowed above 0 up to 10000", c.params_billions),
                );
            }
        }
        for (key, value) in [
            ("activations_gb", self.activations_gb),
            ("vae_decode_gb", self.vae_decode_gb),
            ("overhead_gb", self.overhead_gb),
        ] {
            if !(value.is_finite() && (0.0..=limits::MAX_VRAM_GB).contains(&value)) {
                return bad(
                    format!("{prefix}.{key}"),
                    format!("{value} is out of range; allowed 0 to {}", limits::MAX_VRAM_GB),
                );
            }
        }
        if let Err(message) = limits::check_tile_size(self.vae_reference_tile_size) {
            return bad(format!("{prefix}.vae_reference_tile_size"), message);
        }
        Ok(())
    }
}

/// Checks constraint ranges and the warning ≤ critical rule; returns (field, sentence) on error.
/// Shared by the config loader and the constraints API so both accept exactly the same values.
pub fn validate_constraints(c: &Constraints) -> Result<(), (&'static str, String)> {
    limits::check_concurrency(c.max_concurrent_generations).map_err(|m| ("max_concurrent_generations", m))?;
    for (field, value) in [
        ("vram_warning_threshold", c.vram_warning_threshold),
        ("vram_critical_threshold", c.vram_critical_threshold),
        ("cpu_warning_threshold", c.cpu_warning_threshold),
        ("ram_warning_threshold", c.ram_warning_threshold),
    ] {
        limits::check_threshold(value).map_err(|m| (field, m))?;
    }
    if c.vram_warning_threshold > c.vram_critical_threshold {
        return Err((
            "vram_warning_threshold",
            format!(
                "{} is above vram_critical_threshold {}; the warning level must not exceed the critical level",
                c.vram_warning_threshold, c.vram_critical_threshold
            ),
        ));
    }
    Ok(())
}

/// Checks optimization ranges; `max_budget_gb` is the largest GPU's VRAM (or 1024 without one).
pub fn validate_optimization(o: &Optimization, max_budget_gb: f64) -> Result<(), (&'static str, String)> {
    limits::check_tile_size(o.vae_tile_size).map_err(|m| ("vae_tile_size", m))?;
    limits::check_budget_gb(o.max_vram_usage_gb, max_budget_gb).map_err(|m| ("max_vram_usage_gb", m))
}

/// A duration written as a string with a unit: `500ms`, `1s`, `5m`, `2h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}; expected a whole number and a unit, e.g. 500ms, 1s, 5m, 7d")
        })?;
        let ms_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("invalid duration {s:?}; the unit must be one of ms, s, m, h, d")),
        };
        n.checked_mul(ms_per)
            .map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("invalid duration {s:?}; too large"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms != 0 && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config.yaml is valid and says exactly what the built-in defaults say.
    #[test]
    fn shipped_config_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
        let shipped = Config::load(&path).expect("shipped config.yaml parses");
        assert_eq!(shipped, Config::default());
    }

    /// An unknown key is rejected with its full path, not silently ignored.
    #[test]
    fn unknown_key_names_its_path() {
        let err = Config::parse("constraints:\n  vram_warning_threshold: 0.8\n  vram_warnig: 0.9\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("constraints"), "{text}");
        assert!(text.contains("vram_warnig"), "{text}");
        let err = Config::parse("gpu:\n  enabled: true\n  nvml_libary: /x\n").unwrap_err().to_string();
        assert!(err.contains("gpu") && err.contains("nvml_libary"), "{err}");
    }

    /// A partial file keeps the defaults of everything it leaves out.
    #[test]
    fn partial_config_keeps_defaults() {
        let c = Config::parse("listen: \"127.0.0.1:0\"\ngpu: { per_process: false }\n").unwrap();
        assert_eq!(c.listen.port(), 0);
        assert!(c.gpu.enabled);
        assert!(!c.gpu.per_process);
        assert_eq!(c.constraints, Constraints::default());
    }

    /// Out-of-range values name the key and the allowed range.
    #[test]
    fn out_of_range_values_are_rejected_with_key() {
        let cases = [
            ("constraints: { vram_warning_threshold: 85 }", "constraints.vram_warning_threshold", "did you mean 0.85"),
            ("constraints: { max_concurrent_generations: 0 }", "constraints.max_concurrent_generations", "1 to 10"),
            (
                "constraints: { vram_warning_threshold: 0.96, vram_critical_threshold: 0.95 }",
                "constraints.vram_warning_threshold",
                "critical",
            ),
            ("optimization: { vae_tile_size: 64 }", "optimization.vae_tile_size", "128 to 512"),
            ("sample_interval: 10ms", "sample_interval", "200ms"),
            ("sample_interval: 5 minutes", "sample_interval", "unit"),
            ("history: { backend: prometheus }", "history.prometheus_url", "required"),
            ("leases: { default_ttl: 1s }", "leases.default_ttl", "10s"),
            ("leases: { reservation_grace: 1m }", "leases.reservation_grace", "whole life"),
            ("leases: { reservation_grace: }", "leases.reservation_grace", "whole life"),
            ("workloads: { default: {} }", "workloads.default", "taken"),
            ("workloads: { i2v: { activations_gb: -1 } }", "workloads.i2v.activations_gb", "0 to 1024"),
            ("learning: { margin: 2 }", "learning.margin", "0 to 1"),
            ("queue: { max_waiting: 0 }", "queue.max_waiting", "1 to 100000"),
            ("queue: { max_bypass: 2d }", "queue.max_bypass", "0s to 24h"),
            ("queue: { policy: lifo }", "queue.policy", "fifo"),
            ("queue: { max_wait: 6m }", "queue.max_wait", "0s to 5m"),
            ("log_level: \"vramguard=loud\"", "log_level", "not a log filter"),
            ("http: { max_connections: 0 }", "http.max_connections", "1 to 100000"),
            ("http: { idle_timeout: 0s }", "http.idle_timeout", "1s to 1h"),
            ("http: { allowed_hosts: [\"evil.example/x\"] }", "http.allowed_hosts[0]", "not a host name"),
            (
                "gpu_health: { fatal_xids: [79, 0] }",
                "gpu_health.fatal_xids[1]",
                "0 is not an XID; allowed integers 1 to 999",
            ),
            ("gpu_health: { fatal_xids: [79, 79] }", "gpu_health.fatal_xids[1]", "79 is listed twice"),
            ("gpu_health: { fatal_xids: [79, \"x\"] }", "gpu_health.fatal_xids", "invalid type"),
            ("gpu_health: { xid_window: 500ms }", "gpu_health.xid_window", "1s to 30d"),
            ("gpu_health: { xid_window: 31d }", "gpu_health.xid_window", "1s to 30d"),
            ("gpu_health: { fatal_xid: [79] }", "gpu_health", "fatal_xid"),
            ("auth: { protect_reads: true }", "auth.protect_reads", "no token is configured"),
            (
                "auth: { tokens: [{ name: \"a b\", token_file: t, role: client }] }",
                "auth.tokens[0].name",
                "not a token name",
            ),
            (
                "auth: { token_file: t, tokens: [{ name: admin, token_file: u, role: client }] }",
                "auth.tokens[0].name",
                "auth.token_file's token",
            ),
            (
                "auth: { tokens: [{ name: w, token_file: t, role: client }, { name: w, token_file: u, role: admin }] }",
                "auth.tokens[1].name",
                "another token",
            ),
            ("auth: { tokens: [{ name: w, token_file: t, role: owner }] }", "auth.tokens[0].role", "admin"),
            ("auth: { tokens: [{ name: w, role: client }] }", "auth.tokens[0]", "token_file"),
            ("listen: nowhere", "listen", "socket address"),
        ];
        for (yaml, key, fragment) in cases {
            let err = Config::parse(yaml).expect_err(yaml).to_string();
            assert!(err.contains(key), "{yaml}: {err}");
            assert!(err.contains(fragment), "{yaml}: {err}");
        }
    }

    /// Durations round-trip through their string form.
    #[test]
    fn durations_parse_and_print() {
        for (text, ms) in [("500ms", 500), ("1s", 1_000), ("5m", 300_000), ("2h", 7_200_000), ("7d", 604_800_000)] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms));
            assert_eq!(d.to_string(), text);
        }
        assert!("".parse::<Dur>().is_err());
        assert!("10".parse::<Dur>().is_err());
        assert!("-1s".parse::<Dur>().is_err());
        assert!("99999999999999999999d".parse::<Dur>().is_err());
    }
}
