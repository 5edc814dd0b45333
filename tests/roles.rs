//! Owners and roles against the real binary: named tokens with roles admin, client and reader;
//! a client may heartbeat and release only its own leases, an admin any; the listing shows a
//! lease's id only to its owner and to admins; with `protect_reads` every read (metrics
//! included) needs a token while the probes stay open.

mod common;

use std::path::Path;

use common::Vramguard;
use serde_json::{Value, json};

const LEASES: &str = "/api/v1/system/generations";
const ADMIN: &str = "admin-token-0123456789abcdef";
const WORKER_A: &str = "worker-a-token-0123456789";
const WORKER_B: &str = "worker-b-token-0123456789";
const READER: &str = "reader-token-0123456789ab";

fn token_file(dir: &Path, name: &str, secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Starts with the admin token file, two clients and a reader.
fn start(protect_reads: bool) -> (Vramguard, tempfile::TempDir) {
    let tokens = tempfile::tempdir().unwrap();
    let d = tokens.path();
    let config = format!(
        "sample_interval: \"250ms\"\ngpu: {{ enabled: false }}\n\
         auth:\n  token_file: \"{}\"\n  protect_reads: {protect_reads}\n  tokens:\n\
         \x20   - {{ name: worker-a, token_file: \"{}\", role: client }}\n\
         \x20   - {{ name: worker-b, token_file: \"{}\", role: client }}\n\
         \x20   - {{ name: prometheus, token_file: \"{}\", role: reader }}\n",
        token_file(d, "admin", ADMIN),
        token_file(d, "a", WORKER_A),
        token_file(d, "b", WORKER_B),
        token_file(d, "reader", READER),
    );
    let vg = Vramguard::start(&config, None, &[]);
    vg.wait_ready();
    (vg, tokens)
}

/// `(status, body)` of `method path` with `token` (none when empty) and an optional JSON body.
fn call(vg: &Vramguard, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = vg.client().request(method.parse().unwrap(), vg.url(path));
    if !token.is_empty() {
        rb = rb.bearer_auth(token);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn take(vg: &Vramguard, token: &str) -> String {
    let (status, lease) = call(vg, "POST", LEASES, token, Some(json!({"vram_required_gb": 1.0})));
    assert_eq!(status, 201, "{lease}");
    lease["id"].as_str().unwrap().to_owned()
}

/// What `token` sees of each lease in the listing: (owner, id).
fn listing(vg: &Vramguard, token: &str) -> Vec<(Value, Value)> {
    let (status, list) = call(vg, "GET", LEASES, token, None);
    assert_eq!(status, 200, "{list}");
    list["leases"].as_array().unwrap().iter().map(|l| (l["owner"].clone(), l["id"].clone())).collect()
}

/// Client B can neither heartbeat nor release client A's lease (403, saying whose it is), and
/// the lease lives on; A and an admin can. The listing hides ids from everyone else.
#[test]
fn clients_act_only_on_their_own_leases() {
    let (vg, _tokens) = start(false);
    let a = take(&vg, WORKER_A);
    let b = take(&vg, WORKER_B);

    for (method, path) in [("POST", format!("{LEASES}/{a}/heartbeat")), ("DELETE", format!("{LEASES}/{a}"))] {
        let (status, body) = call(&vg, method, &path, WORKER_B, None);
        assert_eq!(status, 403, "{method} {path}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("belongs to token \"worker-a\"") && detail.contains("\"worker-b\""), "{detail}");
    }
    assert_eq!(call(&vg, "GET", LEASES, "", None).1["active_generations"], json!(2), "nothing was released");
    assert_eq!(call(&vg, "POST", &format!("{LEASES}/{a}/heartbeat"), WORKER_A, None).0, 200);

    // Ids: each client sees its own; an admin sees all; an anonymous reader none.
    assert_eq!(listing(&vg, WORKER_A), vec![(json!("worker-a"), json!(a)), (json!("worker-b"), Value::Null)],);
    assert_eq!(listing(&vg, ADMIN), vec![(json!("worker-a"), json!(a)), (json!("worker-b"), json!(b))]);
    assert_eq!(listing(&vg, ""), vec![(json!("worker-a"), Value::Null), (json!("worker-b"), Value::Null)]);
    assert_eq!(listing(&vg, READER), vec![(json!("worker-a"), Value::Null), (json!("worker-b"), Value::Null)]);

    // The admin may act on any lease.
    assert_eq!(call(&vg, "POST", &format!("{LEASES}/{b}/heartbeat"), ADMIN, None).0, 200);
    assert_eq!(call(&vg, "DELETE", &format!("{LEASES}/{a}"), ADMIN, None).0, 204);
    assert_eq!(call(&vg, "DELETE", &format!("{LEASES}/{b}"), WORKER_B, None).0, 204);
    assert_eq!(call(&vg, "GET", LEASES, "", None).1["active_generations"], json!(0));

    // Owners survive a restart.
    let c = take(&vg, WORKER_A);
    let vg = vg.restart(true);
    vg.wait_ready();
    assert_eq!(call(&vg, "DELETE", &format!("{LEASES}/{c}"), WORKER_B, None).0, 403);
    assert_eq!(call(&vg, "DELETE", &format!("{LEASES}/{c}"), WORKER_A, None).0, 204);
}

/// Which role may write what: settings, stats/save and observations need the admin; leases a
/// client or the admin; a reader writes nothing; no token, or a wrong one, is a 401.
#[test]
fn roles_decide_which_writes_are_allowed() {
    let (vg, _tokens) = start(false);
    let constraints = Some(json!({"max_concurrent_generations": 3}));
    let (status, body) = call(&vg, "POST", "/api/v1/system/constraints", WORKER_A, constraints.clone());
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("needs an admin token"), "{body}");
    for (method, path) in [("POST", "/api/v1/system/stats/save"), ("DELETE", "/api/v1/system/observations")] {
        assert_eq!(call(&vg, method, path, WORKER_A, None).0, 403, "{method} {path}");
        assert_eq!(call(&vg, method, path, READER, None).0, 403, "{method} {path}");
    }
    let (status, body) = call(&vg, "POST", LEASES, READER, Some(json!({})));
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("client or admin token"), "{body}");
    assert_eq!(call(&vg, "POST", LEASES, "", Some(json!({}))).0, 401);
    assert_eq!(call(&vg, "POST", LEASES, "not-a-token-0123456789", Some(json!({}))).0, 401);
    assert_eq!(call(&vg, "GET", LEASES, "not-a-token-0123456789", None).0, 401, "a wrong token is said so");
    assert_eq!(vg.get_json("/api/v1/system/constraints").1["constraints"]["max_concurrent_generations"], json!(2));
    assert_eq!(call(&vg, "POST", "/api/v1/system/constraints", ADMIN, constraints).0, 200);
    // Reads and metrics stay open without protect_reads.
    assert_eq!(vg.get("/metrics").0, 200);
    assert!(!vg.logs().contains(WORKER_A) && !vg.logs().contains(ADMIN));
}

