//! Shared helpers for the WAL tests; the tests themselves are grouped by
//! topic in `tests/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::io::{FaultFs, Vfs};

mod basic;
mod crash;
mod recovery;

/// What one `Wal::open` produced, plus what `on_commit` has seen since.
struct Opened {
    wal: Wal<u64>,
    events: Vec<RecoveryEvent>,
    replayed: Vec<(u64, Vec<u8>)>,
    /// `(seq, item)` pairs in the order `on_commit` received them.
    committed: Arc<Mutex<Vec<(u64, u64)>>>,
}

fn wal_dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

/// No group-commit wait: single-threaded tests get one round per append,
/// which keeps their file layout and operation counts predictable.
fn opts() -> WalOptions {
    WalOptions {
        group_commit_window: Duration::ZERO,
        ..WalOptions::default()
    }
}

fn open_with(vfs: Arc<dyn Vfs>, dir: &Path, opts: WalOptions, min_next_seq: u64) -> Result<Opened> {
    let mut replayed = Vec::new();
    let committed = Arc::new(Mutex::new(Vec::new()));
    let sink = committed.clone();
    let (wal, events) = Wal::open(
        vfs,
        dir.to_path_buf(),
        opts,
        min_next_seq,
        &mut |seq, payload| {
            replayed.push((seq, payload.to_vec()));
            Ok(())
        },
        Box::new(move |batch| sink.lock().unwrap().extend(batch)),
    )?;
    Ok(Opened {
        wal,
        events,
        replayed,
        committed,
    })
}

fn open_fault(fs: &FaultFs) -> Opened {
    open_with(Arc::new(fs.clone()), &wal_dir(), opts(), 1).unwrap()
}

fn payload(i: usize) -> Vec<u8> {
    format!("payload-{i}-{}", "x".repeat(i % 7)).into_bytes()
}

/// The `.wal` files in `dir`, in order.
fn wal_files(vfs: &dyn Vfs, dir: &Path) -> Vec<PathBuf> {
    vfs.list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

/// Where one record of a test log lies.
#[derive(Debug, Clone)]
struct Placed {
    file: PathBuf,
    start: usize,
    end: usize,
}

/// Writes `payloads` (seqs 1..) into a fresh FaultFs, closing the file after
/// each index in `rotate_after`, and closes the log cleanly. Returns the fs
/// and where each record lies. The log's last file holds the last record.
fn build_log(payloads: &[Vec<u8>], rotate_after: &[usize]) -> (FaultFs, Vec<Placed>) {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    let mut file = wal_dir().join(format::file_name(1));
    let mut at = format::HEADER_LEN;
    let mut placed = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(o.wal.append(p.clone(), seq).unwrap(), seq);
        let end = at + format::record_len(p.len());
        placed.push(Placed {
            file: file.clone(),
            start: at,
            end,
        });
        at = end;
        if rotate_after.contains(&i) {
            assert_eq!(o.wal.rotate_with(|s| s).unwrap(), seq);
            file = wal_dir().join(format::file_name(seq + 1));
            at = format::HEADER_LEN;
        }
    }
    o.wal.close().unwrap();
    assert_eq!(fs.read(&file).unwrap().len(), at);
    (fs, placed)
}
