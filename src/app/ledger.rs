//! Generation leases: admission that holds under concurrency (SPEC §3.2).
//!
//! Taking a lease runs the resource-check decision and, if it admits, records the lease in the
//! same critical section: a job on the lease thread ([`super::lease_thread`]), which holds the
//! writers' lock on the store and covers reaping, reading the lease book, deciding, the insert
//! into the open batch and publishing the lease; the caller is answered once the batch commits. N callers racing for the
//! last slot therefore get exactly the free slots. The only I/O inside is the state-store write;
//! the snapshot and settings are in-memory copies.

use std::sync::PoisonError;

use super::{AppState, Caller, ServiceError};
use crate::config::DEFAULT_WORKLOAD;
use crate::leases::{Lease, LeaseBook, LeaseUsage, gpu_used_gb, is_valid_id, new_id};
use crate::limits;
use crate::policy::admission::{CheckRequest, ResourceCheck, resource_check};
use crate::policy::estimate::EstimateKey;
use crate::store::{Observation, Store};
use crate::time::now_unix;

/// What a client asks for when it takes a lease.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseAsk {
    /// VRAM the job needs, GiB; `None` uses the workload estimate.
    pub vram_required_gb: Option<f64>,
    /// The worker already holds its model.
    pub model_loaded: bool,
    /// Only this GPU index may be used.
    pub gpu: Option<u32>,
    /// Lifetime, seconds; `None` uses `leases.default_ttl`.
    pub ttl_seconds: Option<u64>,
    /// Who holds the lease.
    pub client: Option<String>,
    /// Processes doing the job (1-64 positive integers), or none.
    pub pids: Option<Vec<u32>>,
    /// Workload profile name; `None` is `default`.
    pub workload: Option<String>,
    /// The name of the token asking (recorded as the lease's owner); `None` without tokens.
    pub owner: Option<String>,
}

impl LeaseAsk {
    /// Checks every field against its limit; the error names the field.
    pub fn validate(&self) -> Result<(), ServiceError> {
        if let Some(v) = self.vram_required_gb {
            limits::check_required_gb(v).map_err(|m| invalid("vram_required_gb", m))?;
        }
        check_ttl(self.ttl_seconds)?;
        if let Some(c) = &self.client {
            limits::check_client(c).map_err(|m| invalid("client", m))?;
        }
        if let Some(p) = &self.pids {
            limits::check_pids(p).map_err(|m| invalid("pids", m))?;
        }
        Ok(())
    }
}

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Out of the book and out of the store.
    Durable,
    /// Out of the book (its slot is free), but the store did not take the write, for the reason
    /// given; it is retried until the store does.
    InMemory(String),
}

/// The outcome of a lease request.
#[derive(Debug, Clone)]
pub enum Acquired {
    /// Admitted: the lease and the decision that admitted it.
    Granted(Box<Lease>, ResourceCheck),
    /// Refused: the decision that refused it.
    Refused(ResourceCheck),
}

fn invalid(field: &str, message: String) -> ServiceError {
    ServiceError::Invalid(format!("{field}: {message}"))
}

fn check_ttl(ttl: Option<u64>) -> Result<(), ServiceError> {
    match ttl {
        Some(t) => limits::check_ttl_seconds(t).map_err(|m| invalid("ttl_seconds", m)),
        None => Ok(()),
    }
}

/// Why a lease ended, for the observation it leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// Released, with the client's own peak if it sent one.
    Released(Option<f64>),
    /// Expired without a release.
    Expired,
}

/// The observation a lease's end records: the client's peak when given, else vramguard's NVML
/// peak of its pids; nothing for a lease without either.
fn observation(lease: &Lease, end: End, now: f64) -> Option<Observation> {
    let (peak, source) = match (end, lease.vram_peak_gb) {
        (End::Released(Some(p)), _) => (p, "client"),
        (_, Some(p)) if !lease.pids.is_empty() => (p, "nvml"),
        _ => return None,
    };
    Some(Observation { key: lease.grant.clone(), peak_vram_gb: peak, source: source.to_owned(), recorded_at: now })
}

fn check_id(id: &str) -> Result<(), ServiceError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!("no lease with id {id:?}; lease ids are 32 lowercase hex digits")))
    }
}

fn no_live_lease(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no live lease with id {id}; it was released or expired"))
}

fn store_failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::store(e)
}

