//! [`FaultFs`]: an in-memory [`Vfs`] that models a disk behind a page cache,
//! so tests can cut the power or make the disk fail at an exact, repeatable
//! moment.
//!
//! What it promises, operation by operation:
//! - Every file has its current bytes (what reads see) and a durable length:
//!   the prefix that survives power loss. [`WriteFile::sync_data`] makes all
//!   current bytes durable; [`Vfs::truncate`] is durable at once, as on
//!   [`super::RealFs`]. Writes only append, so the durable bytes are always a
//!   prefix of the current bytes.
//! - Every directory has current entries and durable entries. Creating,
//!   renaming and removing files, and creating directories, change only the
//!   current entries until [`Vfs::sync_dir`] on the parent directory. A
//!   directory that does not survive takes its whole subtree with it.
//! - The roots `/`, `.` and the empty path always exist and are durable.
//! - [`FaultFs::power_loss`] returns the disk as it is after the power fails
//!   now: durable entries only, each file with its durable bytes plus a
//!   seed-chosen prefix of its unsynced bytes (a torn write).
//! - A [`FaultPlan`] injects crashes (every later call fails), EIO on writes
//!   or syncs, and ENOSPC on writes or creates. Its counts are relative to
//!   the moment the plan is set, so a test can run a workload once, read
//!   [`FaultFs::ops`], and replay it crashing at each operation in turn.
//!
//! [`Vfs::create`] on an existing path gives the name a new, empty inode; the
//! old inode survives power loss if the new entry was not synced yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DirLock, Mapped, Vfs, WriteFile};

#[cfg(test)]
mod tests;

/// Faults to inject. `Default` injects none. Every count is relative to the
/// moment the plan is set ([`FaultFs::with_plan`], [`FaultFs::set_plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The power fails at the Nth mutating operation (create, open_append,
    /// write_all, sync_data, truncate, rename, remove_file, remove_dir,
    /// create_dir_all, sync_dir): that operation and every later call,
    /// reads included, fail with "simulated power loss". `Some(0)` fails
    /// everything at once.
    pub crash_after_ops: Option<u64>,
    /// The Nth and every later `write_all` fail with EIO and write nothing.
    pub fail_write_after: Option<u64>,
    /// The Nth and every later `sync_data` fail with EIO and sync nothing.
    pub fail_sync_after: Option<u64>,
    /// The Nth and every later `create` fail with ENOSPC (as when the file
    /// system has no inode left) and create nothing.
    pub fail_create_after: Option<u64>,
    /// A `write_all` that would push the total size of all files past this
    /// fails with ENOSPC and writes nothing.
    pub space_limit_bytes: Option<u64>,
}

impl FaultPlan {
    pub fn crash_after_ops(mut self, n: u64) -> Self {
        self.crash_after_ops = Some(n);
        self
    }
    pub fn fail_write_after(mut self, n: u64) -> Self {
        self.fail_write_after = Some(n);
        self
    }
    pub fn fail_sync_after(mut self, n: u64) -> Self {
        self.fail_sync_after = Some(n);
        self
    }
    pub fn fail_create_after(mut self, n: u64) -> Self {
        self.fail_create_after = Some(n);
        self
    }
    pub fn space_limit_bytes(mut self, n: u64) -> Self {
        self.space_limit_bytes = Some(n);
        self
    }
}

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    /// `data[..durable_len]` survives power loss.
    durable_len: usize,
}

/// Counters at the moment the plan was set; the plan's counts start there.
#[derive(Debug, Clone, Copy, Default)]
struct Base {
    ops: u64,
    writes: u64,
    syncs: u64,
    creates: u64,
}

#[derive(Debug, Default)]
struct State {
    plan: FaultPlan,
    base: Base,
    ops: u64,
    writes: u64,
    syncs: u64,
    creates: u64,
    crashed: bool,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    files: BTreeMap<PathBuf, u64>,
    durable_files: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// What `available_bytes` reports; `None` for plenty.
    available: Option<u64>,
}

