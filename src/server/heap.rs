//! What the process does about glibc's heap, and nothing else: fewer arenas, and freed memory
//! given back to the system.
//!
//! glibc's malloc gives each thread that allocates an arena of its own (up to eight per core)
//! and keeps the free memory of every arena for reuse, so after a burst of requests (the tokio
//! worker, blocking threads, the commit and XID threads all allocate) the process stays larger
//! for good. Two measures, each measured in BENCHMARKS.md:
//! - [`cap_arenas`]: two arenas for the whole process, as `deploy/vramguard.service` had set
//!   `MALLOC_ARENA_MAX=2` for every install under systemd; an operator's own `MALLOC_ARENA_MAX`
//!   (or glibc tunable) wins. One request worker is the default, so two arenas cost little
//!   contention;
//! - [`trim_heap`]: a pass of `malloc_trim` every [`EVERY`] returns free pages of all arenas to
//!   the system: at idle it finds nothing to do and costs microseconds.

use std::time::Duration;

use tokio::sync::watch;

/// How often free heap memory is handed back.
const EVERY: Duration = Duration::from_secs(10);

/// The arenas the process allocates from when the environment does not say.
const ARENAS: i32 = 2;

/// Caps glibc's arenas at [`ARENAS`] unless `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` sets them.
/// Called before the runtime starts its threads: a thread keeps the arena it first took.
pub(crate) fn cap_arenas() {
    let set_outside = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if !set_outside {
        set_arena_max(ARENAS);
    }
}

/// Trims the heap every [`EVERY`] until `stop` flips.
pub(super) async fn trim_heap(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => release_free_memory(),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    glibc::malloc_trim(0);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) {
    // mallopt answers 0 for a value it refuses; glibc takes any positive arena count.
    glibc::mallopt(glibc::M_ARENA_MAX, arenas);
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    use std::ffi::c_int;

    /// `mallopt`'s parameter for the most arenas (glibc's malloc.h).
    pub(super) const M_ARENA_MAX: c_int = -8;

    // SAFETY: glibc declares `int malloc_trim(size_t pad)` and `int mallopt(int param, int
    // value)`; neither takes a pointer, both lock what they change themselves and may be called
    // from any thread at any time, so calling them cannot be unsound.
    unsafe extern "C" {
        /// Returns free memory at the top of the heap and free pages inside every arena to the
        /// system, keeping `pad` bytes at the top.
        pub(super) safe fn malloc_trim(pad: usize) -> c_int;
        /// Sets one of malloc's parameters; 1 on success.
        pub(super) safe fn mallopt(param: c_int, value: c_int) -> c_int;
    }
}
