//! Wiring: start the sampler and the service's background tasks, serve the router on the
//! listener the caller bound, and stop everything within a bounded time once `shutdown`
//! resolves.

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
    /// The token file could not be used.
    #[error("config key auth.token_file: {0}")]
    Token(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
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
    let token = match &config.auth.token_file {
        Some(path) => Some(crate::http::auth::read_token(path).map_err(Error::Token)?),
        None => None,
    };
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
    let (sampler, snapshots) = Sampler::new(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::open(config, snapshots, token, stop_rx.clone())?;

    let mut sampler_stop = stop_rx.clone();
    let sampler_task = tokio::spawn(sampler.run(async move {
        let _ = sampler_stop.wait_for(|s| *s).await;
    }));
    let recorder = tokio::spawn(crate::app::history::run(state.clone(), stop_rx.clone()));
    let reaper = tokio::spawn(crate::app::ledger::reaper(state.clone(), stop_rx.clone()));
    let tracker = tokio::spawn(crate::app::ledger::tracker(state.clone(), stop_rx.clone()));
    let dispatcher = tokio::spawn(crate::app::queue::dispatcher(state.clone(), stop_rx.clone()));
    tracing::info!(%addr, version = crate::metrics::VERSION, "listening on http://{addr}");

    let stop_for_server = stop_tx.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutdown signal received; draining requests");
        let _ = stop_for_server.send(true);
    };
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(graceful);
    let mut drain_deadline = stop_rx;
    let result = tokio::select! {
        r = server => r.map_err(Error::Serve),
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
    while state.subscribers.load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < ws_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = sampler_task.await;
    let _ = reaper.await;
    let _ = tracker.await;
    let _ = dispatcher.await;
    let _ = recorder.await;
    tracing::info!("stopped");
    result
}
