//! Bearer tokens and roles. With no token configured, everything is open (bind to loopback).
//! With tokens (`auth.token_file`, the admin, and `auth.tokens`, each with a role), every write
//! under `/api/` needs one: lease writes (take, heartbeat, release) a client or admin token,
//! every other write an admin token. Reads stay open unless `auth.protect_reads`, which makes
//! GETs under `/api/`, `/metrics` and the stats WebSocket need a token of any role. The page,
//! the probes and the OpenAPI document are always open.
//!
//! [`super::edge`] puts the [`Caller`] into the request, so the lease handlers can check a lease's
//! owner. Tokens are compared in constant time and never logged.

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};

use super::error::ApiError;
use crate::app::AppState;
use crate::app::{Caller, Credentials};
use crate::config::{ADMIN_TOKEN_NAME, AuthConfig, Role};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: open to everyone.
    Nothing,
    /// A token of any role.
    Read,
    /// A client or admin token (taking, extending and releasing leases).
    Lease,
    /// An admin token.
    Admin,
}

/// Identifies the caller and refuses what its token may not do (401 without a valid token, 403
/// for a role that may not); the answer to send instead, if so. Run by [`super::edge`] before
/// any handler, which finds the [`Caller`] in the request's extensions.
pub(crate) fn identify(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let credentials = state.credentials();
    if credentials.is_open() {
        return Ok(Caller::Open);
    }
    let path = req.uri().path();
    let in_scope = path == "/metrics" || (path.starts_with("/api/") && path != "/api/v1/openapi.json");
    let need = need(req.method(), path, credentials.protect_reads());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::trim)
        // The subprotocol carries a token only where a browser cannot send a header: the stats
        // WebSocket's upgrade.
        .or_else(|| {
            (path == "/api/v1/system/stats/ws" && is_upgrade(req.headers()))
                .then(|| websocket_bearer(req.headers()))
                .flatten()
        });
    let caller = match presented.map(|p| credentials.identify(p)) {
        None => Caller::Anonymous,
        Some(Some(caller)) => caller,
        // A wrong token is said so even where none is needed: the caller meant to be someone.
        Some(None) if in_scope => return Err(unauthorized("the bearer token is wrong")),
        Some(None) => Caller::Anonymous,
    };
    allow(need, &caller, req.method(), path)?;
    Ok(caller)
}

fn allow(need: Need, caller: &Caller, method: &Method, path: &str) -> Result<(), ApiError> {
    let role = match caller {
        Caller::Open => return Ok(()),
        Caller::Token { role, .. } => Some(*role),
        Caller::Anonymous => None,
    };
    let allowed = match (need, role) {
        (Need::Nothing, _) => true,
        (_, None) => {
            let detail = if need == Need::Read {
                "reads need an Authorization: Bearer <token> header (auth.protect_reads is on)"
            } else {
                "this write needs an Authorization: Bearer <token> header (vramguard has tokens configured)"
            };
            return Err(ApiError { status: StatusCode::UNAUTHORIZED, detail: detail.to_owned() });
        }
        (Need::Read, Some(_)) => true,
        (Need::Lease, Some(r)) => matches!(r, Role::Admin | Role::Client),
        (Need::Admin, Some(r)) => r == Role::Admin,
    };
    if allowed {
        return Ok(());
    }
    let needed = if need == Need::Lease { "a client or admin token" } else { "an admin token" };
    Err(ApiError {
        status: StatusCode::FORBIDDEN,
        detail: format!("{} may not {method} {path}; it needs {needed}", caller.describe()),
    })
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError { status: StatusCode::UNAUTHORIZED, detail: detail.to_owned() }
}

/// What `method path` needs when tokens are configured.
fn need(method: &Method, path: &str, protect_reads: bool) -> Need {
    let read = if protect_reads { Need::Read } else { Need::Nothing };
    if path == "/metrics" {
        return read;
    }
    if !path.starts_with("/api/") || path == "/api/v1/openapi.json" {
        return Need::Nothing;
    }
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        return read;
    }
    if is_lease_write(method, path) { Need::Lease } else { Need::Admin }
}

/// `POST /generations`, `POST /generations/{id}/heartbeat`, `DELETE /generations/{id}`.
fn is_lease_write(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/system/generations") else { return false };
    let one_segment = |s: &str| !s.is_empty() && !s.contains('/');
    match *method {
        Method::POST => {
            rest.is_empty()
                || rest.strip_prefix('/').and_then(|r| r.strip_suffix("/heartbeat")).is_some_and(one_segment)
        }
        Method::DELETE => rest.strip_prefix('/').is_some_and(|id| one_segment(id) && id != "queue"),
        _ => false,
    }
}

