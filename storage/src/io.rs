//! All file I/O of the store goes through [`Vfs`], so tests can swap the real
//! file system ([`RealFs`]) for one that crashes, loses unsynced writes or
//! fails with EIO and ENOSPC on demand ([`FaultFs`]).
//!
//! The contract the store relies on, and that [`FaultFs`] enforces:
//! - bytes written to a file are durable only after [`WriteFile::sync_data`];
//! - a created, renamed or removed directory entry is durable only after
//!   [`Vfs::sync_dir`] on its parent directory;
//! - [`Vfs::rename`] within one directory is atomic;
//! - files handed to [`Vfs::map`] are never modified or truncated again.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod fault;
pub use fault::{FaultFs, FaultPlan};

/// A file opened for appending.
pub trait WriteFile: Send + fmt::Debug {
    /// Appends all of `buf` at the end of the file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Current length in bytes, including unsynced writes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read-only bytes of a sealed file: a memory map for [`RealFs`], a shared
/// buffer for [`FaultFs`].
#[derive(Clone)]
pub struct Mapped(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Mapped {
    pub fn new(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Self {
        Mapped(bytes)
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapped({} bytes)", self.len())
    }
}

/// Proof that this process owns a data directory. Dropping it releases the lock.
pub struct DirLock {
    /// Held only for its `Drop`, which releases the lock.
    _guard: Box<dyn Send + Sync>,
}

impl DirLock {
    pub fn new(guard: Box<dyn Send + Sync>) -> Self {
        DirLock { _guard: guard }
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirLock")
    }
}

/// The file-system operations the store uses, and nothing more.
pub trait Vfs: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its missing parents. Not durable until the
    /// parent of each new directory is synced.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory (files and directories), as full paths, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    fn is_dir(&self, path: &Path) -> bool;
    fn exists(&self, path: &Path) -> bool;
    /// Creates (or truncates) a file and opens it for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Maps a sealed, immutable file read-only.
    fn map(&self, path: &Path) -> io::Result<Mapped>;
    /// Shortens a file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing). Fails with
    /// [`io::ErrorKind::WouldBlock`] if another owner holds it.
    fn lock(&self, path: &Path) -> io::Result<DirLock>;
    /// Bytes that unprivileged writers may still use on the file system
    /// holding `path`.
    fn available_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
    len: u64,
}

impl WriteFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Keeps the memory map alive alongside the bytes view.
struct MmapBytes(memmap2::Mmap);

impl AsRef<[u8]> for MmapBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Vfs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            out.push(entry?.path());
        }
        out.sort();
        Ok(out)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(RealFile { file, len: 0 }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(RealFile { file, len }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped::new(Arc::new(Vec::<u8>::new())));
        }
        // SAFETY: memmap2 is sound only while nobody modifies or truncates the
        // file during the map's lifetime. The store maps only sealed segment
        // files: they are written once under a temporary name, fsynced, renamed
        // into place and never opened for writing again; compaction and
        // retention unlink them, which leaves an existing map intact. Another
        // writing process is excluded by the directory lock; a read-only
        // store in another process maps the same sealed files while the
        // writer runs, and the writer, too, only ever unlinks them.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Mapped::new(Arc::new(MmapBytes(map))))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock::new(Box::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "lock is held by another process",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    #[cfg(unix)]
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c_path` is a valid NUL-terminated string and `st` points
        // to writable memory of the struct's size.
        if unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled the struct.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }

    #[cfg(not(unix))]
    fn available_bytes(&self, _path: &Path) -> io::Result<u64> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "free space is only known on unix",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn real_free_space_is_read_and_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let free = RealFs.available_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let missing = dir.path().join("not-here");
        assert_eq!(
            RealFs.available_bytes(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
