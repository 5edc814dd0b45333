//! The Host and Origin check (a check run by [`super::edge`], not an RAII guard): requests reach
//! vramguard only under its own names, and a page from another origin cannot change state or open
//! a WebSocket.
//!
//! A web page the operator visits can rebind its DNS name to 127.0.0.1 (its requests then carry
//! the page's `Host`) or post a form cross-site (its requests carry the page's `Origin`). So every
//! request must name an allowed host, and a state-changing request or a WebSocket upgrade that
//! carries an `Origin` must come from an allowed host too. Clients that send no `Origin` (curl,
//! Prometheus, the Python client) are unaffected. A body declared larger than the limit is
//! refused before a byte of it is read.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};

use super::error::ApiError;
use crate::config::Config;
use crate::limits::BODY_LIMIT;

/// The host names vramguard answers to, lowercase, without ports.
#[derive(Debug, Clone)]
pub(crate) struct AllowedHosts(Arc<BTreeSet<String>>);

impl AllowedHosts {
    /// Loopback names, the listen address, the machine's hostname and `http.allowed_hosts`.
    pub(crate) fn from_config(config: &Config) -> Self {
        let mut names: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"].into_iter().map(str::to_owned).collect();
        let ip = config.listen.ip();
        if !ip.is_unspecified() {
            names.insert(ip.to_string());
        }
        if let Some(h) = machine_hostname() {
            names.insert(h);
        }
        names.extend(config.http.allowed_hosts.iter().map(|h| strip_brackets(&h.to_ascii_lowercase()).to_owned()));
        Self(Arc::new(names))
    }

    /// Whether `authority` (`name`, `name:port`, `[v6]:port`) names an allowed host.
    pub(crate) fn allows(&self, authority: &str) -> bool {
        let host = host_of(authority);
        // Allocates only for a name with capitals (rare: clients send what they were given).
        let host: std::borrow::Cow<'_, str> =
            if host.bytes().any(|b| b.is_ascii_uppercase()) { host.to_ascii_lowercase().into() } else { host.into() };
        self.0.contains(host.as_ref()) || host.ends_with(".localhost")
    }
}

/// The host part of an authority: without the port, IPv6 brackets removed.
fn host_of(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match a.rsplit_once(':') {
        // One colon: name:port. More: a bare IPv6 address.
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => a,
    }
}

fn strip_brackets(h: &str) -> &str {
    h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h)
}

/// The kernel's hostname, which a browser on the LAN may use to reach this machine.
fn machine_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The host of an `Origin` header (`scheme://host[:port]`); `None` for `null` and anything else
/// that is not an origin.
fn origin_host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn forbidden(detail: String) -> ApiError {
    ApiError { status: StatusCode::FORBIDDEN, detail }
}

/// What the server answers as: its scheme and port, for comparing origins exactly.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The port the listener is bound to.
    pub port: u16,
    /// `http.allowed_origins`, lowercase, without a trailing slash.
    pub allowed_origins: Arc<BTreeSet<String>>,
}

impl Served {
    /// The scheme and port served, with the configured extra origins.
    pub(crate) fn new(scheme: &'static str, port: u16, config: &Config) -> Self {
        let allowed_origins =
            config.http.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect();
        Self { scheme, port, allowed_origins: Arc::new(allowed_origins) }
    }

    /// Whether `origin` is vramguard's own (its scheme, an allowed host and its port) or listed.
    fn allows(&self, hosts: &AllowedHosts, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.allowed_origins.contains(&origin) {
            return true;
        }
        let Some((scheme, authority)) = origin.split_once("://") else { return false };
        let default = if scheme == "https" { 443 } else { 80 };
        let port: Option<u16> = match authority.strip_prefix('[') {
            Some(rest) => {
                rest.split_once(']').and_then(|(_, p)| p.strip_prefix(':')).map_or(Some(default), |p| p.parse().ok())
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => p.parse().ok(),
                _ => Some(default),
            },
        };
        scheme == self.scheme && port == Some(self.port) && hosts.allows(authority)
    }
}

/// What the server checks in front of the router: the allowed hosts and what it serves as.
#[derive(Debug, Clone)]
pub(crate) struct FrontDoor {
    hosts: AllowedHosts,
    served: Served,
}

impl FrontDoor {
    /// The checks for a listener serving `scheme` on `port` under `config`.
    pub(crate) fn new(config: &Config, scheme: &'static str, port: u16) -> Self {
        Self { hosts: AllowedHosts::from_config(config), served: Served::new(scheme, port, config) }
    }

    /// [`check_connection`] with these hosts and this listener.
    pub(crate) fn check<B>(&self, req: &axum::http::Request<B>) -> Result<(), ApiError> {
        check_connection(&self.hosts, &self.served, req)
    }
}

fn bad_request(detail: String) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, detail }
}

