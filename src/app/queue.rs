//! Waiting admission: generation requests that asked to wait (`wait_seconds`) hold their HTTP
//! request here until a lease is granted, a refusal turns out lasting, or their deadline passes.
//!
//! One dispatcher task decides the whole queue again on every wake-up: a new snapshot, a
//! release, an expiry, a settings change, a new or departed waiter. Each pass runs in the lease
//! critical section ([`Ledger::critical_with`]), so a waiting request is admitted by exactly the
//! rule, and under exactly the lock, that a direct one is. Order is `queue.policy`: `fifo` decides
//! the head and stops at the first request that does not fit; `backfill` goes on past a head
//! that does not fit until the head has waited `queue.max_bypass`.
//!
//! A waiter that goes away (its client disconnected, so axum dropped the handler) leaves the
//! queue through a drop guard; the dispatcher also skips any entry whose answer channel is
//! closed, and a lease granted to a waiter that vanished in that instant is ended again inside
//! the same critical section, so no lease is left without a holder. The queue lives in memory
//! only: a restart drops every waiting request, as it drops their connections.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::ServiceError;
use super::inputs::Inputs;
use super::lease_terms::{Acquired, LeaseAsk};
use super::lease_thread::{BatchEnd, Finish};
use super::ledger::Ledger;
use crate::config::QueuePolicy;
use crate::leases::Lease;
use crate::metrics::Metrics;
use crate::policy::admission::{Reason, ResourceCheck};
use crate::store::Store;
use crate::time::now_unix;

/// The answer to a lease request that may wait.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Admitted: the lease and the decision that admitted it.
    Granted(Box<Lease>, ResourceCheck),
    /// Refused: the last decision; with the place it held when it stopped waiting, if it waited.
    Refused {
        /// The decision.
        check: ResourceCheck,
        /// 1-based place in the queue when the deadline passed.
        queue_position: Option<usize>,
    },
    /// `queue.max_waiting` requests already wait.
    QueueFull {
        /// How many wait.
        waiting: usize,
    },
    /// Its turn came but the grant could not be recorded (the store does not take writes).
    Failed(ServiceError),
}

/// One waiting request as `GET /generations/queue` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WaitingView {
    /// 1-based.
    pub position: usize,
    /// Who asked.
    pub client: Option<String>,
    /// What it needs, GiB: its own figure, else what the last decision assumed.
    pub vram_required_gb: Option<f64>,
    /// Workload profile.
    pub workload: String,
    /// Since it joined, seconds.
    pub waited_seconds: f64,
    /// When it stops waiting, Unix seconds.
    pub deadline: f64,
    /// GPUs the job needs.
    pub gpus: u32,
    /// GPUs held for a gang nothing may pass any more: those that would take one of its ranks.
    pub holding: Vec<u32>,
}

struct Waiter {
    seq: u64,
    ask: LeaseAsk,
    workload: String,
    since: Instant,
    deadline: Instant,
    deadline_unix: f64,
    last: Option<ResourceCheck>,
    /// GPUs held for it (a gang nothing may pass any more), as the last pass found them.
    holding: Vec<u32>,
    answer: oneshot::Sender<Admission>,
}

/// The waiting requests, oldest first.
#[derive(Default)]
struct WaitQueue {
    waiters: VecDeque<Waiter>,
    next_seq: u64,
}

impl WaitQueue {
    fn position(&self, seq: u64) -> Option<usize> {
        self.waiters.iter().position(|w| w.seq == seq)
    }

    fn take(&mut self, seq: u64) -> Option<(usize, Waiter)> {
        let i = self.position(seq)?;
        self.waiters.remove(i).map(|w| (i + 1, w))
    }
}

/// Removes its waiter from the queue when the waiting handler ends for any reason, a dropped
/// connection included.
struct Leave {
    queue: Arc<Queue>,
    seq: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let left = self.queue.lock().take(self.seq).is_some();
        if left {
            // The head leaving may let the next one in.
            self.queue.inputs.room_may_have_freed();
        }
    }
}

/// The admission queue: requests waiting for room, and the passes that admit them.
pub(crate) struct Queue {
    waiters: Mutex<WaitQueue>,
    ledger: Ledger,
    inputs: Arc<Inputs>,
    metrics: Arc<Metrics>,
}

/// Whole seconds a refused waiter is told to wait before asking again: its place in the queue,
/// at least 1 and at most 60, so retries of a long queue spread out.
pub(crate) fn retry_after_seconds(queue_position: Option<usize>) -> u64 {
    queue_position.map_or(1, |p| p.clamp(1, 60) as u64)
}

