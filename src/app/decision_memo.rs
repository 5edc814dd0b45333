//! A memo of decisions (not HTTP answers): each kept until what it was decided from changes. A resource-check answer and the
//! policy's part of the exposition are pure functions of the latest snapshot, the configuration,
//! the live settings, the lease book and the observed peaks (and of the query). Between two
//! samples those rarely change, while the same question may be asked thousands of times a
//! second, so an answer is computed once per [`Stamp`] and served again until the stamp moves.
//!
//! The stamp holds the snapshot and the configuration themselves (compared by pointer, and kept
//! alive so a new one can never reuse an old address) and a version that every change of the
//! settings, the leases or the observations bumps after it is made. A reader takes the stamp
//! before it reads the state, so an answer is never filed under a stamp newer than its inputs.
//! Leases also lapse with time alone: an answer that saw live leases is kept only until the
//! first of them expires.
//!
//! Filing an answer costs (a copy of the question, a lock every reader waits on, a clearing when
//! full), which only pays when the question comes again. Where the askers decide ([`Asked`]), an
//! answer is kept from the second time its question is asked lately: a crowd of distinct
//! questions (a pipeline sizing many jobs) files nothing, and a question asked in a loop is
//! decided twice, then served.
//!
//! Questions are hashed with foldhash (randomly seeded per process) rather than SipHash: a
//! question is hashed twice on every asking, and a collision costs at most an answer not kept
//! (`Asked`) or a longer probe among at most [`MAX_KEPT`] answers.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use foldhash::fast::RandomState;

use crate::config::Config;
use crate::snapshot::Snapshot;
use crate::time::now_unix;

/// What a kept answer was decided from.
#[derive(Clone)]
pub(crate) struct Stamp {
    snapshot: Option<Arc<Snapshot>>,
    config: Arc<Config>,
    version: u64,
}

impl Stamp {
    /// The snapshot the stamp was taken on.
    pub(crate) fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// The configuration the stamp was taken on.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        let same_snapshot = match (&self.snapshot, &other.snapshot) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_snapshot && Arc::ptr_eq(&self.config, &other.config) && self.version == other.version
    }
}

/// Kept answers of one kind (`V`), by the question (a query string, a label).
pub(crate) struct Kept<V> {
    table: RwLock<Option<Table<V>>>,
}

struct Table<V> {
    stamp: Stamp,
    answers: HashMap<String, (V, f64), RandomState>,
}

/// Questions kept per stamp: clients ask a handful; a crowd of distinct ones starts over.
const MAX_KEPT: usize = 64;

impl<V> Default for Kept<V> {
    fn default() -> Self {
        Self { table: RwLock::new(None) }
    }
}

impl<V: Clone> Kept<V> {
    /// The answer to `question` decided under `stamp`, if one is kept and still valid now.
    pub(crate) fn get(&self, stamp: &Stamp, question: &str) -> Option<V> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let table = table.as_ref().filter(|t| t.stamp == *stamp)?;
        let (answer, valid_until) = table.answers.get(question)?;
        (now_unix() < *valid_until).then(|| answer.clone())
    }

    /// Keeps `answer` to `question`, decided under `stamp` from a view whose first lease expiry
    /// is `valid_until`. An answer under an older stamp than the one kept is dropped.
    pub(crate) fn put(&self, stamp: Stamp, question: &str, answer: V, valid_until: f64) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        match table.as_mut() {
            Some(t) if t.stamp == stamp => {
                if t.answers.len() >= MAX_KEPT {
                    t.answers.clear();
                }
                t.answers.insert(question.to_owned(), (answer, valid_until));
            }
            // Kept answers from another stamp are stale by now if this one is current; if this
            // one is the stale one, the next asker files a fresh answer.
            _ => {
                let mut answers = HashMap::with_hasher(RandomState::default());
                answers.insert(question.to_owned(), (answer, valid_until));
                *table = Some(Table { stamp, answers });
            }
        }
    }
}

/// One value kept under its stamp until `valid_until` (the first expiry of a lease it saw):
/// what every decision between two changes reads, built once instead of by each.
pub(crate) struct KeptOne<V> {
    slot: RwLock<Option<(Stamp, V, f64)>>,
}

impl<V> Default for KeptOne<V> {
    fn default() -> Self {
        Self { slot: RwLock::new(None) }
    }
}

impl<V: Clone> KeptOne<V> {
    /// The value kept under `stamp`, if it is still valid at `now`.
    pub(crate) fn get(&self, stamp: &Stamp, now: f64) -> Option<V> {
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|(s, _, valid_until)| s == stamp && now < *valid_until).map(|(_, v, _)| v.clone())
    }

    /// Keeps `value`, made under `stamp` and valid until `valid_until`, in place of the last.
    pub(crate) fn put(&self, stamp: Stamp, value: V, valid_until: f64) {
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = Some((stamp, value, valid_until));
    }
}

