//! Generation leases: admission that holds under concurrency (SPEC §3.2).
//!
//! Taking a lease runs the resource-check decision and, if it admits, records the lease in the
//! same critical section: a job on the lease thread ([`super::lease_thread`]), which holds the
//! writers' lock on the store and covers reaping, reading the lease book, deciding, the insert
//! into the open batch and publishing the lease; the caller is answered once the batch commits.
//! N callers racing for the last slot therefore get exactly the free slots. The only I/O inside
//! is the state-store write; the snapshot and settings are in-memory copies.

use std::sync::Arc;

use super::access::Caller;
use super::error::ServiceError;
use super::inputs::Inputs;
use super::lease_terms::{
    Acquired, End, Evidence, HungUp, Learned, LeaseAsk, Processes, Released, check_id, check_owner, check_ttl,
    check_unshared, invalid, leases_for, no_live_lease, observation, store_failed,
};
use super::lease_thread::{Finish, Job, LeaseThread};
use super::writer::Writer;
use crate::leases::{Lease, LeaseUsage, Outcome};
use crate::limits;
use crate::metrics::Metrics;
use crate::policy::admission::resource_check;
use crate::policy::estimate::need_gb;
use crate::store::{Observation, Store};
use crate::time::now_unix;

/// The lease ledger: its operations, the critical section they run in, and the thread that runs
/// it. A clone shares the same ledger (a handful of reference counts).
#[derive(Clone)]
pub(crate) struct Ledger {
    inputs: Arc<Inputs>,
    writer: Arc<Writer>,
    thread: Arc<LeaseThread>,
    metrics: Arc<Metrics>,
}

impl Ledger {
    pub(crate) fn new(inputs: Arc<Inputs>, writer: Arc<Writer>, thread: LeaseThread, metrics: Arc<Metrics>) -> Self {
        Self { inputs, writer, thread: Arc::new(thread), metrics }
    }

    /// The lease thread, to hook the end of its batches.
    pub(crate) fn thread(&self) -> &LeaseThread {
        &self.thread
    }

    /// Takes lapsed leases out of the book and the store, and retries lease ends the store did
    /// not take before; returns how many lapsed. A lapsed lease frees its slot even while the
    /// store does not take writes (its end then waits in memory, see [`super::writer`]). Called
    /// with the store lock held, so it logs nothing: the only I/O in the critical section is the
    /// store write.
    fn reap(&self, store: &mut Store, now: f64) -> usize {
        let expired = self.inputs.book.read().expired(now);
        let observations: Vec<Observation> = {
            let mut book = self.inputs.book.write();
            let ended: Vec<Lease> = expired.iter().filter_map(|id| book.remove(id)).collect();
            // A gang's ranks lapse together; it ended once.
            ended.iter().filter(|l| l.is_generation()).filter_map(|l| self.learn(l, End::Expired, now)).collect()
        };
        // A failure is recorded in the store's status and retried on the next call.
        let _ = self.writer.end_durably(store, expired.clone(), observations);
        expired.len()
    }

    /// What a lease's end teaches, counted: its outcome, and why it taught nothing if so.
    fn learn(&self, lease: &Lease, end: End, now: f64) -> Option<Observation> {
        match observation(lease, end, now, &self.evidence(lease)) {
            Learned::Observed(o) => {
                self.metrics.record_finished(end.outcome(), None);
                Some(o)
            }
            Learned::Implausible(o) => {
                self.metrics.record_finished(end.outcome(), Some("implausible"));
                Some(o)
            }
            Learned::Skipped(reason) => {
                self.metrics.record_finished(end.outcome(), Some(reason));
                None
            }
        }
    }

    /// What a client's peak for `lease` is held against: the model's estimate for its key, and
    /// its GPU's memory now.
    fn evidence(&self, lease: &Lease) -> Evidence {
        let config = self.inputs.config();
        let model_gb = config
            .profile(&lease.grant.workload)
            .map(|w| need_gb(w, &lease.grant.settings, lease.grant.model_loaded, lease.grant.size(w)));
        let gpu_total_gb = lease.gpu_index.and_then(|g| {
            let snapshot = self.inputs.snapshot()?;
            let m = snapshot.gpus.iter().find(|x| x.index == g)?.memory?;
            Some(crate::units::gib(m.total_bytes))
        });
        Evidence { model_gb, min_ratio: config.learning.min_ratio, gpu_total_gb }
    }

    /// Reaps lapsed leases; run by the server on a timer (decisions also reap first).
    pub(crate) async fn reap_expired(&self) {
        // Expiries free their slots in memory whether or not the batch commits (a failed one
        // leaves them pending, retried on the next tick).
        match self.batched("reaping leases failed", |l, store| Ok(l.reap(store, now_unix()))).await {
            Ok((0, _)) => {}
            Ok((n, _)) => {
                tracing::info!(count = n, "expired generation leases reaped");
                self.inputs.room_may_have_freed();
            }
            Err(e) => tracing::warn!(error = %e, "reaping leases failed"),
        }
    }

