//! The lease thread: one thread, `vramguard-commit`, runs every lease critical section and
//! group-commits their writes. It takes whatever jobs are waiting, runs them one after another under the writers'
//! lock into one open transaction, commits that transaction once (one fsync for all of them),
//! and only then answers each job. While it commits, the next jobs gather in its channel, so the
//! batch grows with the load by itself: no timer, no batch size to tune.
//!
//! A job is a closure from the ledger's critical section; what it returns is sent back once the batch
//! holding its writes is durable or rolled back. A job that panics loses only its own answer
//! (its caller gets an error); the thread goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock, Weak};

use super::error::ServiceError;
use super::writer::Writer;
use crate::store::Store;

/// What the thread calls once a job's batch is settled: with `Ok(())` when the job's writes are
/// durable, or the reason they are not.
pub(crate) type Finish = Box<dyn FnOnce(&Result<(), ServiceError>) + Send>;

/// One lease critical section: runs under the writers' lock, returns how to answer.
pub(crate) type Job = Box<dyn FnOnce(&mut Store) -> Finish + Send>;

/// What runs at the end of every batch, after its jobs and in the same transaction: the waiting
/// queue's pass, so a slot a release in this batch freed is granted with the same fsync. Set
/// once the queue exists ([`LeaseThread::set_batch_end`]); the queue sits above the ledger that
/// owns this thread, so the thread knows it only through this trait.
pub(crate) trait BatchEnd: Send + Sync {
    /// Runs in the batch's transaction; what it returns is called once the batch settles.
    fn after_jobs(&self, store: &mut Store) -> Option<Finish>;
}

/// Jobs run in one transaction at most: enough to carry every connection a server holds at once,
/// few enough that a waiting writer of another kind (settings, history) is not starved.
const MAX_BATCH: usize = 512;

/// The sending side of the lease thread.
pub(crate) struct LeaseThread {
    tx: Sender<Job>,
    batch_end: Arc<OnceLock<Weak<dyn BatchEnd>>>,
}

impl LeaseThread {
    /// Starts the thread over `writer`'s store. It ends when the `LeaseThread` is dropped, after
    /// answering what it already took.
    pub(crate) fn start(writer: Arc<Writer>) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let batch_end: Arc<OnceLock<Weak<dyn BatchEnd>>> = Arc::default();
        let end = Arc::clone(&batch_end);
        std::thread::Builder::new().name("vramguard-commit".to_owned()).spawn(move || run(&writer, &end, rx))?;
        Ok(Self { tx, batch_end })
    }

    /// Sets what runs at the end of every batch (once; later calls are ignored).
    pub(crate) fn set_batch_end(&self, end: Weak<dyn BatchEnd>) {
        let _ = self.batch_end.set(end);
    }

    /// Hands `job` to the thread; false when the thread is gone.
    pub(crate) fn submit(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }
}

fn run(writer: &Writer, batch_end: &OnceLock<Weak<dyn BatchEnd>>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut finishes: Vec<Finish> = Vec::new();
        {
            let mut store = writer.lock();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                // A panicking job drops its own answer channel, and its caller hears of it.
                if let Ok(finish) = catch_unwind(AssertUnwindSafe(|| job(&mut store))) {
                    finishes.push(finish);
                }
                if finishes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if let Some(end) = batch_end.get().and_then(Weak::upgrade)
                && let Ok(Some(finish)) = catch_unwind(AssertUnwindSafe(|| end.after_jobs(&mut store)))
            {
                finishes.push(finish);
            }
            let durable = if store.batch_open() { writer.commit_leases(&mut store) } else { Ok(()) };
            drop(store);
            for finish in finishes.drain(..) {
                finish(&durable);
            }
        }
        writer.log_store_transition();
    }
}
