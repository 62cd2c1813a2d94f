//! The user file on disk: format version 1 (documented in `auth.rs`),
//! permission checks, atomic rewrites and the writers' lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Role;
use crate::{Error, Result};

/// The only format version this build reads and writes.
pub(crate) const VERSION: u32 = 1;

/// A user file larger than this is refused unread: it cannot be ours (a
/// hundred thousand accounts fit in a few tens of MiB).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Version 1, as serialized.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u32,
    device_key: String,
    users: Vec<UserV1>,
    devices: Vec<DeviceV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserV1 {
    name: String,
    role: Role,
    hash: String,
    created: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceV1 {
    id: String,
    secret_hash: String,
    created: u64,
}

/// Just enough to tell an old or new format from a corrupt one.
#[derive(Deserialize)]
struct VersionOnly {
    version: Option<serde_json::Value>,
}

/// A person, as kept in memory.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) role: Role,
    /// A validated argon2id PHC string.
    pub(crate) hash: String,
    pub(crate) created: u64,
}

/// A device, as kept in memory.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// `blake3::keyed_hash(device_key, secret)`.
    pub(crate) secret_hash: [u8; 32],
    pub(crate) created: u64,
}

/// The validated contents of a user file.
#[derive(Debug, Clone)]
pub(crate) struct Contents {
    /// Key for device-secret hashes. Random per store, so a leaked file
    /// cannot be matched against hashes from another installation, and it
    /// sits in the same file because it protects nothing the file's mode
    /// does not already protect.
    pub(crate) device_key: [u8; 32],
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) devices: BTreeMap<String, Device>,
}

impl Contents {
    /// Whether any person or device has this name, ignoring case.
    pub(crate) fn name_taken(&self, name: &str) -> bool {
        self.users
            .keys()
            .chain(self.devices.keys())
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Identity and version of the file we loaded, to notice rewrites (a new
/// inode after rename), edits (mtime, length) and chmod (ctime, mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The stamp of the file now, or `None` when there is no file.
pub(crate) fn stamp(path: &Path) -> Result<Option<Stamp>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp::of(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Loads and validates the file; `None` when it does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<(Contents, Stamp)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    // Metadata of the open handle, so the checks and the stamp describe
    // exactly the bytes we read, even if the file is replaced meanwhile.
    let meta = file.metadata().map_err(io_err(path))?;
    let corrupt = |reason: String| Error::UserFileCorrupt {
        path: path.to_owned(),
        reason,
    };
    if !meta.is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Error::UserFilePermissions {
            path: path.to_owned(),
            mode: meta.mode() & 0o777,
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(corrupt(format!("{} bytes is too large", meta.len())));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(corrupt(
            "the file grew past the size limit while being read".into(),
        ));
    }
    Ok(Some((parse(path, &bytes)?, Stamp::of(&meta))))
}

/// Parses and validates file bytes. Never panics, whatever the input.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Contents> {
    let corrupt = |reason: String| Error::UserFileCorrupt {
        path: path.to_owned(),
        reason,
    };
    let probe: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    match probe.version {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "unsupported format version {v}; this wattson reads version {VERSION}"
            )));
        }
        None => return Err(corrupt("no `version` field".into())),
    }
    let raw: FileV1 = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("{e}")))?;
    let device_key = decode_hex32(&raw.device_key)
        .ok_or_else(|| corrupt("`device_key` is not 64 hex digits".into()))?;
    let mut contents = Contents {
        device_key,
        users: BTreeMap::new(),
        devices: BTreeMap::new(),
    };
    for u in raw.users {
        validate_person_name(&u.name).map_err(|e| corrupt(e.to_string()))?;
        if !u.role.is_person() {
            return Err(corrupt(format!(
                "user `{}` has role {}; people are viewer, analyst or admin",
                u.name, u.role
            )));
        }
        check_phc(&u.hash).map_err(|why| corrupt(format!("user `{}`: {why}", u.name)))?;
        if contents.name_taken(&u.name) {
            return Err(corrupt(format!("the name `{}` appears twice", u.name)));
        }
        let user = User {
            role: u.role,
            hash: u.hash,
            created: u.created,
        };
        contents.users.insert(u.name, user);
    }
    for d in raw.devices {
        wattson_storage::model::validate_device_name(&d.id).map_err(|e| corrupt(e.to_string()))?;
        let secret_hash = decode_hex32(&d.secret_hash).ok_or_else(|| {
            corrupt(format!(
                "device `{}`: `secret_hash` is not 64 hex digits",
                d.id
            ))
        })?;
        if contents.name_taken(&d.id) {
            return Err(corrupt(format!("the name `{}` appears twice", d.id)));
        }
        let device = Device {
            secret_hash,
            created: d.created,
        };
        contents.devices.insert(d.id, device);
    }
    Ok(contents)
}

