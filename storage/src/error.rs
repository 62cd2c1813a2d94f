//! The storage crate's one error type.

use std::path::PathBuf;

use crate::model::ChannelType;

/// Everything that can go wrong in the store.
///
/// Variants fall in three groups: bad input from the caller (the reading or
/// request is wrong, retrying will not help), I/O failures (the disk said no),
/// and damage found on disk (a checksum or structure check failed; the file and
/// offset say where). [`Error::Internal`] is reserved for broken invariants,
/// that is, bugs in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A channel arrived with a type other than the one the table already has.
    #[error(
        "table `{table}`: channel `{channel}` is {existing} but the reading has {got}; the reading was rejected"
    )]
    TypeConflict {
        table: String,
        channel: String,
        existing: ChannelType,
        got: ChannelType,
    },

    /// A reading, name or request is malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A scan named a table the store has never seen.
    #[error("unknown table `{0}`")]
    UnknownTable(String),

    /// A scan named a column the table does not have.
    #[error("table `{table}` has no column `{column}`")]
    UnknownColumn { table: String, column: String },

    /// The reading is older than the table's retention period allows.
    #[error(
        "table `{table}`: reading at {time_ns} ns is older than the retention cutoff ({cutoff_ns} ns) and was rejected"
    )]
    BeyondRetention {
        table: String,
        time_ns: i64,
        cutoff_ns: i64,
    },

    /// An earlier write or fsync of the write-ahead log failed. Nothing after
    /// that point is acknowledged; the store must be reopened (which replays
    /// what did reach the disk).
    #[error(
        "the write-ahead log is poisoned after an earlier failure ({cause}); no further writes are accepted, restart to recover"
    )]
    WalPoisoned { cause: String },

    /// The disk holding the data directory is nearly full; nothing was
    /// written. Writes resume by themselves once space is freed.
    #[error(
        "only {available} bytes are free on the data directory's disk, less than the {reserve} kept in reserve ([storage] min_free_mib); nothing was written. Free some space (or shorten retention) and writes resume by themselves"
    )]
    DiskFull { available: u64, reserve: u64 },

    /// The write buffer is full and the last attempt to seal it into segment
    /// files failed; nothing was written. Writes resume once a seal succeeds
    /// (the store retries with backoff).
    #[error(
        "the write buffer is full and sealing it failed ({cause}); nothing was written. Writes resume once sealing succeeds"
    )]
    SealFailing { cause: String },

    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Bytes on disk failed a checksum or structure check.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another Wattson process (lock file is held); stop that process or use another --data-dir"
    )]
    Locked { path: PathBuf },

    /// A write (append, flush, compaction, retention) on a store opened with
    /// [`crate::Store::open_read_only`].
    #[error(
        "the store in {path} was opened read-only, so {operation} is not allowed; only the process that owns the directory can write"
    )]
    ReadOnly {
        path: PathBuf,
        operation: &'static str,
    },

    /// A read-only open was given a directory that does not exist; it
    /// creates nothing, so there is nothing to read.
    #[error("data directory {path} does not exist")]
    NoSuchDirectory { path: PathBuf },

    /// A read-only open kept finding files added or removed by the writing
    /// process while it read them (a seal, compaction or retention each
    /// time), so it could not take a consistent snapshot.
    #[error(
        "data directory {path} changed during each of {attempts} attempts to open it read-only (the writing process sealed, compacted or expired data meanwhile); try again"
    )]
    ChangedDuringOpen { path: PathBuf, attempts: u32 },

    /// The store has been closed.
    #[error("the store is closed")]
    Closed,

    /// A broken invariant: a bug in wattson-storage, never caused by input.
    #[error("internal error (a bug in wattson-storage): {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
