//! While the state store does not take writes (its file was deleted or replaced, the disk is
//! full, the filesystem went read-only), every write that would change what a restart finds is
//! refused with 503 and changes nothing. Ending a lease is the exception: a lease that cannot be
//! released would hold its slot and its VRAM for its whole TTL (up to a day), so a release or an
//! expiry takes the lease out of the book at once, and the durable end waits here, retried on
//! every reaper tick (each second) and before every lease decision until the store takes it.
//!
//! What a restart in between finds: the lease is still in the store. A released one comes back
//! live until its TTL runs out (the client was told its release was not yet durable); an expired
//! one is reaped at start, as its expiry time has passed.

use std::sync::{Arc, PoisonError};

use super::{AppState, ServiceError};
use crate::leases::LeaseBook;
use crate::store::{Observation, Store};

/// Lease ends already out of the book whose store write has not succeeded yet.
#[derive(Debug, Default)]
pub(crate) struct PendingEnds {
    ids: Vec<String>,
    observations: Vec<Observation>,
}

impl AppState {
    /// Ends the leases `ids` (already out of the book) in the store together with the
    /// observations their ends produced, and with every earlier end still pending. When the store
    /// does not take it, all of them stay pending and the answer is why. Runs under the store
    /// lock.
    pub(super) fn end_durably(
        &self,
        store: &mut Store,
        ids: Vec<String>,
        observations: Vec<Observation>,
    ) -> Result<(), String> {
        let mut pending = self.pending_ends.lock().unwrap_or_else(PoisonError::into_inner);
        pending.ids.extend(ids);
        pending.observations.extend(observations);
        if pending.ids.is_empty() && pending.observations.is_empty() {
            return Ok(());
        }
        store.end_leases(&pending.ids, &pending.observations).map_err(|e| e.to_string())?;
        let done = std::mem::take(&mut *pending);
        drop(pending);
        // In the open batch now; durable (and remembered) once it commits.
        let mut in_batch = self.batch_ends.lock().unwrap_or_else(PoisonError::into_inner);
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
        let result = store.commit_batch();
        let ends = std::mem::take(&mut *self.batch_ends.lock().unwrap_or_else(PoisonError::into_inner));
        let Err(e) = result else {
            self.remember(&ends.observations);
            return Ok(());
        };
        let mut pending = self.pending_ends.lock().unwrap_or_else(PoisonError::into_inner);
        pending.ids.extend(ends.ids);
        pending.observations.extend(ends.observations);
        if let Ok(leases) = store.load_leases() {
            let mut book = LeaseBook::from_leases(leases);
            for id in &pending.ids {
                book.remove(id);
            }
            *self.leases.write().unwrap_or_else(PoisonError::into_inner) = book;
            self.inputs_changed();
        }
        drop(pending);
        if let Ok(obs) = store.load_observations() {
            *self.observed.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(super::in_memory(obs));
            self.inputs_changed();
        }
        Err(ServiceError::store(e))
    }

    /// Lease ends waiting for the store.
    pub fn pending_lease_ends(&self) -> usize {
        self.pending_ends.lock().unwrap_or_else(PoisonError::into_inner).ids.len()
    }

    /// Logs the store going down or coming back, once per change, off the writers' lock.
    pub(super) fn log_store_transition(&self) {
        match self.store_status.transition() {
            Some(false) => tracing::error!(
                problem = %self.store_status.problem().unwrap_or_default(),
                "state store does not take writes: writes answer 503 and lease ends wait in memory until it does"
            ),
            Some(true) => tracing::info!("state store takes writes again"),
            None => {}
        }
    }
}
