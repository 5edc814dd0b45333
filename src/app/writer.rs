//! The one write path to the state store. Every write holds the writers' lock on a blocking
//! thread for its whole read-validate-write-publish sequence, so concurrent updates are
//! serialised and a rejected or failed one leaves nothing half done. Lease writes go through the
//! lease thread ([`super::lease_thread`]) into one open batch; any other write needs its own
//! transaction, so it commits that batch first.
//!
//! While the store does not take writes (its file was deleted or replaced, the disk is full, the
//! filesystem went read-only), every write that would change what a restart finds is refused
//! with 503 and changes nothing. Ending a lease is the exception: a lease that cannot be released
//! would hold its slot and its VRAM for its whole TTL (up to a day), so a release or an expiry
//! takes the lease out of the book at once, and the durable end waits here, retried on every
//! reaper tick (each second) and before every lease decision until the store takes it.
//!
//! What a restart in between finds: the lease is still in the store. A released one comes back
//! live until its TTL runs out (the client was told its release was not yet durable); an expired
//! one is reaped at start, as its expiry time has passed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::error::ServiceError;
use super::inputs::Inputs;
use crate::leases::{LeaseBook, whole_gangs};
use crate::limits;
use crate::store::{Observation, Store};

/// Lease ends already out of the book whose store write has not succeeded yet.
#[derive(Debug, Default)]
struct PendingEnds {
    ids: Vec<String>,
    observations: Vec<Observation>,
}

/// The state store's writers' lock, and the lease ends that wait for the store.
pub(crate) struct Writer {
    store: Mutex<Store>,
    /// Ends whose store write failed; retried until the store takes them.
    pending: Mutex<PendingEnds>,
    /// Ends written into the open batch, durable when it commits.
    in_batch: Mutex<PendingEnds>,
    inputs: Arc<Inputs>,
}

impl Writer {
    pub(crate) fn new(store: Store, inputs: Arc<Inputs>) -> Self {
        Self { store: Mutex::new(store), pending: Mutex::default(), in_batch: Mutex::default(), inputs }
    }

    /// The store under the writers' lock, for the lease thread.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the state store on a blocking thread, holding the writers' lock for all of
    /// it, after committing the open batch of lease writes. `what` names the operation in the
    /// log if the blocking task itself fails.
    pub(crate) async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&mut Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let writer = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || {
            let mut store = writer.lock();
            // A failed batch is answered to its own waiters; this write goes on regardless.
            let _ = writer.commit_leases(&mut store);
            f(&mut store)
        })
        .await
        .map_err(|e| ServiceError::failed(what, e))?;
        self.log_store_transition();
        result
    }

    /// Ends the leases `ids` (already out of the book) in the store together with the
    /// observations their ends produced, and with every earlier end still pending. When the store
    /// does not take it, all of them stay pending and the answer is why. Runs under the store
    /// lock.
    pub(crate) fn end_durably(
        &self,
        store: &mut Store,
        ids: Vec<String>,
        observations: Vec<Observation>,
    ) -> Result<(), String> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.ids.extend(ids);
        pending.observations.extend(observations);
        if pending.ids.is_empty() && pending.observations.is_empty() {
            return Ok(());
        }
        store.end_leases(&pending.ids, &pending.observations).map_err(|e| e.to_string())?;
        if !pending.observations.is_empty() {
            let window = self.inputs.config().learning.window;
            store.prune_observations(window, limits::OBSERVATIONS_KEPT).map_err(|e| e.to_string())?;
        }
        let done = std::mem::take(&mut *pending);
        drop(pending);
        // In the open batch now; durable (and remembered) once it commits.
        let mut in_batch = self.in_batch.lock().unwrap_or_else(PoisonError::into_inner);
        in_batch.ids.extend(done.ids);
        in_batch.observations.extend(done.observations);
        Ok(())
    }

    /// Commits the open batch of lease writes. On success the ends it held are durable and
    /// their observations join the in-memory list. On failure the batch was rolled back: the
    /// book and the observations are read back from the store (which holds the truth), and the
    /// ends the batch held wait again with the other pending ones, their leases kept out of the
    /// book (a release frees its slot even when the store does not take it). Runs under the
    /// store lock.
    pub(crate) fn commit_leases(&self, store: &mut Store) -> Result<(), ServiceError> {
        let book = &self.inputs.book;
        let result = store.commit_batch();
        let ends = std::mem::take(&mut *self.in_batch.lock().unwrap_or_else(PoisonError::into_inner));
        let Err(e) = result else {
            book.remember(&ends.observations);
            return Ok(());
        };
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.ids.extend(ends.ids);
        pending.observations.extend(ends.observations);
        if let Ok(leases) = store.load_leases() {
            let mut stored = LeaseBook::from_leases(whole_gangs(leases).0);
            for id in &pending.ids {
                stored.remove(id);
            }
            *book.write() = stored;
        }
        drop(pending);
        if let Ok(obs) = store.load_observations() {
            book.set_observed(obs);
        }
        Err(ServiceError::store(e))
    }

    /// Logs the store going down or coming back, once per change, off the writers' lock.
    pub(crate) fn log_store_transition(&self) {
        let status = &self.inputs.store_status;
        match status.transition() {
            Some(false) => tracing::error!(
                problem = %status.problem().unwrap_or_default(),
                "state store does not take writes: writes answer 503 and lease ends wait in memory until it does"
            ),
            Some(true) => tracing::info!("state store takes writes again"),
            None => {}
        }
    }
}
