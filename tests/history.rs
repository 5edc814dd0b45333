//! History, saved snapshots and the live stream, against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{GIB, Vramguard, require_tool};
use serde_json::{Value, json};

const SCENARIO: &str = "[gpu]\nmemory_total 17179869184\nmemory_used 4294967296\nutilization_gpu 40\n";

fn gpu_config(extra: &str) -> String {
    format!("sample_interval: \"250ms\"\ngpu: {{ enabled: true, nvml_library: \"{}\" }}\n{extra}", common::fake_nvml())
}

fn history(vg: &Vramguard, query: &str) -> Value {
    let (status, body) = vg.get_json(&format!("/api/v1/system/stats/history{query}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The recorder fills the history on its own; points are oldest first with the nine fields.
#[test]
fn history_fills_on_its_own() {
    let vg = Vramguard::start(&gpu_config("history: { interval: \"1s\", retention: \"1h\" }\n"), Some(SCENARIO), &[]);
    vg.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = history(&vg, "");
        if body["total_count"].as_u64().unwrap() >= 3 {
            break body;
        }
        assert!(Instant::now() < deadline, "history did not fill: {body}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(body["source"], json!("embedded"));
    assert_eq!(body["time_range"]["hours"], json!(1.0)); // default: min(24 h, retention)
    assert_eq!(body["resolution_seconds"], json!(1.0));
    assert!(body.get("warning").is_none());
    let stats = body["stats"].as_array().unwrap();
    let stamps: Vec<&str> = stats.iter().map(|p| p["timestamp"].as_str().unwrap()).collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "oldest first");
    for p in stats {
        assert_eq!(p["vram_used_mb"], json!(4096.0));
        assert_eq!(p["vram_total_mb"], json!(16384.0));
        assert_eq!(p["vram_percent"], json!(25.0));
        assert_eq!(p["gpu_percent"], json!(40.0));
        assert!(p["cpu_percent"].is_number() && p["ram_total_gb"].is_number());
    }
    // Asking for fewer points than samples averages them into buckets.
    let b = history(&vg, "?max_points=1");
    assert_eq!(b["stats"].as_array().unwrap().len(), 1);
    assert!(b["total_count"].as_u64().unwrap() >= 3);
    assert_eq!(b["resolution_seconds"], json!(3600.0));
    assert_eq!(b["stats"][0]["vram_used_mb"], json!(4096.0));
}

/// Two GPUs: 16 GiB at 25 % and 40 % busy, 48 GiB at 75 % and 80 % busy; then the first at
/// 50 % and 20 % busy while the second loses its utilization reading.
fn two_gpus(second_util: &str, first_util: u32, first_used_gib: u64) -> String {
    format!(
        "[gpu]\nmemory_total {}\nmemory_used {}\nutilization_gpu {first_util}\n\
         [gpu]\nmemory_total {}\nmemory_used {}\nutilization_gpu {second_util}\n",
        16 * GIB,
        first_used_gib * GIB,
        48 * GIB,
        36 * GIB
    )
}

/// `(gpu_percent, vram_percent)` of the GPU with `index` in a history point.
fn gpu_figures(point: &Value, index: u64) -> (Option<f64>, Option<f64>) {
    let gpus = point["gpus"].as_array().unwrap_or_else(|| panic!("no gpus in {point}"));
    let g = gpus.iter().find(|g| g["index"] == json!(index)).unwrap_or_else(|| panic!("no GPU {index} in {point}"));
    (g["gpu_percent"].as_f64(), g["vram_percent"].as_f64())
}

/// Each point carries every GPU's own utilization and VRAM % beside the seed's fields
/// (unchanged); a bucket is each GPU's mean over its samples, and a reading a GPU lacked is
/// null in its points and left out of its bucket's mean, never counted as 0.
#[test]
fn history_keeps_each_gpu() {
    let vg = Vramguard::start(
        &gpu_config("history: { interval: \"1s\", retention: \"1h\" }\n"),
        Some(&two_gpus("80", 40, 4)),
        &[],
    );
    vg.wait_ready();
    let count =
        |body: &Value, f: &dyn Fn(&Value) -> bool| body["stats"].as_array().unwrap().iter().filter(|p| f(p)).count();
    let before = |p: &Value| gpu_figures(p, 0).0 == Some(40.0);
    vg.wait_until("three points of the first scenario", Duration::from_secs(20), || {
        count(&history(&vg, ""), &before) >= 3
    });
    let body = history(&vg, "");
    for p in body["stats"].as_array().unwrap() {
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cpu_percent",
                "gpu_percent",
                "gpus",
                "ram_percent",
                "ram_total_gb",
                "ram_used_gb",
                "timestamp",
                "vram_percent",
                "vram_total_mb",
                "vram_used_mb"
            ],
            "the seed's fields and gpus: {p}"
        );
        assert_eq!(p["gpus"].as_array().unwrap().len(), 2, "{p}");
        assert_eq!(gpu_figures(p, 0), (Some(40.0), Some(25.0)), "{p}");
        assert_eq!(gpu_figures(p, 1), (Some(80.0), Some(75.0)), "{p}");
        // The whole is unchanged: the mean utilization, VRAM over both GPUs.
        assert_eq!(p["gpu_percent"], json!(60.0));
        assert_eq!(p["vram_used_mb"], json!(40960.0));
        assert_eq!(p["vram_percent"], json!(62.5));
    }

    // The second GPU stops reporting its utilization; the first changes.
    vg.set_scenario(&two_gpus("unsupported", 20, 8));
    let after = |p: &Value| gpu_figures(p, 0).0 == Some(20.0) && gpu_figures(p, 1).0.is_none();
    vg.wait_until("three points of the second scenario", Duration::from_secs(20), || {
        count(&history(&vg, ""), &after) >= 3
    });
    // Raw points and one bucket over them, read while no point was recorded in between.
    let (raw, bucket) = loop {
        let raw = history(&vg, "");
        let bucket = history(&vg, "?max_points=1");
        if raw["total_count"] == bucket["total_count"] && history(&vg, "")["total_count"] == raw["total_count"] {
            break (raw, bucket);
        }
    };
    let points = raw["stats"].as_array().unwrap();
    let mut util0 = Vec::new();
    for p in points {
        let (u0, v0) = gpu_figures(p, 0);
        let (u1, v1) = gpu_figures(p, 1);
        // A sample taken while the scenario was replaced may mix the two.
        assert!(matches!(u0, Some(40.0) | Some(20.0)) && matches!(v0, Some(25.0) | Some(50.0)), "{p}");
        assert!(matches!(u1, Some(80.0) | None) && v1 == Some(75.0), "{p}");
        if u1.is_none() {
            assert_eq!(p["gpus"][1]["gpu_percent"], Value::Null, "a missing reading is null: {p}");
            assert_eq!(p["gpu_percent"], json!(u0.unwrap()), "the mean of the readings there are: {p}");
        }
        util0.push(u0.unwrap());
    }
    assert!(points.iter().filter(|p| gpu_figures(p, 1).0.is_none()).count() >= 3);
    let b = &bucket["stats"].as_array().unwrap()[..];
    assert_eq!(b.len(), 1, "{bucket}");
    let mean0 = util0.iter().sum::<f64>() / util0.len() as f64;
    let (bu0, bv0) = gpu_figures(&b[0], 0);
    assert!((bu0.unwrap() - mean0).abs() <= 0.05 + 1e-9, "GPU 0: bucket {bu0:?}, mean of points {mean0}");
    assert!(bv0.unwrap() > 25.0 && bv0.unwrap() < 50.0, "{bv0:?}");
    // The second GPU's missing readings are left out of its mean, not averaged in as 0.
    assert_eq!(gpu_figures(&b[0], 1), (Some(80.0), Some(75.0)), "{bucket}");

    // The OpenAPI document describes the per-GPU figures of a history point.
    let (_, doc) = vg.get_json("/api/v1/openapi.json");
    let schemas = &doc["components"]["schemas"];
    let text = schemas["HistoryPointBody"].to_string();
    assert!(text.contains("\"gpus\"") && text.contains("GpuHistoryPoint"), "{text}");
    for field in ["index", "gpu_percent", "vram_percent"] {
        assert!(schemas["GpuHistoryPoint"]["properties"][field].is_object(), "{field}: {}", schemas["GpuHistoryPoint"]);
    }
}

/// Bad history queries get 400 with a detail.
#[test]
fn bad_history_queries() {
    let vg = Vramguard::start(&gpu_config("history: { retention: \"1h\" }\n"), Some(SCENARIO), &[]);
    for q in [
        "hours=0",
        "hours=-1",
        "hours=abc",
        "hours=1.5",
        "hours=NaN",
        "max_points=0",
        "max_points=10001",
        "max_points=2.5",
        "days=1",
    ] {
        let (status, body) = vg.get_json(&format!("/api/v1/system/stats/history?{q}"));
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["detail"].is_string());
    }
    assert_eq!(vg.get_json("/api/v1/system/stats/history?hours=1&max_points=10000").0, 200);
}