/// Checks that a stored hash is an argon2id PHC string with salt and hash.
pub(crate) fn check_phc(phc: &str) -> std::result::Result<(), String> {
    let parsed = argon2::PasswordHash::new(phc).map_err(|e| format!("bad PHC hash: {e}"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "hash algorithm {} is not argon2id",
            parsed.algorithm
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("PHC hash without salt or output".into());
    }
    argon2::Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    Ok(())
}

/// People's names: 1 to 64 of `[A-Za-z0-9_.@-]`, so an email address works
/// and nothing needs quoting in logs, MQTT or shells.
pub(crate) fn validate_person_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "user name `{}` must be 1 to 64 characters: ASCII letters, digits, `_`, `.`, `@` or `-`",
            name.escape_debug()
        )))
    }
}

/// Writes the file atomically with mode 0600: temp file in the same
/// directory, fsync, rename over the old file, fsync the directory.
pub(crate) fn save(path: &Path, contents: &Contents) -> Result<Stamp> {
    let raw = FileV1 {
        version: VERSION,
        device_key: encode_hex(&contents.device_key),
        users: contents
            .users
            .iter()
            .map(|(name, u)| UserV1 {
                name: name.clone(),
                role: u.role,
                hash: u.hash.clone(),
                created: u.created,
            })
            .collect(),
        devices: contents
            .devices
            .iter()
            .map(|(id, d)| DeviceV1 {
                id: id.clone(),
                secret_hash: encode_hex(&d.secret_hash),
                created: d.created,
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&raw)
        .map_err(|e| Error::Internal(format!("serializing the user file: {e}")))?;
    bytes.push(b'\n');

    let dir = parent(path);
    ensure_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        super::USER_FILE_NAME,
        std::process::id()
    ));
    let result = write_new(&tmp, &bytes).and_then(|()| {
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    stamp(path)?.ok_or_else(|| Error::Internal(format!("{} vanished after rename", path.display())))
}

fn write_new(tmp: &Path, bytes: &[u8]) -> Result<()> {
    // A leftover from a crashed writer (we hold the lock, so it is not
    // live) would make `create_new` fail; it holds nothing we need.
    let _ = fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err(tmp))?;
    // The umask can only clear bits from 0600, but set it explicitly so the
    // mode does not depend on the caller's umask at all.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err(tmp))?;
    f.write_all(bytes).map_err(io_err(tmp))?;
    f.sync_all().map_err(io_err(tmp))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a missing data directory as 0700: it will hold credentials.
fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// The writers' lock: held across read-modify-write so two `wattson user`
/// processes cannot lose each other's changes. Released on drop.
#[derive(Debug)]
pub(crate) struct WriterLock {
    _file: File,
}

pub(crate) fn lock(user_file: &Path) -> Result<WriterLock> {
    ensure_dir(parent(user_file))?;
    let lock_path: PathBuf = user_file.with_extension("json.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    file.lock().map_err(io_err(&lock_path))?;
    Ok(WriterLock { _file: file })
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

pub(crate) fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}
