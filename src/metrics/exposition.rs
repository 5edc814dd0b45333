//! The whole exposition: the registry's series (counters, the wait histogram, the process and
//! store collectors), the policy's part and the snapshot's, merged in name order. A scrape that
//! finds none of them changed within [`BODY_REUSE`] sends the previous bytes again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

use super::family::encode;
use super::{Metrics, PolicyText, process, snapshot::snapshot_families};
use crate::snapshot::Snapshot;

/// An exposition as sent, and what it was rendered from (held, so compared by pointer safely).
pub(super) struct Body {
    bytes: Bytes,
    changes: u64,
    outside: u64,
    policy: Arc<PolicyText>,
    snapshot_text: Option<Arc<str>>,
    at: Instant,
}

/// How long a rendered exposition is served while nothing else changed: the process series in
/// it are read at most this often anyway ([`process`]).
const BODY_REUSE: Duration = process::REREAD;

impl Metrics {
    /// caller while its inputs hold) and the snapshot's series, encoded once per sample. A
    /// scrape itself only gathers and encodes what changes between scrapes (counters, the wait
    /// histogram, process metrics, the store's gauges), and not even that when none of it
    /// changed since the last scrape within [`BODY_REUSE`]: then the same bytes go out again.
    /// `outside` stands for the registered series kept elsewhere (the store's write errors).
    pub fn render_cached(&self, snapshot: Option<&Arc<Snapshot>>, policy: &Arc<PolicyText>, outside: u64) -> Bytes {
        let changes = self.changes.load(Ordering::Acquire);
        let snapshot_text = snapshot.map(|s| self.snapshot_text(s));
        let mut body = self.body.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = body.as_ref()
            && b.changes == changes
            && b.outside == outside
            && Arc::ptr_eq(&b.policy, policy)
            && match (&b.snapshot_text, &snapshot_text) {
                (Some(a), Some(c)) => Arc::ptr_eq(a, c),
                (None, None) => true,
                _ => false,
            }
            && b.at.elapsed() < BODY_REUSE
        {
            return b.bytes.clone();
        }
        let bytes = Bytes::from(self.render_with(policy, snapshot_text.as_deref()));
        *body = Some(Body {
            bytes: bytes.clone(),
            changes,
            outside,
            policy: Arc::clone(policy),
            snapshot_text,
            at: Instant::now(),
        });
        bytes
    }

    fn snapshot_text(&self, s: &Arc<Snapshot>) -> Arc<str> {
        let mut cache = self.snapshot_text.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.as_ref() {
            Some((cached, text)) if Arc::ptr_eq(cached, s) => Arc::clone(text),
            _ => {
                let text: Arc<str> = Arc::from(encode(snapshot_families(s)));
                *cache = Some((Arc::clone(s), Arc::clone(&text)));
                text
            }
        }
    }

    /// The registry's families and the policy's, merged in name order, then `snapshot_text`
    /// (the snapshot's series, already encoded). Each block is sorted by name; no family is in
    /// two blocks, so each stays contiguous.
    fn render_with(&self, policy: &PolicyText, snapshot_text: Option<&str>) -> String {
        let gathered: Vec<(String, String)> =
            self.registry.gather().into_iter().filter_map(|f| Some((f.name().to_owned(), encode_one(f)?))).collect();
        let mut blocks: Vec<&(String, String)> = gathered.iter().chain(policy.0.iter()).collect();
        blocks.sort_by(|a, b| a.0.cmp(&b.0));
        let size = blocks.iter().map(|b| b.1.len()).sum::<usize>() + snapshot_text.map_or(0, str::len);
        let mut out = String::with_capacity(size);
        for (_, text) in blocks {
            out.push_str(text);
        }
        if let Some(text) = snapshot_text {
            out.push_str(text);
        }
        out
    }
}

/// The text format of one family; `None` for one without samples.
pub(super) fn encode_one(family: MetricFamily) -> Option<String> {
    if family.get_metric().is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(256);
    // Encoding into a Vec cannot fail for a well-formed family.
    TextEncoder::new().encode(std::slice::from_ref(&family), &mut out).expect("text encoding into memory");
    Some(String::from_utf8(out).expect("the text encoder writes UTF-8"))
}