/// The first history point is recorded as soon as the first snapshot exists, not one
/// `history.interval` later (an hour here).
#[test]
fn first_point_is_recorded_with_the_first_snapshot() {
    let vg = Vramguard::start(&gpu_config("history: { interval: \"1h\", retention: \"1h\" }\n"), Some(SCENARIO), &[]);
    vg.wait_ready();
    vg.wait_until("the first history point", Duration::from_secs(5), || {
        history(&vg, "?hours=1")["total_count"].as_u64() == Some(1)
    });
}

/// `save` answers the snapshot it recorded, and the record survives `kill -9` right after the 200.
#[test]
fn save_survives_kill_9() {
    // A long history interval: what is in the store afterwards was put there by `save`.
    let mut vg =
        Vramguard::start(&gpu_config("history: { interval: \"1h\", retention: \"1h\" }\n"), Some(SCENARIO), &[]);
    vg.wait_ready();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(300)); // a newer snapshot than the last save
        let (status, saved) = vg.post_json("/api/v1/system/stats/save", &json!({}));
        assert_eq!(status, 200, "{saved}");
        assert_eq!(saved["message"], json!("System stats saved successfully"));
        assert_eq!(saved["stats"]["vram_used_mb"], json!(4096.0));
        let stamp = saved["stats"]["timestamp"].as_str().unwrap().to_owned();
        vg = vg.restart(true);
        let body = history(&vg, "?hours=1");
        let stamps: Vec<&str> =
            body["stats"].as_array().unwrap().iter().map(|p| p["timestamp"].as_str().unwrap()).collect();
        assert!(stamps.contains(&stamp.as_str()), "round {round}: {stamp} not in {stamps:?}");
    }
}

