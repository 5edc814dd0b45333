//! Every bad input gets a 4xx with a JSON `detail` and changes nothing. Driven in-process
//! through the router (`app(state).oneshot(..)`), with a synthetic snapshot of one 16 GiB GPU.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;
use vramguard::Store;
use vramguard::router as app;
use vramguard::snapshot::{CollectorStatus, GpuMemory, GpuStats, HostStats, Snapshot};
use vramguard::{AppState, Credentials};
use vramguard::{Config, Constraints, Optimization};

const GIB: u64 = 1 << 30;

fn snapshot() -> Snapshot {
    Snapshot {
        topology: Vec::new(),
        taken_at: SystemTime::now(),
        host: Some(HostStats {
            cpu_usage_ratio: 0.1,
            memory_total_bytes: 32 * GIB,
            memory_available_bytes: 24 * GIB,
            cgroup_memory_limit_bytes: None,
        }),
        gpus: vec![GpuStats {
            index: 0,
            uuid: "GPU-A".to_owned(),
            name: Some("Test".to_owned()),
            pci_bus_id: None,
            utilization_ratio: Some(0.2),
            memory: Some(GpuMemory { total_bytes: 16 * GIB, used_bytes: 2 * GIB, free_bytes: 14 * GIB }),
            temperature_celsius: Some(50.0),
            power_watts: Some(100.0),
            processes: None,
            faults: Default::default(),
            telemetry: Default::default(),
            health: Default::default(),
        }],
        driver_version: None,
        collectors: vec![CollectorStatus { name: "host", success: true, duration: Duration::ZERO, error: None }],
    }
}

struct Harness {
    state: AppState,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    fn new(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { state_dir: dir.path().to_owned(), ..Config::default() };
        let (_tx, rx) = tokio::sync::watch::channel(Some(Arc::new(snapshot())));
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let credentials = token.map(|t| Credentials::admin_token(t.to_owned())).unwrap_or_default();
        let state = AppState::open(config, rx, credentials, shutdown_rx).unwrap();
        Self { state, _dir: dir, _shutdown: shutdown_tx }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut b = Request::post(path);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(path, Some("application/json"), body.to_string().into_bytes()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    /// What a client reads back, and what the store holds.
    async fn state_now(&self) -> (Value, Value, Option<Optimization>, Option<Constraints>) {
        let opt = self.get("/api/v1/system/optimization").await.1;
        let con = self.get("/api/v1/system/constraints").await.1["constraints"].clone();
        // A second connection reads what the service committed.
        let store = Store::open(self._dir.path()).unwrap();
        (opt, con, store.load_override("optimization").unwrap(), store.load_override("constraints").unwrap())
    }
}

/// Bad values for every field, and the seed's own cases, are rejected with a detail naming the
/// field, and neither the live settings nor the store change.
#[tokio::test]
async fn out_of_range_and_wrong_type_values_change_nothing() {
    let h = Harness::new(None);
    let before = h.state_now().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        // optimization
        ("/api/v1/system/optimization", json!({"quantization": "fp32"}), "quantization"),
        ("/api/v1/system/optimization", json!({"quantization": 8}), "quantization"),
        ("/api/v1/system/optimization", json!({"quantization": "FP16"}), "quantization"),
        ("/api/v1/system/optimization", json!({"enable_offload": "yes"}), "enable_offload"),
        ("/api/v1/system/optimization", json!({"enable_offload": 1}), "enable_offload"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 64}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 127}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 513}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": -256}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 256.5}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": "256"}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 4294967296u64}), "vae_tile_size"),
        ("/api/v1/system/optimization", json!({"max_vram_usage_gb": 0}), "max_vram_usage_gb"),
        ("/api/v1/system/optimization", json!({"max_vram_usage_gb": -1}), "max_vram_usage_gb"),
        ("/api/v1/system/optimization", json!({"max_vram_usage_gb": 16.01}), "max_vram_usage_gb"),
        ("/api/v1/system/optimization", json!({"max_vram_usage_gb": "12"}), "max_vram_usage_gb"),
        ("/api/v1/system/optimization", json!({"invalid_key": 1}), "invalid_key"),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 256, "invalid_key": 1}), "invalid_key"),
        // constraints
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": 0}), "max_concurrent_generations"),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": 11}), "max_concurrent_generations"),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": 15}), "max_concurrent_generations"),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": 2.5}), "max_concurrent_generations"),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": "2"}), "max_concurrent_generations"),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": -1}), "max_concurrent_generations"),
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": 1.5}), "vram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": -0.1}), "vram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": 0.09}), "vram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": "0.8"}), "vram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"vram_critical_threshold": 1.01}), "vram_critical_threshold"),
        ("/api/v1/system/constraints", json!({"vram_critical_threshold": 0.09}), "vram_critical_threshold"),
        ("/api/v1/system/constraints", json!({"cpu_warning_threshold": 1.5}), "cpu_warning_threshold"),
        ("/api/v1/system/constraints", json!({"cpu_warning_threshold": -0.1}), "cpu_warning_threshold"),
        ("/api/v1/system/constraints", json!({"cpu_warning_threshold": 0.0}), "cpu_warning_threshold"),
        ("/api/v1/system/constraints", json!({"ram_warning_threshold": 1.0000001}), "ram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"ram_warning_threshold": 0.05}), "ram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"ram_warning_threshold": null, "x": 1}), "x"),
        // the warning level may not exceed the critical one after the merge
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": 0.96}), "vram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"vram_critical_threshold": 0.8}), "vram_warning_threshold"),
        ("/api/v1/system/constraints", json!({"invalid_key": 1}), "invalid_key"),
    ];
    for (path, body, field) in cases {
        let (status, resp) = h.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body} -> {resp}");
        let detail = resp["detail"].as_str().unwrap_or_else(|| panic!("no detail for {body}: {resp}"));
        assert!(detail.contains(field), "{body}: {detail}");
        assert_eq!(h.state_now().await, before, "{body} changed the state");
    }
    // 85 instead of 0.85 gets the hint.
    let (_, resp) = h.post("/api/v1/system/constraints", json!({"vram_warning_threshold": 85})).await;
    assert!(resp["detail"].as_str().unwrap().contains("did you mean 0.85?"), "{resp}");
}

