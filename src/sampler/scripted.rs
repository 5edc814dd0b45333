//! A scripted host source: CPU and RAM figures read from a file instead of the machine, so a
//! test (or a demo) can put the host at any load the way the fake NVML does for GPUs. Re-read
//! on every sample; the format is in `tests/fake-nvml/README.md` ("Scripted host").

use std::path::PathBuf;

use super::{Collector, Reading};
use crate::snapshot::HostStats;

/// Reads `key value` lines from a file on every sample.
pub(crate) struct ScriptedHost {
    path: PathBuf,
}

impl ScriptedHost {
    /// A source reading `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Collector for ScriptedHost {
    fn name(&self) -> &'static str {
        "host"
    }

    fn collect(&mut self) -> Result<Reading, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read the scripted host file {}: {e}", self.path.display()))?;
        parse(&text).map(Reading::Host)
    }
}

/// Parses the scripted host format. `error TEXT` makes the collector fail with TEXT.
fn parse(text: &str) -> Result<HostStats, String> {
    let mut cpu = None;
    let mut total = None;
    let mut available = None;
    let mut limit = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        let number = || value.parse::<f64>().map_err(|_| format!("scripted host: {key}: {value:?} is not a number"));
        match key {
            "error" => return Err(value.to_owned()),
            "cpu_usage_ratio" => cpu = Some(number()?.clamp(0.0, 1.0)),
            "memory_total_bytes" => total = Some(number()? as u64),
            "memory_available_bytes" => available = Some(number()? as u64),
            "cgroup_memory_limit_bytes" => limit = Some(number()? as u64),
            other => return Err(format!("scripted host: unknown key {other:?}")),
        }
    }
    let missing = |k: &str| format!("scripted host: {k} is missing");
    let total = total.filter(|t| *t > 0).ok_or_else(|| missing("memory_total_bytes"))?;
    Ok(HostStats {
        cpu_usage_ratio: cpu.ok_or_else(|| missing("cpu_usage_ratio"))?,
        memory_total_bytes: total,
        memory_available_bytes: available.ok_or_else(|| missing("memory_available_bytes"))?.min(total),
        cgroup_memory_limit_bytes: limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_figures_and_errors() {
        let h = parse("cpu_usage_ratio 0.25 # quarter\nmemory_total_bytes 1000\nmemory_available_bytes 600\n").unwrap();
        assert_eq!(h.cpu_usage_ratio, 0.25);
        assert_eq!(h.memory_used_bytes(), 400);
        assert_eq!(h.cgroup_memory_limit_bytes, None);
        assert_eq!(parse("error sysinfo failed\n").unwrap_err(), "sysinfo failed");
        assert!(parse("cpu_usage_ratio 0.1\n").unwrap_err().contains("memory_total_bytes"));
        assert!(parse("cpu_usage_ratio x\n").unwrap_err().contains("not a number"));
        assert!(parse("cpu 1\n").unwrap_err().contains("unknown key"));
    }
}
