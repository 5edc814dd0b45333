//! The environment vramguard runs in, as an attacker or a careless client uses it: a browser on
//! the same machine (DNS rebinding, cross-site forms and WebSockets), floods of idle and slow
//! connections, bodies that declare more than they send, TLS, and what a burst leaves in memory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Vramguard, require_tool};
use serde_json::{Value, json};

fn start(extra: &str) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\" }}\n", common::fake_nvml());
    let scenario = format!("[gpu]\nmemory_total {}\nmemory_used {}\n", 24 * common::GIB, 2 * common::GIB);
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}{extra}"), Some(&scenario), &[]);
    vg.wait_ready();
    vg
}

/// Sends `head` (request line and headers, without the blank line) and `body` over a fresh
/// connection; returns the status code and the whole answer.
fn raw(vg: &Vramguard, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(&vg.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "{head}\r\nConnection: close\r\n\r\n{body}").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn constraints(vg: &Vramguard) -> Value {
    vg.get_json("/api/v1/system/constraints").1
}

/// DNS rebinding turned around: a request naming a foreign host is refused and changes nothing;
/// the same request under vramguard's own name works.
#[test]
fn a_foreign_host_is_refused_and_changes_nothing() {
    let vg = start("");
    let before = constraints(&vg);
    let body = r#"{"vram_warning_threshold": 0.1, "vram_critical_threshold": 0.1}"#;
    let post = |host: &str| {
        raw(
            &vg,
            &format!(
                "POST /api/v1/system/constraints HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}",
                body.len()
            ),
            body,
        )
    };
    let (status, answer) = post("evil.example:9842");
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("Host \\\"evil.example:9842\\\" is not a name of this vramguard"), "{answer}");
    assert_eq!(constraints(&vg), before);
    let (status, _) = raw(&vg, "GET /metrics HTTP/1.1\r\nHost: attacker.test", "");
    assert_eq!(status, 403, "reads are refused too: a rebound page must not read them");
    let (status, answer) = post(&format!("localhost:{}", vg.addr.rsplit(':').next().unwrap()));
    assert_eq!(status, 200, "{answer}");
}

/// A page from another origin cannot post, not even a "simple" text/plain POST with no body
/// (which a browser sends without a preflight), nor change leases; no Origin at all is fine.
#[test]
fn cross_origin_writes_are_refused() {
    let vg = start("");
    let host = format!("Host: {}", vg.addr);
    let (status, answer) = raw(
        &vg,
        &format!(
            "POST /api/v1/system/stats/save HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 0"
        ),
        "",
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("cross-origin request from \\\"http://evil.example\\\" refused"), "{answer}");
    let (status, _) = raw(
        &vg,
        &format!(
            "POST /api/v1/system/generations HTTP/1.1\r\n{host}\r\nOrigin: null\r\nContent-Type: application/json\r\nContent-Length: 2"
        ),
        "{}",
    );
    assert_eq!(status, 403, "an opaque origin is not ours");
    assert_eq!(vg.get_json("/api/v1/system/generations").1["leases"], json!([]));
    // Same origin, and no origin: accepted.
    let (status, answer) = raw(
        &vg,
        &format!(
            "POST /api/v1/system/stats/save HTTP/1.1\r\n{host}\r\nOrigin: http://{}\r\nContent-Length: 0",
            vg.addr
        ),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _) = raw(&vg, &format!("POST /api/v1/system/stats/save HTTP/1.1\r\n{host}\r\nContent-Length: 0"), "");
    assert_eq!(status, 200);
    // A cross-origin GET is a read: allowed (the browser keeps the answer from the page).
    let (status, _) =
        raw(&vg, &format!("GET /api/v1/system/health HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example"), "");
    assert_eq!(status, 200);
}

fn ws_connect(vg: &Vramguard, origin: Option<&str>) -> Result<u16, String> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/api/v1/system/stats/ws", vg.addr).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let stream = TcpStream::connect(&vg.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((mut socket, response)) => {
            let first = socket.read().map_err(|e| e.to_string())?;
            assert!(first.is_text(), "a stats message");
            Ok(response.status().as_u16())
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Ok(r.status().as_u16()),
        Err(e) => Err(e.to_string()),
    }
}

