//! Wiring: start the sampler, bind the listener, serve until the shutdown future resolves,
//! then stop everything within a bounded time.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::Error;
use crate::http::{AppState, app};
use crate::sampler::Sampler;

/// How long in-flight requests get to finish after a shutdown signal. Together with process
/// teardown this keeps `kill -TERM` to exit well under 2 s.
const DRAIN_LIMIT: Duration = Duration::from_millis(1500);

/// Runs vramguard until `shutdown` resolves. The listening address is logged as
/// `listening on http://ADDR` (tests read it to find the port when `listen` has port 0).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| Error::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;

    let (sampler, snapshots) = Sampler::new(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sampler_stop = stop_rx.clone();
    let sampler_task = tokio::spawn(sampler.run(async move {
        let _ = sampler_stop.wait_for(|s| *s).await;
    }));

    let state = AppState::new(config, snapshots);
    tracing::info!(%addr, version = crate::metrics::VERSION, "listening on http://{addr}");

    let stop_for_server = stop_tx.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutdown signal received; draining requests");
        let _ = stop_for_server.send(true);
    };
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(graceful);
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
    let _ = sampler_task.await;
    tracing::info!("stopped");
    result
}
