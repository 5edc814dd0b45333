//! Whether the store takes writes: set by every write the store attempts, read by health and
//! `/metrics` without the writers' lock. A failure is known from the next write on (the file
//! vanished, the disk is full, the filesystem turned read-only), and so is the recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounter};

use super::StoreError;

/// The store's write health.
pub struct StoreStatus {
    up: Gauge,
    write_errors: IntCounter,
    problem: Mutex<Option<String>>,
    /// What was last reported by [`StoreStatus::transition`], so each change is logged once.
    reported_up: AtomicBool,
}

impl std::fmt::Debug for StoreStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreStatus").field("up", &self.is_up()).field("problem", &self.problem()).finish()
    }
}

impl Default for StoreStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreStatus {
    /// Up, no errors yet.
    pub fn new() -> Self {
        let up = Gauge::new(
            "vramguard_store_up",
            "1 while the state store takes writes; 0 from a write that failed (file deleted or replaced, disk full, read-only) until one succeeds.",
        )
        .expect("valid metric definition");
        up.set(1.0);
        let write_errors = IntCounter::new(
            "vramguard_store_write_errors_total",
            "Writes to the state store that failed, background retries included.",
        )
        .expect("valid metric definition");
        Self { up, write_errors, problem: Mutex::new(None), reported_up: AtomicBool::new(true) }
    }

    /// The last write succeeded (or none failed yet).
    pub fn is_up(&self) -> bool {
        self.up.get() > 0.5
    }

    /// Writes that failed so far.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.get()
    }

    /// What made the last write fail, while the store is down.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records the outcome of one write.
    pub(super) fn record(&self, failure: Option<&StoreError>) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        match failure {
            None => {
                *problem = None;
                self.up.set(1.0);
            }
            Some(e) => {
                *problem = Some(e.to_string());
                self.up.set(0.0);
                self.write_errors.inc();
            }
        }
    }

    /// `Some(up)` the first time it is asked after the store went down or came back, else
    /// `None`: whoever asks first logs the change, once.
    pub fn transition(&self) -> Option<bool> {
        let up = self.is_up();
        (self.reported_up.swap(up, Ordering::SeqCst) != up).then_some(up)
    }

    /// The two series, for a registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![Box::new(self.up.clone()), Box::new(self.write_errors.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_and_a_recovery_are_each_reported_once() {
        let s = StoreStatus::new();
        assert!(s.is_up() && s.transition().is_none());
        let e = StoreError::Vanished { path: "/x/vramguard.db".into(), what: "was deleted".to_owned() };
        s.record(Some(&e));
        s.record(Some(&e));
        assert!(!s.is_up());
        assert_eq!(s.write_errors.get(), 2);
        assert!(s.problem().unwrap().contains("was deleted"));
        assert_eq!(s.transition(), Some(false));
        assert_eq!(s.transition(), None);
        s.record(None);
        assert!(s.is_up() && s.problem().is_none());
        assert_eq!(s.transition(), Some(true));
        assert_eq!(s.write_errors.get(), 2, "a counter never goes down");
    }
}
