//! Records the latest snapshot into the embedded history every `history.interval`, and prunes
//! what is older than `history.retention` in the same transaction.

use super::{AppState, ServiceError};
use crate::history::HistoryPoint;
use crate::time::now_unix;

/// Runs until `stop` flips to true.
pub(crate) async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    // The first point is recorded as soon as the first snapshot exists, not one interval later.
    let mut first = state.snapshots.clone();
    tokio::select! {
        _ = stop.changed() => return,
        r = first.wait_for(Option::is_some) => if r.is_err() { return },
    }
    let mut tick = tokio::time::interval(state.config().history.interval.0);
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
        // A failure is logged where it happens (ServiceError::failed); the next tick tries again.
        let _ = state.record(point).await;
    }
}

impl AppState {
    /// Records one history point durably, pruning what is past the retention.
    pub(crate) async fn record(&self, point: HistoryPoint) -> Result<(), ServiceError> {
        let prune_before = now_unix().min(point.ts) - self.config().history.retention.0.as_secs_f64();
        self.write("recording history failed", move |_, store| {
            store.record_history(&point, prune_before).map_err(ServiceError::store)
        })
        .await
    }

    /// Records the current snapshot now (`stats/save`) and returns it.
    pub async fn save_snapshot(&self) -> Result<std::sync::Arc<crate::snapshot::Snapshot>, ServiceError> {
        let snapshot = self.snapshot().ok_or(ServiceError::NotReady)?;
        self.record(HistoryPoint::from_snapshot(&snapshot)).await?;
        Ok(snapshot)
    }
}

/// Where a history answer came from.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryAnswer {
    /// The points.
    pub series: crate::history::HistorySeries,
    /// `embedded` or `prometheus`.
    pub source: &'static str,
    /// Why the embedded history answered although Prometheus is configured.
    pub warning: Option<String>,
}

impl AppState {
    /// History between `start` and `end` (Unix seconds) in at most `max_points` points: from
    /// Prometheus when that backend is configured and answers, else from the embedded store.
    pub async fn query_history(&self, start: f64, end: f64, max_points: u32) -> Result<HistoryAnswer, ServiceError> {
        let mut warning = None;
        if let Some(source) = &self.prometheus {
            match source.query(start, end, max_points).await {
                Ok(series) => return Ok(HistoryAnswer { series, source: "prometheus", warning: None }),
                Err(e) => {
                    tracing::warn!(error = %e, "Prometheus history failed; answering from the embedded history");
                    warning = Some(format!("{e}; answered from the embedded history"));
                }
            }
        }
        let interval = self.config().history.interval.0.as_secs_f64();
        let series = self.read_history(move |store| store.query_history(start, end, max_points, interval)).await?;
        Ok(HistoryAnswer { series, source: "embedded", warning })
    }
}
