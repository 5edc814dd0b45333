//! Test harness: starts the real `vramguard` binary as a child process on port 0 with the fake
//! NVML library and a scenario file of its own, and reads its exposition.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vramguard");
pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// Path of the fake libnvidia-ml.so built by build.rs.
pub fn fake_nvml() -> &'static str {
    let path = env!("VRAMGUARD_FAKE_NVML");
    assert!(
        !path.is_empty() && Path::new(path).exists(),
        "the fake NVML library was not built (see the build script's warning); a C compiler is needed"
    );
    path
}

/// A running vramguard and the files it was started with.
pub struct Vramguard {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
    client: reqwest::blocking::Client,
    /// The command line, to start again on the same state directory.
    program: Vec<std::ffi::OsString>,
    /// Bearer token sent with writes, when set.
    pub token: Option<String>,
}

/// Host figures of the scripted host source: CPU busy fraction, RAM total and available bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    pub cpu: f64,
    pub total: u64,
    pub available: u64,
}

/// A calm host: 10 % CPU, 64 GiB of RAM with 48 GiB available (25 % used).
pub const CALM: Host = Host { cpu: 0.10, total: 64 * GIB, available: 48 * GIB };

/// The scripted host file for `h` (format: tests/fake-nvml/README.md, "Scripted host").
pub fn host_text(h: Host) -> String {
    format!("cpu_usage_ratio {}\nmemory_total_bytes {}\nmemory_available_bytes {}\n", h.cpu, h.total, h.available)
}

/// Writes a scenario file atomically (rename), so the fake never reads half a file.
pub fn write_scenario(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write scenario");
    std::fs::rename(&tmp, path).expect("rename scenario");
}

impl Vramguard {
    /// Starts with the fake NVML and `scenario`, sampling every `interval`.
    pub fn with_fake(scenario: &str, interval: &str) -> Self {
        let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", fake_nvml());
        Self::start(&format!("sample_interval: \"{interval}\"\n{gpu}"), Some(scenario), &[])
    }

    /// Starts with `config` (listen and state_dir are added) and an optional scenario file.
    /// Unless `config` has a `host:` section of its own, CPU and RAM come from a scripted host
    /// file holding [`CALM`] figures (change them with [`Vramguard::set_host`]), so no decision
    /// depends on how busy the machine running the tests is.
    pub fn start(config: &str, scenario: Option<&str>, args: &[&str]) -> Self {
        Self::start_env(config, scenario, args, &[])
    }

    /// [`Vramguard::start`] with environment variables set (`Some`) or removed (`None`).
    pub fn start_env(config: &str, scenario: Option<&str>, args: &[&str], env: &[(&str, Option<&str>)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let scenario_path = dir.path().join("scenario.txt");
        if let Some(s) = scenario {
            write_scenario(&scenario_path, s);
        }
        let host = if config.lines().any(|l| l.starts_with("host:")) {
            String::new()
        } else {
            let path = dir.path().join("host.txt");
            write_scenario(&path, &host_text(CALM));
            format!("host: {{ scripted_file: \"{}\" }}\n", path.display())
        };
        let config_path = dir.path().join("config.yaml");
        let full =
            format!("listen: \"127.0.0.1:0\"\nstate_dir: \"{}\"\n{host}{config}", dir.path().join("state").display());
        std::fs::write(&config_path, full).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config_path).args(args);
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        Self::spawn(cmd, dir, &scenario_path)
    }

