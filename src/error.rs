//! Why a configuration could not be used. Start-up errors are [`crate::server::Error`]; store
//! errors are [`crate::store::StoreError`]; request errors live at the edge, in `http::error`.

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
