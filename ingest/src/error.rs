//! The ingest crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in ingest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- users and devices (auth) ----
    /// The user file exists but cannot be trusted as written: bad JSON, an
    /// unsupported version, a malformed hash or key, duplicate names.
    #[error(
        "user file {path} is corrupt: {reason}; restore it from a backup, or move it away and re-create the users"
    )]
    UserFileCorrupt { path: PathBuf, reason: String },

    /// The user file is readable or writable by group or others. Refused
    /// rather than fixed silently: someone may already have copied it.
    #[error(
        "user file {path} has mode {mode:03o}, open to group or others; run `chmod 600 {path}` (and consider changing the passwords and device secrets in it)"
    )]
    UserFilePermissions { path: PathBuf, mode: u32 },

    /// `add` of a name that a person or a device already has.
    #[error("the name `{0}` is already taken by a user or device")]
    NameTaken(String),

    /// `remove` or `passwd` of a name that does not exist.
    #[error("no user or device named `{0}`")]
    UnknownName(String),

    /// A person's new password does not meet the policy.
    #[error("password rejected: {0}")]
    WeakPassword(String),

    /// Removing this admin would leave no way to manage the server.
    #[error("`{0}` is the last admin; add another admin before removing it")]
    LastAdmin(String),

    /// `serve` needs an admin, and no credential exists by default.
    #[error(
        "no admin user exists in {path}; create one with `wattson user add <name> --role admin`"
    )]
    NoAdmin { path: PathBuf },

    /// The operating system's random number generator failed; no secret or
    /// salt is made from anything weaker.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),

    // ---- payloads ----
    /// A device's message was refused; nothing of it was stored.
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),

    // ---- shared ----
    /// The live broker for people's MQTT clients could not listen (the
    /// port is taken, or the address is not local).
    #[error(
        "cannot listen for live MQTT subscribers on {addr}: {reason}; is another Wattson or MQTT broker using it? choose another address for the live listener"
    )]
    LiveListen {
        addr: std::net::SocketAddr,
        reason: String,
    },

    /// The embedded broker for live subscribers could not be set up.
    #[error("live MQTT broker failed: {0}")]
    LiveBroker(String),

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

    /// The TLS listener's certificate or key is missing, unreadable, not
    /// PEM, or the key does not belong to the certificate. Found at startup.
    #[error("{0}")]
    Tls(String),

    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}; is another server using the port?")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Result with the ingest [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
