//! Wiring: start the sampler and the service's background tasks, serve the router on the
//! listener the caller bound ([`listener`]: connection cap and timeouts, optional [`tls`]), and
//! stop everything within a bounded time once `shutdown` resolves. [`heap`] keeps glibc to two
//! arenas and hands freed heap memory back to the system now and then.

mod head_scan;
mod heap;
mod listener;
mod reload;
mod tls;

pub use reload::{Reload, SetLogFilter};

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::AppState;
use crate::config::Config;
use crate::error::ConfigError;
use crate::http::app;
use crate::sampler::Sampler;
use crate::store::StoreError;

/// How long in-flight requests get to finish after a shutdown signal. Together with process
/// teardown this keeps `kill -TERM` to exit well under 2 s.
const DRAIN_LIMIT: Duration = Duration::from_millis(1500);

/// Why vramguard could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service could not start (its store, the Prometheus history source, the lease thread).
    #[error(transparent)]
    Open(#[from] crate::app::OpenError),
    /// A token file could not be used (the message starts with its key).
    #[error("config key {0}")]
    Token(String),
    /// The TLS certificate or key could not be used.
    #[error("config key {0}")]
    Tls(String),
    /// A non-loopback listener without any token.
    #[error(
        "config key listen: {0} is reachable from other machines and no token is set, so anyone who \
         reaches it could change settings and leases; set auth.token_file, bind 127.0.0.1, or set \
         auth.allow_unauthenticated_remote: true for a network you trust"
    )]
    Unprotected(std::net::SocketAddr),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The async runtime vramguard runs on (`main.rs`, and `examples/hello.rs`, the peer the bench
/// compares with, so both run on the same settings), with `worker_threads` answering requests
/// (config `http.worker_threads`). Blocking work is a collector call, a store transaction or a
/// history query, and store writers queue on one lock anyway: a small pool bounds the threads
/// (and their allocator arenas) a burst of requests could otherwise spawn (tokio's default is
/// 512). Before the threads start, the process's allocator arenas are capped at two
/// ([`heap::cap_arenas`], unless the environment sets them).
pub fn runtime(worker_threads: u32) -> std::io::Result<tokio::runtime::Runtime> {
    heap::cap_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1) as usize)
        .enable_all()
        .max_blocking_threads(8)
        .build()
}

/// Binds `config.listen` (the caller may bind its own listener and call [`run`] instead).
pub async fn bind(config: &Config) -> Result<TcpListener, Error> {
    TcpListener::bind(config.listen).await.map_err(|source| Error::Bind { addr: config.listen, source })
}

/// Runs vramguard on `listener` until `shutdown` resolves. The listening address is logged as
/// `listening on http://ADDR` (tests read it to find the port when `listen` has port 0).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(config, listener, shutdown, Reload::default()).await
}

/// [`run`], reloading the configuration on SIGHUP as `reload` says (the binary's way to run).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Reload,
) -> Result<(), Error> {
    let credentials = crate::http::auth::read_credentials(&config.auth).map_err(Error::Token)?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
    if !addr.ip().is_loopback() && credentials.is_open() && !config.auth.allow_unauthenticated_remote {
        return Err(Error::Unprotected(addr));
    }
    let tls = config.tls.as_ref().map(tls::Acceptor::new).transpose().map_err(Error::Tls)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let limits = listener::Limits {
        max_connections: config.http.max_connections as usize,
        header_read_timeout: config.http.header_read_timeout.0,
        body_read_timeout: config.http.body_read_timeout.0,
        idle_timeout: config.http.idle_timeout.0,
    };
    let front = std::sync::Arc::new(crate::http::host_check::FrontDoor::new(&config, scheme, addr.port()));
    let (sampler, snapshots) = Sampler::new(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::open(config, snapshots, credentials, stop_rx.clone())?;

    let mut sampler_stop = stop_rx.clone();
    let sampler_task = tokio::spawn(sampler.run(async move {
        let _ = sampler_stop.wait_for(|s| *s).await;
    }));
    let background = state.spawn_background(&stop_rx);
    let reloader = tokio::spawn(reload::on_sighup(state.clone(), tls.clone(), reload, stop_rx.clone()));
    let trimmer = tokio::spawn(heap::trim_heap(stop_rx.clone()));
    tracing::info!(%addr, version = crate::metrics::VERSION, "listening on {scheme}://{addr}");

    let stop_for_server = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown signal received; draining requests");
        let _ = stop_for_server.send(true);
    });
    let server = listener::serve(
        listener,
        tower::Layer::layer(&crate::http::edge::front_door(front), app(state.clone())),
        limits,
        tls,
        stop_rx.clone(),
    );
    let mut drain_deadline = stop_rx;
    let result: Result<(), Error> = tokio::select! {
        () = server => Ok(()),
        _ = async {
            let _ = drain_deadline.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        } => {
            tracing::warn!("requests still open after {} ms; closing them", DRAIN_LIMIT.as_millis());
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    // WebSockets are upgraded connections the server no longer tracks: give them a moment to
    // send their Close frames before the runtime goes away.
    let ws_deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while state.subscribers().load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < ws_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = sampler_task.await;
    for task in background {
        let _ = task.await;
    }
    let _ = reloader.await;
    let _ = trimmer.await;
    tracing::info!("stopped");
    result
}
