//! The accept loop: HTTP/1 connections (optionally TLS) with a cap and timeouts, so idle or slow
//! clients cannot hold vramguard's file descriptors and memory.
//!
//! - **Cap.** At most `http.max_connections` connections are served. When one more arrives, the
//!   connection idle the longest (no request in flight) is closed to make room, as nginx reuses
//!   keep-alive connections; if every connection has a request in flight, the new one waits in
//!   the listen backlog until a slot frees.
//! - **Header timeout.** A client has `http.header_read_timeout` to send a request's headers,
//!   counted from connecting, or from the first byte of the next request on a kept-alive
//!   connection (slowloris).
//! - **Idle timeout.** A kept-alive connection with no request for `http.idle_timeout` is closed.
//! - **Body timeout.** A request's body (at most the body limit) is read before the request is
//!   handed on; one that does not arrive within `http.body_read_timeout` is answered 408 and the
//!   connection closed. While it arrives the connection counts as idle for eviction.
//! - **TLS.** A handshake must finish within the header timeout, and a connection still in its
//!   handshake is evictable.
//! - A request in flight is never timed out here (a waiting admission may take minutes).
//!
//! hyper's own header timer restarts on every idle keep-alive connection, which would make the
//! idle timeout the header timeout, so both are kept here, per connection, from what the
//! connection's reads and requests show.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use super::head_scan::HeadScan;

/// The listener's limits (config `http`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What the timeouts and the eviction need to know about one connection.
struct Conn {
    /// Requests being handled now.
    inflight: AtomicUsize,
    /// Responses completed.
    served: AtomicU64,
    /// Last activity (accept or a completed response), ms since the listener's epoch.
    last_ms: AtomicU64,
    /// When the next request's first byte arrived, ms since the epoch + 1; 0 when none is
    /// being read.
    header_ms: AtomicU64,
    /// The request being read repeats `Content-Length` (hyper's parser merges identical values,
    /// so this is seen in the bytes).
    repeated_length: std::sync::atomic::AtomicBool,
    /// A response went out: the next bytes are a new request's head, to be scanned.
    rescan: std::sync::atomic::AtomicBool,
    /// The client closed its side of the connection (a read found its end).
    hung_up: crate::app::lease_terms::HungUp,
    /// A request's body is being read: its own timeout runs, and the connection is evictable.
    reading_body: std::sync::atomic::AtomicBool,
    /// Closes the connection now (evicted for a newcomer).
    evict: Notify,
}

struct Shared {
    epoch: Instant,
    limits: Limits,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// When `c` is to be closed unless something happens first; `None` while it has a request
    /// in flight.
    fn deadline(&self, c: &Conn) -> Option<Instant> {
        if c.inflight.load(Ordering::SeqCst) > 0 || c.reading_body.load(Ordering::SeqCst) {
            return None;
        }
        let header = c.header_ms.load(Ordering::SeqCst);
        Some(if header != 0 {
            self.at(header - 1) + self.limits.header_read_timeout
        } else if c.served.load(Ordering::SeqCst) == 0 {
            self.at(c.last_ms.load(Ordering::SeqCst)) + self.limits.header_read_timeout
        } else {
            self.at(c.last_ms.load(Ordering::SeqCst)) + self.limits.idle_timeout
        })
    }

