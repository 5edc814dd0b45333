//! Everything a decision reads, and consistent views of it: the latest snapshot, the
//! configuration in force, the live settings and constraints, the lease book and observed peaks
//! ([`Book`]), and whether the store takes writes. Each is replaced whole (or changed under its
//! own lock) and the [`Version`] is bumped after every change, so a [`View`] or a [`Stamp`] taken
//! at any moment is consistent.

use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Notify;

use super::access::Credentials;
use super::book::{Book, Observed};
use super::decision_memo::{KeptOne, Stamp, Version};
use super::error::ServiceError;
use crate::config::{Config, Constraints, DEFAULT_WORKLOAD, Optimization};
use crate::leases::{Lease, LeaseUsage, outstanding_by_gpu, usage};
use crate::policy::admission::{CheckRequest, ResourceCheck, resource_check};
use crate::policy::{Context, Overrun};
use crate::snapshot::{Snapshot, SnapshotRx};
use crate::store::StoreStatus;
use crate::time::now_unix;

/// The settings the API can change, as they are now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Live {
    /// Optimization settings.
    pub settings: Optimization,
    /// Resource constraints.
    pub constraints: Constraints,
}

/// The decision inputs.
pub(crate) struct Inputs {
    /// The latest snapshot (None before the first sample).
    pub(crate) snapshots: SnapshotRx,
    /// The configuration in force: the one vramguard started with, or the last one SIGHUP
    /// loaded. Replaced whole, so a reader holds one consistent copy.
    config: RwLock<Arc<Config>>,
    /// The configured tokens and their roles; replaced on reload.
    credentials: RwLock<Arc<Credentials>>,
    /// Live settings and constraints. A std lock: held for a copy, never across an await.
    live: RwLock<Live>,
    /// The lease book and the observed peaks.
    pub(crate) book: Book,
    /// Whether the store takes writes (read without the writers' lock).
    pub(crate) store_status: Arc<StoreStatus>,
    /// Bumped after every change of the live settings, the configuration, the book.
    version: Arc<Version>,
    /// Notified when room may have freed (a release, an expiry, a change of settings or
    /// configuration): the waiting queue's dispatcher passes over its requests again.
    pub(crate) room: Notify,
    /// VRAM held for a waiting gang nothing may pass any more, GiB per GPU index: counted as
    /// owed in every decision but that gang's own (the queue's pass clears it first).
    held: RwLock<Vec<(u32, f64)>>,
    /// The view resource-check decisions read, kept under the stamp it was taken at until the
    /// first of its leases expires.
    kept_view: KeptOne<Arc<View>>,
}

impl Inputs {
    pub(crate) fn new(
        snapshots: SnapshotRx,
        config: Config,
        credentials: Credentials,
        live: Live,
        book: impl FnOnce(Arc<Version>) -> Book,
        store_status: Arc<StoreStatus>,
    ) -> Self {
        let version = Arc::new(Version::default());
        Self {
            snapshots,
            config: RwLock::new(Arc::new(config)),
            credentials: RwLock::new(Arc::new(credentials)),
            live: RwLock::new(live),
            book: book(Arc::clone(&version)),
            store_status,
            version,
            room: Notify::new(),
            held: RwLock::default(),
            kept_view: KeptOne::default(),
        }
    }