fn power_loss_error() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("/") || path == Path::new(".")
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl State {
    /// Fails if the power is off (or the plan says it just went off).
    fn alive(&mut self) -> io::Result<()> {
        let limit_hit = self
            .plan
            .crash_after_ops
            .is_some_and(|n| self.ops - self.base.ops >= n);
        if self.crashed || limit_hit {
            self.crashed = true;
            return Err(power_loss_error());
        }
        Ok(())
    }

    /// Counts one mutating operation; the one that reaches the crash limit
    /// fails like everything after it.
    fn mutating(&mut self) -> io::Result<()> {
        self.alive()?;
        self.ops += 1;
        self.alive()
    }

    fn is_dir(&self, path: &Path) -> bool {
        is_root(path) || self.dirs.contains(path)
    }

    fn require_parent(&self, path: &Path) -> io::Result<()> {
        if self.is_dir(&parent_of(path)) {
            Ok(())
        } else {
            Err(not_found(&parent_of(path)))
        }
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        self.files.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes.entry(ino).or_default()
    }

    fn new_file(&mut self, path: &Path) -> io::Result<u64> {
        self.require_parent(path)?;
        if self.is_dir(path) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", path.display()),
            ));
        }
        self.next_inode += 1;
        let ino = self.next_inode;
        self.inodes.insert(ino, Inode::default());
        self.files.insert(path.to_path_buf(), ino);
        Ok(ino)
    }

    fn total_bytes(&self) -> u64 {
        let linked: BTreeSet<u64> = self.files.values().copied().collect();
        linked
            .iter()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|i| i.data.len() as u64)
            .sum()
    }

    fn write(&mut self, ino: u64, buf: &[u8]) -> io::Result<()> {
        self.mutating()?;
        self.writes += 1;
        if let Some(n) = self.plan.fail_write_after
            && self.writes - self.base.writes >= n
        {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if let Some(limit) = self.plan.space_limit_bytes
            && self.total_bytes() + buf.len() as u64 > limit
        {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        self.inode(ino).data.extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self, ino: u64) -> io::Result<()> {
        self.mutating()?;
        self.syncs += 1;
        if let Some(n) = self.plan.fail_sync_after
            && self.syncs - self.base.syncs >= n
        {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        let inode = self.inode(ino);
        inode.durable_len = inode.data.len();
        Ok(())
    }
}

/// The in-memory, fault-injecting file system. Clones share one disk, so a
/// test can keep a handle while the store owns another.
#[derive(Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("FaultFs")
            .field("files", &st.files.len())
            .field("ops", &st.ops)
            .field("crashed", &st.crashed)
            .finish()
    }
}