/// A WebSocket client gets a stats message per sample; past the cap a client gets 503; on
/// SIGTERM the socket is closed cleanly and vramguard exits 0.
#[test]
fn websocket_streams_stats() {
    let mut vg = Vramguard::start(
        &format!(
            "sample_interval: \"1s\"\ngpu: {{ nvml_library: \"{}\" }}\nstream: {{ max_subscribers: 2 }}\n",
            common::fake_nvml()
        ),
        Some(SCENARIO),
        &[],
    );
    vg.wait_ready();
    let url = format!("ws://{}/api/v1/system/stats/ws", vg.addr);
    let (mut socket, _) = tungstenite::connect(&url).expect("connect");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }
    let start = Instant::now();
    let mut messages = Vec::new();
    while start.elapsed() < Duration::from_millis(3500) {
        match socket.read() {
            Ok(tungstenite::Message::Text(t)) => messages.push(serde_json::from_str::<Value>(&t).unwrap()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(messages.len() >= 3, "{} messages in 3.5 s", messages.len());
    assert_eq!(messages[0]["vram_used_mb"], json!(4096.0));
    assert_eq!(messages[0]["gpu_count"], json!(1));
    let stamps: Vec<&str> = messages.iter().map(|m| m["timestamp"].as_str().unwrap()).collect();
    let mut unique = stamps.clone();
    unique.dedup();
    assert_eq!(unique.len(), stamps.len(), "one message per sample: {stamps:?}");

    let (_second, _) = tungstenite::connect(&url).expect("second subscriber fits");
    match tungstenite::connect(&url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("third subscriber should get 503, got {:?}", other.map(|(_, r)| r.status())),
    }

    common::signal(vg.pid(), "TERM");
    let start = Instant::now();
    let closed = loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("socket ended without a Close frame: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(3), "no Close frame");
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1001));
    let (status, took) = vg.terminate(Duration::from_secs(5));
    assert!(status.expect("exited").success());
    assert!(took < Duration::from_secs(3));
}

fn mean_and_spread(points: &[Value], field: &str) -> (f64, f64) {
    let v: Vec<f64> = points.iter().filter_map(|p| p[field].as_f64()).collect();
    assert!(!v.is_empty(), "no {field}");
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let spread = v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
    (mean, spread)
}

/// Against a real Prometheus scraping vramguard every second: the Prometheus-backed history
/// agrees with the embedded one within the spread of the samples; with Prometheus stopped the
/// embedded history answers with a warning. Prometheus is required when CI is set.
#[test]
#[cfg_attr(not(has_prometheus), ignore = "needs prometheus on PATH (apt-get install prometheus)")]
fn prometheus_backed_history_agrees_and_falls_back() {
    if !require_tool("prometheus") {
        return;
    }
    let port = common::free_port();
    let config = gpu_config(&format!(
        "history: {{ backend: prometheus, interval: \"1s\", retention: \"1h\", prometheus_url: \"http://127.0.0.1:{port}\", prometheus_selector: 'job=\"vramguard\"', prometheus_timeout: \"2s\" }}\n"
    ));
    let vg = Vramguard::start(&config, Some(SCENARIO), &[]);
    vg.wait_ready();
    let prom = common::start_prometheus(port, &vg.addr, None);
    let window = "?hours=0.05"; // three minutes: more than the test lives
    let deadline = Instant::now() + Duration::from_secs(60);
    let from_prom = loop {
        let (status, body) = vg.get_json(&format!("/api/v1/system/stats/history{window}"));
        assert_eq!(status, 200);
        if body["source"] == json!("prometheus") && body["total_count"].as_u64().unwrap() >= 8 {
            break body;
        }
        assert!(Instant::now() < deadline, "Prometheus history never filled: {body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(from_prom.get("warning").is_none());
    assert_eq!(from_prom["resolution_seconds"], json!(1.0));
    let p_points = from_prom["stats"].as_array().unwrap().clone();

    // The embedded store of the same process, read directly.
    let store = vramguard::Store::open(&vg.dir.path().join("state")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let embedded = store.query_history(now - 180.0, now, 10_000, 1.0).unwrap();
    let e_points: Vec<Value> = embedded
        .points
        .into_iter()
        .map(|p| {
            let p = p.rounded();
            json!({
                "vram_used_mb": p.vram_used_mb, "vram_total_mb": p.vram_total_mb, "vram_percent": p.vram_percent,
                "gpu_percent": p.gpu_percent, "ram_total_gb": p.ram_total_gb, "ram_used_gb": p.ram_used_gb,
                "cpu_percent": p.cpu_percent,
            })
        })
        .collect();
    assert!(e_points.len() >= 8);
    for (field, slack) in [
        ("vram_used_mb", 0.1),
        ("vram_total_mb", 0.1),
        ("vram_percent", 0.1),
        ("gpu_percent", 0.1),
        ("ram_total_gb", 0.02),
        ("ram_used_gb", 0.05),
        ("cpu_percent", 1.0),
    ] {
        let (pm, _) = mean_and_spread(&p_points, field);
        let (em, spread) = mean_and_spread(&e_points, field);
        assert!((pm - em).abs() <= spread + slack, "{field}: prometheus {pm} vs embedded {em} (spread {spread})");
    }
    assert_eq!(p_points[0]["vram_used_mb"], json!((4 * GIB / (1 << 20)) as f64));
    // Each GPU's own figures, grouped by the `gpu` label, as the embedded history has them.
    for p in &p_points {
        assert_eq!(p["gpus"], json!([{"index": 0, "gpu_percent": 40.0, "vram_percent": 25.0}]), "{p}");
    }

    drop(prom);
    let (status, body) = vg.get_json(&format!("/api/v1/system/stats/history{window}"));
    assert_eq!(status, 200);
    assert_eq!(body["source"], json!("embedded"));
    let warning = body["warning"].as_str().expect("a warning");
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    assert!(body["total_count"].as_u64().unwrap() >= 8);
}
