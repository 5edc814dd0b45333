//! Wiring: start the sampler, bind the listener, serve until the shutdown future resolves,
//! then stop everything within a bounded time.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Constraints, MAX_VRAM_BUDGET_WITHOUT_GPU_GB, Optimization};
use crate::error::Error;
use crate::http::{AppState, Live, app};
use crate::sampler::Sampler;
use crate::store::{Store, StoreError};

/// How long in-flight requests get to finish after a shutdown signal. Together with process
/// teardown this keeps `kill -TERM` to exit well under 2 s.
const DRAIN_LIMIT: Duration = Duration::from_millis(1500);

/// Runs vramguard until `shutdown` resolves. The listening address is logged as
/// `listening on http://ADDR` (tests read it to find the port when `listen` has port 0).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let token = match &config.auth.token_file {
        Some(path) => Some(crate::http::auth::read_token(path).map_err(Error::Token)?),
        None => None,
    };
    let store = Store::open(&config.state_dir)?;
    let live = load_live(&store, &config)?;
    let leases = crate::leases::LeaseBook::from_leases(store.load_leases()?);
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| Error::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;

    let (sampler, snapshots) = Sampler::new(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sampler_stop = stop_rx.clone();
    let sampler_task = tokio::spawn(sampler.run(async move {
        let _ = sampler_stop.wait_for(|s| *s).await;
    }));

    let state = AppState::new(config, snapshots, store, live, leases, token, stop_rx.clone())?;
    let recorder = tokio::spawn(crate::history::recorder::run(state.clone(), stop_rx.clone()));
    let ws_state = state.clone();
    // Expired leases are also reaped on every decision; the timer keeps the count and the
    // store honest when no one asks.
    let reaper_state = state.clone();
    let mut reaper_stop = stop_rx.clone();
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = reaper_stop.changed() => return,
                _ = tick.tick() => crate::http::generations::reap_expired(&reaper_state).await,
            }
        }
    });
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
    // WebSockets are upgraded connections the server no longer tracks: give them a moment to
    // send their Close frames before the runtime goes away.
    let ws_deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while ws_state.subscribers.load(std::sync::atomic::Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < ws_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = sampler_task.await;
    let _ = reaper.await;
    let _ = recorder.await;
    tracing::info!("stopped");
    result
}

/// The live settings: API overrides from the store where present, else config.yaml. An override
/// that no longer validates is an error naming the store, not a silent reset.
fn load_live(store: &Store, config: &Config) -> Result<Live, StoreError> {
    let invalid = |key: &str, message: String| StoreError::Invalid {
        path: store.path().to_owned(),
        key: key.to_owned(),
        message,
    };
    let settings = store.load_override::<Optimization>("optimization")?.unwrap_or(config.optimization);
    crate::config::validate_optimization(&settings, MAX_VRAM_BUDGET_WITHOUT_GPU_GB)
        .map_err(|(f, m)| invalid("optimization", format!("{f}: {m}")))?;
    let constraints = store.load_override::<Constraints>("constraints")?.unwrap_or(config.constraints);
    crate::config::validate_constraints(&constraints).map_err(|(f, m)| invalid("constraints", format!("{f}: {m}")))?;
    if settings != config.optimization || constraints != config.constraints {
        tracing::info!(store = %store.path().display(), "using settings changed through the API (DELETE resets them)");
    }
    Ok(Live { settings, constraints })
}
