//! XID events: a dedicated thread blocks in NVML's event wait and counts each XID per GPU, so the
//! GPU collector only copies counts out of shared memory and never waits for an event.
//!
//! The thread owns its own NVML handle (nvmlInit is reference counted) and one event set with
//! every GPU that accepts `CRITICAL_XID_ERROR` registered. It waits [`WAIT`] at a time, so it
//! notices a stop request or a changed set of GPUs within that; nothing waits for the thread to
//! finish (a driver call that hangs there cannot hold up shutdown). A GPU that refuses
//! registration is left out: nvml-wrapper frees the set when a registration fails, so the set is
//! rebuilt with the GPUs that had accepted. Counts are kept by UUID, so they follow a GPU across
//! re-initialisation and index changes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};

use crate::snapshot::XidSeen;

/// Longest single event wait: bounds how late a stop or a new GPU is noticed (events themselves
/// wake the wait at once). Each wait that times out costs a wake-up, so it is not shorter.
const WAIT: Duration = Duration::from_secs(1);
/// NVML's own code for an XID it cannot name.
const UNKNOWN_XID: u64 = 999;
const RETRY_START: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Handle to the watcher thread; dropping it asks the thread to stop.
pub(super) struct XidWatcher {
    library: Option<PathBuf>,
    shared: Arc<Shared>,
    started: bool,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// UUIDs the collector saw on its last pass: the GPUs to watch.
    wanted: Vec<String>,
    /// XIDs seen per GPU UUID, by code: (count, last seen).
    seen: HashMap<String, BTreeMap<u64, (u64, SystemTime)>>,
}

impl XidWatcher {
    pub(super) fn new(library: Option<PathBuf>) -> Self {
        Self { library, shared: Arc::default(), started: false }
    }

    /// Tells the watcher which GPUs are present (starting its thread the first time).
    pub(super) fn follow(&mut self, uuids: &[String]) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.wanted != uuids {
                state.wanted = uuids.to_vec();
            }
        }
        if !self.started && !uuids.is_empty() {
            self.started = true;
            let shared = Arc::clone(&self.shared);
            let library = self.library.clone();
            let spawned =
                std::thread::Builder::new().name("vramguard-xid".to_owned()).spawn(move || run(&library, &shared));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the XID event thread; XIDs are not counted");
            }
        }
    }

    /// XIDs seen on the GPU `uuid`, by code.
    pub(super) fn seen(&self, uuid: &str) -> Vec<XidSeen> {
        let state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .seen
            .get(uuid)
            .map(|m| m.iter().map(|(&xid, &(count, last_seen))| XidSeen { xid, count, last_seen }).collect())
            .unwrap_or_default()
    }
}

impl Drop for XidWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// The thread: one watch session after another until stopped. A session ends when the set of
/// GPUs changes (watch the new one) or NVML fails (retry with backoff).
fn run(library: &Option<PathBuf>, shared: &Shared) {
    let mut retry = RETRY_START;
    let mut last_error: Option<String> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let wanted = shared.state.lock().unwrap_or_else(PoisonError::into_inner).wanted.clone();
        if wanted.is_empty() {
            pause(shared, WAIT);
            continue;
        }
        match session(library, shared, &wanted) {
            Ok(()) => {
                retry = RETRY_START;
                last_error = None;
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "XID event watch failed; retrying with backoff");
                }
                last_error = Some(message);
                pause(shared, retry);
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Sleeps up to `d`, waking early for a stop.
fn pause(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(WAIT.min(until.saturating_duration_since(Instant::now())));
    }
}

/// Registers the wanted GPUs and counts their XIDs until stopped or the wanted GPUs change.
fn session(library: &Option<PathBuf>, shared: &Shared, wanted: &[String]) -> Result<(), NvmlError> {
    let mut builder = Nvml::builder();
    if let Some(lib) = library {
        builder.lib_path(OsStr::new(lib.as_os_str()));
    }
    let nvml = builder.init()?;
    let mut devices = Vec::new();
    for index in 0..nvml.device_count()? {
        // A GPU that cannot be opened now is the collector's business; watch the others.
        if let Ok(device) = nvml.device_by_index(index)
            && let Ok(uuid) = device.uuid()
            && wanted.contains(&uuid)
        {
            devices.push((index, uuid, device));
        }
    }
    let Some(set) = register(&nvml, &devices)? else {
        // No GPU accepts XID events: nothing to wait on until the GPUs change.
        while !shared.stop.load(Ordering::SeqCst) && !changed(shared, wanted) {
            pause(shared, WAIT);
        }
        return Ok(());
    };
    while !shared.stop.load(Ordering::SeqCst) && !changed(shared, wanted) {
        match set.wait(WAIT.as_millis() as u32) {
            Ok(event) => record(shared, &event.device, event.event_data),
            Err(NvmlError::Timeout) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One event set with every GPU in `devices` that accepts XID events; `None` when none does.
fn register<'n>(nvml: &'n Nvml, devices: &[(u32, String, Device<'n>)]) -> Result<Option<EventSet<'n>>, NvmlError> {
    let mut set = nvml.create_event_set()?;
    let mut accepted: Vec<&Device<'n>> = Vec::new();
    let mut watched = Vec::new();
    for (index, uuid, device) in devices {
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                accepted.push(device);
                watched.push(*index);
            }
            Err(e) => {
                tracing::info!(gpu = index, uuid = %uuid, error = %e.error, "GPU refuses XID event registration; its XIDs are not counted");
                // The failed registration freed the set and with it the earlier registrations.
                set = nvml.create_event_set()?;
                for d in &accepted {
                    set = d.register_events(EventTypes::CRITICAL_XID_ERROR, set).map_err(|e| e.error)?;
                }
            }
        }
    }
    if accepted.is_empty() {
        return Ok(None);
    }
    tracing::info!(gpus = ?watched, "watching XID events");
    Ok(Some(set))
}

fn changed(shared: &Shared, wanted: &[String]) -> bool {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner).wanted != wanted
}

fn record(shared: &Shared, device: &Device<'_>, data: Option<XidError>) {
    let Some(data) = data else { return };
    let xid = match data {
        XidError::Value(v) => v,
        XidError::Unknown => UNKNOWN_XID,
    };
    let Ok(uuid) = device.uuid() else {
        tracing::warn!(xid, "XID event from a GPU that no longer answers; not counted");
        return;
    };
    tracing::warn!(xid, uuid = %uuid, "XID event");
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = state.seen.entry(uuid).or_default().entry(xid).or_insert((0, SystemTime::now()));
    entry.0 += 1;
    entry.1 = SystemTime::now();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_back_by_uuid() {
        let w = XidWatcher::new(None);
        {
            let mut state = w.shared.state.lock().unwrap();
            let t = SystemTime::UNIX_EPOCH;
            state.seen.entry("GPU-a".to_owned()).or_default().insert(79, (2, t));
        }
        assert_eq!(w.seen("GPU-a"), [XidSeen { xid: 79, count: 2, last_seen: SystemTime::UNIX_EPOCH }]);
        assert!(w.seen("GPU-b").is_empty());
    }

    #[test]
    fn dropping_the_handle_stops_the_thread() {
        let w = XidWatcher::new(None);
        let shared = Arc::clone(&w.shared);
        drop(w);
        assert!(shared.stop.load(Ordering::SeqCst));
    }
}