/// Clients act on their own leases only; admins (and everyone while vramguard has no tokens) on
/// any. `what` is the verb for the answer.
fn check_owner(caller: &Caller, lease: &Lease, what: &str) -> Result<(), ServiceError> {
    if caller.may_act_on(lease.owner.as_deref()) {
        return Ok(());
    }
    let whose = match &lease.owner {
        Some(owner) => format!("belongs to token {owner:?}"),
        None => "was taken while vramguard had no tokens, so it has no owner".to_owned(),
    };
    Err(ServiceError::Forbidden(format!(
        "lease {} {whose}; {} may {what} only its own leases (an admin token may {what} any)",
        lease.id,
        caller.describe()
    )))
}

impl AppState {
    fn book(&self) -> std::sync::RwLockReadGuard<'_, LeaseBook> {
        self.leases.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease book to change; kept answers are stale once the guard drops.
    fn book_mut(&self) -> BookMut<'_> {
        BookMut { guard: self.leases.write().unwrap_or_else(PoisonError::into_inner), state: self }
    }

    /// Takes lapsed leases out of the book and the store, and retries lease ends the store did
    /// not take before; returns how many lapsed. A lapsed lease frees its slot even while the
    /// store does not take writes (its end then waits in memory, see [`super::store_health`]).
    /// Called with the store lock held, so it logs nothing: the only I/O in the critical section
    /// is the store write.
    fn reap(&self, store: &mut Store, now: f64) -> usize {
        let expired = self.book().expired(now);
        let observations: Vec<Observation> = {
            let mut book = self.book_mut();
            let ended: Vec<Lease> = expired.iter().filter_map(|id| book.remove(id)).collect();
            ended.iter().filter_map(|l| observation(l, End::Expired, now)).collect()
        };
        // A failure is recorded in the store's status and retried on the next call.
        let _ = self.end_durably(store, expired.clone(), observations);
        expired.len()
    }

    /// Adds observations (just made durable) to the in-memory list, newest first.
    pub(super) fn remember(&self, observations: &[Observation]) {
        if observations.is_empty() {
            return;
        }
        let mut guard = self.observed.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<(EstimateKey, f64)> =
            observations.iter().rev().map(|o| (o.key.clone(), o.peak_vram_gb)).collect();
        next.extend(guard.iter().cloned());
        next.truncate(super::OBSERVED_IN_MEMORY);
        *guard = std::sync::Arc::new(next);
        drop(guard);
        self.inputs_changed();
    }

    /// Every observation, newest first.
    pub async fn observations(&self) -> Result<Vec<Observation>, ServiceError> {
        self.read_history(|store| store.load_observations()).await
    }

    /// Forgets every observation: estimates are the model's again.
    pub async fn clear_observations(&self) -> Result<(), ServiceError> {
        self.write("clearing observations failed", |st, store| {
            store.clear_observations().map_err(store_failed)?;
            *st.observed.write().unwrap_or_else(PoisonError::into_inner) = std::sync::Arc::new(Vec::new());
            st.inputs_changed();
            Ok(())
        })
        .await
    }

    /// Checks a workload profile name: `None` is `default`; an unknown name lists the known ones.
    pub fn check_workload(&self, name: Option<&str>) -> Result<String, ServiceError> {
        let name = name.unwrap_or(DEFAULT_WORKLOAD);
        if self.config().profile(name).is_some() {
            Ok(name.to_owned())
        } else {
            Err(invalid(
                "workload",
                format!("unknown profile {name:?}; known profiles: {}", self.config().profile_names().join(", ")),
            ))
        }
    }

    /// Reaps lapsed leases; run by the server on a timer (decisions also reap first).
    pub async fn reap_expired(&self) {
        // Expiries free their slots in memory whether or not the batch commits (a failed one
        // leaves them pending, retried on the next tick).
        match self.batched("reaping leases failed", |st, store| Ok(st.reap(store, now_unix()))).await {
            Ok((0, _)) => {}
            Ok((n, _)) => {
                tracing::info!(count = n, "expired generation leases reaped");
                self.wake_queue();
            }
            Err(e) => tracing::warn!(error = %e, "reaping leases failed"),
        }
    }

    /// Runs `f` in the lease critical section: under the store lock, after reaping lapsed leases,
    /// with one `now` for everything it decides; returns once what it wrote is durable (group
    /// commit, see [`AppState::batched`]), or the store's refusal.
    pub(super) async fn critical<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store, f64) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (out, durable) = self.critical_with(what, f).await?;
        durable?;
        Ok(out)
    }

    /// [`AppState::critical`], handing back whether the writes became durable instead of
    /// failing on it (a release answers "not yet durable" rather than an error).
    pub(super) async fn critical_with<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store, f64) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<(T, Result<(), ServiceError>), ServiceError> {
        self.batched(what, move |st, store| {
            let now = now_unix();
            if st.reap(store, now) > 0 {
                st.wake_queue();
            }
            f(st, store, now)
        })
        .await
    }

    /// Takes a generation lease if resources allow. A refusal is an answer, not an error.
    pub async fn acquire(&self, ask: LeaseAsk) -> Result<Acquired, ServiceError> {
        ask.validate()?;
        let workload = self.check_workload(ask.workload.as_deref())?;
        // A refusal needs no lock: decided on the live view it is the answer the request would
        // have had a moment earlier, and it writes nothing. Only what may be admitted takes the
        // critical section, to be decided again there and recorded, so grants, releases and
        // their group commits do not queue behind a crowd of refusals.
        let request =
            CheckRequest { vram_required_gb: ask.vram_required_gb, model_loaded: ask.model_loaded, gpu: ask.gpu };
        let first = self.decide(&request, &workload);
        let outcome = if first.can_start_generation {
            self.critical("lease decision failed", move |st, store, now| {
                st.grant_or_refuse(store, now, &ask, &workload)
            })
            .await?
        } else {
            Acquired::Refused(first)
        };
        match &outcome {
            Acquired::Granted(lease, check) => {
                self.metrics.record_decision(true, check.primary_reason());
                tracing::info!(id = %lease.id, gpu = ?lease.gpu_index, gb = lease.vram_reserved_gb, client = ?lease.client, "generation lease granted");
            }
            Acquired::Refused(check) => self.metrics.record_decision(false, check.primary_reason()),
        }
        Ok(outcome)
    }

    /// Decides `ask` (a checked `workload`) on the view at `now` and, if it fits, records the
    /// lease durably and in the book. Runs inside the critical section; counts nothing.
    pub(super) fn grant_or_refuse(
        &self,
        store: &mut Store,
        now: f64,
        ask: &LeaseAsk,
        workload: &str,
    ) -> Result<Acquired, ServiceError> {
        let view = self.view_at(now);
        let request =
            CheckRequest { vram_required_gb: ask.vram_required_gb, model_loaded: ask.model_loaded, gpu: ask.gpu };
        let check = resource_check(&view.context_for(&self.config(), workload), &request);
        if !check.can_start_generation {
            return Ok(Acquired::Refused(check));
        }
        let ttl = ask.ttl_seconds.unwrap_or_else(|| self.config().leases.default_ttl.0.as_secs());
        let lease = Lease {
            id: new_id(),
            gpu_index: check.gpu.as_ref().map(|g| g.index),
            gpu_uuid: check.gpu.as_ref().map(|g| g.uuid.clone()),
            vram_reserved_gb: check.required_gb,
            granted_at: now,
            expires_at: now + ttl as f64,
            ttl_seconds: ttl,
            client: ask.client.clone(),
            pids: ask.pids.clone().unwrap_or_default(),
            unattributed_used_at_grant_gb: check.gpu.as_ref().and_then(|g| {
                let used = gpu_used_gb(view.snapshot.as_deref()?, g.index)?;
                let attributed: f64 = view
                    .leases
                    .iter()
                    .filter(|(l, _)| l.gpu_index == Some(g.index))
                    .filter_map(|(_, u)| u.used_gb)
                    .sum();
                Some((used - attributed).max(0.0))
            }),
            vram_peak_gb: None,
            overrun: false,
            grant: EstimateKey {
                workload: workload.to_owned(),
                settings: view.live.settings,
                model_loaded: ask.model_loaded,
            },
            owner: ask.owner.clone(),
        };
        store.put_lease(&lease).map_err(store_failed)?;
        self.book_mut().insert(lease.clone());
        Ok(Acquired::Granted(Box::new(lease), check))
    }

    /// Ends a lease nobody was told about (its waiter left as it was granted): no observation.
    /// Its slot is free at once; the store write may wait (see [`super::store_health`]).
    pub(super) fn end_unclaimed(&self, store: &mut Store, id: &str) -> Result<(), ServiceError> {
        self.book_mut().remove(id);
        let _ = self.end_durably(store, vec![id.to_owned()], Vec::new());
        Ok(())
    }

    /// Extends a live lease by its TTL (or `ttl`, which becomes its TTL) from now, and adds
    /// `pids` (a worker's children) to its processes. Only its owner or an admin may.
    pub async fn heartbeat(
        &self,
        id: String,
        ttl: Option<u64>,
        pids: Option<Vec<u32>>,
        caller: Caller,
    ) -> Result<Lease, ServiceError> {
        check_id(&id)?;
        check_ttl(ttl)?;
        if let Some(p) = &pids {
            limits::check_pids(p).map_err(|m| invalid("pids", m))?;
        }
        self.critical("heartbeat failed", move |st, store, now| {
            // The tracker may raise the peak while the store writes; only the fields a heartbeat
            // owns are merged back into the book, so its update is never overwritten.
            let mut lease = st.book().get_live(&id, now).cloned().ok_or_else(|| no_live_lease(&id))?;
            check_owner(&caller, &lease, "heartbeat")?;
            if let Some(t) = ttl {
                lease.ttl_seconds = t;
            }
            if let Some(more) = pids {
                for pid in more {
                    if !lease.pids.contains(&pid) {
                        lease.pids.push(pid);
                    }
                }
                limits::check_pids(&lease.pids).map_err(|m| invalid("pids", format!("with the lease's own: {m}")))?;
            }
            lease.expires_at = now + lease.ttl_seconds as f64;
            store.put_lease(&lease).map_err(store_failed)?;
            let mut book = st.book_mut();
            let merged = book.renew(&id, lease.expires_at, lease.ttl_seconds, &lease.pids).unwrap_or(lease);
            Ok(merged)
        })
        .await
    }

    /// Releases a live lease; `peak_vram_gb` is the client's own measured peak, if it sent one.
    /// Only its owner or an admin may. The slot is free once this returns, even when the store
    /// did not take the write ([`Released::InMemory`]).
    pub async fn release(
        &self,
        id: String,
        peak_vram_gb: Option<f64>,
        caller: Caller,
    ) -> Result<Released, ServiceError> {
        check_id(&id)?;
        if let Some(p) = peak_vram_gb {
            limits::check_required_gb(p).map_err(|m| invalid("peak_vram_gb", m))?;
        }
        let id_for_log = id.clone();
        let (released, durable) = self
            .critical_with("release failed", move |st, store, now| {
                // Out of the book first, so the tracker cannot raise a peak the observation
                // misses; no decision runs meanwhile (this is the critical section). It stays out
                // if the store does not take the write: a lease that cannot be released would
                // hold its slot for its whole TTL.
                let lease = {
                    let mut book = st.book_mut();
                    check_owner(&caller, book.get_live(&id, now).ok_or_else(|| no_live_lease(&id))?, "release")?;
                    book.remove(&id).ok_or_else(|| no_live_lease(&id))?
                };
                let observations: Vec<Observation> =
                    observation(&lease, End::Released(peak_vram_gb), now).into_iter().collect();
                Ok(match st.end_durably(store, vec![id], observations) {
                    Ok(()) => Released::Durable,
                    Err(problem) => Released::InMemory(problem),
                })
            })
            .await?;
        // Out of the book either way; a batch that did not commit leaves the end pending.
        let released = match (released, durable) {
            (Released::Durable, Err(e)) => Released::InMemory(e.to_string()),
            (r, _) => r,
        };
        self.wake_queue();
        match &released {
            Released::Durable => tracing::info!(id = %id_for_log, "generation lease released"),
            Released::InMemory(problem) => tracing::warn!(id = %id_for_log, %problem,
                "generation lease released in memory; the store write is retried until it succeeds"),
        }
        Ok(released)
    }

    /// Live leases, oldest first, with what each uses and still owes.
    pub fn live_leases(&self) -> Vec<(Lease, LeaseUsage)> {
        self.view().leases
    }

    /// One live lease with its usage, now.
    pub fn lease_now(&self, id: &str) -> Option<(Lease, LeaseUsage)> {
        self.view().leases.into_iter().find(|(l, _)| l.id == id)
    }
}

/// The lease book under its write lock. Dropping it marks the decision inputs changed, after
/// the change is made and before another writer can make the next.
pub(super) struct BookMut<'a> {
    guard: std::sync::RwLockWriteGuard<'a, LeaseBook>,
    state: &'a AppState,
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
        self.state.inputs_changed();
    }
}

/// Reaps expired leases every second until `stop` flips. Decisions also reap first; the timer
/// keeps the count and the store honest when no one asks.
pub(crate) async fn reaper(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => state.reap_expired().await,
        }
    }
}

/// Follows every new snapshot: raises the peaks of leases with pids and counts overruns (each
/// lease once). In memory only; heartbeats and the lease's end persist what it learned.
pub(crate) async fn tracker(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut snapshots = state.snapshots.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
        let overran = state.book_mut().observe(&snapshot, now_unix());
        for l in overran {
            state.metrics.record_overrun();
            tracing::warn!(id = %l.id, client = ?l.client, reserved_gb = l.vram_reserved_gb, peak_gb = ?l.vram_peak_gb,
                "generation lease overran its reservation");
        }
    }
}
