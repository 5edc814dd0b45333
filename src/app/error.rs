//! Why a service call did not do what was asked. The HTTP edge turns each variant into one
//! status code (`http::error`); callers inside the service branch on them.

/// A service call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is not acceptable: the sentence names the field and what is allowed.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist (or no longer does).
    #[error("{0}")]
    NotFound(String),
    /// No snapshot exists yet: vramguard is starting.
    #[error("no resource sample yet; vramguard is starting")]
    NotReady,
    /// vramguard itself failed (the state store); the cause was logged when this was made.
    #[error("{context}; see vramguard's log")]
    Failed {
        /// What was being done.
        context: &'static str,
    },
}

impl ServiceError {
    /// A failure of vramguard itself, logged once here with its cause.
    pub fn failed(context: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::Failed { context }
    }
}
