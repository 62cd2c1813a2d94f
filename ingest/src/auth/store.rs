//! [`UserStore`]: people and devices, their management, and verification.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Algorithm, Argon2, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use parking_lot::{Mutex, RwLock};
use rand::TryRngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;

use super::file::{self, Contents, Device, Stamp, User};
use super::limits::{AddrThrottle, AuthPolicy, Lockouts, throttle_source};
use super::{AuthError, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, Role, USER_FILE_NAME};
use crate::{Error, Result};

/// Whether an [`Entry`] is a person or a meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A person, with a password.
    User,
    /// A meter, with a generated secret.
    Device,
}

/// One account as listed; never includes a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The login name (a device's id).
    pub name: String,
    /// Person or device.
    pub kind: EntryKind,
    /// The role; always [`Role::Device`] for devices.
    pub role: Role,
    /// When the account was created.
    pub created: SystemTime,
}

/// Counters for `system.*` tables and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Logins that succeeded.
    pub succeeded: u64,
    /// Logins refused as [`AuthError::Denied`].
    pub denied: u64,
    /// Attempts refused by the per-address throttle.
    pub throttled: u64,
    /// Attempts refused because the account was locked.
    pub locked_out: u64,
    /// Dummy argon2 verifications run for unknown names.
    pub dummy_verifications: u64,
}

#[derive(Debug, Default)]
struct Counters {
    succeeded: AtomicU64,
    denied: AtomicU64,
    throttled: AtomicU64,
    locked_out: AtomicU64,
    dummy_verifications: AtomicU64,
}

/// What we last loaded. Swapped whole behind an `Arc`, so a verification
/// holds a consistent view without holding a lock while it hashes.
#[derive(Debug)]
struct Snapshot {
    contents: Contents,
    /// `None` when there was no file.
    stamp: Option<Stamp>,
}

/// The user and device store of one data directory.
///
/// Shared as `Arc<UserStore>`; every method takes `&self`. Management
/// methods rewrite the file under the writers' lock after re-reading it, so
/// they never overwrite another process's change.
#[derive(Debug)]
pub struct UserStore {
    /// `{data_dir}/users.json`.
    path: PathBuf,
    state: RwLock<Arc<Snapshot>>,
    /// The stamp of a file that failed to load, so a bad file is reported
    /// once rather than on every login.
    bad_stamp: Mutex<Option<Stamp>>,
    policy: AuthPolicy,
    /// argon2id with the policy's parameters, for new hashes. Verification
    /// uses the parameters stored in each PHC string.
    argon2: Argon2<'static>,
    /// Verified for unknown names so they cost what a wrong password costs.
    /// Made of random salt and output with the same parameters as new
    /// hashes; no password matches it, and its result is ignored anyway.
    dummy_hash: String,
    lockouts: Lockouts,
    throttle: AddrThrottle,
    counters: Counters,
}

/// The outcome of the fast first half of a verification.
pub(crate) enum Prepared {
    /// Decided without argon2: throttled, locked, a device, or too long.
    Done(std::result::Result<Role, AuthError>),
    /// Needs an argon2 verification ([`UserStore::finish`]).
    Slow(SlowCheck),
}

/// An argon2 verification still to run.
pub(crate) struct SlowCheck {
    name: String,
    /// `None` for an unknown name: the dummy hash is checked, then denied.
    role: Option<Role>,
    phc: String,
    addr: Option<IpAddr>,
}