impl FaultFs {
    /// An empty disk without faults.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_plan(plan: FaultPlan) -> Self {
        let fs = Self::new();
        fs.set_plan(plan);
        fs
    }

    /// Sets the free space `available_bytes` reports (`None`: plenty).
    /// Writes are not limited by it; `FaultPlan` fails them.
    pub fn set_available(&self, bytes: Option<u64>) {
        self.state().available = bytes;
    }

    /// Replaces the plan; its counts start from now.
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut st = self.state();
        st.base = Base {
            ops: st.ops,
            writes: st.writes,
            syncs: st.syncs,
            creates: st.creates,
        };
        st.plan = plan;
    }

    /// Bytes in all files, as [`FaultPlan::space_limit_bytes`] counts them.
    pub fn used_bytes(&self) -> u64 {
        self.state().total_bytes()
    }

    /// Mutating operations so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// True once a planned crash has happened.
    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    /// Edits a file's bytes in place (bit flips, truncation, garbage); the
    /// result counts as durable. Bypasses the plan.
    pub fn corrupt(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut st = self.state();
        let ino = st.file(path)?;
        let inode = st.inode(ino);
        f(&mut inode.data);
        inode.durable_len = inode.data.len();
        Ok(())
    }

    /// The disk after a power failure at this moment: a new file system with
    /// no plan, no locks and an operation count of 0. Which prefix of each
    /// file's unsynced bytes survives depends only on `seed` and the state.
    pub fn power_loss(&self, seed: u64) -> FaultFs {
        let st = self.state();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut new = State {
            next_inode: st.next_inode,
            ..State::default()
        };
        // BTreeSet order visits a parent before its children.
        for dir in &st.durable_dirs {
            if new.is_dir(&parent_of(dir)) {
                new.dirs.insert(dir.clone());
            }
        }
        new.durable_dirs = new.dirs.clone();
        for (path, &ino) in &st.durable_files {
            if !new.is_dir(&parent_of(path)) {
                continue;
            }
            new.files.insert(path.clone(), ino);
            if new.inodes.contains_key(&ino) {
                continue;
            }
            let old = st.inodes.get(&ino).cloned().unwrap_or_default();
            let tail = old.data.len() - old.durable_len;
            // Favour the edge cases (nothing or everything survives) as
            // often as a uniformly chosen cut.
            let kept = match rng.random_range(0..3u8) {
                0 => 0,
                1 => tail,
                _ => rng.random_range(0..=tail),
            };
            let len = old.durable_len + kept;
            let data = old.data[..len].to_vec();
            new.inodes.insert(
                ino,
                Inode {
                    data,
                    durable_len: len,
                },
            );
        }
        new.durable_files = new.files.clone();
        FaultFs {
            state: Arc::new(Mutex::new(new)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves a consistent
        // state behind: every method finishes its edit before unlocking.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct FaultFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

impl FaultFile {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WriteFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.state().write(self.ino, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.state().sync(self.ino)
    }
    fn len(&self) -> u64 {
        self.state()
            .inodes
            .get(&self.ino)
            .map_or(0, |i| i.data.len() as u64)
    }
}

/// Releases an in-memory lock when the [`DirLock`] drops.
struct LockGuard {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.locks.remove(&self.path);
    }
}

impl Vfs for FaultFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.mutating()?;
        let mut missing = Vec::new();
        let mut cur = Some(path);
        while let Some(p) = cur {
            if st.is_dir(p) {
                break;
            }
            if st.files.contains_key(p) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file", p.display()),
                ));
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        st.dirs.extend(missing);
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut st = self.state();
        st.alive()?;
        if !st.is_dir(path) {
            return Err(not_found(path));
        }
        let in_dir = |p: &&PathBuf| p.parent() == Some(path);
        let mut out: Vec<PathBuf> = st.files.keys().filter(in_dir).cloned().collect();
        out.extend(st.dirs.iter().filter(in_dir).cloned());
        out.sort();
        Ok(out)
    }

    fn is_dir(&self, path: &Path) -> bool {
        let mut st = self.state();
        st.alive().is_ok() && st.is_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        let mut st = self.state();
        st.alive().is_ok() && (st.is_dir(path) || st.files.contains_key(path))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut st = self.state();
        st.mutating()?;
        st.creates += 1;
        if let Some(n) = st.plan.fail_create_after
            && st.creates - st.base.creates >= n
        {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let ino = st.new_file(path)?;
        Ok(Box::new(FaultFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut st = self.state();
        st.mutating()?;
        let ino = st.file(path)?;
        Ok(Box::new(FaultFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut st = self.state();
        st.alive()?;
        let ino = st.file(path)?;
        Ok(st.inode(ino).data.clone())
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let bytes = self.read(path)?;
        Ok(Mapped::new(Arc::new(bytes)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state();
        st.mutating()?;
        let ino = st.file(path)?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        let inode = st.inode(ino);
        inode.data.resize(len, 0);
        inode.durable_len = len;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.mutating()?;
        let ino = st.file(from)?;
        st.require_parent(to)?;
        if st.is_dir(to) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", to.display()),
            ));
        }
        st.files.remove(from);
        st.files.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.mutating()?;
        st.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.mutating()?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let child = |p: &PathBuf| p.parent() == Some(path);
        if st.files.keys().any(child) || st.dirs.iter().any(child) {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{} is not empty", path.display()),
            ));
        }
        st.dirs.remove(path);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.mutating()?;
        if !st.is_dir(path) {
            return Err(not_found(path));
        }
        let st = &mut *st;
        st.durable_files.retain(|p, _| p.parent() != Some(path));
        for (p, &ino) in &st.files {
            if p.parent() == Some(path) {
                st.durable_files.insert(p.clone(), ino);
            }
        }
        st.durable_dirs.retain(|p| p.parent() != Some(path));
        for p in &st.dirs {
            if p.parent() == Some(path) {
                st.durable_dirs.insert(p.clone());
            }
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<DirLock> {
        let mut st = self.state();
        st.alive()?;
        if st.locks.contains(path) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "lock is held by another owner",
            ));
        }
        if !st.files.contains_key(path) {
            st.new_file(path)?;
        }
        st.locks.insert(path.to_path_buf());
        Ok(DirLock::new(Box::new(LockGuard {
            state: self.state.clone(),
            path: path.to_path_buf(),
        })))
    }

    fn available_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(self.state().available.unwrap_or(u64::MAX))
    }
}