    /// Spawns a prepared command and waits for its listening line.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir, scenario_path: &Path) -> Self {
        let mut program = vec![cmd.get_program().to_owned()];
        program.extend(cmd.get_args().map(|a| a.to_owned()));
        // An empty path: no scenario variable at all (`--demo` finds its scenario itself).
        if scenario_path.as_os_str().is_empty() {
            cmd.env_remove("FAKE_NVML_SCENARIO");
        } else {
            cmd.env("FAKE_NVML_SCENARIO", scenario_path);
        }
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vramguard");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let listening =
                    line.split("listening on http://").nth(1).or_else(|| line.split("listening on https://").nth(1));
                if let Some(rest) = listening {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("vramguard did not report its address; logs:\n{}", logs.lock().unwrap());
        };
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Self { child, addr, dir, logs, client, program, token: None }
    }

    /// Stops this process (SIGKILL when `kill9`, else SIGTERM) and starts the same command on the
    /// same state directory and scenario.
    pub fn restart(mut self, kill9: bool) -> Self {
        if kill9 {
            self.child.kill().expect("kill -9");
        } else {
            signal(self.child.id(), "TERM");
        }
        self.child.wait().expect("wait");
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..]);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let scenario = dir.path().join("scenario.txt");
        let token = self.token.take();
        let mut next = Self::spawn(cmd, dir, &scenario);
        next.token = token;
        next
    }

    fn with_token(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// GET returning the status and the JSON body.
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().expect("GET");
        let status = r.status().as_u16();
        (status, r.json().expect("JSON body"))
    }

    /// POST a JSON body (with the token, if set), returning the status and the JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.with_token(self.client.post(self.url(path)).json(body)).send().expect("POST");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// DELETE (with the token, if set), returning the status and the body as JSON (or null).
    pub fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.with_token(self.client.delete(self.url(path))).send().expect("DELETE");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn scenario_path(&self) -> PathBuf {
        self.dir.path().join("scenario.txt")
    }

    /// Replaces the scripted host figures (takes effect at the next sample).
    pub fn set_host(&self, h: Host) {
        write_scenario(&self.dir.path().join("host.txt"), &host_text(h));
    }

    /// Replaces the scenario the fake NVML reads.
    pub fn set_scenario(&self, text: &str) {
        write_scenario(&self.scenario_path(), text);
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().expect("GET");
        (r.status().as_u16(), r.text().expect("body"))
    }

    /// Waits until `/-/ready` says 200.
    pub fn wait_ready(&self) {
        self.wait_until("ready", Duration::from_secs(20), || self.get("/-/ready").0 == 200);
    }

    /// The exposition, once ready.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Polls /metrics until `f` holds, returning the exposition that satisfied it.
    pub fn wait_metrics(&self, what: &str, timeout: Duration, f: impl Fn(&Metrics) -> bool) -> Metrics {
        let start = Instant::now();
        loop {
            let m = self.metrics();
            if f(&m) {
                return m;
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; last exposition:\n{}\nlogs:\n{}", m.text, self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit, returning its status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (Option<ExitStatus>, Duration) {
        let start = Instant::now();
        signal(self.child.id(), "TERM");
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (Some(status), start.elapsed());
            }
            if start.elapsed() > limit {
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success());
}

impl Drop for Vramguard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_owned(), parse_labels(rest.trim_end_matches('}'))),
                None => (series.to_owned(), BTreeMap::new()),
            };
            samples.push(Sample { name, labels, value });
        }
        Self { text: text.to_owned(), samples }
    }

    /// Every sample of `name` whose labels include `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The one value of `name` with `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(found.len() <= 1, "{name}{labels:?} is ambiguous: {found:?}");
        found.first().map(|s| s.value)
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// Whether a tool of the Prometheus packages is on PATH. With `CI` set, a missing tool is a
/// failure, not a skip.
pub fn require_tool(tool: &str) -> bool {
    require_tool_from(tool, "prometheus")
}

/// Whether `tool` is on PATH; the message names the Debian `package` that provides it. With `CI`
/// set, a missing tool is a failure, not a skip.
pub fn require_tool_from(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{tool} is required when CI is set (install it: apt-get install -y {package})");
        }
        eprintln!("SKIPPED: {tool} not found on PATH; install it (apt-get install -y {package}) to run this check");
    }
    found
}

/// Runs `promtool check metrics` on an exposition and fails on anything it prints.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && printed.trim().is_empty(), "promtool check metrics: {printed}\n{text}");
}

/// A real Prometheus server on loopback, stopped on drop.
pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Starts Prometheus on `port`, scraping `target` as job "vramguard" every second and
/// evaluating `rules` (if any) every second.
pub fn start_prometheus(port: u16, target: &str, rules: Option<&Path>) -> Prometheus {
    start_prometheus_with(port, target, rules, "")
}

/// [`start_prometheus`] with more keys for the scrape job (`job` is indented YAML, e.g.
/// `"    scheme: https\n"`).
pub fn start_prometheus_with(port: u16, target: &str, rules: Option<&Path>, job: &str) -> Prometheus {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    let rule_files = rules.map(|r| format!("rule_files: [\"{}\"]\n", r.display())).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n{rule_files}\
             scrape_configs:\n  - job_name: vramguard\n    static_configs: [{{ targets: [\"{target}\"] }}]\n{job}"
        ),
    )
    .expect("write prometheus.yml");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
}