impl Queue {
    /// An empty queue in front of `ledger`; the ledger's thread runs its pass at the end of every
    /// batch.
    pub(crate) fn new(ledger: Ledger, inputs: Arc<Inputs>, metrics: Arc<Metrics>) -> Arc<Self> {
        let queue = Arc::new(Self { waiters: Mutex::default(), ledger, inputs, metrics });
        let end: Arc<dyn BatchEnd> = Arc::clone(&queue) as Arc<dyn BatchEnd>;
        queue.ledger.thread().set_batch_end(Arc::downgrade(&end));
        queue
    }

    fn lock(&self) -> MutexGuard<'_, WaitQueue> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// The waiting requests in order.
    pub(crate) fn waiting_list(&self) -> Vec<WaitingView> {
        let now = Instant::now();
        self.lock()
            .waiters
            .iter()
            .enumerate()
            .map(|(i, w)| WaitingView {
                position: i + 1,
                client: w.ask.client.clone(),
                vram_required_gb: w.ask.vram_required_gb.or_else(|| w.last.as_ref().map(|c| c.vram_required_gb)),
                workload: w.workload.clone(),
                waited_seconds: now.duration_since(w.since).as_secs_f64(),
                deadline: w.deadline_unix,
                gpus: w.ask.gpus.max(1),
                holding: w.holding.clone(),
            })
            .collect()
    }