impl UserStore {
    /// Opens the store of `data_dir` with the default policy. A missing file
    /// (or directory) is an empty store; nothing is written until the first
    /// change.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(data_dir, AuthPolicy::default())
    }

    /// Opens with a custom policy (limits and clock).
    pub fn open_with(data_dir: impl AsRef<Path>, policy: AuthPolicy) -> Result<Self> {
        let path = data_dir.as_ref().join(USER_FILE_NAME);
        let snapshot = load_snapshot(&path)?;
        let argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            policy.argon2_params.clone(),
        );
        let dummy_hash = dummy_phc(&policy.argon2_params)?;
        Ok(Self {
            path,
            state: RwLock::new(Arc::new(snapshot)),
            bad_stamp: Mutex::new(None),
            lockouts: Lockouts::new(&policy),
            throttle: AddrThrottle::new(&policy),
            argon2,
            dummy_hash,
            policy,
            counters: Counters::default(),
        })
    }

    /// The user file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed since we loaded it (compared by
    /// inode, length, mtime, ctime and mode: one `stat`). Returns whether it
    /// reloaded. On error the previous contents stay in use.
    ///
    /// [`verify`](Self::verify), [`list`](Self::list) and
    /// [`has_admin`](Self::has_admin) call this themselves, so a server sees
    /// `wattson user` changes at the next login without a restart.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = file::stamp(&self.path)?;
        if now == self.state.read().stamp {
            return Ok(false);
        }
        let snapshot = load_snapshot(&self.path)?;
        *self.state.write() = Arc::new(snapshot);
        Ok(true)
    }

    /// [`reload_if_changed`](Self::reload_if_changed) for paths that cannot
    /// fail: a bad file is logged once and the last good contents serve.
    fn refresh(&self) -> Arc<Snapshot> {
        if let Err(e) = self.reload_if_changed() {
            let stamp = file::stamp(&self.path).ok().flatten();
            let mut bad = self.bad_stamp.lock();
            if *bad != stamp || stamp.is_none() {
                tracing::error!(error = %e, "user file not reloaded; still using the last good copy");
                *bad = stamp;
            }
        }
        Arc::clone(&self.state.read())
    }

    /// Every person and device, sorted by name. Never includes hashes.
    pub fn list(&self) -> Vec<Entry> {
        let snap = self.refresh();
        let people = snap.contents.users.iter().map(|(name, u)| Entry {
            name: name.clone(),
            kind: EntryKind::User,
            role: u.role,
            created: unix_to_system(u.created),
        });
        let devices = snap.contents.devices.iter().map(|(id, d)| Entry {
            name: id.clone(),
            kind: EntryKind::Device,
            role: Role::Device,
            created: unix_to_system(d.created),
        });
        let mut all: Vec<Entry> = people.chain(devices).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A person's current role and a fingerprint of their account (name,
    /// creation time and password hash), or `None` for unknown names and
    /// devices. Tokens and sessions keep the fingerprint and die when it
    /// changes: the person was removed, re-created or given a new password.
    pub fn person(&self, name: &str) -> Option<(Role, [u8; 32])> {
        let snap = self.refresh();
        let user = snap.contents.users.get(name)?;
        let mut h = blake3::Hasher::new();
        h.update(name.as_bytes());
        h.update(&user.created.to_le_bytes());
        h.update(user.hash.as_bytes());
        Some((user.role, *h.finalize().as_bytes()))
    }

    /// Whether at least one admin exists.
    pub fn has_admin(&self) -> bool {
        let snap = self.refresh();
        snap.contents.users.values().any(|u| u.role == Role::Admin)
    }

    /// What `serve` calls: refuses with the command that creates an admin,
    /// because there are no default credentials.
    pub fn require_admin(&self) -> Result<()> {
        if self.has_admin() {
            Ok(())
        } else {
            Err(Error::NoAdmin {
                path: self.path.clone(),
            })
        }
    }

    /// Adds a person. `role` must be viewer, analyst or admin.
    pub fn add_user(&self, name: &str, role: Role, password: &str) -> Result<()> {
        file::validate_person_name(name)?;
        if !role.is_person() {
            return Err(Error::InvalidInput(
                "people are viewer, analyst or admin; add meters with `wattson device add`".into(),
            ));
        }
        check_new_password(password)?;
        let hash = self.hash_password(password)?;
        self.mutate(|c| {
            if c.name_taken(name) {
                return Err(Error::NameTaken(name.to_owned()));
            }
            let user = User {
                role,
                hash,
                created: unix_now(),
            };
            c.users.insert(name.to_owned(), user);
            Ok(())
        })?;
        tracing::info!(user = ?name, %role, "user added");
        Ok(())
    }

    /// Replaces a person's password, and ends any lockout of the account.
    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        check_new_password(password)?;
        let hash = self.hash_password(password)?;
        self.mutate(|c| match c.users.get_mut(name) {
            Some(u) => {
                u.hash = hash;
                Ok(())
            }
            None if c.devices.contains_key(name) => Err(Error::InvalidInput(format!(
                "`{name}` is a device; give it a new secret by removing and re-adding it"
            ))),
            None => Err(Error::UnknownName(name.to_owned())),
        })?;
        self.lockouts.record_success(name);
        tracing::info!(user = ?name, "password changed");
        Ok(())
    }

    /// Adds a meter and returns its secret. The secret is 256 bits from the
    /// OS random number generator, as 64 hex digits; only its keyed hash is
    /// stored, so show it to the operator now: it cannot be recovered.
    pub fn add_device(&self, id: &str) -> Result<String> {
        let mut secrets = self.add_devices(&[id])?;
        secrets
            .pop()
            .ok_or_else(|| Error::Internal("add_devices returned no secret".into()))
    }

    /// Adds several meters in one write of the user file (a fleet, or the
    /// simulator's meters) and returns their secrets in the order given.
    /// All or nothing: if one id is invalid or taken (or given twice), no
    /// device is added.
    pub fn add_devices(&self, ids: &[&str]) -> Result<Vec<String>> {
        let mut secrets = Vec::with_capacity(ids.len());
        for id in ids {
            wattson_storage::model::validate_device_name(id)
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            let mut raw = [0u8; 32];
            OsRng
                .try_fill_bytes(&mut raw)
                .map_err(|e| Error::Random(e.to_string()))?;
            secrets.push(file::encode_hex(&raw));
        }
        self.mutate(|c| {
            for (id, secret) in ids.iter().zip(&secrets) {
                if c.name_taken(id) {
                    return Err(Error::NameTaken((*id).to_owned()));
                }
                let device = Device {
                    secret_hash: *blake3::keyed_hash(&c.device_key, secret.as_bytes()).as_bytes(),
                    created: unix_now(),
                };
                c.devices.insert((*id).to_owned(), device);
            }
            Ok(())
        })?;
        match ids {
            [one] => tracing::info!(device = ?one, "device added"),
            _ => tracing::info!(count = ids.len(), "devices added"),
        }
        Ok(secrets)
    }

    /// Removes a person or a device. Refuses to remove the last admin.
    pub fn remove(&self, name: &str) -> Result<EntryKind> {
        let kind = self.mutate(|c| {
            if let Some(u) = c.users.get(name) {
                let admins = c.users.values().filter(|u| u.role == Role::Admin).count();
                if u.role == Role::Admin && admins == 1 {
                    return Err(Error::LastAdmin(name.to_owned()));
                }
                c.users.remove(name);
                Ok(EntryKind::User)
            } else if c.devices.remove(name).is_some() {
                Ok(EntryKind::Device)
            } else {
                Err(Error::UnknownName(name.to_owned()))
            }
        })?;
        tracing::info!(name = ?name, ?kind, "removed");
        Ok(kind)
    }

    /// Counters since open.
    pub fn stats(&self) -> AuthStats {
        let c = &self.counters;
        AuthStats {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            locked_out: c.locked_out.load(Ordering::Relaxed),
            dummy_verifications: c.dummy_verifications.load(Ordering::Relaxed),
        }
    }

    /// Checks a login and returns the account's role. Blocking: a person's
    /// password costs an argon2 verification (tens of milliseconds), so
    /// async code should use [`Verifier`](super::Verifier) instead. A device
    /// secret costs a keyed hash (microseconds).
    ///
    /// `source` is the client's address, throttled before any hashing
    /// ([`UNKNOWN_SOURCE`](super::UNKNOWN_SOURCE) when the listener cannot
    /// tell it); `None` for local callers such as the CLI. The caller checks the role
    /// with [`Role::allows`] (MQTT needs `Role::Device`, Flight
    /// `Role::Analyst`, and so on). The password is never logged.
    pub fn verify(
        &self,
        name: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> std::result::Result<Role, AuthError> {
        match self.prepare(name, password, source) {
            Prepared::Done(result) => result,
            Prepared::Slow(check) => self.finish(check, password),
        }
    }

    /// The fast half of [`verify`](Self::verify): throttle, lockout, lookup,
    /// and the whole check for devices. Cheap enough for an async executor.
    pub(crate) fn prepare(&self, name: &str, password: &str, source: Option<IpAddr>) -> Prepared {
        let source = source.map(|addr| throttle_source(addr, name));
        let now = self.policy.clock.now();
        if let Err(e) = self.throttle.take(source, now) {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?source, "login throttled");
            return Prepared::Done(Err(e));
        }
        let snap = self.refresh();
        // Meters are not locked out: their ids are public (they are in
        // topics), so a lockout would let anyone silence a meter, while a
        // 256-bit secret cannot be guessed anyway. The per-address throttle
        // above still applies to them.
        let is_device = snap.contents.devices.contains_key(name);
        if !is_device && let Err(e) = self.lockouts.check(name, now) {
            self.counters.locked_out.fetch_add(1, Ordering::Relaxed);
            return Prepared::Done(Err(e));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Prepared::Done(self.outcome(name, None, source, !is_device));
        }
        if let Some(d) = snap.contents.devices.get(name) {
            let presented = blake3::keyed_hash(&snap.contents.device_key, password.as_bytes());
            let ok: bool = presented.as_bytes().ct_eq(&d.secret_hash).into();
            return Prepared::Done(self.outcome(name, ok.then_some(Role::Device), source, false));
        }
        let (role, phc) = match snap.contents.users.get(name) {
            Some(u) => (Some(u.role), u.hash.clone()),
            None => (None, self.dummy_hash.clone()),
        };
        Prepared::Slow(SlowCheck {
            name: name.to_owned(),
            role,
            phc,
            addr: source,
        })
    }

    /// The slow half: one argon2 verification, then the bookkeeping.
    pub(crate) fn finish(
        &self,
        check: SlowCheck,
        password: &str,
    ) -> std::result::Result<Role, AuthError> {
        let matched = match PasswordHash::new(&check.phc) {
            Ok(parsed) => self
                .argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(e) => {
                // Hashes are validated on load and when made, so this is a
                // bug; deny rather than fail open.
                tracing::error!(user = ?check.name, error = %e, "stored hash does not parse");
                false
            }
        };
        let granted = match check.role {
            Some(role) if matched => Some(role),
            Some(_) => None,
            None => {
                self.counters
                    .dummy_verifications
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        self.outcome(&check.name, granted, check.addr, true)
    }

    /// Records a success or failure and turns it into the answer.
    fn outcome(
        &self,
        name: &str,
        granted: Option<Role>,
        source: Option<IpAddr>,
        lockable: bool,
    ) -> std::result::Result<Role, AuthError> {
        match granted {
            Some(role) => {
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                self.lockouts.record_success(name);
                self.throttle.refund(source);
                Ok(role)
            }
            None => {
                self.counters.denied.fetch_add(1, Ordering::Relaxed);
                let now = self.policy.clock.now();
                if lockable && self.lockouts.record_failure(name, now) {
                    tracing::warn!(user = ?name, ?source, lockout = ?self.policy.lockout,
                        "account locked after too many failed logins");
                } else {
                    tracing::info!(user = ?name, ?source, "login denied");
                }
                Err(AuthError::Denied)
            }
        }
    }

    /// Re-reads the file under the writers' lock, applies `change`, writes
    /// it back atomically, and makes the result our snapshot.
    fn mutate<T>(&self, change: impl FnOnce(&mut Contents) -> Result<T>) -> Result<T> {
        let _lock = file::lock(&self.path)?;
        let mut contents = match file::load(&self.path)? {
            Some((c, _)) => c,
            None => empty_contents()?,
        };
        let out = change(&mut contents)?;
        let stamp = file::save(&self.path, &contents)?;
        *self.state.write() = Arc::new(Snapshot {
            contents,
            stamp: Some(stamp),
        });
        Ok(out)
    }

    fn hash_password(&self, password: &str) -> Result<String> {
        let mut salt = [0u8; 16];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|e| Error::Random(e.to_string()))?;
        let salt = argon2::password_hash::SaltString::encode_b64(&salt)
            .map_err(|e| Error::Internal(format!("encoding a salt: {e}")))?;
        let hash = self
            .argon2
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| Error::Internal(format!("argon2 hashing failed: {e}")))?;
        Ok(hash.to_string())
    }
}

