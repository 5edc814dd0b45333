//! Debian's headless Chromium under chromedriver, driven over WebDriver (fantoccini), with its
//! network limited to 127.0.0.1. The async client runs on a runtime of its own, so the test
//! itself stays synchronous, as the harness's blocking calls require.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub(crate) struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    driver_url: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// Chromium's switches: headless, no background traffic, and no route off the machine: every
/// host name but 127.0.0.1 fails to resolve, and everything not bypassed goes to a proxy on a
/// closed loopback port.
fn chromium_args(profile: &Path, closed_port: u16) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--force-device-scale-factor=1",
        "--hide-scrollbars", // as on a phone: the viewport is the page's whole width
        "--window-size=1280,800",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-bypass-list=127.0.0.1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("--proxy-server=http://127.0.0.1:{closed_port}"), format!("--user-data-dir={}", profile.display())])
    .collect()
}

fn which(tool: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Browser {
    /// Starts chromedriver on a free port and opens a Chromium session through it.
    pub(crate) fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let port = super::common::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::new();
        let start = Instant::now();
        while !http.get(format!("{driver_url}/status")).send().is_ok_and(|r| r.status().is_success()) {
            assert!(start.elapsed() < Duration::from_secs(15), "chromedriver did not answer on {driver_url}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                "args": chromium_args(profile.path(), super::common::free_port()),
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!() };
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&driver_url),
            )
            .expect("open a Chromium session");
        let session = rt.block_on(client.session_id()).expect("session id").expect("a session");
        Self { rt, client: Some(client), driver, driver_url, session, _profile: profile }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("open session")
    }

    pub(crate) fn goto(&self, url: &str) -> Result<(), fantoccini::error::CmdError> {
        self.rt.block_on(self.client().goto(url))
    }

    /// Runs a script in the page and returns its value.
    pub(crate) fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt.block_on(self.client().execute(script, args)).expect("execute script")
    }

    /// The text a person sees in the first element matching `css` ("" when there is none).
    pub(crate) fn text(&self, css: &str) -> String {
        self.rt.block_on(async {
            match self.client().find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    }

    pub(crate) fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.rt.block_on(async { self.client().find(Locator::Css(css)).await.ok()?.attr(name).await.ok()? })
    }

    /// Replaces an input's value by typing, as a person would.
    pub(crate) fn type_into(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.client().find(Locator::Css(css)).await.expect("input");
            e.clear().await.expect("clear");
            e.send_keys(text).await.expect("type");
        })
    }

    pub(crate) fn click(&self, css: &str) {
        self.rt
            .block_on(async { self.client().find(Locator::Css(css)).await.expect("element").click().await })
            .expect("click");
    }

    /// Sizes the window so that the viewport is `width` x `height` CSS pixels.
    pub(crate) fn viewport(&self, width: u32, height: u32) {
        self.rt.block_on(self.client().set_window_size(width, height)).expect("window size");
        let inner = self.eval("return [window.innerWidth, window.innerHeight]", vec![]);
        let (w, h) = (inner[0].as_u64().unwrap_or(0) as u32, inner[1].as_u64().unwrap_or(0) as u32);
        if (w, h) != (width, height) {
            // Headless may count a frame around the viewport: grow the window by the difference.
            let (dw, dh) = (width.saturating_sub(w), height.saturating_sub(h));
            self.rt.block_on(self.client().set_window_size(width + dw, height + dh)).expect("window size");
        }
    }

    pub(crate) fn screenshot(&self, path: &Path) {
        let png = self.rt.block_on(self.client().screenshot()).expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Everything the page logged (console, script errors, failed loads), oldest first, as
    /// chromedriver's log endpoint gives it: `{level, message, source, timestamp}`.
    pub(crate) fn console(&self) -> Vec<Value> {
        let url = format!("{}/session/{}/se/log", self.driver_url, self.session);
        let answer: Value = reqwest::blocking::Client::new()
            .post(url)
            .json(&json!({ "type": "browser" }))
            .send()
            .and_then(|r| r.json())
            .expect("browser log");
        answer["value"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `probe` until it returns `Some`, failing with `what` after `timeout`.
    pub(crate) fn wait<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut(&Self) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
