//! The monitoring artifacts: alert rules and their promtool tests, the Alertmanager and
//! Prometheus examples, the Grafana dashboard, and all of them end to end against a real
//! Prometheus scraping vramguard on the fake NVML.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{GIB, Vramguard, require_tool};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check rules`, `promtool test rules`, `promtool check config` and `amtool
/// check-config` all pass (the tools are required when CI is set).
#[test]
#[cfg_attr(
    not(all(has_promtool, has_amtool)),
    ignore = "needs promtool and amtool on PATH (apt-get install prometheus prometheus-alertmanager)"
)]
fn rules_and_examples_pass_the_prometheus_tools() {
    if require_tool("promtool") {
        run_ok(Command::new("promtool").arg("check").arg("rules").arg(repo("alerts/vramguard.rules.yml")));
        run_ok(Command::new("promtool").arg("test").arg("rules").arg(repo("alerts/vramguard.rules.test.yml")));
        run_ok(Command::new("promtool").arg("check").arg("config").arg(repo("alerts/prometheus.example.yml")));
    }
    if require_tool("amtool") {
        run_ok(Command::new("amtool").arg("check-config").arg(repo("alerts/alertmanager.example.yml")));
    }
}

/// Every `vramguard_*` name the dashboard and the rules use is one vramguard exports, so a
/// rename cannot silently break a panel or an alert.
#[test]
fn every_metric_used_in_dashboards_and_alerts_is_exported() {
    use vramguard::snapshot::*;
    // A snapshot with every reading present, so every family vramguard can export is rendered.
    let snapshot = Snapshot {
        topology: Vec::new(),
        taken_at: SystemTime::now(),
        host: Some(HostStats {
            cpu_usage_ratio: 0.5,
            memory_total_bytes: 8 * GIB,
            memory_available_bytes: 4 * GIB,
            cgroup_memory_limit_bytes: Some(6 * GIB),
        }),
        gpus: vec![GpuStats {
            index: 0,
            uuid: "GPU-0".to_owned(),
            name: Some("Test".to_owned()),
            pci_bus_id: Some("00000000:01:00.0".to_owned()),
            utilization_ratio: Some(0.5),
            memory: Some(GpuMemory { total_bytes: 16 * GIB, used_bytes: 2 * GIB, free_bytes: 14 * GIB }),
            temperature_celsius: Some(50.0),
            power_watts: Some(100.0),
            processes: Some(vec![GpuProcess {
                sm_utilization_ratio: Some(0.5),
                ..GpuProcess::unresolved(1, Some("p".to_owned()), GIB)
            }]),
            faults: GpuFaults {
                ecc_corrected: Some(1),
                ecc_uncorrected: Some(0),
                remapped_rows: Some(RemappedRows::default()),
                throttle_reasons: Some(0x40),
                sm_clock_hz: Some(1_980_000_000),
                memory_clock_hz: Some(2_619_000_000),
                xids: vec![XidSeen { xid: 79, count: 1, last_seen: SystemTime::now() }],
            },
            telemetry: GpuTelemetry {
                power_limit_watts: Some(450.0),
                energy_joules: Some(1000.0),
                fan_ratios: vec![(0, 0.4)],
                memory_bandwidth_ratio: Some(0.2),
                encoder_ratio: Some(0.1),
                decoder_ratio: Some(0.1),
                pcie_tx_bytes_per_second: Some(1e6),
                pcie_rx_bytes_per_second: Some(1e6),
                pcie_link_generation: Some(4),
                pcie_link_width: Some(16),
                throttle_seconds: VIOLATION_REASONS.iter().map(|r| (*r, 1.0)).collect(),
                performance_state: Some(0),
            },
            health: Default::default(),
        }],
        driver_version: Some("550".to_owned()),
        collectors: vec![CollectorStatus { name: "gpu", success: true, duration: Duration::ZERO, error: None }],
    };
    // As AppState does: the store's status series come from the store.
    let metrics = vramguard::Metrics::new();
    metrics.register(vramguard::StoreStatus::new().collectors());
    // The production path: the policy's part, then the whole exposition.
    let snapshot = std::sync::Arc::new(snapshot);
    let policy = metrics.policy_text(
        Some(&snapshot),
        &vramguard::Constraints::default(),
        Some(vramguard::HealthStatus::Healthy),
        0,
        &vramguard::LeaseFigures {
            outstanding: vec![(0, 1.0)],
            estimates: vec![("default".to_owned(), "model", 11.8)],
            waiting: 1,
            that_fit: vec![("default".to_owned(), 2)],
            gangs_that_fit: vec![("default".to_owned(), 2, 1)],
            gpus_leased: 1,
        },
    );
    let body = metrics.render_cached(Some(&snapshot), &std::sync::Arc::new(policy), 0);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_owned)
        .collect();
    let mut used = BTreeSet::new();
    for file in ["dashboards/vramguard.json", "alerts/vramguard.rules.yml", "alerts/vramguard.rules.test.yml"] {
        let content = std::fs::read_to_string(repo(file)).unwrap();
        let bytes = content.as_bytes();
        let mut i = 0;
        while let Some(pos) = content[i..].find("vramguard_") {
            let start = i + pos;
            // Skip recording-rule names (vramguard:...) and longer identifiers that merely contain it.
            let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b':');
            let end = start
                + content[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(content.len() - start);
            if !preceded {
                used.insert(content[start..end].to_owned());
            }
            i = end;
        }
    }
    // The RAM panel selects its series with a regex over the names.
    used.remove("vramguard_memory_");
    assert!(used.len() > 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}");
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo("dashboards/vramguard.json")).unwrap()).unwrap()
}