/// NIST SP 800-63B: a minimum length and a generous maximum, no
/// composition rules.
fn check_new_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::WeakPassword(format!(
            "it must be at least {MIN_PASSWORD_CHARS} characters long"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::WeakPassword(format!(
            "it must be at most {MAX_PASSWORD_BYTES} bytes long"
        )));
    }
    Ok(())
}

fn empty_contents() -> Result<Contents> {
    let mut device_key = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut device_key)
        .map_err(|e| Error::Random(e.to_string()))?;
    Ok(Contents {
        device_key,
        users: Default::default(),
        devices: Default::default(),
    })
}

/// A PHC string with the given parameters and random salt and output.
fn dummy_phc(params: &argon2::Params) -> Result<String> {
    let mut salt = [0u8; 16];
    let mut output = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .and_then(|()| OsRng.try_fill_bytes(&mut output))
        .map_err(|e| Error::Random(e.to_string()))?;
    let internal = |e: argon2::password_hash::Error| Error::Internal(format!("dummy hash: {e}"));
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(internal)?;
    let output = argon2::password_hash::Output::new(&output).map_err(internal)?;
    let phc = format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt.as_str(),
        output
    );
    file::check_phc(&phc).map_err(|e| Error::Internal(format!("dummy hash: {e}")))?;
    Ok(phc)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checked: `created` comes from the file, and `SystemTime + Duration`
/// panics on overflow.
fn unix_to_system(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
impl UserStore {
    pub(crate) fn dummy_hash(&self) -> &str {
        &self.dummy_hash
    }
}

/// The file's contents, or an empty store when there is no file yet.
fn load_snapshot(path: &Path) -> Result<Snapshot> {
    Ok(match file::load(path)? {
        Some((contents, stamp)) => Snapshot {
            contents,
            stamp: Some(stamp),
        },
        None => Snapshot {
            contents: empty_contents()?,
            stamp: None,
        },
    })
}
