//! `vramguard run`: the lease loop for any program, in any language. Takes a (waiting) lease,
//! starts the command on the lease's GPU, names its pid (vramguard follows its process tree),
//! heartbeats at a third of the TTL, forwards SIGINT, SIGTERM and SIGHUP, and releases with the
//! job's outcome when the command exits, ending with the command's exit status.
//!
//! Exit statuses of its own (sysexits.h): 75 refused (the blocking issues on stderr), 69
//! vramguard unreachable, 77 token refused, 64 a request vramguard would not take, 127 the
//! command could not be started.

mod api;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use self::api::{Api, Granted};
use crate::config::Dur;
use crate::leases::Outcome;
use crate::sampler::client_identity;

/// The flags of `vramguard run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// vramguard's address (default: $VRAMGUARD_URL, else http://127.0.0.1:9842).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// A file holding the bearer token (a client or admin token).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// VRAM the job needs, GiB (default: vramguard's estimate for the workload).
    #[arg(long, value_name = "GB")]
    vram_gb: Option<f64>,
    /// Workload profile (default: `default`).
    #[arg(long, value_name = "NAME")]
    workload: Option<String>,
    /// The worker already holds its model.
    #[arg(long)]
    model_loaded: bool,
    /// Only this GPU index may be used.
    #[arg(long, value_name = "N", conflicts_with = "gpus")]
    gpu: Option<u32>,
    /// GPUs the one job is sharded over (e.g. `torchrun --nproc_per_node N`): all granted at
    /// once, CUDA_VISIBLE_DEVICES set to their UUIDs in rank order; --vram-gb is then per GPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    gpus: Option<u32>,
    /// How long to wait in vramguard's admission queue for room (e.g. 30s, 10m; default: answer
    /// at once).
    #[arg(long, value_name = "DURATION")]
    wait: Option<Dur>,
    /// Lease lifetime a heartbeat renews (10s to 24h; default: vramguard's leases.default_ttl).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<Dur>,
    /// The lease's client name (default: the command's name).
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs `args` to the end; the process's exit status.
pub fn run(args: RunArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(70, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run_async(args))
}

fn fail(status: u8, message: &str) -> u8 {
    eprintln!("vramguard run: {message}");
    status
}

async fn run_async(args: RunArgs) -> u8 {
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("VRAMGUARD_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "http://127.0.0.1:9842".to_owned());
    let token = match &args.token_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => return fail(66, &format!("--token-file {}: {e}", f.display())),
        },
        None => None,
    };
    let api = match Api::new(&url, token) {
        Ok(a) => a,
        Err(e) => return fail(70, &format!("cannot build the HTTP client: {e}")),
    };
    let lease = match api.take(lease_request(&args), args.wait.map_or(Duration::ZERO, |w| w.0)).await {
        Ok(l) => l,
        Err(e) => {
            let message = match &e {
                api::TakeError::Refused(issues) => format!("generation refused:\n  {}", issues.join("\n  ")),
                api::TakeError::Unreachable(why) => format!("vramguard is unreachable: {why}"),
                api::TakeError::Forbidden(why) => format!("the token was refused: {why}"),
                api::TakeError::Invalid(why) => format!("the lease request was refused: {why}"),
            };
            return fail(e.exit_status(), &message);
        }
    };
    let (status, outcome) = match supervise(&api, &lease, &url, &args.command).await {
        Ok(done) => done,
        Err(e) => {
            release(&api, &lease, Outcome::Error).await;
            return fail(127, &e);
        }
    };
    release(&api, &lease, outcome).await;
    exit_code(status)
}

/// The lease request `args` make.
fn lease_request(args: &RunArgs) -> Value {
    let mut body = json!({ "model_loaded": args.model_loaded });
    let name = args.command.first().map(|c| {
        let c = std::path::Path::new(c).file_name().unwrap_or(c.as_os_str());
        c.to_string_lossy().chars().take(crate::limits::CLIENT_MAX_CHARS).collect::<String>()
    });
    if let Some(client) = args.client.clone().or(name) {
        body["client"] = json!(client);
    }
    if let Some(gb) = args.vram_gb {
        body["vram_required_gb"] = json!(gb);
    }
    if let Some(w) = &args.workload {
        body["workload"] = json!(w);
    }
    if let Some(g) = args.gpu {
        body["gpu"] = json!(g);
    }
    if let Some(n) = args.gpus {
        body["gpus"] = json!(n);
    }
    if let Some(t) = args.ttl {
        body["ttl_seconds"] = json!(t.0.as_secs());
    }
    body
}