/// The dashboard is current Grafana JSON: stable uid, a datasource variable, job → instance →
/// gpu chained with label_values, a unit on every panel.
#[test]
fn dashboard_structure() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    assert_eq!(d["uid"], "vramguard");
    let vars = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "job", "instance", "gpu"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert!(vars[1]["query"]["query"].as_str().unwrap().starts_with("label_values("));
    assert!(vars[2]["query"]["query"].as_str().unwrap().contains("job=\"$job\""));
    assert!(vars[3]["query"]["query"].as_str().unwrap().contains("instance=\"$instance\""));
    let panels = d["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(rows, ["Host", "GPUs", "GPU energy and I/O", "GPU health", "Processes", "Policy", "Exporter"]);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(p["fieldConfig"]["defaults"]["unit"].is_string(), "{} has no unit", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("$job") && expr.contains("$instance"), "{}: {expr}", p["title"]);
        }
    }
    // Provisioning examples parse.
    for f in ["dashboards/provisioning/datasource.yml", "dashboards/provisioning/dashboards.yml"] {
        let v: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(repo(f)).unwrap()).unwrap();
        assert_eq!(v["apiVersion"], 1, "{f}");
    }
}

fn instant_query(client: &reqwest::blocking::Client, base: &str, expr: &str) -> Option<Vec<Value>> {
    let r = client.get(format!("{base}/api/v1/query")).query(&[("query", expr)]).send().ok()?;
    let v: Value = r.json().ok()?;
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned()
}

/// vramguard on the fake NVML at 96% VRAM, with ECC, row remapping, clocks, a clock event reason
/// and an (application) XID scripted, and a real Prometheus scraping it every second with the
/// shipped rules: the VRAM critical alert goes pending or firing, and every panel query of the
/// dashboard (template variables substituted) returns data. Reads are protected
/// (`auth.protect_reads`), so Prometheus scrapes with a reader token from its scrape config.
/// Required when CI is set.
#[test]
#[cfg_attr(not(has_prometheus), ignore = "needs prometheus on PATH (apt-get install prometheus)")]
fn end_to_end_with_a_real_prometheus() {
    if !require_tool("prometheus") {
        return;
    }
    let me = std::process::id();
    let scenario = format!(
        "[gpu]\nname NVIDIA GeForce RTX 4080\nmemory_total {}\nmemory_used {}\nutilization_gpu 97\ntemperature 70\npower_mw 250000\nprocess {me} {}\n\
         ecc_corrected 4\nremapped_rows_correctable 1\nclock_event_reasons sw_power_cap\nclock_sm 2505\nclock_memory 11201\nxid 31 1\n\
         power_limit_mw 320000\nenergy_mj 5000000\nfans 60\nencoder_utilization 5\ndecoder_utilization 0\n\
         pcie_tx_kbps 1024\npcie_rx_kbps 4096\npcie_link_gen 4\npcie_link_width 16\npstate 0\n\
         violation_power_ns 1000000000\nviolation_thermal_ns 0\n\
         [gpu]\nname NVIDIA RTX A6000\nmemory_total {}\nutilization_gpu 0\n",
        25 * GIB,
        24 * GIB,
        24 * GIB,
        48 * GIB
    );
    let secrets = tempfile::tempdir().unwrap();
    let reader = secrets.path().join("prometheus.token");
    std::fs::write(&reader, "reader-token-for-prometheus-0123").unwrap();
    std::fs::set_permissions(&reader, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let auth = format!(
        "auth: {{ protect_reads: true, tokens: [{{ name: prometheus, token_file: \"{}\", role: reader }}] }}\n",
        reader.display()
    );
    let vg = Vramguard::start(&format!("sample_interval: \"1s\"\n{gpu}{auth}"), Some(&scenario), &[]);
    vg.wait_ready();
    assert_eq!(vg.get("/metrics").0, 401, "reads are protected");
    // A decision, so the admission counters move.
    let check = vg.client().get(vg.url("/api/v1/system/resource-check?vram_required_gb=1"));
    assert_eq!(check.bearer_auth("reader-token-for-prometheus-0123").send().unwrap().status().as_u16(), 200);
    let rules = repo("alerts/vramguard.rules.yml");
    let job = format!("    authorization: {{ credentials_file: \"{}\" }}\n", reader.display());
    let prom = common::start_prometheus_with(common::free_port(), &vg.addr, Some(&rules), &job);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let alerts =
            instant_query(&client, &prom.url, r#"ALERTS{alertname=~".*VRAM.*Critical.*"}"#).unwrap_or_default();
        let states: Vec<&str> = alerts.iter().filter_map(|a| a["metric"]["alertstate"].as_str()).collect();
        if states.iter().any(|s| *s == "pending" || *s == "firing") {
            assert_eq!(alerts[0]["metric"]["gpu"], "0");
            break;
        }
        assert!(Instant::now() < deadline, "VRAM critical alert never went pending: {alerts:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Scraped with the reader token: the store's own series arrive too.
    let up = instant_query(&client, &prom.url, r#"vramguard_store_up{job="vramguard"} == 1"#).unwrap_or_default();
    assert_eq!(up.len(), 1, "{up:?}");

    let d = dashboard();
    let mut checked = 0;
    for p in d["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "vramguard")
                .replace("$instance", &vg.addr)
                .replace("$gpu", ".*")
                .replace("$__rate_interval", "1m");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let result = instant_query(&client, &prom.url, &expr).unwrap_or_default();
                if !result.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "panel {:?}: no data for {expr}", p["title"]);
                std::thread::sleep(Duration::from_millis(500));
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked}");
}