/// The questions asked lately, by their hash in one of [`ASKED`] slots: a question whose slot
/// another one took since is asked "for the first time" again.
pub(crate) struct Asked {
    hasher: RandomState,
    slots: Box<[AtomicU64]>,
}

/// Slots of [`Asked`]: four times the answers kept, so a question asked again within a few
/// hundred others is still known.
const ASKED: usize = 4 * MAX_KEPT;

impl Default for Asked {
    fn default() -> Self {
        Self { hasher: RandomState::default(), slots: (0..ASKED).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Asked {
    /// Notes that `question` is asked; whether it was asked lately before this.
    pub(crate) fn again(&self, question: &str) -> bool {
        // Never 0, the empty slot.
        let hash = self.hasher.hash_one(question) | 1;
        // The slot from the hash's high bits, the low bit being forced.
        let slot = &self.slots[(hash >> 32) as usize % ASKED];
        slot.swap(hash, Ordering::Relaxed) == hash
    }
}

/// The version of the decision inputs besides the snapshot and the configuration: bumped after
/// every change of the live settings, the lease book or the observed peaks.
#[derive(Debug, Default)]
pub(crate) struct Version(AtomicU64);

impl Version {
    /// Marks the inputs changed: call after the change is made.
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Stamp {
    /// The stamp of inputs now: take it before reading them, so an answer is never filed under a
    /// stamp newer than what it was decided from.
    pub(crate) fn take(version: &Version, snapshot: Option<Arc<Snapshot>>, config: Arc<Config>) -> Self {
        Stamp { version: version.now(), snapshot, config }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(config: &Arc<Config>, version: u64) -> Stamp {
        Stamp { snapshot: None, config: Arc::clone(config), version }
    }

    #[test]
    fn an_answer_is_served_under_its_stamp_until_it_lapses() {
        let config = Arc::new(Config::default());
        let kept: Kept<u32> = Kept::default();
        let now = now_unix();
        kept.put(stamp(&config, 1), "q", 7, f64::INFINITY);
        assert_eq!(kept.get(&stamp(&config, 1), "q"), Some(7));
        assert_eq!(kept.get(&stamp(&config, 1), "other"), None);
        // Any input changed: not served.
        assert_eq!(kept.get(&stamp(&config, 2), "q"), None);
        assert_eq!(kept.get(&stamp(&Arc::new(Config::default()), 1), "q"), None, "another configuration");
        // A lease that lapsed since: not served, though no input was written.
        kept.put(stamp(&config, 1), "lapsing", 8, now - 0.001);
        assert_eq!(kept.get(&stamp(&config, 1), "lapsing"), None);
        // A newer stamp starts over; the old answers are gone with it.
        kept.put(stamp(&config, 2), "q", 9, f64::INFINITY);
        assert_eq!(kept.get(&stamp(&config, 2), "q"), Some(9));
        assert_eq!(kept.get(&stamp(&config, 1), "q"), None);
    }

    #[test]
    fn one_value_is_kept_under_its_stamp_until_it_lapses() {
        let config = Arc::new(Config::default());
        let kept: KeptOne<u32> = KeptOne::default();
        assert_eq!(kept.get(&stamp(&config, 1), 0.0), None);
        kept.put(stamp(&config, 1), 7, 10.0);
        assert_eq!(kept.get(&stamp(&config, 1), 9.9), Some(7));
        assert_eq!(kept.get(&stamp(&config, 1), 10.0), None, "lapsed");
        assert_eq!(kept.get(&stamp(&config, 2), 0.0), None, "another stamp");
        kept.put(stamp(&config, 2), 8, f64::INFINITY);
        assert_eq!(kept.get(&stamp(&config, 1), 0.0), None, "replaced");
        assert_eq!(kept.get(&stamp(&config, 2), 1e12), Some(8));
    }

    #[test]
    fn a_question_is_asked_again_until_others_take_its_place() {
        let asked = Asked::default();
        assert!(!asked.again("q"), "first asking");
        assert!(asked.again("q"), "second asking");
        assert!(asked.again("q"));
        // A crowd of other questions takes every slot: "q" is new again.
        for i in 0..ASKED * 8 {
            asked.again(&i.to_string());
        }
        assert!(!asked.again("q"), "forgotten after a crowd");
        assert!(asked.again("q"));
    }

    #[test]
    fn a_crowd_of_questions_starts_over() {
        let config = Arc::new(Config::default());
        let kept: Kept<usize> = Kept::default();
        for i in 0..=MAX_KEPT {
            kept.put(stamp(&config, 1), &i.to_string(), i, f64::INFINITY);
        }
        assert_eq!(kept.get(&stamp(&config, 1), "0"), None, "cleared when full");
        assert_eq!(kept.get(&stamp(&config, 1), &MAX_KEPT.to_string()), Some(MAX_KEPT));
    }
}
