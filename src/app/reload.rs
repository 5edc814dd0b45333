//! Applying a configuration reloaded on SIGHUP. The server reads and validates the file (and the
//! token and certificate it names) first, so by the time it gets here nothing can fail half-way:
//! either the whole new configuration is in force, or none of it.
//!
//! What takes effect at once: constraint and optimization defaults (where no API override is
//! stored; an override keeps winning, as at start), thresholds, the tokens and roles, workload profiles,
//! learning, lease TTL default, the admission queue's settings, TLS certificates and the log
//! level. Keys read only at start (the listener, the state store, the sampler, history, the
//! HTTP defences) keep their old values and are named, so the operator knows to restart.

use std::sync::Arc;

use super::access::Credentials;
use super::error::ServiceError;
use super::inputs::{Inputs, Live};
use super::settings::{CONSTRAINTS_KEY, OPTIMIZATION_KEY};
use super::writer::Writer;
use crate::config::{Config, Constraints, Optimization};

/// Puts `next` (validated) and its tokens in force. Returns the keys that changed but need a
/// restart; those keep their running values.
pub(crate) async fn reload(
    inputs: &Arc<Inputs>,
    writer: &Arc<Writer>,
    mut next: Config,
    credentials: Credentials,
) -> Result<Vec<&'static str>, ServiceError> {
    let restart = keep_start_only(&inputs.config(), &mut next);
    let to = Arc::clone(inputs);
    {
        writer
            .write("reloading the configuration failed", move |store| {
                let failed = |e| ServiceError::failed("reloading the configuration failed", e);
                let live = to.live();
                let settings = match store.load_override::<Optimization>(OPTIMIZATION_KEY).map_err(failed)? {
                    Some(_) => live.settings,
                    None => next.optimization,
                };
                let constraints = match store.load_override::<Constraints>(CONSTRAINTS_KEY).map_err(failed)? {
                    Some(_) => live.constraints,
                    None => next.constraints,
                };
                to.reload(next, Live { settings, constraints }, credentials);
                Ok(())
            })
            .await?;
    }
    // New thresholds or slots may let a waiting request in.
    inputs.room_may_have_freed();
    Ok(restart)
}

/// Copies the keys read only at start from `running` into `next`; returns those that differed.
fn keep_start_only(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if next.$field != running.$field {
                changed.push(stringify!($field));
                next.$field = running.$field.clone();
            }
        )*};
    }
    keep!(listen, state_dir, sample_interval, gpu, host, history, stream, http, gpu_health);
    // Certificates reload; switching TLS on or off changes the listener.
    if next.tls.is_some() != running.tls.is_some() {
        changed.push("tls");
        next.tls = running.tls.clone();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_keys_are_kept_and_named() {
        let running = Config::default();
        let mut next = Config {
            listen: "127.0.0.1:1".parse().unwrap(),
            sample_interval: crate::config::Dur(std::time::Duration::from_secs(5)),
            constraints: Constraints { vram_warning_threshold: 0.5, ..running.constraints },
            ..Config::default()
        };
        assert_eq!(keep_start_only(&running, &mut next), vec!["listen", "sample_interval"]);
        assert_eq!(next.listen, running.listen);
        assert_eq!(next.sample_interval, running.sample_interval);
        assert_eq!(next.constraints.vram_warning_threshold, 0.5);
    }
}
