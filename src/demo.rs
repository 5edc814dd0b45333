//! `vramguard --demo`: two simulated GPUs for a machine without one, so a newcomer sees the page,
//! the metrics and admission at work on a laptop.
//!
//! The GPUs come through the same fake NVML library the tests use (`tests/fake-nvml`), built by
//! `build.rs` and embedded in the binary. The demo writes it to a private temporary directory
//! with a `scenario.txt` beside it (the fake reads the scenario beside itself when
//! `FAKE_NVML_SCENARIO` is not set), and a thread rewrites that scenario every second: load,
//! VRAM, temperature, fans, power and energy move, and on each GPU a generation (one compute
//! process) starts and ends about once a minute. Everything from the sampler up is the real
//! code path, exactly as on a GPU box.

use std::f64::consts::TAU;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The fake NVML library, embedded at build time (empty when the build had no C compiler).
static LIBRARY: &[u8] = include_bytes!(env!("VRAMGUARD_DEMO_NVML"));

const GIB: f64 = (1u64 << 30) as f64;
/// How often the simulated hardware moves.
const STEP: Duration = Duration::from_secs(1);
/// One generation cycle per GPU: idle, then a job that loads, denoises and encodes.
const CYCLE_S: f64 = 60.0;
/// Pids above Linux's largest possible pid (`PID_MAX_LIMIT`, 2^22), so a simulated process can
/// never be mistaken for a real one on this machine.
const FIRST_PID: u32 = (1 << 22) + 1000;
/// The variable that points the fake NVML at a scenario file elsewhere.
const SCENARIO_VARIABLE: &str = "FAKE_NVML_SCENARIO";

/// The running demo: its directory and the thread that moves the hardware. Dropping it stops the
/// thread and removes the directory.
pub struct Demo {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    mover: Option<std::thread::JoinHandle<()>>,
}