/// The bounds themselves are accepted.
#[tokio::test]
async fn values_at_the_bounds_are_accepted() {
    let h = Harness::new(None);
    let cases: Vec<(&str, Value)> = vec![
        ("/api/v1/system/optimization", json!({"vae_tile_size": 128})),
        ("/api/v1/system/optimization", json!({"vae_tile_size": 512})),
        ("/api/v1/system/optimization", json!({"max_vram_usage_gb": 16.0})),
        ("/api/v1/system/optimization", json!({"max_vram_usage_gb": 0.001})),
        ("/api/v1/system/optimization", json!({"quantization": "fp16", "enable_offload": false})),
        ("/api/v1/system/optimization", json!({})),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": 1})),
        ("/api/v1/system/constraints", json!({"max_concurrent_generations": 10})),
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": 0.1, "vram_critical_threshold": 0.1})),
        ("/api/v1/system/constraints", json!({"vram_warning_threshold": 1.0, "vram_critical_threshold": 1.0})),
        ("/api/v1/system/constraints", json!({"cpu_warning_threshold": 0.1, "ram_warning_threshold": 1.0})),
    ];
    for (path, body) in cases {
        let (status, resp) = h.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path} {body} -> {resp}");
        for (k, v) in body.as_object().unwrap() {
            let got = if path.ends_with("constraints") {
                resp["updated_constraints"][k].clone()
            } else {
                resp["settings"][k].clone()
            };
            // Numbers compare as numbers (16 and 16.0 are one value); strings and booleans
            // exactly. A field missing from the answer is Null and fails either way.
            match v.as_f64() {
                Some(want) => assert_eq!(got.as_f64(), Some(want), "{path} {k}: {resp}"),
                None => assert_eq!(&got, v, "{path} {k}: {resp}"),
            }
        }
    }
}

