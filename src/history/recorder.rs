//! Records the latest snapshot into the embedded history every `history.interval`, and prunes
//! what is older than `history.retention` in the same transaction.

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
        let prune_before = point.ts - retention.as_secs_f64();
        // A failure is logged where it happens (ApiError::internal); the next tick tries again.
        let _ = state
            .write("recording history failed", move |_, store| {
                store
                    .record_history(&point, false, prune_before)
                    .map_err(|e| crate::http::error::ApiError::internal("could not record history", e))
            })
            .await;
    }
}