    /// Takes a lease, waiting up to `wait_seconds` for room when the refusal can clear.
    pub(crate) async fn acquire_waiting(
        self: &Arc<Self>,
        ask: LeaseAsk,
        wait_seconds: f64,
    ) -> Result<Admission, ServiceError> {
        ask.validate()?;
        crate::limits::check_wait_seconds(wait_seconds)
            .map_err(|m| ServiceError::Invalid(format!("wait_seconds: {m}")))?;
        let workload = self.inputs.check_workload(ask.workload.as_deref())?.to_owned();
        let config = self.inputs.config();
        // An operator may hold connections for less than the API's maximum.
        let wait_seconds = wait_seconds.min(config.queue.max_wait.0.as_secs_f64());
        let started = Instant::now();
        let ahead = self.waiting();
        let outcome = if ahead == 0 {
            match self.ledger.acquire(ask.clone()).await? {
                Acquired::Granted(lease, check) => Admission::Granted(lease, check),
                Acquired::Refused(check) if wait_seconds > 0.0 && check.may_clear() => {
                    self.wait_in_line(ask, workload, started, wait_seconds).await?
                }
                Acquired::Refused(check) => Admission::Refused { check, queue_position: None },
            }
        } else if wait_seconds == 0.0 && config.queue.policy == QueuePolicy::Fifo {
            let check = self.behind_the_queue(&ask, &workload, ahead);
            self.metrics.record_decision(false, check.primary_reason());
            Admission::Refused { check, queue_position: None }
        } else {
            // Behind the others; with backfill a request that fits may still go at once.
            self.wait_in_line(ask, workload, started, wait_seconds).await?
        };
        let result = match &outcome {
            Admission::Granted(..) => "admitted",
            Admission::Refused { queue_position: Some(_), .. } => "timed_out",
            Admission::Refused { .. } => "refused",
            Admission::QueueFull { .. } => "queue_full",
            Admission::Failed(_) => "failed",
        };
        self.metrics.record_wait(result, started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    async fn wait_in_line(
        self: &Arc<Self>,
        ask: LeaseAsk,
        workload: String,
        started: Instant,
        wait_seconds: f64,
    ) -> Result<Admission, ServiceError> {
        let wait = Duration::from_secs_f64(wait_seconds);
        let (tx, mut rx) = oneshot::channel();
        let seq = {
            let max_waiting = self.inputs.config().queue.max_waiting as usize;
            let mut q = self.lock();
            if q.waiters.len() >= max_waiting {
                return Ok(Admission::QueueFull { waiting: q.waiters.len() });
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            q.waiters.push_back(Waiter {
                seq,
                ask,
                workload,
                since: started,
                deadline: started + wait,
                deadline_unix: now_unix() + wait_seconds,
                last: None,
                holding: Vec::new(),
                answer: tx,
            });
            seq
        };
        let _leave = Leave { queue: Arc::clone(self), seq };
        self.inputs.room_may_have_freed();
        // A zero wait (backfill) is answered by the pass it triggered; the grace only matters if
        // that pass fails.
        let grace = if wait.is_zero() { Duration::from_secs(2) } else { Duration::ZERO };
        let deadline = tokio::time::Instant::from_std(started + wait + grace);
        tokio::select! {
            answer = &mut rx => return waited(answer),
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let left = self.lock().take(seq);
        match left {
            Some((position, w)) => {
                self.inputs.room_may_have_freed();
                let check = match w.last {
                    Some(c) => c,
                    None => self.inputs.decide(&w.ask.request(), &w.workload),
                };
                self.metrics.record_decision(false, check.primary_reason());
                Ok(Admission::Refused { check, queue_position: Some(position) })
            }
            // The dispatcher took it just now: its answer is on the way.
            None => waited(rx.await),
        }
    }

    /// One pass over the queue in the lease critical section. Answers are sent only after the
    /// pass's lease writes are durable; a granted waiter that left in the meantime has its lease
    /// ended again.
    async fn dispatch(self: &Arc<Self>) -> Result<(), ServiceError> {
        if self.waiting() == 0 {
            if !self.inputs.holds_any() {
                return Ok(());
            }
            // The last waiter left: nothing is held any more. Cleared on the lease thread, so a
            // pass that runs meanwhile cannot have its holds wiped.
            let queue = Arc::clone(self);
            // It writes nothing, so there is no durability to wait for.
            let (_, _nothing_written) = self
                .ledger
                .critical_with("releasing held GPUs failed", move |_, _, _| {
                    if queue.waiting() == 0 {
                        queue.inputs.set_held(Vec::new());
                    }
                    Ok(())
                })
                .await?;
            return Ok(());
        }
        let queue = Arc::clone(self);
        let (answers, durable) =
            self.ledger.critical_with("waiting admission failed", move |_, store, now| queue.pass(store, now)).await?;
        deliver(&self.ledger, &self.metrics, answers, &durable);
        Ok(())
    }

    /// Decides the waiting requests in order, granting what fits (FIFO, or backfill within
    /// `max_bypass`). Runs in the lease critical section; returns the answers to send once the
    /// grants are durable.
    fn pass(&self, store: &mut Store, now: f64) -> Result<Vec<(Waiter, Admission)>, ServiceError> {
        // The holds stay in force while the pass runs (the gang held for decides without its
        // own), and are set anew from what it found.
        let answers = self.decide_in_order(store, now);
        self.inputs.set_held(self.holds());
        answers
    }

    /// VRAM held for the gang nothing may pass (if one waits): on each GPU that would take one of
    /// its ranks, its largest rank's figure.
    fn holds(&self) -> Vec<(u32, f64)> {
        let q = self.lock();
        let Some(w) = q.waiters.iter().find(|w| !w.holding.is_empty()) else { return Vec::new() };
        let gb = w.last.as_ref().map_or(0.0, |c| c.required_gb);
        w.holding.iter().map(|g| (*g, gb)).collect()
    }

    /// The pass proper: each waiter in order, as far as the policy lets it go.
    fn decide_in_order(&self, store: &mut Store, now: f64) -> Result<Vec<(Waiter, Admission)>, ServiceError> {
        let order: Vec<u64> = self.lock().waiters.iter().map(|w| w.seq).collect();
        let config = self.inputs.config();
        let (policy, max_bypass) = (config.queue.policy, config.queue.max_bypass.0);
        let mut head_since: Option<Instant> = None;
        let mut answers: Vec<(Waiter, Admission)> = Vec::new();
        for seq in order {
            let Some((ask, workload, since, deadline, closed)) =
                self.lock().waiters.iter().find(|w| w.seq == seq).map(|w| {
                    let ask = LeaseAsk { holds_own: !w.holding.is_empty(), ..w.ask.clone() };
                    (ask, w.workload.clone(), w.since, w.deadline, w.answer.is_closed())
                })
            else {
                continue;
            };
            if closed {
                self.lock().take(seq);
                continue;
            }
            let may_try = match head_since {
                None => true,
                Some(h) => policy == QueuePolicy::Backfill && h.elapsed() < max_bypass,
            };
            let expired = deadline <= Instant::now();
            if !may_try {
                if expired {
                    // A zero-wait request behind a head nothing may overtake.
                    let ahead = self.lock().position(seq).unwrap_or(0);
                    let check = self.behind_the_queue(&ask, &workload, ahead);
                    claim(self, seq, &mut answers, |_| Admission::Refused { check, queue_position: None });
                }
                continue;
            }
            let decided = match self.ledger.grant_or_refuse(store, now, &ask, &workload) {
                Ok(d) => d,
                Err(e) => {
                    // Told now rather than left to its deadline; the others wait on.
                    claim(self, seq, &mut answers, |_| Admission::Failed(e));
                    continue;
                }
            };
            match decided {
                Acquired::Granted(lease, check) => {
                    let id = lease.id.clone();
                    if !claim(self, seq, &mut answers, |_| Admission::Granted(lease, check)) {
                        // Its client left between the check and the grant.
                        self.ledger.end_unclaimed(store, &id)?;
                    }
                }
                Acquired::Refused(check) if !check.may_clear() => {
                    claim(self, seq, &mut answers, |_| Admission::Refused { check, queue_position: None });
                }
                Acquired::Refused(check) if expired => {
                    claim(self, seq, &mut answers, |position| Admission::Refused {
                        check,
                        queue_position: Some(position),
                    });
                }
                Acquired::Refused(check) => {
                    // The first request that waits on blocks the ones behind it: under fifo at
                    // once, under backfill once it waited max_bypass. A gang's GPUs that would
                    // take a rank are then held for it (shown as `holding`).
                    let blocks = head_since.is_none() && (policy == QueuePolicy::Fifo || since.elapsed() >= max_bypass);
                    if let Some(w) = self.lock().waiters.iter_mut().find(|w| w.seq == seq) {
                        w.holding = if blocks { check.gang_fitting.clone() } else { Vec::new() };
                        w.last = Some(check);
                    }
                    head_since.get_or_insert(since);
                }
            }
        }
        Ok(answers)
    }
}

impl BatchEnd for Queue {
    /// The queue's pass at the end of a batch of the lease thread, in the same transaction: a
    /// slot a release in this batch freed goes to the head of the queue with the same fsync.
    fn after_jobs(&self, store: &mut Store) -> Option<Finish> {
        if self.waiting() == 0 {
            self.inputs.set_held(Vec::new());
            return None;
        }
        let answers = self.pass(store, now_unix());
        let (ledger, metrics) = (self.ledger.clone(), Arc::clone(&self.metrics));
        Some(Box::new(move |durable| match answers {
            Ok(answers) => deliver(&ledger, &metrics, answers, durable),
            Err(e) => tracing::warn!(error = %e, "waiting admission pass failed"),
        }))
    }
}

/// Sends a pass's answers once its batch settled: a grant whose batch did not commit was rolled
/// back, and its waiter hears why. A grant whose waiter left is ended again.
fn deliver(ledger: &Ledger, metrics: &Metrics, answers: Vec<(Waiter, Admission)>, durable: &Result<(), ServiceError>) {
    {
        let answers = answers.into_iter().map(|(waiter, outcome)| match (durable, outcome) {
            (Err(e), Admission::Granted(..)) => (waiter, Admission::Failed(e.clone())),
            (_, outcome) => (waiter, outcome),
        });
        for (waiter, outcome) in answers {
            let granted = match &outcome {
                Admission::Granted(lease, _) => Some(lease.id.clone()),
                _ => None,
            };
            if let Admission::Granted(_, c) | Admission::Refused { check: c, .. } = &outcome {
                metrics.record_decision(granted.is_some(), c.primary_reason());
            }
            let delivered = waiter.answer.send(outcome).is_ok();
            // The grant is logged by the waiter's own task (`waited`), off the lease thread.
            if let (Some(id), false) = (granted, delivered) {
                ledger.submit("ending an unclaimed lease failed", move |l, store| l.end_unclaimed(store, &id))
            }
        }
    }
}

/// The answer a waiter received from a pass over the queue.
fn waited(answer: Result<Admission, oneshot::error::RecvError>) -> Result<Admission, ServiceError> {
    let answer = answer.map_err(|e| ServiceError::failed("waiting admission failed", e))?;
    if let Admission::Granted(lease, _) = &answer {
        tracing::debug!(id = %lease.id, "waiting generation lease granted");
        tracing::info!(lease = %lease.label(), "waiting generation lease granted");
    }
    Ok(answer)
}

/// Takes waiter `seq` out of the queue and queues the answer `make` builds from its 1-based
/// position, to be sent once the pass is durable. False when the waiter is gone (its client
/// left).
fn claim(q: &Queue, seq: u64, answers: &mut Vec<(Waiter, Admission)>, make: impl FnOnce(usize) -> Admission) -> bool {
    let taken = q.lock().take(seq);
    match taken {
        Some((position, w)) if !w.answer.is_closed() => {
            let outcome = make(position);
            answers.push((w, outcome));
            true
        }
        _ => false,
    }
}

impl Queue {
    /// The decision for `ask`, refused because `ahead` requests wait and may not be overtaken.
    fn behind_the_queue(&self, ask: &LeaseAsk, workload: &str, ahead: usize) -> ResourceCheck {
        let mut check = self.inputs.decide(&ask.request(), workload);
        check.refuse(Reason::Queue, waiting_ahead(ahead));
        check
    }
}

/// The blocking issue of a request that may not overtake the queue.
fn waiting_ahead(n: usize) -> String {
    match n {
        1 => "1 generation is waiting ahead".to_owned(),
        n => format!("{n} generations are waiting ahead"),
    }
}

/// Passes over the queue on every wake-up and every new snapshot until `stop` flips. Waiters
/// time themselves out, so the dispatcher only runs when something changed.
pub(crate) async fn dispatcher(queue: Arc<Queue>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut snapshots = queue.inputs.snapshots.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = queue.inputs.room.notified() => {}
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        if let Err(e) = queue.dispatch().await {
            tracing::warn!(error = %e, "waiting admission pass failed");
        }
    }
}
