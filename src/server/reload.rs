//! SIGHUP: read the configuration file again and put it in force without a restart. Everything
//! is read and checked first (the file, the token file, the certificate), so an invalid file
//! changes nothing: the old configuration keeps running, the error is logged with its key, and
//! `vramguard_config_last_reload_successful` drops to 0 until a reload succeeds.

use std::path::PathBuf;

use tokio::sync::watch;

use super::tls;
use crate::app::AppState;
use crate::config::Config;
use crate::time::now_unix;

/// Sets the process's log filter; the binary owns the subscriber.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How a running vramguard reloads its configuration.
#[derive(Default)]
pub struct Reload {
    /// The file to read again on SIGHUP; `None` when vramguard started without `--config`.
    pub path: Option<PathBuf>,
    /// Applies `log_level`; `None` leaves logging alone.
    pub set_log_filter: Option<SetLogFilter>,
}

/// Waits for SIGHUP until `stop` flips; each one reloads. Catching the signal also keeps its
/// default action (terminate) from ending the process.
pub(crate) async fn on_sighup(
    state: AppState,
    acceptor: Option<tls::Acceptor>,
    reload: Reload,
    mut stop: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGHUP; configuration reload is unavailable");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = hup.recv() => {}
            }
            reload_once(&state, acceptor.as_ref(), &reload).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (state, acceptor, reload, stop.changed().await);
    }
}

async fn reload_once(state: &AppState, acceptor: Option<&tls::Acceptor>, reload: &Reload) {
    let Some(path) = &reload.path else {
        tracing::warn!("SIGHUP received, but vramguard started without --config: nothing to reload");
        return;
    };
    match prepare(path, acceptor) {
        Err(e) => {
            // Logged before the gauge moves, so whoever sees the gauge finds the reason.
            tracing::error!(file = %path.display(), error = %e, "configuration reload failed; the running configuration stays");
            state.metrics().record_reload(false, now_unix());
        }
        Ok((next, credentials, certificate)) => {
            let log_level = next.log_level.clone();
            match state.reload(next, credentials).await {
                Ok(restart) => {
                    if let (Some(a), Some(c)) = (acceptor, certificate) {
                        a.install(c);
                    }
                    if let Some(set) = &reload.set_log_filter
                        && let Err(e) = set(&log_level)
                    {
                        tracing::warn!(error = %e, "log_level not applied");
                    }
                    state.metrics().record_reload(true, now_unix());
                    if restart.is_empty() {
                        tracing::info!(file = %path.display(), "configuration reloaded");
                    } else {
                        tracing::warn!(file = %path.display(), keys = %restart.join(", "),
                            "configuration reloaded; these keys changed but take effect only after a restart");
                    }
                }
                Err(e) => {
                    state.metrics().record_reload(false, now_unix());
                    tracing::error!(error = %e, "configuration reload failed; the running configuration stays");
                }
            }
        }
    }
}

type Prepared = (Config, crate::app::Credentials, Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>);

/// Reads and checks everything the new configuration names, changing nothing.
fn prepare(path: &std::path::Path, acceptor: Option<&tls::Acceptor>) -> Result<Prepared, String> {
    let next = Config::load(path).map_err(|e| e.to_string())?;
    let credentials = crate::http::auth::read_credentials(&next.auth).map_err(|e| format!("config key {e}"))?;
    let certificate = match (acceptor, &next.tls) {
        (Some(_), Some(t)) => Some(tls::load(t).map_err(|e| format!("config key {e}"))?),
        _ => None,
    };
    Ok((next, credentials, certificate))
}
