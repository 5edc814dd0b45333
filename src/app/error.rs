//! Why a service call did not do what was asked. The HTTP edge turns each variant into one
//! status code (`http::error`); callers inside the service branch on them.

/// Why the service could not start: each says what failed, so a configuration mistake is not
/// reported as a damaged store (which `--reset-state` would move aside).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The state store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The Prometheus history source could not be set up from `history.prometheus_url`.
    #[error("config key history.prometheus_url: {0}")]
    PrometheusSource(String),
    /// The thread that runs lease critical sections could not be started.
    #[error("cannot start the lease thread: {0}")]
    LeaseThread(std::io::Error),
}

/// A service call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServiceError {
    /// The request is not acceptable: the sentence names the field and what is allowed.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist (or no longer does).
    #[error("{0}")]
    NotFound(String),
    /// No snapshot exists yet: vramguard is starting.
    #[error("no resource sample yet; vramguard is starting")]
    NotReady,
    /// The caller's token may not do this (another client's lease).
    #[error("{0}")]
    Forbidden(String),
    /// The request contradicts the state: a pid another live lease already lists.
    #[error("{0}")]
    Conflict(String),
    /// The state store cannot make this write durable now, so nothing was changed; the sentence
    /// says why. Worth asking again later.
    #[error("{0}")]
    StoreUnavailable(String),
    /// vramguard itself failed; the cause was logged when this was made.
    #[error("{context}; see vramguard's log")]
    Failed {
        /// What was being done.
        context: &'static str,
    },
}

impl ServiceError {
    /// A failure of vramguard itself, logged once here with its cause.
    pub(crate) fn failed(context: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::Failed { context }
    }

    /// A write the store did not take. The store's status logs the failure once; the answer
    /// says what happened, since the client can do nothing but ask again later.
    pub(crate) fn store(cause: impl std::fmt::Display) -> Self {
        Self::StoreUnavailable(format!(
            "the state store cannot take writes now, so nothing was changed ({cause}); try again later"
        ))
    }
}
