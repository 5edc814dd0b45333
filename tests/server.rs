//! `server::run` in-process on a listener the test bound (as `main` does with its own): it serves,
//! answers from the scripted host source, and stops when its shutdown future resolves.

use std::time::Duration;

use vramguard::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_bound_listener_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.txt");
    std::fs::write(&host, "cpu_usage_ratio 0.42\nmemory_total_bytes 1000\nmemory_available_bytes 250\n").unwrap();
    let yaml = format!(
        "sample_interval: 200ms\nstate_dir: \"{}\"\ngpu: {{ enabled: false }}\nhost: {{ scripted_file: \"{}\" }}\n",
        dir.path().join("state").display(),
        host.display()
    );
    let config = Config::parse(&yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vramguard::run(config, listener, async move {
        let _ = stop_rx.await;
    }));

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut ready = false;
    for _ in 0..100 {
        if client.get(format!("{base}/-/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "no snapshot within 5 s");
    let health: serde_json::Value =
        client.get(format!("{base}/api/v1/system/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["system_info"]["cpu_percent"], serde_json::json!(42.0));
    assert_eq!(health["system_info"]["ram_percent"], serde_json::json!(75.0));
    assert_eq!(health["status"], serde_json::json!("healthy"));

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(3), server).await.expect("stops within 3 s");
    assert!(result.unwrap().is_ok());
    assert!(client.get(format!("{base}/-/healthy")).send().await.is_err(), "still serving after shutdown");
}
