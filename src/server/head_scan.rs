//! The listener's scan of each request head for a repeated `Content-Length`, which hyper's
//! parser would merge when the values are identical (RFC 9112 wants such a request refused).

/// Scans one request's head as its bytes arrive.
#[derive(Default)]
pub(super) struct HeadScan {
    done: bool,
    bytes: Vec<u8>,
}

/// A head longer than this is hyper's to refuse; the scan gives up.
const HEAD_SCAN_LIMIT: usize = 16 * 1024;

impl HeadScan {
    /// Takes newly read bytes; `Some(true)` once the head ended with `Content-Length` twice.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        if self.done {
            return None;
        }
        // Usually the whole head arrives in one read: scan it where it lies, copying nothing.
        if self.bytes.is_empty()
            && let Some(repeated) = scan(bytes)
        {
            self.done = true;
            return Some(repeated);
        }
        self.bytes.extend_from_slice(&bytes[..bytes.len().min(HEAD_SCAN_LIMIT.saturating_sub(self.bytes.len()))]);
        let found = scan(&self.bytes);
        if found.is_none() && self.bytes.len() < HEAD_SCAN_LIMIT {
            return None;
        }
        self.done = true;
        // A head past the limit without its end: what arrived of it.
        let repeated = found.unwrap_or_else(|| lengths(&self.bytes) > 1);
        self.bytes.clear();
        Some(repeated)
    }

    /// The next bytes are a new request's.
    pub(super) fn restart(&mut self) {
        self.done = false;
        self.bytes.clear();
    }
}

/// Whether the head at the start of `bytes` names `Content-Length` more than once, once it has
/// ended (at its first `\r\n\r\n`); `None` before. One pass over the lines, found with memchr:
/// a request costs a few comparisons, not a look at every byte.
fn scan(bytes: &[u8]) -> Option<bool> {
    let mut lengths = 0;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..nl];
        // The blank line of `\r\n\r\n`: the previous line ended with `\r\n` too.
        if line == b"\r" && start >= 2 && bytes[start - 2] == b'\r' {
            return Some(lengths > 1);
        }
        lengths += usize::from(is_length(line));
        start = nl + 1;
    }
    None
}

/// `Content-Length` lines in `head`, however it ends.
fn lengths(head: &[u8]) -> usize {
    head.split(|b| *b == b'\n').filter(|line| is_length(line)).count()
}

fn is_length(line: &[u8]) -> bool {
    line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_content_length_is_found_across_reads() {
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r"), None);
        assert_eq!(scan.feed(b"\ncontent-length: 2\r\n\r\n{}"), Some(true));
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\n\r\n"), None, "nothing until restarted");
        scan.restart();
        assert_eq!(scan.feed(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nContent-Length: 3"), Some(false));
    }

    /// The scan before memchr: the head ends at the first `\r\n\r\n`, and its lines are counted.
    fn plain(bytes: &[u8]) -> Option<bool> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        Some(lengths(&bytes[..end]) > 1)
    }

    #[test]
    fn the_scan_agrees_with_a_plain_search_on_awkward_heads() {
        let parts: [&[u8]; 9] = [
            b"GET / HTTP/1.1",
            b"\r\n",
            b"\n",
            b"\r",
            b"Content-Length: 1",
            b"content-LENGTH:2",
            b"Content-Length",
            b"X: \r\n",
            b"\r\n\r\n",
        ];
        // Every sequence of up to four parts.
        let mut heads: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> =
                heads.iter().flat_map(|h| parts.iter().map(move |p| [h.as_slice(), p].concat())).collect();
            heads.extend(longer);
            heads.dedup();
        }
        for head in &heads {
            assert_eq!(scan(head), plain(head), "{:?}", String::from_utf8_lossy(head));
        }
    }
}