/// A cross-origin WebSocket is refused before it takes a subscriber slot; a same-origin one
/// streams.
#[test]
fn cross_origin_websockets_are_refused() {
    let vg = start("stream: { max_subscribers: 2 }\n");
    for _ in 0..3 {
        assert_eq!(ws_connect(&vg, Some("http://evil.example")), Ok(403));
    }
    assert_eq!(ws_connect(&vg, Some(&format!("http://{}", vg.addr))), Ok(101));
    assert_eq!(ws_connect(&vg, None), Ok(101));
}

/// A body declared at 10 GB is answered 413 at once, without waiting for it.
#[test]
fn an_oversized_declared_body_is_refused_at_once() {
    let vg = start("");
    let asked = Instant::now();
    let (status, answer) = raw(
        &vg,
        &format!(
            "POST /api/v1/system/constraints HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 10000000000",
            vg.addr
        ),
        "{}",
    );
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("declares 10000000000 bytes; the limit is 65536 bytes"), "{answer}");
    assert!(asked.elapsed() < Duration::from_secs(2), "took {:?}", asked.elapsed());
}

fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The tests that open hundreds of sockets take turns: together they would run this process out
/// of file descriptors.
fn many_sockets() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A thousand connections that send nothing or dribble half a header: vramguard holds at most
/// `max_connections` of them, a normal client is answered meanwhile, all are closed after the
/// header timeout, and RSS comes back to within 5 MiB of where it was.
#[test]
fn idle_and_slow_connections_are_capped_and_closed() {
    let _turn = many_sockets();
    let vg = start("http: { max_connections: 200, header_read_timeout: 2s, idle_timeout: 3s }\n");
    let pid = vg.pid();
    // Warm up: a few ordinary requests, so the resting size includes a used connection path.
    for _ in 0..20 {
        assert_eq!(vg.get("/metrics").0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let resting = rss_kib(pid);
    let n = 1000.min(open_files_limit().saturating_sub(200));
    let mut storm: Vec<TcpStream> = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(&vg.addr).unwrap();
        if i % 2 == 0 {
            // Slowloris: half a request line, never finished.
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        }
        storm.push(s);
    }
    // A normal client is served while the storm holds its connections.
    let asked = Instant::now();
    let (status, _) = vg.get("/api/v1/system/health");
    assert_eq!(status, 200);
    assert!(asked.elapsed() < Duration::from_secs(2), "a normal client waited {:?}", asked.elapsed());
    let fds = open_fds(pid);
    assert!(fds < 200 + 64, "vramguard holds {fds} file descriptors with max_connections 200");
    // After the header timeout every storm connection has been closed by vramguard.
    std::thread::sleep(Duration::from_secs(4));
    let mut closed = 0;
    for s in &mut storm {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            // A 408-like answer is not sent; any bytes would be a response we did not expect.
            _ => {}
        }
    }
    assert_eq!(closed, n, "every idle or slow connection was closed");
    drop(storm);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    eprintln!("RSS resting {resting} KiB, after the storm {after} KiB ({n} connections)");
    assert!(after <= resting + 5 * 1024, "RSS {after} KiB, resting {resting} KiB");
}

/// A kept-alive connection survives short pauses and is closed after `idle_timeout`.
#[test]
fn keep_alive_connections_close_after_the_idle_timeout() {
    let vg = start("http: { header_read_timeout: 1s, idle_timeout: 3s }\n");
    let mut s = TcpStream::connect(&vg.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let request = format!("GET /-/healthy HTTP/1.1\r\nHost: {}\r\n\r\n", vg.addr);
    let mut buf = [0u8; 4096];
    for pause in [0, 2] {
        std::thread::sleep(Duration::from_secs(pause));
        s.write_all(request.as_bytes()).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "after a {pause} s pause");
    }
    // Longer than the header timeout but within the idle timeout: still open.
    let idle_since = Instant::now();
    assert_eq!(s.read(&mut buf).unwrap(), 0, "closed by vramguard");
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(2500) && idle < Duration::from_millis(5000), "closed after {idle:?}");
}

