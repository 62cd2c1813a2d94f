//! Users and devices: the one credential store behind MQTT, Flight and the
//! dashboard.
//!
//! What this module owns:
//! - [`Role`]: who may do what (see `docs/ingest.md`, "Accounts"): `admin ⊇ analyst ⊇ viewer`
//!   for people; `device` is separate, so a person can never publish as a
//!   meter and a meter can never read.
//! - [`UserStore`]: the user file `{data_dir}/users.json` (format below),
//!   and [`UserStore::verify`], the blocking check of a name and a password
//!   or device secret.
//! - [`Verifier`]: a bounded pool of threads for the slow argon2 work, with a
//!   future-returning API so async servers never hash on their executor.
//!
//! What it promises:
//! - No credential exists by default. [`UserStore::require_admin`] is what
//!   `serve` calls to refuse to start without an admin.
//! - People's passwords are stored as argon2id PHC strings (at least the
//!   argon2 crate's default `m=19456 KiB, t=2, p=1`). Device secrets are
//!   random 256-bit values shown once and stored only as a BLAKE3 hash keyed
//!   with a per-store random key: a device secret has enough entropy that a
//!   slow hash buys nothing, and a reconnect storm of 1,000 meters must not
//!   queue behind 1,000 argon2 runs.
//! - The file is mode 0600 whenever we write it, and a file readable by group
//!   or others is refused on load with the `chmod` that fixes it. Every write
//!   is atomic (temp file, fsync, rename, fsync of the directory) and done
//!   under an exclusive lock file, so two CLI processes cannot lose each
//!   other's changes.
//! - A verification never says *why* it failed beyond [`AuthError`]: an
//!   unknown name and a wrong password give the same [`AuthError::Denied`],
//!   and an unknown name runs a dummy argon2 verification so it costs the
//!   same time as a wrong password for a person. (Device ids are not secret:
//!   they are in topic and table names, so a fast failure for a known device
//!   reveals nothing new.)
//! - Source addresses are throttled *before* any hashing, and a person's
//!   account is locked for a while after 100 consecutive failures (see
//!   [`AuthPolicy`]). Meters are not locked out: their ids are public, so a
//!   lockout would let anyone silence a meter, and their 256-bit secrets
//!   cannot be guessed.
//! - Changes by another process (the `wattson user` CLI while `serve` runs)
//!   are seen by the next verification: every verification stats the file
//!   (about a microsecond) and reloads it when it changed; see
//!   [`UserStore::reload_if_changed`].
//!
//! - [`TokenStore`]: bearer tokens issued after a successful login (the
//!   Flight handshake, the HTTP API), shared by Flight and the dashboard.
//!
//! Not here: the CLI and `serve` wiring, and the dashboard's cookie
//! sessions.
//!
//! # The user file
//! `{data_dir}/users.json`, JSON, mode 0600, format version 1:
//! ```json
//! {
//!   "version": 1,
//!   "device_key": "<64 hex digits: the BLAKE3 key for device secrets>",
//!   "users": [
//!     { "name": "alice", "role": "admin", "created": 1767225600,
//!       "hash": "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>" }
//!   ],
//!   "devices": [
//!     { "id": "viconsl", "created": 1767225600,
//!       "secret_hash": "<64 hex digits: blake3::keyed_hash(device_key, secret)>" }
//!   ]
//! }
//! ```
//! `created` is seconds since the Unix epoch. People's roles are `viewer`,
//! `analyst` or `admin`; devices have the `device` role implicitly. Names
//! are one namespace (MQTT usernames), compared without regard to case. A
//! reader refuses any other `version`, unknown fields, duplicate names,
//! hashes that are not argon2id, and malformed keys, naming the file.
//! `users.json.lock` next to it is the writers' lock file (empty).

mod file;
mod limits;
mod role;
mod store;
mod tokens;
mod verifier;

#[cfg(test)]
mod tests;

pub use limits::{AuthPolicy, Clock, ManualClock, SystemClock, UNKNOWN_SOURCE};
pub use role::Role;
pub use store::{AuthStats, Entry, EntryKind, UserStore};
pub use tokens::{Principal, TOKEN_PREFIX, TokenError, TokenStore};
pub use verifier::{Verifier, VerifyFuture};

/// The file name of the user store inside the data directory.
pub const USER_FILE_NAME: &str = "users.json";

/// Shortest password accepted for a person (NIST SP 800-63B asks for at
/// least 8; we ask for 12 because these accounts can read all data).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Longest password or secret accepted, in bytes. Longer input is refused
/// before hashing so nobody can make argon2 chew megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a login was refused. Safe to show to the client: no variant reveals
/// whether the name exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown name or wrong password; deliberately one message for both.
    #[error("invalid name or password")]
    Denied,

    /// Too many consecutive failures for this account; try again later.
    #[error("too many failed logins for this account; try again in {} s", retry_after.as_secs().max(1))]
    LockedOut {
        /// How long until the lockout ends.
        retry_after: std::time::Duration,
    },

    /// Too many failed logins from this address; checked before hashing.
    #[error("too many failed logins from this address; slow down")]
    Throttled,

    /// The verifier's queue is full; the client should retry shortly.
    #[error("server busy verifying logins; retry shortly")]
    Busy,

    /// The verifier is shut down or broke (a bug or shutdown, not the
    /// client's fault). Details are logged on the server, not returned.
    #[error("login service unavailable")]
    Unavailable,
}