/// Starts the command on the lease's GPU and sees it to its end: heartbeats, forwarded
/// signals, its stderr passed through and scanned for out-of-memory. Its exit status and
/// outcome; an error only when it could not be started.
async fn supervise(
    api: &Api,
    lease: &Granted,
    url: &str,
    command: &[OsString],
) -> Result<(ExitStatus, Outcome), String> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("VRAMGUARD_LEASE_ID", &lease.id)
        .env("VRAMGUARD_URL", url)
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if let Some(uuid) = &lease.cuda_visible_devices {
        cmd.env("CUDA_VISIBLE_DEVICES", uuid);
    }
    if let Some(index) = lease.gpu_index {
        cmd.env("VRAMGUARD_GPU_INDEX", index.to_string());
    }
    if !lease.gpu_indices.is_empty() {
        let list: Vec<String> = lease.gpu_indices.iter().map(u64::to_string).collect();
        cmd.env("VRAMGUARD_GPU_INDICES", list.join(","));
    }
    // Listening before the start: a signal in between would otherwise end vramguard run and
    // leave the command running without its lease.
    let signals = Signals::new().map_err(|e| format!("cannot listen for signals: {e}"))?;
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", command[0].to_string_lossy()))?;
    let pid = child.id().unwrap_or(0);
    let stderr = child.stderr.take();
    let scan = tokio::spawn(pass_stderr_through(stderr));
    let beats = tokio::spawn(heartbeats(api.clone(), lease.clone(), pid));
    let status = signals.wait_forwarding(&mut child, pid).await;
    beats.abort();
    let oom = scan.await.unwrap_or(false);
    let status = status.map_err(|e| format!("waiting for the command failed: {e}"))?;
    Ok((status, outcome_of(status, oom)))
}

/// Names the child's pid on the lease at once, then renews the lease every third of its TTL.
async fn heartbeats(api: Api, lease: Granted, pid: u32) {
    let (ns, start) = client_identity(pid);
    let mut processes = json!({ "pids": [pid] });
    if let Some(ns) = ns {
        processes["pid_namespace"] = json!(ns);
    }
    if let Some(start) = start {
        processes["pid_start_times"] = json!([start]);
    }
    if let Err(e) = api.heartbeat(&lease.id, Some(&processes)).await {
        eprintln!("vramguard run: could not name the command's pid on lease {}: {e}", lease.id);
    }
    let every = Duration::from_secs_f64((lease.ttl_seconds as f64 / 3.0).max(1.0));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = api.heartbeat(&lease.id, None).await {
            eprintln!("vramguard run: heartbeat of lease {} failed (retried at the next): {e}", lease.id);
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught to be forwarded to the command.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the child, forwarding each signal to it meanwhile.
    async fn wait_forwarding(mut self, child: &mut Child, pid: u32) -> std::io::Result<ExitStatus> {
        use nix::sys::signal::Signal;
        loop {
            let sig = tokio::select! {
                status = child.wait() => return status,
                _ = self.int.recv() => Signal::SIGINT,
                _ = self.term.recv() => Signal::SIGTERM,
                _ = self.hup.recv() => Signal::SIGHUP,
            };
            if let Ok(pid) = i32::try_from(pid) {
                // It may have exited just now: then there is nothing to forward to.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }
}

/// Copies the child's stderr to ours unchanged, line by line; whether a line said the job ran
/// out of GPU memory.
async fn pass_stderr_through(stderr: Option<tokio::process::ChildStderr>) -> bool {
    let Some(stderr) = stderr else { return false };
    let mut reader = BufReader::new(stderr);
    let mut out = tokio::io::stderr();
    let mut line = Vec::new();
    let mut oom = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return oom,
            Ok(_) => {
                oom |= says_out_of_memory(&line);
                let _ = out.write_all(&line).await;
                let _ = out.flush().await;
            }
        }
    }
}

/// PyTorch's words for a CUDA allocation that failed.
fn says_out_of_memory(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.contains("CUDA out of memory") || text.contains("OutOfMemoryError")
}

/// How the job ended: exit 0 is `ok`; out-of-memory on stderr is `oom`; killed by a signal is
/// `cancelled`; anything else `error`.
fn outcome_of(status: ExitStatus, oom: bool) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        Outcome::Ok
    } else if oom {
        Outcome::Oom
    } else if status.signal().is_some() {
        Outcome::Cancelled
    } else {
        Outcome::Error
    }
}

/// The command's exit status, as a shell reports it (128 + the signal that killed it).
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from((128 + sig) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

async fn release(api: &Api, lease: &Granted, outcome: Outcome) {
    if let Err(e) = api.release(&lease.id, outcome).await {
        eprintln!(
            "vramguard run: warning: could not release lease {} ({e}); it lapses at its TTL ({} s)",
            lease.id, lease.ttl_seconds
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn outcomes_and_exit_codes_follow_how_the_command_ended() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = |sig: i32| ExitStatus::from_raw(sig);
        assert_eq!(outcome_of(exited(0), false), Outcome::Ok);
        assert_eq!(outcome_of(exited(0), true), Outcome::Ok, "it recovered from the OOM");
        assert_eq!(outcome_of(exited(1), true), Outcome::Oom);
        assert_eq!(outcome_of(killed(15), false), Outcome::Cancelled);
        assert_eq!(outcome_of(exited(7), false), Outcome::Error);
        assert_eq!((exit_code(exited(7)), exit_code(killed(15)), exit_code(killed(9))), (7, 143, 137));
    }

    #[test]
    fn pytorch_out_of_memory_lines_are_recognised() {
        assert!(says_out_of_memory(b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"));
        assert!(says_out_of_memory(b"RuntimeError: CUDA out of memory.\n"));
        assert!(!says_out_of_memory(b"Traceback (most recent call last):\n"));
    }
}
