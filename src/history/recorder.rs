//! Records the latest snapshot into the embedded history every `history.interval`, and prunes
//! what is older than `history.retention` in the same transaction.

use std::time::Duration;

use super::HistoryPoint;
use crate::http::AppState;

/// Runs until `stop` flips to true.
pub async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = state.config.history.interval.0;
    let retention = state.config.history.retention.0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_recorded = 0.0_f64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(snapshot) = state.snapshot() else { continue };
        let point = HistoryPoint::from_snapshot(&snapshot);
        if point.ts <= last_recorded {
            continue; // the sampler has not produced a newer snapshot
        }
        last_recorded = point.ts;
        let st = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut store = st.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            store.record_history(&point, false, point.ts - retention.as_secs_f64())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record history"),
            Err(e) => tracing::warn!(error = %e, "could not record history"),
        }
    }
}

/// The recording interval, for `resolution_seconds` of unbucketed answers.
pub fn resolution(interval: Duration) -> f64 {
    interval.as_secs_f64()
}
