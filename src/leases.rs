//! Generation leases: the in-memory book of who holds a generation slot and which VRAM was
//! promised to them. Pure data and arithmetic on explicit `now` values; persistence is the
//! store's job and the critical section that changes the book is [`crate::app::ledger`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One granted lease. Times are Unix seconds, so they keep counting across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// 32 lowercase hex digits.
    pub id: String,
    /// GPU index the job was placed on (None on a GPU-less host).
    pub gpu_index: Option<u32>,
    /// That GPU's UUID.
    pub gpu_uuid: Option<String>,
    /// VRAM promised to the job, GiB.
    pub vram_reserved_gb: f64,
    /// When it was granted.
    pub granted_at: f64,
    /// When it lapses unless a heartbeat extends it.
    pub expires_at: f64,
    /// Lifetime a heartbeat renews, seconds.
    pub ttl_seconds: u64,
    /// Free-form name of the caller.
    pub client: Option<String>,
}

impl Lease {
    /// Whether the lease still holds a slot at `now`.
    pub fn is_live(&self, now: f64) -> bool {
        self.expires_at > now
    }

    /// Whether its VRAM still counts against its GPU at `now`: for `grace` after the grant, the
    /// pipeline is still loading and NVML does not show the memory yet.
    pub fn reserves(&self, now: f64, grace: Duration) -> bool {
        self.is_live(now) && now < self.granted_at + grace.as_secs_f64()
    }
}

/// Every lease known, by id.
#[derive(Debug, Default, Clone)]
pub struct LeaseBook {
    leases: BTreeMap<String, Lease>,
}

impl LeaseBook {
    /// A book holding `leases`.
    pub fn from_leases(leases: impl IntoIterator<Item = Lease>) -> Self {
        Self { leases: leases.into_iter().map(|l| (l.id.clone(), l)).collect() }
    }

    /// Leases live at `now`, oldest first.
    pub fn live(&self, now: f64) -> Vec<&Lease> {
        let mut v: Vec<&Lease> = self.leases.values().filter(|l| l.is_live(now)).collect();
        v.sort_by(|a, b| a.granted_at.total_cmp(&b.granted_at).then(a.id.cmp(&b.id)));
        v
    }

    /// How many leases are live at `now`.
    pub fn active(&self, now: f64) -> u32 {
        self.leases.values().filter(|l| l.is_live(now)).count() as u32
    }

    /// GiB reserved per GPU index at `now`.
    pub fn reservations(&self, now: f64, grace: Duration) -> Vec<(u32, f64)> {
        self.leases
            .values()
            .filter(|l| l.reserves(now, grace))
            .filter_map(|l| l.gpu_index.map(|g| (g, l.vram_reserved_gb)))
            .collect()
    }

    /// Ids of leases that lapsed by `now`.
    pub fn expired(&self, now: f64) -> Vec<String> {
        self.leases.values().filter(|l| !l.is_live(now)).map(|l| l.id.clone()).collect()
    }

    /// A live lease by id.
    pub fn get_live(&self, id: &str, now: f64) -> Option<&Lease> {
        self.leases.get(id).filter(|l| l.is_live(now))
    }

    /// Adds or replaces a lease.
    pub fn insert(&mut self, lease: Lease) {
        self.leases.insert(lease.id.clone(), lease);
    }

    /// Removes a lease.
    pub fn remove(&mut self, id: &str) -> Option<Lease> {
        self.leases.remove(id)
    }
}

/// A fresh lease id: 128 random bits from the kernel, as 32 hex digits.
pub fn new_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    if !filled {
        // No /dev/urandom (not Linux): time and a counter still give unique ids in-process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the shape of a lease id.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, gpu: u32, gb: f64, granted: f64, expires: f64) -> Lease {
        Lease {
            id: id.to_owned(),
            gpu_index: Some(gpu),
            gpu_uuid: None,
            vram_reserved_gb: gb,
            granted_at: granted,
            expires_at: expires,
            ttl_seconds: 60,
            client: None,
        }
    }

    #[test]
    fn live_active_and_expired_follow_now() {
        let book = LeaseBook::from_leases([lease("a", 0, 1.0, 0.0, 100.0), lease("b", 0, 1.0, 0.0, 50.0)]);
        assert_eq!(book.active(10.0), 2);
        assert_eq!(book.active(50.0), 1); // at expires_at it has lapsed
        assert_eq!(book.expired(60.0), vec!["b".to_owned()]);
        assert!(book.get_live("b", 60.0).is_none());
        assert!(book.get_live("a", 60.0).is_some());
    }

    #[test]
    fn reservations_last_for_the_grace_period() {
        let book = LeaseBook::from_leases([lease("a", 0, 10.0, 100.0, 1000.0), lease("b", 1, 2.0, 100.0, 1000.0)]);
        let grace = Duration::from_secs(60);
        let mut r = book.reservations(120.0, grace);
        r.sort_by_key(|(g, _)| *g);
        assert_eq!(r, vec![(0, 10.0), (1, 2.0)]);
        assert!(book.reservations(160.0, grace).is_empty());
    }

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert!(!is_valid_id("xyz"));
        assert!(!is_valid_id(&a.to_uppercase()));
    }
}
