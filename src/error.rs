//! Errors of start-up and configuration. Request errors live in `http::error`.

use std::path::PathBuf;

/// Why a configuration could not be used. Printed as one line that names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key has a value the program cannot accept.
    #[error("config key {key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `constraints.vram_warning_threshold`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Why vramguard could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The token file could not be used.
    #[error("config key auth.token_file: {0}")]
    Token(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
}