/// With protect_reads, reads need a token of any role: GET /metrics and the API answer 401
/// without one (the WebSocket too), while the probes, the page and the OpenAPI document stay
/// open.
#[test]
fn protect_reads_needs_a_token_for_metrics_and_reads() {
    let (vg, _tokens) = start(true);
    for path in ["/metrics", "/api/v1/system/health", LEASES, "/api/v1/system/stats/ws"] {
        let (status, body) = call(&vg, "GET", path, "", None);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("protect_reads"), "{body}");
    }
    let r = vg.client().get(vg.url("/metrics")).bearer_auth(READER).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().unwrap().contains("vramguard_store_up 1"));
    for token in [WORKER_A, ADMIN] {
        assert_eq!(call(&vg, "GET", "/api/v1/system/health", token, None).0, 200);
    }
    for path in ["/-/healthy", "/-/ready", "/api/v1/openapi.json", "/"] {
        assert_eq!(vg.get(path).0, 200, "{path}");
    }
    // The page's WebSocket carries its token as a subprotocol (browsers cannot set headers
    // there); the server answers `vramguard`, never echoing the token.
    let ws = |protocols: Option<String>| {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/api/v1/system/stats/ws", vg.addr).into_client_request().unwrap();
        if let Some(p) = protocols {
            req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        let stream = std::net::TcpStream::connect(&vg.addr).unwrap();
        match tungstenite::client::client(req, stream) {
            Ok((_, response)) => (101, response.headers().get("sec-websocket-protocol").cloned()),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => (r.status().as_u16(), None),
            Err(e) => panic!("{e}"),
        }
    };
    let (status, protocol) = ws(Some(format!("vramguard, bearer.{READER}")));
    assert_eq!(status, 101);
    assert_eq!(protocol.unwrap(), "vramguard");
    assert_eq!(ws(Some("vramguard, bearer.not-a-token-0123456789".to_owned())).0, 401);
    assert_eq!(ws(Some("vramguard".to_owned())).0, 401);
}

/// Token files other users may read, or tokens shorter than 16 characters, refuse the start
/// with the key of the file.
#[test]
fn loose_or_short_named_token_files_refuse_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose");
    std::fs::write(&loose, format!("{WORKER_A}\n")).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = token_file(dir.path(), "short", "tooshort");
    for (file, key, why) in [
        (loose.display().to_string(), "auth.tokens[0].token_file", "chmod 600"),
        (short, "auth.tokens[0].token_file", "at least 16"),
    ] {
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:0\"\nstate_dir: \"{}\"\ngpu: {{ enabled: false }}\n\
                 auth: {{ tokens: [{{ name: w, token_file: \"{file}\", role: client }}] }}\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::BIN).arg("--config").arg(&config).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key) && stderr.contains(why), "{stderr}");
    }
}