/// The checks only a real connection can need, run by the server before routing: one `Host`,
/// `Authorization`, `Origin` and `Content-Length` each; `Host` on HTTP/1.1; an absolute-form
/// target naming the same authority as `Host` (RFC 9112 §3.2); and a cross-origin write or
/// WebSocket refused unless its origin is vramguard's own scheme, host and port (or listed in
/// `http.allowed_origins`).
pub(crate) fn check_connection<B>(
    hosts: &AllowedHosts,
    served: &Served,
    req: &axum::http::Request<B>,
) -> Result<(), ApiError> {
    let headers = req.headers();
    for name in [header::HOST, header::AUTHORIZATION, header::ORIGIN, header::CONTENT_LENGTH] {
        if headers.get_all(&name).iter().nth(1).is_some() {
            return Err(bad_request(format!("more than one {name} header; a request carries it once")));
        }
    }
    let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or(""));
    if req.version() == axum::http::Version::HTTP_11 && host.is_none() {
        return Err(bad_request("an HTTP/1.1 request must carry a Host header".to_owned()));
    }
    if let Some(target) = req.uri().authority()
        && !host.is_some_and(|h| h.eq_ignore_ascii_case(target.as_str()))
    {
        return Err(bad_request(format!(
            "the request target names {:?} but Host is {:?}; they must be the same",
            target.as_str(),
            host.unwrap_or("")
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let guarded = changes_state(req.method()) || is_websocket_upgrade(headers);
        let origin = origin.to_str().unwrap_or("");
        if guarded && !served.allows(hosts, origin) {
            return Err(forbidden(format!(
                "cross-origin request from {origin:?} refused: writes and WebSockets are accepted only from \
                 vramguard's own origin ({}://<allowed host>:{}) or http.allowed_origins",
                served.scheme, served.port
            )));
        }
    }
    Ok(())
}

/// Refuses a request from a foreign `Host`, a cross-origin write or WebSocket, and a body
/// declared over the limit; the answer to send instead, if so. Run first by [`super::edge`].
pub(crate) fn check(allowed: &AllowedHosts, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    // HTTP/1.1 requires Host; a request without one comes from no browser.
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !allowed.allows(host) {
            return Err(forbidden(format!(
                "Host {host:?} is not a name of this vramguard; add it to http.allowed_hosts if it should be"
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let guarded = changes_state(req.method()) || is_websocket_upgrade(headers);
        let origin = origin.to_str().unwrap_or("");
        if guarded && !origin_host(origin).is_some_and(|h| allowed.allows(h)) {
            return Err(forbidden(format!(
                "cross-origin request from {origin:?} refused: writes and WebSockets are accepted only from \
                 vramguard's own origin (http.allowed_hosts)"
            )));
        }
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > BODY_LIMIT as u64) {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!("the request body declares {n} bytes; the limit is {BODY_LIMIT} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(extra: &[&str]) -> AllowedHosts {
        let c = Config {
            listen: "10.1.2.3:9842".parse().unwrap(),
            http: crate::config::HttpConfig {
                allowed_hosts: extra.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        AllowedHosts::from_config(&c)
    }

    #[test]
    fn hosts_are_matched_without_ports_and_case() {
        let a = allowed(&["GPU-box.lan"]);
        for ok in [
            "localhost",
            "LOCALHOST:9842",
            "127.0.0.1:9842",
            "[::1]:9842",
            "::1",
            "10.1.2.3",
            "gpu-box.lan:80",
            "app.localhost",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:9842", "127.0.0.1.evil.example", "", "10.1.2.4"] {
            assert!(!a.allows(bad), "{bad}");
        }
    }

    #[test]
    fn origins_are_compared_by_scheme_host_and_port() {
        let hosts = allowed(&[]);
        let c = Config {
            http: crate::config::HttpConfig {
                allowed_origins: vec!["https://dash.example/".to_owned()],
                ..Default::default()
            },
            ..Default::default()
        };
        let served = Served::new("http", 9842, &c);
        for ok in ["http://127.0.0.1:9842", "http://localhost:9842", "http://[::1]:9842", "https://dash.example"] {
            assert!(served.allows(&hosts, ok), "{ok}");
        }
        for bad in
            ["http://localhost:3000", "https://localhost:9842", "http://localhost", "http://evil.example:9842", "null"]
        {
            assert!(!served.allows(&hosts, bad), "{bad}");
        }
        assert!(Served::new("http", 80, &c).allows(&hosts, "http://localhost"));
    }

    #[test]
    fn origins_name_their_host() {
        assert_eq!(origin_host("http://127.0.0.1:9842"), Some("127.0.0.1:9842"));
        assert_eq!(origin_host("https://[::1]:9842"), Some("[::1]:9842"));
        assert_eq!(origin_host("null"), None);
        let a = allowed(&[]);
        assert!(!origin_host("http://evil.example").is_some_and(|h| a.allows(h)));
    }
}