/// TLS: the API and /metrics over https with a test CA, a real Prometheus scraping over https,
/// and plain HTTP to the TLS port failing.
#[test]
#[cfg_attr(not(has_prometheus), ignore = "needs prometheus on PATH (apt-get install prometheus)")]
fn tls_serves_https_and_prometheus_scrapes_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\" }}\n", common::fake_nvml());
    let tls = format!("tls: {{ cert_file: \"{}\", key_file: \"{}\" }}\n", cert_path.display(), key_path.display());
    let scenario = format!("[gpu]\nmemory_total {}\n", 24 * common::GIB);
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}{tls}"), Some(&scenario), &[]);
    vg.wait_until("the https listening line", Duration::from_secs(5), || vg.logs().contains("listening on https://"));
    let ca = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    let https =
        reqwest::blocking::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(5)).build().unwrap();
    let port = vg.addr.rsplit(':').next().unwrap().to_owned();
    vg.wait_until("the first sample over https", Duration::from_secs(10), || {
        https.get(format!("https://localhost:{port}/-/ready")).send().is_ok_and(|r| r.status() == 200)
    });
    let r = https.get(format!("https://localhost:{port}/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("vramguard_gpus 1"));
    let r = https.get(format!("https://127.0.0.1:{port}/api/v1/system/health")).send().unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = reqwest::blocking::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    assert!(plain.get(format!("http://127.0.0.1:{port}/metrics")).send().is_err());
    if !require_tool("prometheus") {
        return;
    }
    let prom_port = common::free_port();
    let job = format!("    scheme: https\n    tls_config: {{ ca_file: \"{}\" }}\n", cert_path.display());
    let prom = common::start_prometheus_with(prom_port, &format!("localhost:{port}"), None, &job);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = client
            .get(format!("{}/api/v1/query", prom.url))
            .query(&[("query", "vramguard_gpus")])
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .map(|v| v["data"]["result"].as_array().is_some_and(|a| !a.is_empty()));
        if up == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape vramguard over https");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A non-loopback listener without any token refuses to start, saying why.
#[test]
fn remote_listen_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"0.0.0.0:0\"\nstate_dir: \"{}\"\ngpu: {{ enabled: false }}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_vramguard")).arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reachable from other machines and no token is set"), "{err}");
    assert!(err.contains("auth.allow_unauthenticated_remote"), "{err}");
}

/// Issue #27, item 5: framing the RFCs forbid is a 400, not the first header winning.
#[test]
fn malformed_framing_is_refused() {
    let vg = start("");
    let host = format!("Host: {}", vg.addr);
    for (head, what) in [
        (format!("GET /api/v1/system/health HTTP/1.1\r\n{host}\r\n{host}"), "more than one host header"),
        ("GET /api/v1/system/health HTTP/1.1".to_owned(), "must carry a Host header"),
        (
            format!("GET http://evil.example/api/v1/system/health HTTP/1.1\r\n{host}"),
            "the request target names \\\"evil.example\\\"",
        ),
        (
            format!(
                "GET /api/v1/system/health HTTP/1.1\r\n{host}\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b"
            ),
            "more than one authorization header",
        ),
        (
            format!(
                "POST /api/v1/system/stats/save HTTP/1.1\r\n{host}\r\nOrigin: http://{0}\r\nOrigin: http://{0}\r\nContent-Length: 0",
                vg.addr
            ),
            "more than one origin header",
        ),
    ] {
        let (status, answer) = raw(&vg, &head, "");
        assert_eq!(status, 400, "{head}: {answer}");
        assert!(answer.contains(what), "{head}: {answer}");
    }
    // Two Content-Length headers: identical ones (which hyper's parser merges) and differing ones.
    for lengths in ["Content-Length: 0\r\nContent-Length: 0", "Content-Length: 0\r\ncontent-length: 2"] {
        let (status, answer) = raw(&vg, &format!("POST /api/v1/system/stats/save HTTP/1.1\r\n{host}\r\n{lengths}"), "");
        assert_eq!(status, 400, "{lengths}: {answer}");
    }
    // HTTP/1.0 may leave Host out; an absolute-form target naming the Host is fine.
    assert_eq!(raw(&vg, "GET /api/v1/system/health HTTP/1.0", "").0, 200);
    assert_eq!(raw(&vg, &format!("GET http://{0}/api/v1/system/health HTTP/1.1\r\n{host}", vg.addr), "").0, 200);
}

