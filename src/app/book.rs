//! The decision inputs that leases change: the lease book and the observed peaks. Both are read
//! by every decision and changed only in the lease critical section (or by a write that holds
//! the store's writers' lock); every change bumps the inputs' [`Version`] after it is made, so a
//! kept decision never outlives what it was decided from.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::decision_memo::Version;
use crate::leases::LeaseBook;
use crate::policy::estimate::{EstimateKey, Peak};
use crate::store::Observation;

/// Observed peaks (key, GiB), newest first; replaced whole on every change so a view holds a
/// cheap `Arc` of it.
pub(crate) type Observed = Arc<Vec<(EstimateKey, Peak)>>;

/// Observed peaks kept in memory: far more than any `learning.window` needs.
const OBSERVED_IN_MEMORY: usize = 10_000;

/// The lease book and the observed peaks.
pub(crate) struct Book {
    leases: RwLock<LeaseBook>,
    observed: RwLock<Observed>,
    version: Arc<Version>,
}

impl Book {
    /// The book as the store holds it: its leases and observations (newest first).
    pub(crate) fn new(leases: LeaseBook, observations: Vec<Observation>, version: Arc<Version>) -> Self {
        Self { leases: RwLock::new(leases), observed: RwLock::new(Arc::new(in_memory(observations))), version }
    }

    /// The lease book, to read.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, LeaseBook> {
        self.leases.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease book, to change; the inputs are marked changed when the guard drops.
    pub(crate) fn write(&self) -> BookMut<'_> {
        BookMut { guard: self.leases.write().unwrap_or_else(PoisonError::into_inner), version: &self.version }
    }

    /// The observed peaks now.
    pub(crate) fn observed(&self) -> Observed {
        Arc::clone(&self.observed.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds observations (just made durable) to the in-memory list, newest first.
    pub(crate) fn remember(&self, observations: &[Observation]) {
        if observations.is_empty() {
            return;
        }
        let mut guard = self.observed.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<(EstimateKey, Peak)> =
            observations.iter().rev().filter(|o| o.used).map(|o| (o.key.clone(), o.peak())).collect();
        next.extend(guard.iter().cloned());
        next.truncate(OBSERVED_IN_MEMORY);
        *guard = Arc::new(next);
        drop(guard);
        self.version.bump();
    }

    /// Replaces the observed peaks with `observations` (newest first), as the store holds them.
    pub(crate) fn set_observed(&self, observations: Vec<Observation>) {
        *self.observed.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(in_memory(observations));
        self.version.bump();
    }

    /// Until when a decision taken now from the lease book stays true: the first expiry of a
    /// live lease (or forever without one).
    pub(crate) fn valid_until(&self, now: f64) -> f64 {
        self.read().live(now).iter().map(|l| l.expires_at).fold(f64::INFINITY, f64::min)
    }
}

/// The newest `OBSERVED_IN_MEMORY` of `observations` (newest first), as decisions read them.
fn in_memory(observations: Vec<Observation>) -> Vec<(EstimateKey, Peak)> {
    let mut observed: Vec<(EstimateKey, Peak)> =
        observations.into_iter().filter(|o| o.used).map(|o| (o.peak(), o.key)).map(|(p, k)| (k, p)).collect();
    observed.truncate(OBSERVED_IN_MEMORY);
    observed
}

/// The lease book under its write lock. Dropping it marks the decision inputs changed, after
/// the change is made and before another writer can make the next.
pub(crate) struct BookMut<'a> {
    guard: RwLockWriteGuard<'a, LeaseBook>,
    version: &'a Version,
}

impl std::ops::Deref for BookMut<'_> {
    type Target = LeaseBook;

    fn deref(&self) -> &LeaseBook {
        &self.guard
    }
}

impl std::ops::DerefMut for BookMut<'_> {
    fn deref_mut(&mut self) -> &mut LeaseBook {
        &mut self.guard
    }
}

impl Drop for BookMut<'_> {
    fn drop(&mut self) {
        self.version.bump();
    }
}
