//! Heap trimming, and nothing else: giving freed heap memory back to the system. glibc's malloc gives each thread that contends
//! for the heap an arena of its own and keeps the free memory of every arena for reuse, so after
//! a burst of requests (tokio workers, blocking threads and the commit thread all allocate) the
//! process stays several MiB larger for good unless `MALLOC_ARENA_MAX` is set. A pass of
//! `malloc_trim` every [`EVERY`] returns free pages of all arenas to the system: at idle it finds
//! nothing to do and costs microseconds.

use std::time::Duration;

use tokio::sync::watch;

/// How often free heap memory is handed back.
const EVERY: Duration = Duration::from_secs(10);

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

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    // SAFETY: glibc declares `int malloc_trim(size_t pad)`; it takes no pointer, locks each arena
    // itself and may be called from any thread at any time, so calling it cannot be unsound.
    unsafe extern "C" {
        /// Returns free memory at the top of the heap and free pages inside every arena to the
        /// system, keeping `pad` bytes at the top.
        pub(super) safe fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
}