/// Issue #27, item 6: origins are compared as origins (another local port is another origin),
/// and the WebSocket subprotocol carries a token only on the stats WebSocket's upgrade.
#[test]
fn another_port_is_another_origin_and_the_subprotocol_token_is_for_the_websocket_only() {
    let token = "correct-horse-battery-staple";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let vg = start(&format!("auth: {{ token_file: \"{}\" }}\n", file.display()));
    let host = format!("Host: {}", vg.addr);
    let save = |extra: &str| {
        raw(&vg, &format!("POST /api/v1/system/stats/save HTTP/1.1\r\n{host}\r\n{extra}Content-Length: 0"), "")
    };
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (status, answer) = save(&format!("{auth}Origin: http://localhost:3000\r\n"));
    assert_eq!(status, 403, "{answer}");
    let port = vg.addr.rsplit(':').next().unwrap();
    let (status, answer) = save(&format!("{auth}Origin: http://localhost:{port}\r\n"));
    assert_eq!(status, 200, "the page's own origin: {answer}");
    let (status, answer) = save(&format!("Sec-WebSocket-Protocol: vramguard, bearer.{token}\r\n"));
    assert_eq!(status, 401, "the subprotocol is no credential for a POST: {answer}");
}

/// Issue #27, item 3: 600 requests whose bodies stall half-way against `max_connections: 512`:
/// a normal request is answered within 3 s (stalled bodies are evictable like idle
/// connections), every stalled socket is answered 408 or closed, and the descriptors come back.
#[test]
fn stalled_request_bodies_do_not_hold_their_connections() {
    let _turn = many_sockets();
    let vg = start("http: { max_connections: 512, body_read_timeout: 2s, header_read_timeout: 5s }\n");
    let pid = vg.pid();
    for _ in 0..5 {
        assert_eq!(vg.get("/metrics").0, 200);
    }
    let resting = open_fds(pid);
    let before = constraints(&vg);
    let body = r#"{"vram_warning_threshold": 0.5, "max_concurrent_generations": 3}"#;
    let n = 600.min(open_files_limit().saturating_sub(200));
    let mut stalled: Vec<TcpStream> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(&vg.addr).unwrap();
        let head = format!(
            "POST /api/v1/system/constraints HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            vg.addr,
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body.as_bytes()[..body.len() / 2]);
        stalled.push(s);
    }
    // A client arriving now, on connections of its own: the harness's pooled keep-alive
    // connection is idle, so it may be the one evicted to make room (as designed), and a request
    // sent on it would meet the reset.
    let fresh = reqwest::blocking::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let asked = Instant::now();
    assert_eq!(fresh.get(vg.url("/api/v1/system/health")).send().unwrap().status().as_u16(), 200);
    let saved = fresh.post(vg.url("/api/v1/system/stats/save")).json(&json!({})).send().unwrap();
    assert_eq!(saved.status().as_u16(), 200);
    assert!(asked.elapsed() < Duration::from_secs(3), "a normal client waited {:?}", asked.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    let mut ended = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut answer = String::new();
        match s.read_to_string(&mut answer) {
            Ok(_) if answer.is_empty() || answer.starts_with("HTTP/1.1 408") => ended += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => ended += 1,
            _ => {}
        }
    }
    assert_eq!(ended, n, "every stalled body was answered 408 or closed");
    assert_eq!(constraints(&vg), before, "no half body changed anything");
    drop(stalled);
    std::thread::sleep(Duration::from_millis(500));
    let fds = open_fds(pid);
    assert!(fds <= resting + 8, "{fds} descriptors open, {resting} at rest");
}

/// Issue #27, item 7c: connections stalled part-way into their TLS ClientHello are evictable, so
/// with the cap reached a real HTTPS request is answered within a second.
#[test]
fn stalled_tls_handshakes_do_not_delay_a_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let tls = format!("tls: {{ cert_file: \"{}\", key_file: \"{}\" }}\n", cert_path.display(), key_path.display());
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\" }}\n", common::fake_nvml());
    let config =
        format!("sample_interval: \"250ms\"\n{gpu}{tls}http: {{ max_connections: 16, header_read_timeout: 10s }}\n");
    let vg = Vramguard::start(&config, Some(&format!("[gpu]\nmemory_total {}\n", 24 * common::GIB)), &[]);
    let ca = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    let https =
        reqwest::blocking::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(10)).build().unwrap();
    let port = vg.addr.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/-/healthy");
    vg.wait_until("https", Duration::from_secs(10), || https.get(&url).send().is_ok_and(|r| r.status() == 200));
    // A TLS record header and the start of a ClientHello, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(&vg.addr).unwrap();
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let fresh = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let asked = Instant::now();
    assert_eq!(fresh.get(&url).send().unwrap().status(), 200);
    assert!(asked.elapsed() < Duration::from_secs(1), "an HTTPS request waited {:?}", asked.elapsed());
    drop(stalled);
}

