//! Ranges and cross-field rules that types alone cannot express, one function per section. Every
//! range and its sentence comes from [`crate::limits`].

use super::{
    AuthConfig, Config, DEFAULT_WORKLOAD, GpuHealthConfig, HistoryBackend, HistoryConfig, HttpConfig, LearningConfig,
    LeasesConfig, QueueConfig, validate_constraints, validate_optimization,
};
use crate::error::ConfigError;
use crate::limits;

fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

impl Config {
    /// Checks ranges and cross-field rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        limits::SAMPLE_INTERVAL
            .check(self.sample_interval.0, self.sample_interval)
            .map_err(|m| bad("sample_interval", m))?;
        self.history.validate()?;
        limits::in_range(self.stream.max_subscribers, &limits::SUBSCRIBERS)
            .map_err(|m| bad("stream.max_subscribers", m))?;
        validate_constraints(&self.constraints).map_err(|(key, m)| bad(format!("constraints.{key}"), m))?;
        validate_optimization(&self.optimization, limits::MAX_VRAM_GB)
            .map_err(|(key, m)| bad(format!("optimization.{key}"), m))?;
        self.workload.validate("workload")?;
        if self.workloads.contains_key(DEFAULT_WORKLOAD) {
            return Err(bad(
                "workloads.default",
                "the name default is taken by the `workload` key; give this profile another name",
            ));
        }
        for (name, w) in &self.workloads {
            w.validate(&format!("workloads.{name}"))?;
        }
        self.leases.validate()?;
        self.learning.validate()?;
        self.queue.validate()?;
        self.http.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(bad(
                "log_level",
                format!("{:?} is not a log filter ({e}); e.g. info, debug, vramguard=debug", self.log_level),
            ));
        }
        self.auth.validate()?;
        self.gpu_health.validate()
    }
}

impl HistoryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        limits::HISTORY_INTERVAL.check(self.interval.0, self.interval).map_err(|m| bad("history.interval", m))?;
        if self.retention.0 < self.interval.0 {
            return Err(bad("history.retention", format!("{} is shorter than history.interval", self.retention)));
        }
        if self.backend == HistoryBackend::Prometheus && self.prometheus_url.is_none() {
            return Err(bad("history.prometheus_url", "is required when history.backend is prometheus"));
        }
        if let Some(url) = &self.prometheus_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad("history.prometheus_url", format!("{url:?} must start with http:// or https://")));
        }
        if self.prometheus_selector.contains(['{', '}']) {
            return Err(bad(
                "history.prometheus_selector",
                format!("{:?}: give the matchers without braces, e.g. job=\"vramguard\"", self.prometheus_selector),
            ));
        }
        limits::PROMETHEUS_TIMEOUT
            .check(self.prometheus_timeout.0, self.prometheus_timeout)
            .map_err(|m| bad("history.prometheus_timeout", m))
    }
}

impl LeasesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let ttl = self.default_ttl.0;
        if ttl.subsec_nanos() != 0 {
            return Err(bad(
                "leases.default_ttl",
                format!("{} is not whole seconds; allowed 10s to 24h", self.default_ttl),
            ));
        }
        limits::DEFAULT_TTL.check(ttl, self.default_ttl).map_err(|m| bad("leases.default_ttl", m))?;
        if self.reservation_grace.is_some() {
            return Err(bad(
                "leases.reservation_grace",
                "is no longer supported: a lease's reservation now lasts its whole life (what the job \
                 has not used yet counts against its GPU until the lease is released or expires); \
                 remove the key",
            ));
        }
        Ok(())
    }
}

impl LearningConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        limits::in_range(self.min_samples, &limits::LEARNING_SAMPLES).map_err(|m| bad("learning.min_samples", m))?;
        let window = self.min_samples..=*limits::LEARNING_SAMPLES.end();
        if !window.contains(&self.window) {
            return Err(bad(
                "learning.window",
                format!(
                    "{} is out of range; allowed integers learning.min_samples ({}) to {}",
                    self.window,
                    self.min_samples,
                    window.end()
                ),
            ));
        }
        limits::within(self.margin, &limits::LEARNING_MARGIN).map_err(|m| bad("learning.margin", m))?;
        limits::within(self.oom_margin, &limits::OOM_MARGIN).map_err(|m| bad("learning.oom_margin", m))?;
        limits::within(self.min_ratio, &limits::MIN_RATIO).map_err(|m| bad("learning.min_ratio", m))
    }
}

impl QueueConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        limits::MAX_BYPASS.check(self.max_bypass.0, self.max_bypass).map_err(|m| bad("queue.max_bypass", m))?;
        limits::MAX_WAIT.check(self.max_wait.0, self.max_wait).map_err(|m| bad("queue.max_wait", m))?;
        limits::in_range(self.max_waiting, &limits::WAITING).map_err(|m| bad("queue.max_waiting", m))
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        limits::in_range(self.max_connections, &limits::CONNECTIONS).map_err(|m| bad("http.max_connections", m))?;
        limits::in_range(self.worker_threads, &limits::WORKER_THREADS).map_err(|m| bad("http.worker_threads", m))?;
        for (key, d) in [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.body_read_timeout", self.body_read_timeout),
            ("http.idle_timeout", self.idle_timeout),
        ] {
            limits::CONNECTION_TIMEOUT.check(d.0, d).map_err(|m| bad(key, m))?;
        }
        for (i, h) in self.allowed_hosts.iter().enumerate() {
            limits::check_host_name(h).map_err(|m| bad(format!("http.allowed_hosts[{i}]"), m))?;
        }
        Ok(())
    }
}

impl GpuHealthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Err((i, message)) = limits::check_fatal_xids(&self.fatal_xids) {
            return Err(bad(format!("gpu_health.fatal_xids[{i}]"), message));
        }
        limits::XID_WINDOW.check(self.xid_window.0, self.xid_window).map_err(|m| bad("gpu_health.xid_window", m))
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut names: Vec<&str> = self.token_file.iter().map(|_| super::ADMIN_TOKEN_NAME).collect();
        for (i, t) in self.tokens.iter().enumerate() {
            limits::check_token_name(&t.name).map_err(|m| bad(format!("auth.tokens[{i}].name"), m))?;
            if names.contains(&t.name.as_str()) {
                let by = if t.name == super::ADMIN_TOKEN_NAME && self.token_file.is_some() {
                    "auth.token_file's token"
                } else {
                    "another token"
                };
                return Err(bad(format!("auth.tokens[{i}].name"), format!("{:?} is already the name of {by}", t.name)));
            }
            if t.token_file.as_os_str().is_empty() {
                return Err(bad(format!("auth.tokens[{i}].token_file"), "is empty; name the file holding the token"));
            }
            names.push(&t.name);
        }
        if self.protect_reads && names.is_empty() {
            return Err(bad(
                "auth.protect_reads",
                "is true but no token is configured, so nothing could read; set auth.token_file or auth.tokens",
            ));
        }
        Ok(())
    }
}