/// Malformed JSON, non-objects, oversize bodies and wrong content types: 400/413/415 with a
/// detail, nothing changed.
#[tokio::test]
async fn malformed_bodies_are_rejected() {
    let h = Harness::new(None);
    let before = h.state_now().await;
    for path in ["/api/v1/system/optimization", "/api/v1/system/constraints"] {
        let cases: Vec<(Option<&str>, Vec<u8>, StatusCode)> = vec![
            (Some("application/json"), b"{\"vae_tile_size\": ".to_vec(), StatusCode::BAD_REQUEST),
            (Some("application/json"), b"not json".to_vec(), StatusCode::BAD_REQUEST),
            (Some("application/json"), b"[1, 2]".to_vec(), StatusCode::BAD_REQUEST),
            (Some("application/json"), b"null".to_vec(), StatusCode::BAD_REQUEST),
            (Some("application/json"), b"".to_vec(), StatusCode::BAD_REQUEST),
            (Some("application/json"), vec![0xff, 0xfe, 0x00], StatusCode::BAD_REQUEST),
            (Some("text/plain"), b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (None, b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("application/x-www-form-urlencoded"), b"a=b".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ];
        for (ct, body, expected) in cases {
            let (status, resp) = h.post_raw(path, ct, body.clone()).await;
            assert_eq!(status, expected, "{path} {ct:?} {:?} -> {resp}", String::from_utf8_lossy(&body));
            assert!(resp["detail"].is_string(), "{resp}");
        }
        let mut big = b"{\"vae_tile_size\": 256, \"pad\": \"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 70 * 1024));
        big.extend(b"\"}");
        let (status, resp) = h.post_raw(path, Some("application/json"), big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
        assert!(resp["detail"].as_str().unwrap().contains("65536"), "{resp}");
    }
    assert_eq!(h.state_now().await, before);
}

/// Query validation of resource-check, and 404/405 with JSON details.
#[tokio::test]
async fn bad_queries_and_unknown_routes() {
    let h = Harness::new(None);
    for q in [
        "vram_required_gb=0",
        "vram_required_gb=-1",
        "vram_required_gb=1025",
        "vram_required_gb=abc",
        "vram_required_gb=NaN",
        "vram_required_gb=inf",
        "vram_required_gb=",
        "vram_required_gb=1&vram_required_gb=2",
        "model_loaded=maybe",
        "gpu_index=0",
    ] {
        let (status, resp) = h.get(&format!("/api/v1/system/resource-check?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q} -> {resp}");
        assert!(resp["detail"].is_string(), "{q}: {resp}");
    }
    let (status, resp) = h.get("/api/v1/system/resource-check?vram_required_gb=1024").await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (status, resp) = h.get("/api/v1/system/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(resp["detail"].is_string());
    let req = Request::put("/api/v1/system/optimization").body(Body::empty()).unwrap();
    let (status, resp) = h.send(req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp["detail"].as_str().unwrap().contains("PUT"));
}

/// With a token: writes need it (401 otherwise, nothing changes); reads do not.
#[tokio::test]
async fn token_is_required_for_writes_only() {
    let h = Harness::new(Some("t0ken"));
    let before = h.state_now().await;
    let (status, resp) = h.post("/api/v1/system/constraints", json!({"max_concurrent_generations": 3})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(resp["detail"].is_string());
    let req = Request::delete("/api/v1/system/constraints")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.send(req).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.state_now().await, before);
    let req = Request::post("/api/v1/system/constraints")
        .header(header::AUTHORIZATION, "Bearer t0ken")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"max_concurrent_generations": 3}"#))
        .unwrap();
    assert_eq!(h.send(req).await.0, StatusCode::OK);
    assert_eq!(h.get("/api/v1/system/health").await.0, StatusCode::OK);
    assert_eq!(h.get("/api/v1/system/stats").await.0, StatusCode::OK);
}

/// `stats` rejects query parameters like every other endpoint (it takes none).
#[tokio::test]
async fn stats_rejects_unknown_query_parameters() {
    let h = Harness::new(None);
    let (status, body) = h.get("/api/v1/system/stats?verbose=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"], json!("unknown query parameter \"verbose\"; allowed parameters: none"));
    assert_eq!(h.get("/api/v1/system/stats").await.0, StatusCode::OK);
}
