//! The `vramguard` binary: parse flags, set up logging, load the config, run until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use vramguard::Config;

#[derive(Parser)]
#[command(
    name = "vramguard",
    version,
    about = "Prometheus exporter and admission sidecar for GPU generation pipelines"
)]
struct Cli {
    /// Configuration file (YAML). Without it, the built-in defaults (equal to config.yaml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, overriding `listen` in the config (e.g. 0.0.0.0:9842).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Start with a fresh state store if the one in state_dir would be refused (missing, empty,
    /// another store's, damaged): its files are moved into state_dir/reset-<time>/, not deleted.
    /// A store that opens normally is kept, so the flag never wipes good state.
    #[arg(long)]
    reset_state: bool,
    /// Serve two simulated GPUs (load, VRAM, temperature and power move; a generation starts
    /// and ends every minute) through the fake NVML built into the binary: the page, the metrics
    /// and admission on a machine without a GPU. Built-in defaults only; state goes to a
    /// temporary directory.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit 0 (valid) or 1 (invalid, with the key named).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Run a command under a generation lease: wait for room, start it on the lease's GPU
    /// (CUDA_VISIBLE_DEVICES is the GPU's UUID), release with its outcome, exit with its status.
    Run(vramguard::RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(Command::Run(args)) = cli.command.take() {
        return ExitCode::from(vramguard::run_command(args));
    }
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        };
    }
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vramguard: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    // Kept until the end of main: dropping it stops the simulation and removes its files.
    let _demo = if cli.demo {
        match vramguard::Demo::start() {
            Ok(demo) => {
                config.gpu.enabled = true;
                config.gpu.per_process = true;
                config.gpu.nvml_library = Some(demo.library());
                config.state_dir = demo.state_dir();
                Some(demo)
            }
            Err(e) => {
                eprintln!("vramguard: --demo: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let set_log_filter = init_logging(cli.log_format, &config.log_level);
    let reload = vramguard::Reload { path: cli.config.clone(), set_log_filter: Some(set_log_filter) };
    if cli.reset_state
        && let Err(e) = reset_state(&config)
    {
        eprintln!("vramguard: --reset-state: {e}");
        return ExitCode::FAILURE;
    }

    let runtime = match vramguard::runtime(config.http.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vramguard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = vramguard::bind(&config).await?;
        vramguard::run_with(config, listener, shutdown_signal(), reload).await
    });
    // A collector stuck inside a driver call holds a blocking thread that will never return;
    // do not let it keep the process alive after the server has stopped.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vramguard stopped");
            eprintln!("vramguard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--reset-state`: moves a store that would be refused aside, so the start that follows begins
/// with a fresh one; keeps a store that opens.
fn reset_state(config: &Config) -> Result<(), vramguard::StoreError> {
    match vramguard::AppState::check_store(config) {
        Ok(()) => {
            tracing::info!(state_dir = %config.state_dir.display(), "--reset-state: the state store opens normally; kept it");
            Ok(())
        }
        Err(e) if e.resettable() => {
            let aside = vramguard::move_aside(&config.state_dir)?;
            tracing::warn!(refused = %e, moved_to = %aside.display(),
                "--reset-state: the state store was moved aside; starting with a fresh one");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Installs the subscriber with `log_level` (or `RUST_LOG`, which then wins for the process's
/// life) and returns how a reload changes the filter.
fn init_logging(format: LogFormat, log_level: &str) -> vramguard::SetLogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt, reload};

    let pinned = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = match &pinned {
        Some(v) => EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new("info")),
        // Validated with the config.
        None => EnvFilter::try_new(log_level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(output).init();
    Box::new(move |level: &str| {
        if pinned.is_some() {
            return Err("RUST_LOG is set and takes the place of log_level".to_owned());
        }
        let next = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(next).map_err(|e| e.to_string())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
