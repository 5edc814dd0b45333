//! The lease calls `vramguard run` makes, over vramguard's own HTTP API: take (waiting while
//! allowed), heartbeat with the child's pid, release with the job's outcome.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::leases::Outcome;

const LEASES: &str = "/api/v1/system/generations";
/// vramguard holds one request at most this long (`limits::WAIT_SECONDS`); a longer wait asks
/// again.
const MAX_WAIT_PER_REQUEST: f64 = 300.0;
/// Timeout of each call on top of any wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no lease was taken; each has its exit status (sysexits.h).
#[derive(Debug)]
pub(super) enum TakeError {
    /// Refused (or still refused when the wait ran out): the blocking issues.
    Refused(Vec<String>),
    /// vramguard could not be reached.
    Unreachable(String),
    /// vramguard refused the token.
    Forbidden(String),
    /// vramguard refused the request's fields.
    Invalid(String),
}

impl TakeError {
    /// The exit status `vramguard run` ends with.
    pub(super) fn exit_status(&self) -> u8 {
        match self {
            TakeError::Refused(_) => 75,     // EX_TEMPFAIL: try again later
            TakeError::Unreachable(_) => 69, // EX_UNAVAILABLE
            TakeError::Forbidden(_) => 77,   // EX_NOPERM
            TakeError::Invalid(_) => 64,     // EX_USAGE
        }
    }
}

/// A granted lease, as `vramguard run` uses it.
#[derive(Debug, Clone)]
pub(super) struct Granted {
    pub(super) id: String,
    pub(super) gpu_index: Option<u64>,
    /// Every GPU of the lease, rank 0 first.
    pub(super) gpu_indices: Vec<u64>,
    pub(super) cuda_visible_devices: Option<String>,
    pub(super) ttl_seconds: u64,
}

/// vramguard at `url`, with an optional bearer token. A clone shares the connection pool.
#[derive(Clone)]
pub(super) struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    pub(super) fn new(url: &str, token: Option<String>) -> Result<Self, String> {
        let http = reqwest::Client::builder().connect_timeout(CALL_TIMEOUT).build().map_err(|e| e.to_string())?;
        Ok(Self { http, url: url.trim_end_matches('/').to_owned(), token })
    }

    fn call(&self, method: reqwest::Method, path: &str, wait: f64) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .timeout(CALL_TIMEOUT + Duration::from_secs_f64(wait));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Takes a lease for `body`, waiting in vramguard's queue up to `wait` (asked again in
    /// pieces vramguard will hold), sleeping off a full queue's `Retry-After` while time is left.
    pub(super) async fn take(&self, body: Value, wait: Duration) -> Result<Granted, TakeError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
            let piece = left.min(MAX_WAIT_PER_REQUEST);
            let mut request = body.clone();
            if piece > 0.0 {
                request["wait_seconds"] = json!((piece * 1000.0).floor() / 1000.0);
            }
            let answer = self
                .call(reqwest::Method::POST, LEASES, piece)
                .json(&request)
                .send()
                .await
                .map_err(|e| TakeError::Unreachable(format!("{}: {e}", self.url)))?;
            let status = answer.status().as_u16();
            let retry_after =
                answer.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<f64>().ok());
            let body_text = answer.text().await.unwrap_or_default();
            let parsed: Value = serde_json::from_str(&body_text).unwrap_or(Value::Null);
            let detail = parsed["detail"].as_str().map_or_else(|| body_text.clone(), str::to_owned);
            let time_left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
            match status {
                201 => {
                    return granted(&parsed)
                        .ok_or_else(|| TakeError::Invalid(format!("unexpected answer: {body_text}")));
                }
                409 => {
                    // Waited as long as vramguard would hold it, with time left: ask again.
                    if parsed["queue_position"].is_u64() && time_left > 0.5 {
                        continue;
                    }
                    let issues = parsed["resource_check"]["blocking_issues"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect())
                        .unwrap_or_else(|| vec![detail]);
                    return Err(TakeError::Refused(issues));
                }
                503 => {
                    let pause = retry_after.unwrap_or(1.0);
                    if time_left > pause + 0.5 {
                        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                        continue;
                    }
                    return Err(TakeError::Refused(vec![detail]));
                }
                401 | 403 => return Err(TakeError::Forbidden(detail)),
                _ => return Err(TakeError::Invalid(format!("{status}: {detail}"))),
            }
        }
    }

    /// Renews the lease, naming `pids` (in `pid_namespace`, with their start times) the first
    /// time. Errors are the caller's to log: a missed beat is retried at the next.
    pub(super) async fn heartbeat(&self, id: &str, processes: Option<&Value>) -> Result<(), String> {
        let mut r = self.call(reqwest::Method::POST, &format!("{LEASES}/{id}/heartbeat"), 0.0);
        if let Some(p) = processes {
            r = r.json(p);
        }
        let answer = r.send().await.map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            return Ok(());
        }
        let status = answer.status();
        Err(format!("{status}: {}", answer.text().await.unwrap_or_default()))
    }

    /// Releases the lease with the job's `outcome`.
    pub(super) async fn release(&self, id: &str, outcome: Outcome) -> Result<(), String> {
        let path = format!("{LEASES}/{id}?outcome={}", outcome.as_str());
        let answer = self.call(reqwest::Method::DELETE, &path, 0.0).send().await.map_err(|e| e.to_string())?;
        match answer.status().as_u16() {
            // 404: it lapsed already; nothing is held.
            202 | 204 | 404 => Ok(()),
            status => Err(format!("{status}: {}", answer.text().await.unwrap_or_default())),
        }
    }
}

fn granted(body: &Value) -> Option<Granted> {
    Some(Granted {
        id: body["id"].as_str()?.to_owned(),
        gpu_index: body["gpu"]["index"].as_u64(),
        gpu_indices: body["gpus"]
            .as_array()
            .map(|g| g.iter().filter_map(|r| r["index"].as_u64()).collect())
            .unwrap_or_default(),
        cuda_visible_devices: body["cuda_visible_devices"].as_str().map(str::to_owned),
        ttl_seconds: body["ttl_seconds"].as_u64()?,
    })
}
