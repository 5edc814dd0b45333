//! `GET /` and `GET /assets/...`: the live page. Its files live in `web/` and are embedded into
//! the binary at build time, so the page works with no internet and nothing beside the binary;
//! it talks only to this server's API, through root-relative URLs.
//!
//! Every answer carries `Content-Security-Policy: default-src 'self'` (plus no `<base>`, no
//! framing): the page has no inline script or style and loads nothing from elsewhere, so
//! injected markup cannot run. Files go out with `Cache-Control: no-cache` and a content
//! `ETag`: a browser revalidates on each load (a 304 without a body) and so never runs old
//! JavaScript against the API of a newer binary.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;

/// The policy of every page answer; the browser test checks that it is sent.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file and where it is served.
pub(crate) struct Asset {
    /// URL path.
    pub path: &'static str,
    /// File under `web/` (read by the unit tests, which check every file there is embedded).
    #[cfg_attr(not(test), allow(dead_code))]
    pub file: &'static str,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";
const TEXT: &str = "text/plain; charset=utf-8";

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            file: $file,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file)),
        }
    };
}

/// Every file of the page. A file added to `web/` must be listed here (a test says so).
pub(crate) const ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/assets/app.js", "app.js", JS),
    asset!("/assets/app.css", "app.css", CSS),
    asset!("/assets/favicon.svg", "favicon.svg", SVG),
    asset!("/assets/js/api.js", "js/api.js", JS),
    asset!("/assets/js/cards.js", "js/cards.js", JS),
    asset!("/assets/js/charts.js", "js/charts.js", JS),
    asset!("/assets/js/format.js", "js/format.js", JS),
    asset!("/assets/js/forms.js", "js/forms.js", JS),
    asset!("/assets/js/leases.js", "js/leases.js", JS),
    asset!("/assets/vendor/uPlot.iife.min.js", "vendor/uPlot.iife.min.js", JS),
    asset!("/assets/vendor/uPlot.min.css", "vendor/uPlot.min.css", CSS),
    asset!("/assets/vendor/uPlot.LICENSE", "vendor/uPlot.LICENSE", TEXT),
];

/// Content hashes, computed once: a file's ETag changes exactly when its bytes do.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let mut h = DefaultHasher::new();
            a.body.hash(&mut h);
            HeaderValue::from_str(&format!("\"{:016x}\"", h.finish())).expect("hex is a valid header value")
        })
        .collect()
});

/// The routes of the page and its assets.
pub(crate) fn routes() -> Router<AppState> {
    ASSETS.iter().enumerate().fold(Router::new(), |router, (i, asset)| {
        router.route(asset.path, get(move |headers: HeaderMap| async move { serve(i, asset, &headers) }))
    })
}

fn serve(i: usize, asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = ETAGS[i].clone();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let headers = [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, [(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most bytes all embedded files may weigh together (the budget, uncompressed).
    const MAX_PAGE_BYTES: usize = 200 * 1024;

    #[test]
    fn the_page_weighs_at_most_200_kib() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total <= MAX_PAGE_BYTES, "the page's files weigh {total} bytes, above {MAX_PAGE_BYTES}");
    }

    /// A file put in web/ but not listed would be a 404 in the browser.
    #[test]
    fn every_file_in_web_is_served() {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut files = Vec::new();
        walk(&web, &web, &mut files);
        for file in files.iter().filter(|f| !f.ends_with("README.md")) {
            assert!(ASSETS.iter().any(|a| a.file == file), "web/{file} is not in page::ASSETS");
        }
    }

    #[test]
    fn etags_differ_by_content() {
        let unique: std::collections::BTreeSet<_> = ETAGS.iter().collect();
        assert_eq!(unique.len(), ASSETS.len());
    }
}
