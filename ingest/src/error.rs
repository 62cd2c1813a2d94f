//! The ingest crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in ingest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- users and devices (auth) ----

    // ---- payloads ----
    /// A device's message was refused; nothing of it was stored.
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),

    // ---- shared ----
    /// A request or setting is malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store refused or failed.
    #[error(transparent)]
    Storage(#[from] wattson_storage::Error),

    /// A broken invariant: a bug in wattson-ingest, never caused by input.
    #[error("internal error (a bug in wattson-ingest): {0}")]
    Internal(String),
}

/// Result with the ingest [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
