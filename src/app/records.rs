//! What the store keeps as a record, besides leases and settings: history points (the recorder
//! writes the latest snapshot every `history.interval` and prunes past `history.retention` in
//! the same transaction; `stats/save` records one now) and the observed peaks of finished
//! generations. Reads go through a second connection, so a long query never holds the writers'
//! lock; history comes from Prometheus instead when that backend is configured and answers.

use std::sync::{Arc, Mutex, PoisonError};

use super::error::ServiceError;
use super::inputs::Inputs;
use super::writer::Writer;
use crate::history::prometheus::PrometheusSource;
use crate::history::{HistoryPoint, HistorySeries};
use crate::snapshot::Snapshot;
use crate::store::{Observation, Store, StoreError};
use crate::time::now_unix;

/// Where a history answer came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryAnswer {
    /// The points.
    pub series: HistorySeries,
    /// `embedded` or `prometheus`.
    pub source: &'static str,
    /// Why the embedded history answered although Prometheus is configured.
    pub warning: Option<String>,
}

/// History points and observed peaks: recorded through the writer, read on a connection of
/// their own.
pub(crate) struct Records {
    inputs: Arc<Inputs>,
    writer: Arc<Writer>,
    /// A second connection to the store for reads.
    reader: Arc<Mutex<Store>>,
    /// Prometheus history source, when `history.backend` is `prometheus`.
    prometheus: Option<PrometheusSource>,
}

impl Records {
    pub(crate) fn new(
        inputs: Arc<Inputs>,
        writer: Arc<Writer>,
        reader: Store,
        prometheus: Option<PrometheusSource>,
    ) -> Self {
        Self { inputs, writer, reader: Arc::new(Mutex::new(reader)), prometheus }
    }

    /// Records one history point durably, pruning what is past the retention.
    async fn record(&self, point: HistoryPoint) -> Result<(), ServiceError> {
        let prune_before = now_unix().min(point.ts) - self.inputs.config().history.retention.0.as_secs_f64();
        self.writer
            .write("recording history failed", move |store| {
                store.record_history(&point, prune_before).map_err(ServiceError::store)
            })
            .await
    }

    /// Records the current snapshot now (`stats/save`) and returns it.
    pub(crate) async fn save_snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        let snapshot = self.inputs.snapshot().ok_or(ServiceError::NotReady)?;
        self.record(HistoryPoint::from_snapshot(&snapshot)).await?;
        Ok(snapshot)
    }

    /// History between `start` and `end` (Unix seconds) in at most `max_points` points: from
    /// Prometheus when that backend is configured and answers, else from the embedded store.
    pub(crate) async fn query_history(
        &self,
        start: f64,
        end: f64,
        max_points: u32,
    ) -> Result<HistoryAnswer, ServiceError> {
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
        let interval = self.inputs.config().history.interval.0.as_secs_f64();
        let series = self.read(move |store| store.query_history(start, end, max_points, interval)).await?;
        Ok(HistoryAnswer { series, source: "embedded", warning })
    }

    /// Every observation, newest first.
    pub(crate) async fn observations(&self) -> Result<Vec<Observation>, ServiceError> {
        self.read(|store| store.load_observations()).await
    }

    /// Forgets every observation: estimates are the model's again.
    pub(crate) async fn clear_observations(&self) -> Result<(), ServiceError> {
        let inputs = Arc::clone(&self.inputs);
        self.writer
            .write("clearing observations failed", move |store| {
                store.clear_observations().map_err(ServiceError::store)?;
                inputs.book.set_observed(Vec::new());
                Ok(())
            })
            .await
    }

    /// Runs a read of the store on a blocking thread, off the writers' lock.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let reader = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&reader)
        })
        .await
        .map_err(|e| ServiceError::failed("history query failed", e))?
        .map_err(|e| ServiceError::failed("could not read the history", e))
    }
}

/// Records the latest snapshot every `history.interval` until `stop` flips to true.
pub(crate) async fn recorder(records: Arc<Records>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // The first point is recorded as soon as the first snapshot exists, not one interval later.
    let mut first = records.inputs.snapshots.clone();
    tokio::select! {
        _ = stop.changed() => return,
        r = first.wait_for(Option::is_some) => if r.is_err() { return },
    }
    let mut tick = tokio::time::interval(records.inputs.config().history.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_recorded = 0.0_f64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(snapshot) = records.inputs.snapshot() else { continue };
        let point = HistoryPoint::from_snapshot(&snapshot);
        if point.ts <= last_recorded {
            continue; // the sampler has not produced a newer snapshot
        }
        last_recorded = point.ts;
        // A failure is logged where it happens (ServiceError::failed); the next tick tries again.
        let _ = records.record(point).await;
    }
}