    /// Whether VRAM is held for a waiting gang now.
    pub(crate) fn holds_any(&self) -> bool {
        !self.held.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// Puts the VRAM held for a waiting gang in force (empty: none held).
    pub(crate) fn set_held(&self, held: Vec<(u32, f64)>) {
        let mut current = self.held.write().unwrap_or_else(PoisonError::into_inner);
        if *current != held {
            *current = held;
            drop(current);
            self.version.bump();
        }
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The tokens in force.
    pub(crate) fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(&self.credentials.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the live settings and constraints.
    pub(crate) fn live(&self) -> Live {
        *self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest snapshot.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }

    /// Puts `live` in force (already durable).
    pub(crate) fn set_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = live;
        self.version.bump();
    }

    /// Puts a reloaded configuration, its live values and its tokens in force at once.
    pub(crate) fn reload(&self, config: Config, live: Live, credentials: Credentials) {
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = live;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.version.bump();
        *self.credentials.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(credentials);
    }

    /// The stamp of the inputs now: take it before reading them.
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp::take(&self.version, self.snapshot(), self.config())
    }

    /// Tells the waiting queue that room may have freed.
    pub(crate) fn room_may_have_freed(&self) {
        self.room.notify_one();
    }

    /// Checks a workload profile name: `None` is `default`; an unknown name lists the known ones.
    pub(crate) fn check_workload<'a>(&self, name: Option<&'a str>) -> Result<&'a str, ServiceError> {
        let name = name.unwrap_or(DEFAULT_WORKLOAD);
        let config = self.config();
        if config.profile(name).is_some() {
            Ok(name)
        } else {
            Err(ServiceError::Invalid(format!(
                "workload: unknown profile {name:?}; known profiles: {}",
                config.profile_names().join(", ")
            )))
        }
    }

    /// The resource-check decision now for a checked `workload`, not counted (the caller counts
    /// the answer it gives, once).
    pub(crate) fn decide(&self, request: &CheckRequest, workload: &str) -> ResourceCheck {
        self.decide_at(request, workload, now_unix())
    }

    /// [`Inputs::decide`] on the view at `now`.
    pub(crate) fn decide_at(&self, request: &CheckRequest, workload: &str, now: f64) -> ResourceCheck {
        let view = self.view_at(now);
        resource_check(&view.context_for(&self.config(), workload), request)
    }

    /// [`Inputs::decide_at`] on the view kept under `stamp` (taken before), built if none is.
    /// For answers, not admissions: an admission decides on a fresh view under the book's lock.
    pub(crate) fn decide_on(&self, stamp: &Stamp, request: &CheckRequest, workload: &str, now: f64) -> ResourceCheck {
        let view = match self.kept_view.get(stamp, now) {
            Some(view) => view,
            None => {
                let view = Arc::new(self.view_at(now));
                let valid_until = view.leases.iter().map(|(l, _)| l.expires_at).fold(f64::INFINITY, f64::min);
                self.kept_view.put(stamp.clone(), Arc::clone(&view), valid_until);
                view
            }
        };
        resource_check(&view.context_for(stamp.config(), workload), request)
    }

    /// A consistent copy of what a decision reads, now.
    pub(crate) fn view(&self) -> View {
        self.view_at(now_unix())
    }

    /// A consistent copy of what a decision reads, at `now`.
    pub(crate) fn view_at(&self, now: f64) -> View {
        self.view_held(now, true)
    }

    /// [`Inputs::view_at`] without the VRAM held for a waiting gang: that gang's own view.
    pub(crate) fn view_unheld(&self, now: f64) -> View {
        self.view_held(now, false)
    }

    fn view_held(&self, now: f64, with_held: bool) -> View {
        let snapshot = self.snapshot();
        let book = self.book.read();
        let live = book.live(now);
        let used = usage(&live, snapshot.as_deref());
        let mut overruns: Vec<(String, Overrun)> = Vec::new();
        for (l, u) in live.iter().zip(&used) {
            // Health warns while the job holds more than it reserved; the lease's `overrun` flag
            // keeps the history, so a past overrun does not keep the warning up. A gang is one
            // warning: its ranks that overrun, added up.
            let Some(used_gb) = u.used_gb.filter(|used| *used > l.vram_reserved_gb + 0.01) else { continue };
            match overruns.iter_mut().find(|(gang, _)| gang == l.gang_id()) {
                Some((_, o)) => {
                    o.used_gb += used_gb;
                    o.reserved_gb += l.vram_reserved_gb;
                }
                None => overruns.push((
                    l.gang_id().to_owned(),
                    Overrun { label: l.label(), used_gb, reserved_gb: l.vram_reserved_gb },
                )),
            }
        }
        let overruns = overruns.into_iter().map(|(_, o)| o).collect();
        let mut outstanding = outstanding_by_gpu(&used);
        let held =
            if with_held { self.held.read().unwrap_or_else(PoisonError::into_inner).clone() } else { Vec::new() };
        for (gpu, gb) in &held {
            match outstanding.iter_mut().find(|(g, _)| g == gpu) {
                Some((_, owed)) => *owed += gb,
                None => outstanding.push((*gpu, *gb)),
            }
        }
        let leases: Vec<(Lease, LeaseUsage)> = live.into_iter().cloned().zip(used).collect();
        drop(book);
        View {
            active: leases.iter().filter(|(l, _)| l.is_generation()).count() as u32,
            snapshot,
            live: self.live(),
            leases,
            outstanding,
            overruns,
            observed: self.book.observed(),
            store_problem: self.store_status.problem(),
            now,
        }
    }
}

/// A consistent copy of everything a decision reads.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// Latest snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Live settings and constraints.
    pub live: Live,
    /// Live leases, oldest first, with what each uses and still owes.
    pub leases: Vec<(Lease, LeaseUsage)>,
    /// GiB still owed per GPU to live leases.
    pub outstanding: Vec<(u32, f64)>,
    /// Live leases whose jobs use more than they reserved.
    pub overruns: Vec<Overrun>,
    /// Observed peaks, newest first.
    pub observed: Observed,
    /// Live generations (a gang counts once).
    pub active: u32,
    /// Why the state store does not take writes, while it does not.
    pub store_problem: Option<String>,
    /// When the view was taken, Unix seconds.
    pub now: f64,
}

impl View {
    /// The policy's input built from this view, for the default workload profile.
    pub(crate) fn context<'a>(&'a self, config: &'a Config) -> Context<'a> {
        self.context_for(config, DEFAULT_WORKLOAD)
    }

    /// The policy's input for the workload profile `workload` (the default one if unknown:
    /// callers check names first, see [`Inputs::check_workload`]).
    pub(crate) fn context_for<'a>(&'a self, config: &'a Config, workload: &'a str) -> Context<'a> {
        let (workload_name, profile) = match config.profile(workload) {
            Some(p) => (workload, p),
            None => (DEFAULT_WORKLOAD, &config.workload),
        };
        Context {
            snapshot: self.snapshot.as_deref(),
            constraints: &self.live.constraints,
            settings: &self.live.settings,
            workload: profile,
            workload_name,
            observed: &self.observed,
            learning: &config.learning,
            gpu_enabled: config.gpu.enabled,
            outstanding: &self.outstanding,
            overruns: &self.overruns,
            active_generations: Some(self.active),
            store_problem: self.store_problem.as_deref(),
            now: self.now,
        }
    }
}