/// Issue #27, item 7b: a direct lease request whose client hung up right after sending it is
/// not left holding a slot (on main, ten such requests held every slot for the whole TTL).
#[test]
fn a_lease_request_whose_client_hung_up_leaves_no_lease() {
    let vg = start("constraints: { max_concurrent_generations: 10 }\n");
    let body = r#"{"vram_required_gb": 1, "client": "gone"}"#;
    for _ in 0..10 {
        let mut s = TcpStream::connect(&vg.addr).unwrap();
        write!(
            s,
            "POST /api/v1/system/generations HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            vg.addr,
            body.len()
        )
        .unwrap();
        s.shutdown(std::net::Shutdown::Both).unwrap();
    }
    // Give every request time to be decided (a grant would show at once).
    std::thread::sleep(Duration::from_millis(500));
    let leases = vg.get_json("/api/v1/system/generations").1;
    assert_eq!(leases["active_generations"], json!(0), "{leases}\n{}", vg.logs());
    // A client that stays gets its lease as usual.
    let (status, lease) = vg.post_json("/api/v1/system/generations", &json!({"vram_required_gb": 1}));
    assert_eq!(status, 201, "{lease}");
}

/// glibc's arenas other than the main heap in process `pid`: each is a heap mapped at a 64 MiB
/// boundary, its used part read-write and the rest of its 64 MiB reserved (`---p`) right after.
fn glibc_arenas(pid: u32) -> usize {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // start, end, permissions, anonymous (the fields after them: offset, device, inode, path)
    let regions: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (a, b) = range.split_once('-')?;
            let anonymous = f.nth(3).is_none();
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?, perms.to_owned(), anonymous))
        })
        .collect();
    let reserved_after = |i: usize, start: u64, end: u64| {
        regions.get(i + 1).is_some_and(|(s, e, p, _)| *s == end && p == "---p" && *e == start + HEAP_MAX)
    };
    regions
        .iter()
        .enumerate()
        .filter(|(i, (start, end, perms, anonymous))| {
            *anonymous
                && perms == "rw-p"
                && start % HEAP_MAX == 0
                && (*end == start + HEAP_MAX || reserved_after(*i, *start, *end))
        })
        .count()
}

/// Requests of every kind from four clients at once: the worker, the blocking pool (samples,
/// history) and the commit thread (leases) all allocate.
fn exercise(vg: &Vramguard) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..40 {
                    vg.get(&format!("/api/v1/system/resource-check?vram_required_gb={}", 1 + (t * 40 + i) % 20));
                    let (status, lease) = vg.post_json("/api/v1/system/generations", &json!({"vram_required_gb": 1}));
                    if status == 201 {
                        vg.delete(&format!("/api/v1/system/generations/{}", lease["id"].as_str().unwrap()));
                    }
                    vg.get("/api/v1/system/stats/history?hours=1");
                    vg.get("/metrics");
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(600));
}

/// glibc gives every thread that allocates an arena of its own (up to eight per core), each
/// keeping its freed memory: vramguard keeps to two (the main heap and one more), unless the
/// environment sets `MALLOC_ARENA_MAX`, which wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_heap_keeps_to_two_arenas_unless_the_environment_sets_them() {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\" }}\n", common::fake_nvml());
    let scenario = format!("[gpu]\nmemory_total {}\nmemory_used {}\n", 24 * common::GIB, 2 * common::GIB);
    let config = format!("sample_interval: \"250ms\"\n{gpu}");
    let arenas = |env: &[(&str, Option<&str>)]| {
        let vg = Vramguard::start_env(&config, Some(&scenario), &[], env);
        vg.wait_ready();
        exercise(&vg);
        glibc_arenas(vg.pid())
    };
    let default = arenas(&[("MALLOC_ARENA_MAX", None), ("GLIBC_TUNABLES", None)]);
    assert!(default <= 1, "{default} arenas besides the main heap");
    // The count sees arenas where there are several: the operator's setting is kept.
    let operator = arenas(&[("MALLOC_ARENA_MAX", Some("8")), ("GLIBC_TUNABLES", None)]);
    assert!(operator >= 2, "{operator} arenas besides the main heap with MALLOC_ARENA_MAX=8");
}
