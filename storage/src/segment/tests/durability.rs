//! The writer's durability sequence (tmp -> fsync -> rename -> fsync dir) and
//! its behaviour when any step fails.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, Int64Array};

use super::{meta, secs};
use crate::error::Error;
use crate::io::{DirLock, Mapped, RealFs, Vfs, WriteFile};
use crate::model::ChannelType;
use crate::segment::{SegmentReader, WriteOptions, write_segment};

/// Real file system that logs the calls the writer makes and fails the
/// first one whose name is `fail`.
#[derive(Debug, Clone, Default)]
struct Recording {
    log: Arc<Mutex<Vec<String>>>,
    fail: Option<&'static str>,
}

impl Recording {
    fn call(&self, name: &str) -> io::Result<()> {
        self.log.lock().unwrap().push(name.to_owned());
        match self.fail {
            Some(f) if f == name => Err(io::Error::other(format!("injected {name} failure"))),
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct File(Box<dyn WriteFile>, Recording);

impl WriteFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.1.call("write_all")?;
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.1.call("sync_data")?;
        self.0.sync_data()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl Vfs for Recording {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        RealFs.list_dir(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        RealFs.is_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        RealFs.exists(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        self.call("create")?;
        Ok(Box::new(File(RealFs.create(path)?, self.clone())))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        RealFs.open_append(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read(path)
    }
    fn map(&self, path: &Path) -> io::Result<Mapped> {
        RealFs.map(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        RealFs.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.call("rename")?;
        RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.call("remove_file")?;
        RealFs.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.call("sync_dir")?;
        RealFs.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> io::Result<DirLock> {
        RealFs.lock(path)
    }
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        RealFs.available_bytes(path)
    }
}

fn attempt(
    fail: Option<&'static str>,
) -> (tempfile::TempDir, PathBuf, Vec<String>, Result<u64, Error>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.wseg");
    let fs = Recording {
        fail,
        ..Recording::default()
    };
    let m = meta(&[("x", ChannelType::I64)]);
    let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let result = write_segment(&fs, &path, &m, &secs(3), &[col], &WriteOptions::default());
    let mut log = fs.log.lock().unwrap().clone();
    log.dedup();
    (dir, path, log, result)
}

#[test]
fn writes_tmp_then_syncs_renames_and_syncs_the_directory() {
    let (_dir, path, log, result) = attempt(None);
    let len = result.unwrap();
    assert_eq!(
        log,
        ["create", "write_all", "sync_data", "rename", "sync_dir"]
    );
    assert_eq!(SegmentReader::open(&RealFs, &path).unwrap().file_len(), len);
    assert!(!RealFs.exists(&path.with_extension("wseg.tmp")));
}

#[test]
fn a_failed_step_leaves_no_segment_and_no_tmp_file() {
    for step in ["create", "write_all", "sync_data", "rename"] {
        let (_dir, path, log, result) = attempt(Some(step));
        assert!(
            matches!(result, Err(Error::Io { .. })),
            "{step}: {result:?}"
        );
        assert!(!RealFs.exists(&path), "{step}: segment exists");
        assert!(
            !RealFs.exists(&path.with_extension("wseg.tmp")),
            "{step}: tmp left"
        );
        assert!(!log.contains(&"sync_dir".to_owned()), "{step}: {log:?}");
    }
    let (_dir, _path, _log, result) = attempt(Some("sync_dir"));
    assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
}
