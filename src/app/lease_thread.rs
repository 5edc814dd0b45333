//! The lease thread: one thread, `vramguard-commit`, runs every lease critical section and
//! group-commits their writes. It takes whatever jobs are waiting, runs them one after another under the writers'
//! lock into one open transaction, commits that transaction once (one fsync for all of them),
//! and only then answers each job. While it commits, the next jobs gather in its channel, so the
//! batch grows with the load by itself: no timer, no batch size to tune.
//!
//! A job is a closure from [`AppState::batched`]; what it returns is sent back once the batch
//! holding its writes is durable or rolled back. A job that panics loses only its own answer
//! (its caller gets an error); the thread goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::PoisonError;
use std::sync::mpsc::{Receiver, Sender, channel};

use super::{AppState, ServiceError};
use crate::store::Store;

/// What the thread calls once a job's batch is settled: with `Ok(())` when the job's writes are
/// durable, or the reason they are not.
pub(super) type Finish = Box<dyn FnOnce(&Result<(), ServiceError>) + Send>;

/// One lease critical section: runs under the writers' lock, returns how to answer.
pub(super) type Job = Box<dyn FnOnce(&AppState, &mut Store) -> Finish + Send>;

/// Jobs run in one transaction at most: enough to carry every connection a server holds at once,
/// few enough that a waiting writer of another kind (settings, history) is not starved.
const MAX_BATCH: usize = 512;

/// The sending side of the commit thread, held by the shared state.
pub(super) struct Committer {
    tx: Sender<(AppState, Job)>,
}

impl Committer {
    /// Starts the thread. It ends when the last `Committer` is dropped (the shared state with
    /// it), after answering what it already took.
    pub(super) fn start() -> std::io::Result<Self> {
        let (tx, rx) = channel();
        std::thread::Builder::new().name("vramguard-commit".to_owned()).spawn(move || run(rx))?;
        Ok(Self { tx })
    }

    /// Hands `job` to the thread; false when the thread is gone.
    pub(super) fn submit(&self, state: AppState, job: Job) -> bool {
        self.tx.send((state, job)).is_ok()
    }
}

fn run(rx: Receiver<(AppState, Job)>) {
    while let Ok(first) = rx.recv() {
        let state = first.0.clone();
        let mut finishes: Vec<Finish> = Vec::new();
        {
            let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
            let mut next = Some(first);
            while let Some((st, job)) = next.take() {
                // A panicking job drops its own answer channel, and its caller hears of it.
                if let Ok(finish) = catch_unwind(AssertUnwindSafe(|| job(&st, &mut store))) {
                    finishes.push(finish);
                }
                if finishes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            // Requests waiting for room are decided again in the same transaction, so a slot a
            // release in this batch freed is granted with the same fsync.
            if state.waiting() > 0
                && let Ok(finish) = catch_unwind(AssertUnwindSafe(|| state.pass_in_batch(&mut store)))
            {
                finishes.push(finish);
            }
            let durable = if store.batch_open() { state.commit_leases(&mut store) } else { Ok(()) };
            drop(store);
            for finish in finishes.drain(..) {
                finish(&durable);
            }
        }
        state.log_store_transition();
    }
}