    /// Closes the connection idle the longest; false when every one is busy.
    fn evict_idlest(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let idlest = conns
            .values()
            .filter(|c| c.inflight.load(Ordering::SeqCst) == 0)
            .min_by_key(|c| c.last_ms.load(Ordering::SeqCst));
        match idlest {
            Some(c) => {
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks a request in flight on its connection for as long as it lives (a dropped request,
/// its client gone, ends too).
struct InFlight {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl InFlight {
    fn begin(conn: &Arc<Conn>, shared: &Arc<Shared>) -> Self {
        conn.inflight.fetch_add(1, Ordering::SeqCst);
        conn.header_ms.store(0, Ordering::SeqCst);
        Self { conn: Arc::clone(conn), shared: Arc::clone(shared) }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.last_ms.store(self.shared.ms(), Ordering::SeqCst);
        self.conn.served.fetch_add(1, Ordering::SeqCst);
        self.conn.inflight.fetch_sub(1, Ordering::SeqCst);
        self.conn.rescan.store(true, Ordering::SeqCst);
    }
}

/// The connection's byte stream, noting when a new request starts arriving.
struct Tracked<I> {
    inner: I,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    head: HeadScan,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if room && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            // The end of the stream: the client closed its side.
            self.conn.hung_up.set();
        }
        if self.conn.rescan.swap(false, Ordering::SeqCst) {
            self.head.restart();
        }
        if buf.filled().len() > before {
            let this = &mut *self;
            if this.head.feed(&buf.filled()[before..]) == Some(true) {
                this.conn.repeated_length.store(true, Ordering::SeqCst);
            }
        }
        if buf.filled().len() > before
            && self.conn.inflight.load(Ordering::SeqCst) == 0
            && self.conn.header_ms.load(Ordering::SeqCst) == 0
        {
            let now = self.shared.ms() + 1;
            self.conn.header_ms.store(now, Ordering::SeqCst);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the listener serves: the router behind its layers.
pub(crate) trait App:
    tower::Service<Request, Response = Response, Error = std::convert::Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `router` on `listener` until `stop` flips, then lets open requests finish (the caller
/// bounds how long). `tls` wraps every connection when set.
pub(crate) async fn serve<S: App>(
    listener: TcpListener,
    router: S,
    limits: Limits,
    tls: Option<super::tls::Acceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared { epoch: Instant::now(), limits, conns: Mutex::new(HashMap::new()) });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = until_stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.evict_idlest();
                tokio::select! {
                    () = until_stopped(&mut stop) => break,
                    p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn {
            inflight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_ms: AtomicU64::new(shared.ms()),
            header_ms: AtomicU64::new(0),
            repeated_length: std::sync::atomic::AtomicBool::new(false),
            rescan: std::sync::atomic::AtomicBool::new(false),
            hung_up: hung_up_probe(&stream),
            reading_body: std::sync::atomic::AtomicBool::new(false),
            evict: Notify::new(),
        });
        shared.conns.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::clone(&conn));
        let (shared, router, stop, tls) = (Arc::clone(&shared), router.clone(), stop.clone(), tls.clone());
        tasks.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, conn, Arc::clone(&shared), router, stop).await,
                Some(acceptor) => {
                    // Bounded by the header timeout, and given up when evicted for a newcomer.
                    let handshake = tokio::select! {
                        h = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => Some(h),
                        () = conn.evict.notified() => None,
                    };
                    match handshake {
                        Some(Ok(Ok(s))) => connection(s, conn, Arc::clone(&shared), router, stop).await,
                        Some(Ok(Err(e))) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Some(Err(_)) => tracing::debug!("TLS handshake timed out"),
                        None => tracing::debug!("TLS handshake evicted for a newcomer"),
                    }
                }
            }
            shared.conns.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection until it ends, times out, is evicted, or shutdown closes it.
async fn connection<I, S: App>(io: I, conn: Arc<Conn>, shared: Arc<Shared>, router: S, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Tracked {
        inner: io,
        conn: Arc::clone(&conn),
        shared: Arc::clone(&shared),
        head: HeadScan::default(),
    });
    let service = {
        let (conn, shared) = (Arc::clone(&conn), Arc::clone(&shared));
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (conn, shared) = (Arc::clone(&conn), Arc::clone(&shared));
            let router = router.clone();
            async move {
                if conn.repeated_length.swap(false, Ordering::SeqCst) {
                    return Ok(repeated_length());
                }
                let mut req = match read_body(req, &conn, &shared).await {
                    Ok(req) => req,
                    Err(refusal) => return Ok(refusal),
                };
                // Only a lease request waits on its client (and the others skip an extension).
                if req.method() == axum::http::Method::POST {
                    req.extensions_mut().insert(conn.hung_up.clone());
                }
                let guard = InFlight::begin(&conn, &shared);
                let response = router.oneshot(req).await;
                drop(guard);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are ours (module docs); hyper's header timer is off.
    builder.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    let served = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    let mut stopping = false;
    loop {
        // With a request in flight nothing times out; look again in a while.
        let check = shared.deadline(&conn).unwrap_or_else(|| Instant::now() + shared.limits.header_read_timeout);
        tokio::select! {
            _ = served.as_mut() => return,
            _ = conn.evict.notified() => return,
            _ = tokio::time::sleep_until(check) => {
                if shared.deadline(&conn).is_some_and(|d| d <= Instant::now()) {
                    return;
                }
            }
            () = until_stopped(&mut stop), if !stopping => {
                // Finish what is in flight, then close; idle connections close at once.
                served.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// The 400 for a request that repeats `Content-Length`; the connection is closed after it.
fn repeated_length() -> axum::response::Response {
    use axum::response::IntoResponse;
    let detail = "more than one content-length header; a request carries it once".to_owned();
    let mut r = crate::http::error::ApiError { status: axum::http::StatusCode::BAD_REQUEST, detail }.into_response();
    r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    r
}

/// Reads a request's body (at most the body limit) within the body timeout, the connection
/// evictable meanwhile; the request with its body, or the answer that refuses it (408 closing
/// the connection, 413, 400).
async fn read_body(
    req: hyper::Request<Incoming>,
    conn: &Conn,
    shared: &Shared,
) -> Result<hyper::Request<axum::body::Body>, axum::response::Response> {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    if hyper::body::Body::is_end_stream(&body) {
        // No body (a GET, a POST with Content-Length 0): nothing to wait for, no timer to arm.
        return Ok(hyper::Request::from_parts(parts, axum::body::Body::new(body)));
    }
    let declared =
        parts.headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > crate::limits::BODY_LIMIT as u64) {
        // Refused by the router's edge from its headers alone, without reading a byte of it.
        return Ok(hyper::Request::from_parts(parts, axum::body::Body::empty()));
    }
    conn.header_ms.store(0, Ordering::SeqCst);
    conn.reading_body.store(true, Ordering::SeqCst);
    let limited = http_body_util::Limited::new(body, crate::limits::BODY_LIMIT);
    let read = tokio::time::timeout(shared.limits.body_read_timeout, limited.collect()).await;
    conn.reading_body.store(false, Ordering::SeqCst);
    conn.last_ms.store(shared.ms(), Ordering::SeqCst);
    let refuse = |status: axum::http::StatusCode, detail: String| {
        let mut r = crate::http::error::ApiError { status, detail }.into_response();
        if status == axum::http::StatusCode::REQUEST_TIMEOUT {
            r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        r
    };
    match read {
        Ok(Ok(collected)) => Ok(hyper::Request::from_parts(parts, axum::body::Body::from(collected.to_bytes()))),
        Err(_) => Err(refuse(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within http.body_read_timeout ({} s)",
                shared.limits.body_read_timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {} bytes", crate::limits::BODY_LIMIT),
        )),
        Ok(Err(e)) => {
            Err(refuse(axum::http::StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}")))
        }
    }
}

/// A hang-up flag for `stream` that can also look at the socket: a peek that finds the end of
/// the stream (nothing left to read, and the client's FIN in) means the client is gone. The
/// descriptor stays the connection's while a request on it is being decided.
fn hung_up_probe(stream: &tokio::net::TcpStream) -> crate::app::lease_terms::HungUp {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    crate::app::lease_terms::HungUp::with_probe(move || {
        let mut byte = [0u8; 1];
        matches!(recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT), Ok(0))
    })
}

/// Resolves once `stop` is true (the borrow of the value ends here, so callers stay `Send`).
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
