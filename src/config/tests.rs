//! The configuration's unit tests: the shipped file, unknown keys, partial files, every range.

use std::path::Path;
use std::time::Duration;

use super::workload::MultiGpu;
use super::*;

/// The shipped config.yaml is valid and says exactly what the built-in defaults say.
#[test]
fn shipped_config_equals_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let shipped = Config::load(&path).expect("shipped config.yaml parses");
    assert_eq!(shipped, Config::default());
}

/// The whole-profile example commented in config.yaml parses as written, `multi_gpu` included,
/// and its `multi_gpu` figures are the defaults a profile without them gets.
#[test]
fn the_commented_profile_example_parses() {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).unwrap();
    let example: String = shipped
        .lines()
        .skip_while(|l| *l != "#   workloads:")
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    assert!(example.contains("multi_gpu:"), "{example}");
    let c = Config::parse(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
    let profile = c.profile("my-14b-lora").expect("the example's profile");
    assert_eq!(profile.multi_gpu, MultiGpu::default());
    let without = example
        .lines()
        .filter(|l| {
            !l.contains("multi_gpu")
                && !l.contains("shard:")
                && !l.contains("sequence_bytes:")
                && !l.contains("fixed_gb:")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(Config::parse(&without).unwrap().profile("my-14b-lora").unwrap().multi_gpu, MultiGpu::default());
    let bad = example.replace("fixed_gb: 2.21", "fixed_gb: -1");
    let err = Config::parse(&bad).unwrap_err().to_string();
    assert!(err.contains("workloads.my-14b-lora.multi_gpu.fixed_gb"), "{err}");
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
        ("workloads: { default: wan2.1-t2v-1.3b }", "workloads.default", "taken"),
        ("workloads: { i2v: { activations_gb: -1 } }", "workloads.i2v", "belongs to the profile shape before wave 3"),
        ("workload: wan3", "workload", "not a built-in profile; built in: wan2.2-ti2v-5b"),
        ("learning: { margin: 2 }", "learning.margin", "0 to 1"),
        ("learning: { oom_margin: 5 }", "learning.oom_margin", "0 to 4"),
        ("learning: { min_ratio: 2 }", "learning.min_ratio", "0 to 1"),
        ("queue: { max_waiting: 0 }", "queue.max_waiting", "1 to 100000"),
        ("queue: { max_bypass: 2d }", "queue.max_bypass", "0s to 24h"),
        ("queue: { policy: lifo }", "queue.policy", "fifo"),
        ("queue: { max_wait: 6m }", "queue.max_wait", "0s to 5m"),
        ("log_level: \"vramguard=loud\"", "log_level", "not a log filter"),
        ("http: { max_connections: 0 }", "http.max_connections", "1 to 100000"),
        ("http: { worker_threads: 0 }", "http.worker_threads", "1 to 64"),
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