    /// Runs lease writes `f` on the lease thread, into the open batch under the writers' lock,
    /// and returns once the batch holding them is committed, with every lease write that came in
    /// meanwhile, by one fsync (group commit). Returns `f`'s result and whether its writes are
    /// durable (`Ok(())` also when it wrote nothing).
    async fn batched<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Ledger, &mut Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<(T, Result<(), ServiceError>), ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ledger = self.clone();
        let job: Job = Box::new(move |store| {
            let before = store.batch_marker();
            let out = f(&ledger, store);
            let wrote = store.batch_marker() != before;
            Box::new(move |durable| {
                let durable = if wrote { durable.clone() } else { Ok(()) };
                let _ = tx.send(out.map(|o| (o, durable)));
            })
        });
        if !self.thread.submit(job) {
            return Err(ServiceError::failed(what, "the lease thread has stopped"));
        }
        rx.await.map_err(|e| ServiceError::failed(what, e))?
    }

    /// Runs lease writes `f` on the lease thread without waiting for them; a failure is logged
    /// (for work nobody is waiting on, like ending a lease whose waiter left).
    pub(crate) fn submit(
        &self,
        what: &'static str,
        f: impl FnOnce(&Ledger, &mut Store) -> Result<(), ServiceError> + Send + 'static,
    ) {
        let ledger = self.clone();
        let job: Job = Box::new(move |store| {
            let out = f(&ledger, store);
            Box::new(move |durable: &Result<(), ServiceError>| {
                if let Err(e) = out.and(durable.clone()) {
                    tracing::warn!(error = %e, "{what}");
                }
            }) as Finish
        });
        if !self.thread.submit(job) {
            tracing::warn!("{what}: the lease thread has stopped");
        }
    }

    /// Runs `f` in the lease critical section: under the store lock, after reaping lapsed leases,
    /// with one `now` for everything it decides; returns once what it wrote is durable (group
    /// commit), or the store's refusal.
    async fn critical<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Ledger, &mut Store, f64) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (out, durable) = self.critical_with(what, f).await?;
        durable?;
        Ok(out)
    }

    /// [`Ledger::critical`], handing back whether the writes became durable instead of failing
    /// on it (a release answers "not yet durable" rather than an error).
    pub(crate) async fn critical_with<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Ledger, &mut Store, f64) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<(T, Result<(), ServiceError>), ServiceError> {
        self.batched(what, move |l, store| {
            let now = now_unix();
            if l.reap(store, now) > 0 {
                l.inputs.room_may_have_freed();
            }
            f(l, store, now)
        })
        .await
    }

    /// Takes a generation lease if resources allow. A refusal is an answer, not an error.
    pub(crate) async fn acquire(&self, ask: LeaseAsk) -> Result<Acquired, ServiceError> {
        ask.validate()?;
        let workload = self.inputs.check_workload(ask.workload.as_deref())?.to_owned();
        // A refusal needs no lock: decided on the live view it is the answer the request would
        // have had a moment earlier, and it writes nothing. Only what may be admitted takes the
        // critical section, to be decided again there and recorded, so grants, releases and
        // their group commits do not queue behind a crowd of refusals.
        let first = self.inputs.decide(&ask.request(), &workload);
        let outcome = if first.can_start_generation {
            // A client that hangs up before its answer gets no lease: not granted once it is gone,
            // ended again if it left while being granted.
            let claim = Claim::new(self.clone());
            let state = Arc::clone(&claim.state);
            let hung_up = ask.hung_up.clone();
            let outcome = self
                .critical("lease decision failed", move |l, store, now| {
                    let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if s.gone || ask.hung_up.as_ref().is_some_and(HungUp::is_set) {
                        return Err(ServiceError::Invalid("the client left before its lease was granted".to_owned()));
                    }
                    let out = l.grant_or_refuse(store, now, &ask, &workload)?;
                    if let Acquired::Granted(lease, _) = &out {
                        s.granted = Some(lease.id.clone());
                    }
                    Ok(out)
                })
                .await?;
            // One turn of the connection before the answer is claimed: it reads on, and a client
            // that hung up while its lease was granted is seen (the claim then ends the lease).
            tokio::task::yield_now().await;
            if hung_up.as_ref().is_some_and(HungUp::is_set) {
                return Err(ServiceError::Invalid("the client left while its lease was granted".to_owned()));
            }
            claim.claimed();
            outcome
        } else {
            Acquired::Refused(first)
        };
        match &outcome {
            Acquired::Granted(lease, check) => {
                self.metrics.record_decision(true, check.primary_reason());
                tracing::debug!(id = %lease.id, "generation lease granted");
                tracing::info!(lease = %lease.label(), gpu = ?lease.gpu_index, gb = lease.vram_reserved_gb, "generation lease granted");
            }
            Acquired::Refused(check) => self.metrics.record_decision(false, check.primary_reason()),
        }
        Ok(outcome)
    }

    /// Decides `ask` (a checked `workload`) on the view at `now` and, if it fits, records the
    /// lease durably and in the book. Runs inside the critical section; counts nothing.
    pub(crate) fn grant_or_refuse(
        &self,
        store: &mut Store,
        now: f64,
        ask: &LeaseAsk,
        workload: &str,
    ) -> Result<Acquired, ServiceError> {
        let view = if ask.holds_own { self.inputs.view_unheld(now) } else { self.inputs.view_at(now) };
        let config = self.inputs.config();
        let ctx = view.context_for(&config, workload);
        let check = resource_check(&ctx, &ask.request());
        let grant = ctx.key(ask.model_loaded, Some(ask.size.resolve(ctx.workload)));
        if !check.can_start_generation {
            return Ok(Acquired::Refused(check));
        }
        let ttl = ask.ttl_seconds.unwrap_or_else(|| config.leases.default_ttl.0.as_secs());
        // One lease, or one per rank of a gang: all recorded here, in one critical section.
        let leases = leases_for(&check, ask, &view, now, ttl, grant)?;
        {
            let book = self.inputs.book.read();
            let live = book.live(now);
            for lease in &leases {
                check_unshared(lease, &live)?;
            }
        }
        store.put_leases(&leases).map_err(store_failed)?;
        let mut book = self.inputs.book.write();
        for lease in &leases {
            book.insert(lease.clone());
        }
        let lease = leases.into_iter().next().expect("a grant makes at least one lease");
        Ok(Acquired::Granted(Box::new(lease), check))
    }

    /// Ends a lease nobody was told about (its waiter left as it was granted): no observation.
    /// Its slot is free at once; the store write may wait (see [`super::writer`]).
    pub(crate) fn end_unclaimed(&self, store: &mut Store, id: &str) -> Result<(), ServiceError> {
        let ids: Vec<String> = {
            let mut book = self.inputs.book.write();
            let ids: Vec<String> = book.generation(id).iter().map(|l| l.id.clone()).collect();
            for id in &ids {
                book.remove(id);
            }
            ids
        };
        let _ = self.writer.end_durably(store, ids, Vec::new());
        Ok(())
    }

    /// Extends a live lease by its TTL (or `ttl`, which becomes its TTL) from now, and adds
    /// `processes` (a worker's children) to its own. Only its owner or an admin may.
    pub(crate) async fn heartbeat(
        &self,
        id: String,
        ttl: Option<u64>,
        processes: Processes,
        caller: Caller,
    ) -> Result<Lease, ServiceError> {
        check_id(&id)?;
        check_ttl(ttl)?;
        processes.validate()?;
        self.critical("heartbeat failed", move |l, store, now| {
            // The sample follower may raise the peak while the store writes; only the fields a heartbeat
            // owns are merged back into the book, so its update is never overwritten. A gang's
            // ranks are renewed together.
            let ranks: Vec<Lease> = {
                let book = l.inputs.book.read();
                let first = book.get_live(&id, now).ok_or_else(|| no_live_lease(&id))?;
                check_owner(&caller, first, "heartbeat")?;
                book.generation(&id).into_iter().cloned().collect()
            };
            let mut renewed = Vec::with_capacity(ranks.len());
            for mut lease in ranks {
                if let Some(t) = ttl {
                    lease.ttl_seconds = t;
                }
                processes.clone().add_to(&mut lease)?;
                check_unshared(&lease, &l.inputs.book.read().live(now))?;
                lease.expires_at = now + lease.ttl_seconds as f64;
                renewed.push(lease);
            }
            store.put_leases(&renewed).map_err(store_failed)?;
            let mut book = l.inputs.book.write();
            let merged: Vec<Lease> = renewed.into_iter().map(|lease| book.renew(&lease).unwrap_or(lease)).collect();
            Ok(merged.into_iter().next().expect("a live lease has at least one rank"))
        })
        .await
    }

    /// Releases a live lease; `outcome` is how its job ended, `peak_vram_gb` the client's own
    /// measured peak, if it sent one. Only its owner or an admin may. The slot is free once this
    /// returns, even when the store did not take the write ([`Released::InMemory`]).
    pub(crate) async fn release(
        &self,
        id: String,
        outcome: Outcome,
        peak_vram_gb: Option<f64>,
        caller: Caller,
    ) -> Result<Released, ServiceError> {
        check_id(&id)?;
        if let Some(p) = peak_vram_gb {
            limits::check_required_gb(p).map_err(|m| invalid("peak_vram_gb", m))?;
        }
        let id_for_log = id.clone();
        let (released, durable) = self
            .critical_with("release failed", move |l, store, now| {
                // Out of the book first, so the sample follower cannot raise a peak the observation
                // misses; no decision runs meanwhile (this is the critical section). It stays out
                // if the store does not take the write: a lease that cannot be released would
                // hold its slot for its whole TTL.
                // What the latest sample shows of the job counts too: the sample follower may not have seen
                // it yet (a lease taken after that sample was published).
                if let Some(snapshot) = l.inputs.snapshot() {
                    l.observe(&snapshot, now);
                }
                let ranks: Vec<Lease> = {
                    let mut book = l.inputs.book.write();
                    check_owner(&caller, book.get_live(&id, now).ok_or_else(|| no_live_lease(&id))?, "release")?;
                    let ids: Vec<String> = book.generation(&id).iter().map(|r| r.id.clone()).collect();
                    ids.iter().filter_map(|i| book.remove(i)).collect()
                };
                // A gang ended once: learned (and counted) from rank 0.
                let end = End::Released(outcome, peak_vram_gb);
                let observations: Vec<Observation> =
                    ranks.iter().filter(|r| r.is_generation()).filter_map(|r| l.learn(r, end, now)).collect();
                let ids = ranks.into_iter().map(|r| r.id).collect();
                Ok(match l.writer.end_durably(store, ids, observations) {
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
        self.inputs.room_may_have_freed();
        match &released {
            Released::Durable => tracing::debug!(id = %id_for_log, "generation lease released"),
            Released::InMemory(problem) => tracing::warn!(%problem,
                "generation lease released in memory; the store write is retried until it succeeds"),
        }
        Ok(released)
    }

    /// Live generations, oldest first, each with its leases' usage in rank order: a lease
    /// alone, or a gang's ranks together.
    pub(crate) fn generations_now(&self) -> Vec<Vec<(Lease, LeaseUsage)>> {
        let mut out: Vec<Vec<(Lease, LeaseUsage)>> = Vec::new();
        for pair in self.inputs.view().leases {
            match out.iter_mut().find(|g| pair.0.gang.is_some() && g[0].0.gang_id() == pair.0.gang_id()) {
                Some(group) => group.push(pair),
                None => out.push(vec![pair]),
            }
        }
        for group in &mut out {
            group.sort_by_key(|(l, _)| l.rank());
        }
        out
    }

    /// The live generation `id` names (any of its ranks' ids), now; empty when it is gone.
    pub(crate) fn generation_now(&self, id: &str) -> Vec<(Lease, LeaseUsage)> {
        self.generations_now().into_iter().find(|g| g.iter().any(|(l, _)| l.id == id)).unwrap_or_default()
    }
}

/// Reaps expired leases every second until `stop` flips. Decisions also reap first; the timer
/// keeps the count and the store honest when no one asks.
pub(crate) async fn reaper(ledger: Ledger, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => ledger.reap_expired().await,
        }
    }
}

/// Follows every new snapshot: raises the peaks of leases with pids and counts overruns (each
/// lease once). In memory only; heartbeats and the lease's end persist what it learned.
impl Ledger {
    /// Follows live leases' processes on `snapshot` (peaks, seen, overruns, each overrun
    /// counted once); the sample follower ([`super::AppState`]'s) calls it on every sample.
    pub(crate) fn observe(&self, snapshot: &crate::snapshot::Snapshot, now: f64) {
        let overran = self.inputs.book.write().observe(snapshot, now);
        for l in overran {
            self.metrics.record_overrun();
            tracing::warn!(lease = %l.label(), reserved_gb = l.vram_reserved_gb, peak_gb = ?l.vram_peak_gb,
                "generation lease overran its reservation");
        }
    }
}

/// Where a direct lease request stands: whether its client is gone, and the lease granted to it.
#[derive(Default)]
struct ClaimState {
    gone: bool,
    granted: Option<String>,
    claimed: bool,
}

/// Held by a direct lease request while it waits for its decision. Dropped before it is claimed
/// (the client hung up and axum dropped the handler), it marks the request gone, so the lease
/// thread does not grant it, or ends the lease granted meanwhile.
struct Claim {
    ledger: Ledger,
    state: Arc<std::sync::Mutex<ClaimState>>,
}

impl Claim {
    fn new(ledger: Ledger) -> Self {
        Self { ledger, state: Arc::default() }
    }

    /// The answer reached the handler: the lease is the client's.
    fn claimed(&self) {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).claimed = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.gone = true;
        if let (false, Some(id)) = (s.claimed, s.granted.take()) {
            self.ledger.submit("ending a lease whose client left", move |l, store| l.end_unclaimed(store, &id));
        }
    }
}