impl Demo {
    /// Writes the library and a first scenario, and starts the thread that moves them.
    pub fn start() -> Result<Self, String> {
        if let Some(scenario) = std::env::var_os(SCENARIO_VARIABLE) {
            // The fake reads that file before the one beside it: the demo's GPUs would not move.
            return Err(format!(
                "{SCENARIO_VARIABLE} is set ({}), and the demo's fake NVML would read that scenario instead of its own; unset it",
                Path::new(&scenario).display()
            ));
        }
        if LIBRARY.is_empty() {
            return Err(
                "this build has no demo: the fake NVML library could not be compiled (no C compiler at build time)"
                    .to_owned(),
            );
        }
        let dir = std::env::temp_dir().join(format!("vramguard-demo-{}", std::process::id()));
        let prepare = || -> std::io::Result<()> {
            // Created here, mode 0700, and refused if it exists already: another user cannot have
            // prepared it (or a link in it) for the library this process is about to load.
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
            std::fs::write(dir.join("libnvidia-ml-demo.so"), LIBRARY)?;
            write_atomically(&dir.join("scenario.txt"), &Simulation::default().scenario())
        };
        prepare().map_err(|e| format!("cannot prepare the demo in {}: {e}", dir.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (path, flag) = (dir.join("scenario.txt"), Arc::clone(&stop));
        let mover = std::thread::Builder::new()
            .name("vramguard-demo".to_owned())
            .spawn(move || run(&path, &flag))
            .map_err(|e| format!("cannot start the demo thread: {e}"))?;
        Ok(Self { dir, stop, mover: Some(mover) })
    }

    /// The fake NVML library to load as `gpu.nvml_library`.
    pub fn library(&self) -> PathBuf {
        self.dir.join("libnvidia-ml-demo.so")
    }

    /// A state directory that goes away with the demo, so a demo never touches real state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wait for the mover (woken from its pause) so it cannot write a scenario into the
        // directory after it is removed.
        if let Some(mover) = self.mover.take() {
            mover.thread().unpark();
            let _ = mover.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(path: &Path, stop: &AtomicBool) {
    let mut sim = Simulation::default();
    let mut next = Instant::now() + STEP;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        if Instant::now() < next {
            // Woken early: by the drop (the loop ends) or spuriously (pause again).
            continue;
        }
        next += STEP;
        sim.step(STEP.as_secs_f64());
        if let Err(e) = write_atomically(path, &sim.scenario()) {
            if !stop.load(Ordering::Relaxed) {
                tracing::warn!(error = %e, "the demo could not move its GPUs");
            }
            return;
        }
    }
}

/// Write, then rename over the old file: the fake re-reads a whole scenario, never half of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// One simulated board: fixed identity, moving state.
struct Board {
    name: &'static str,
    uuid: &'static str,
    memory_gib: f64,
    power_limit_w: f64,
    idle_w: f64,
    /// The job's peak VRAM, GiB.
    job_gib: f64,
    /// Where in the cycle this board starts, seconds (the GPUs take turns).
    offset_s: f64,
    /// Its jobs' first pid (each job its own).
    first_pid: u32,
    temperature_c: f64,
    energy_mj: f64,
    power_violation_ns: f64,
    fans: usize,
}

/// What a board does at one moment of its cycle.
#[derive(Debug, PartialEq)]
struct Moment {
    /// The job's pid while one runs.
    pid: Option<u32>,
    /// VRAM in use, GiB (the driver's idle share included).
    used_gib: f64,
    /// SM busy, 0–1.
    busy: f64,
    /// Encoder busy, 0–1 (the job encodes its video at the end).
    encoding: f64,
    /// PCIe receive, KB/s (the job loads its weights at the start).
    loading_kbps: f64,
}

impl Board {
    fn moment(&self, t: f64) -> Moment {
        let cycle = ((t + self.offset_s) / CYCLE_S).floor();
        let phase = (t + self.offset_s) % CYCLE_S;
        let wobble = 0.03 * (t * TAU / 7.0).sin() + 0.02 * (t * TAU / 3.0).sin();
        let idle = Moment { pid: None, used_gib: 0.4, busy: 0.01, encoding: 0.0, loading_kbps: 0.0 };
        // Idle for the first 12 s of a cycle, a job for the rest but the last 3.
        if !(12.0..CYCLE_S - 3.0).contains(&phase) {
            return idle;
        }
        let pid = self.first_pid + cycle as u32 % 1000;
        let into = phase - 12.0;
        let (used, busy, encoding, loading) = if into < 6.0 {
            // Loading weights: VRAM climbs, PCIe busy, SMs mostly waiting.
            (self.job_gib * 0.6 * into / 6.0, 0.15, 0.0, 12_000_000.0)
        } else if into < 38.0 {
            // Denoising: near the peak, SMs flat out.
            (self.job_gib * (0.9 + 0.1 * (into * TAU / 9.0).sin().abs()), 0.95 + wobble, 0.0, 200_000.0)
        } else {
            // Decoding and encoding the video.
            (self.job_gib, 0.6 + wobble, 0.7, 50_000.0)
        };
        Moment { pid: Some(pid), used_gib: 0.4 + used, busy: busy.clamp(0.0, 1.0), encoding, loading_kbps: loading }
    }

    fn power_w(&self, m: &Moment) -> f64 {
        (self.idle_w + (self.power_limit_w - self.idle_w) * m.busy * 1.02).min(self.power_limit_w)
    }

    /// Moves temperature, energy and held-back time on by `dt` seconds at moment `m`.
    fn advance(&mut self, m: &Moment, dt: f64) {
        let power = self.power_w(m);
        let target = 32.0 + 48.0 * power / self.power_limit_w;
        self.temperature_c += (target - self.temperature_c) * (dt / 20.0).min(1.0);
        self.energy_mj += power * dt * 1000.0;
        if power >= self.power_limit_w * 0.98 {
            self.power_violation_ns += dt * 1e9 * 0.8;
        }
    }
}

/// Two boards and the clock.
struct Simulation {
    t: f64,
    boards: [Board; 2],
}

impl Default for Simulation {
    fn default() -> Self {
        let board = |name, uuid, memory_gib, power_limit_w, idle_w, job_gib, offset_s: f64, fans| Board {
            name,
            uuid,
            memory_gib,
            power_limit_w,
            idle_w,
            job_gib,
            offset_s,
            first_pid: FIRST_PID + offset_s as u32 * 100,
            temperature_c: 34.0,
            energy_mj: 0.0,
            power_violation_ns: 0.0,
            fans,
        };
        Self {
            t: 0.0,
            boards: [
                board(
                    "Demo GeForce RTX 4090 (simulated)",
                    "GPU-de000000-0000-4000-8000-000000000000",
                    24.0,
                    450.0,
                    22.0,
                    19.5,
                    48.0,
                    2,
                ),
                board(
                    "Demo L40S (simulated)",
                    "GPU-de000000-0000-4000-8000-000000000001",
                    48.0,
                    350.0,
                    35.0,
                    38.0,
                    18.0,
                    0,
                ),
            ],
        }
    }
}

impl Simulation {
    fn step(&mut self, dt: f64) {
        self.t += dt;
        let t = self.t;
        for b in &mut self.boards {
            let m = b.moment(t);
            b.advance(&m, dt);
        }
    }

    /// The fake NVML scenario of this moment (format: tests/fake-nvml/README.md).
    fn scenario(&self) -> String {
        let mut s = String::from("driver_version 550.54.15\n");
        for (i, b) in self.boards.iter().enumerate() {
            let m = b.moment(self.t);
            let power = b.power_w(&m);
            let fan = (30.0 + (b.temperature_c - 34.0) * 1.5).clamp(30.0, 100.0);
            // Writing to a String cannot fail.
            let _ = write!(
                s,
                "[gpu]\nuuid {}\nname {}\npci_bus_id 00000000:{:02X}:00.0\nmemory_total {}\nmemory_used {}\n\
                 utilization_gpu {}\nutilization_memory {}\ntemperature {}\npower_mw {}\npower_limit_mw {}\n\
                 energy_mj {}\nencoder_utilization {}\ndecoder_utilization 0\npcie_tx_kbps {}\npcie_rx_kbps {}\n\
                 pcie_link_gen 4\npcie_link_width 16\npstate {}\nviolation_power_ns {}\nviolation_thermal_ns 0\n\
                 clock_sm {}\nclock_memory 10501\nclock_event_reasons {}\nprocess_utilization supported\n",
                b.uuid,
                b.name,
                0x17 + i * 0x40,
                (b.memory_gib * GIB) as u64,
                (m.used_gib * GIB) as u64,
                (m.busy * 100.0).round(),
                (m.busy * 55.0).round(),
                b.temperature_c.round(),
                (power * 1000.0) as u64,
                (b.power_limit_w * 1000.0) as u64,
                b.energy_mj as u64,
                (m.encoding * 100.0).round(),
                (m.loading_kbps / 40.0) as u64,
                m.loading_kbps as u64,
                if m.pid.is_some() { 0 } else { 8 },
                b.power_violation_ns as u64,
                if m.pid.is_some() { 2520 } else { 210 },
                if m.pid.is_none() {
                    "gpu_idle"
                } else if power >= b.power_limit_w * 0.98 {
                    "sw_power_cap"
                } else {
                    "none"
                },
            );
            if b.fans > 0 {
                let speeds = vec![format!("{}", fan.round()); b.fans].join(",");
                let _ = writeln!(s, "fans {speeds}");
            }
            if let Some(pid) = m.pid {
                let job = ((m.used_gib - 0.4) * GIB) as u64;
                let _ = writeln!(s, "process {pid} {job}\nprocess_sm {pid} {}", (m.busy * 100.0).round());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_starts_and_ends_every_cycle() {
        let sim = Simulation::default();
        let b = &sim.boards[0];
        let running: Vec<bool> = (0..120).map(|t| b.moment(f64::from(t)).pid.is_some()).collect();
        let starts = running.windows(2).filter(|w| !w[0] && w[1]).count();
        let ends = running.windows(2).filter(|w| w[0] && !w[1]).count();
        assert_eq!((starts, ends), (2, 2), "{running:?}");
        // Each generation is its own process, and it never claims more VRAM than the board has.
        let pids: std::collections::BTreeSet<u32> = (0..120).filter_map(|t| b.moment(f64::from(t)).pid).collect();
        assert_eq!(pids.len(), starts + usize::from(running[0]), "one pid per generation, the one running at 0 too");
        assert!((0..120).all(|t| b.moment(f64::from(t)).used_gib < b.memory_gib));
    }

    #[test]
    fn the_figures_move_and_counters_only_grow() {
        let mut sim = Simulation::default();
        let first = sim.scenario();
        let mut energy = 0.0;
        for _ in 0..90 {
            sim.step(1.0);
            assert!(sim.boards[0].energy_mj > energy);
            energy = sim.boards[0].energy_mj;
        }
        let later = sim.scenario();
        assert_ne!(first, later);
        assert_eq!(later.matches("[gpu]").count(), 2);
        assert!(sim.boards.iter().all(|b| b.temperature_c > 30.0 && b.temperature_c < 85.0));
    }
}