/// A browser cannot set headers on a WebSocket, so the page offers its token as a subprotocol,
/// `bearer.<token>`, next to `vramguard` (the one the server picks, so the token is never echoed).
fn websocket_bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
}

fn is_upgrade(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The credentials of a `Bearer` authorization; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest)
}

/// Shortest token accepted: a guessable token is no protection.
const MIN_TOKEN_CHARS: usize = 16;

/// Reads every token `auth` names: `token_file` as the admin, then `tokens`. The error starts
/// with the config key of the file that cannot be used.
pub(crate) fn read_credentials(auth: &AuthConfig) -> Result<Credentials, String> {
    let mut tokens = Vec::new();
    if let Some(path) = &auth.token_file {
        let secret = read_token(path).map_err(|e| format!("auth.token_file: {e}"))?;
        tokens.push((ADMIN_TOKEN_NAME.to_owned(), secret, Role::Admin));
    }
    for (i, t) in auth.tokens.iter().enumerate() {
        let secret = read_token(&t.token_file).map_err(|e| format!("auth.tokens[{i}].token_file: {e}"))?;
        tokens.push((t.name.clone(), secret, t.role));
    }
    Credentials::new(tokens, auth.protect_reads).map_err(|e| format!("auth.tokens: {e}"))
}

/// Reads the token file: the first line, trimmed. Refused, as OpenSSH refuses loose keys: a file
/// that group or others may read, and a token shorter than 16 characters.
pub(crate) fn read_token(path: &std::path::Path) -> Result<String, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by group or others (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(format!("{} is empty; put the token on its first line", path.display()));
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "the token in {} has {} characters; use at least {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 24)",
            path.display(),
            token.chars().count()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    /// Lease writes need a client (or admin) token, every other write an admin token; reads
    /// need one only with protect_reads; the page, probes and OpenAPI document never do.
    #[test]
    fn what_each_request_needs() {
        let id = "0123456789abcdef0123456789abcdef";
        let cases = [
            (Method::POST, "/api/v1/system/generations".to_owned(), false, Need::Lease),
            (Method::POST, format!("/api/v1/system/generations/{id}/heartbeat"), false, Need::Lease),
            (Method::DELETE, format!("/api/v1/system/generations/{id}"), false, Need::Lease),
            (Method::DELETE, "/api/v1/system/generations/queue".to_owned(), false, Need::Admin),
            (Method::POST, format!("/api/v1/system/generations/{id}/x/heartbeat"), false, Need::Admin),
            (Method::POST, "/api/v1/system/constraints".to_owned(), false, Need::Admin),
            (Method::DELETE, "/api/v1/system/observations".to_owned(), false, Need::Admin),
            (Method::POST, "/api/v1/system/stats/save".to_owned(), false, Need::Admin),
            (Method::GET, "/api/v1/system/generations".to_owned(), false, Need::Nothing),
            (Method::GET, "/api/v1/system/generations".to_owned(), true, Need::Read),
            (Method::GET, "/metrics".to_owned(), true, Need::Read),
            (Method::GET, "/metrics".to_owned(), false, Need::Nothing),
            (Method::GET, "/api/v1/system/stats/ws".to_owned(), true, Need::Read),
            (Method::GET, "/api/v1/openapi.json".to_owned(), true, Need::Nothing),
            (Method::GET, "/".to_owned(), true, Need::Nothing),
            (Method::GET, "/-/ready".to_owned(), true, Need::Nothing),
        ];
        for (method, path, protect, expected) in cases {
            assert_eq!(need(&method, &path, protect), expected, "{method} {path} protect_reads={protect}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn loose_or_short_token_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_token(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&path).unwrap(), "0123456789abcdef0123");
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("at least 16"));
    }

    /// Every token file is checked, and the error names its key.
    #[cfg(unix)]
    #[test]
    fn every_token_file_is_checked_and_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let loose = dir.path().join("loose");
        for (p, mode) in [(&good, 0o600), (&loose, 0o640)] {
            std::fs::write(p, "0123456789abcdef0123\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let token = |name: &str, file: &std::path::Path| crate::config::TokenConfig {
            name: name.to_owned(),
            token_file: file.to_owned(),
            role: Role::Client,
        };
        let auth = AuthConfig { tokens: vec![token("a", &good), token("b", &loose)], ..AuthConfig::default() };
        let err = read_credentials(&auth).unwrap_err();
        assert!(err.starts_with("auth.tokens[1].token_file:") && err.contains("chmod 600"), "{err}");
        let auth = AuthConfig { tokens: vec![token("a", &good), token("b", &good)], ..AuthConfig::default() };
        assert!(read_credentials(&auth).unwrap_err().contains("same token"));
    }
}
