//! The configuration's sections about serving, sampling, history, tokens and the queue: their
//! types and defaults (equal to the shipped `config.yaml`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Dur;
use crate::limits;

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
    /// Origins (`scheme://host[:port]`) besides vramguard's own whose pages may write and open
    /// WebSockets: e.g. a dashboard served from another port.
    pub allowed_origins: Vec<String>,
    /// Most connections open at once; past it the longest-idle connection is closed.
    pub max_connections: u32,
    /// How long a client may take to send a request's headers (from connecting, or from its
    /// first byte on a kept-alive connection).
    pub header_read_timeout: Dur,
    /// How long a client may take to send a request's body once its headers are in; a body
    /// that does not arrive in time is answered 408 and its connection closed.
    pub body_read_timeout: Dur,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Dur,
    /// Threads answering requests (read at start). One, as node_exporter keeps to one CPU by
    /// default (`--runtime.gomaxprocs=1`): the box's CPUs feed its GPUs, and one thread answers
    /// tens of thousands of requests a second. Blocking work has its own small pool.
    pub worker_threads: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections: 512,
            header_read_timeout: Dur::secs(10),
            body_read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            worker_threads: 1,
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
pub(crate) const ADMIN_TOKEN_NAME: &str = "admin";

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
