//! The write-ahead log: makes appends durable, in seq order, with group
//! commit, and gives every durable record back after a crash.
//!
//! [`Wal`] owns one directory of segment files `{first_seq:020}.wal`. Each
//! append gets the next seq, is framed with its length and a CRC32C, and is
//! acknowledged only after the round it belongs to was written and
//! fdatasync'd. One committer thread writes and syncs; concurrent appends
//! share its fsync. Payloads are opaque bytes; the caller's item `T` travels
//! with each payload and comes back through `on_commit`, in seq order, before
//! the append returns.
//!
//! Submodules: `format` (bytes on disk), `recovery` (replay and repair at
//! open), `committer` (the writer thread). The byte layout, the fsync
//! protocol and the recovery rules are in `docs/storage-format.md, "Write-ahead log"`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::Vfs;

mod committer;
mod format;
mod recovery;
#[cfg(test)]
mod tests;

use committer::{Counters, Log, Pending, Queue, Rotation, Shared, lock};
pub use format::MAX_PAYLOAD;
use recovery::Segment;

/// Longest group-commit window accepted: every acknowledgement waits up to
/// this long, and MQTT devices wait for their PUBACK.
pub const MAX_GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(10);

/// Called on the committer thread with each durable round's `(seq, item)`
/// pairs, in seq order, before any append of the round returns. It runs
/// under the committer's lock: it must not call back into the [`Wal`].
pub type OnCommit<T> = Box<dyn FnMut(Vec<(u64, T)>) + Send>;

/// How the log is written. `Default` suits production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A commit round that finds the current file at or above this size
    /// first starts a new file. Default 64 MiB.
    pub segment_bytes: u64,
    /// After the first append of a round arrives, how long the committer
    /// waits for more before writing. Default 2 ms; at most
    /// [`MAX_GROUP_COMMIT_WINDOW`]; zero writes at once.
    pub group_commit_window: Duration,
    /// A round stops collecting once its records reach this many bytes
    /// (a single larger record still goes alone). Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Where recovery copies damaged bytes and moves unreadable files;
    /// `None` leaves them in place and only reports them.
    pub quarantine_dir: Option<PathBuf>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            group_commit_window: Duration::from_millis(2),
            max_batch_bytes: 8 << 20,
            quarantine_dir: None,
        }
    }
}

/// What [`Wal::open`] found and repaired. Every byte that was not replayed is
/// covered by an event. A torn tail is normally a write cut off by a crash,
/// never acknowledged; a disk that damages the last records of the last file
/// produces the same event.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryEvent {
    /// The last file ended in an incomplete or failing record (or an
    /// incomplete header, then `offset` is 0 and the file was removed). The
    /// file was truncated at `offset`. After [`replay_read_only`] the file
    /// is left as it was.
    TornTail {
        file: PathBuf,
        offset: u64,
        discarded_bytes: u64,
    },
    /// `len` bytes at `offset` held no valid record but valid records follow
    /// (or the file is not the last). They were skipped, and copied to
    /// `quarantined` if a quarantine directory is set.
    Damaged {
        file: PathBuf,
        offset: u64,
        len: u64,
        quarantined: Option<PathBuf>,
    },
    /// The file's header is unusable; none of its records were replayed. It
    /// was moved to `quarantined`, or left in place if no quarantine
    /// directory is set.
    BadFile {
        file: PathBuf,
        reason: String,
        quarantined: Option<PathBuf>,
    },
}

/// Replays every intact record of the log in `dir` through `replay(seq,
/// payload)`, like [`Wal::open`], but changes nothing: no file is created,
/// truncated, removed or quarantined, and no committer starts. Damage and
/// torn tails are only reported. Meant for a reader beside a live writer,
/// where the last file's tail is usually a record still being written. A
/// missing directory is an empty log.
///
/// A file that vanishes while it is read (the writer trimmed it) fails with
/// an [`Error::Io`] of kind `NotFound`; the caller decides whether to retry.
pub fn replay_read_only(
    vfs: &dyn Vfs,
    dir: &Path,
    replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Vec<RecoveryEvent>> {
    if !vfs.is_dir(dir) {
        return Ok(Vec::new());
    }
    let rec = recovery::recover(vfs, dir, None, recovery::Repair::ReadOnly, replay)?;
    Ok(rec.events)
}

/// Upper bounds (inclusive, microseconds) of the fdatasync latency buckets
/// in [`WalStats::fsync_latency`]; a last, unbounded bucket follows.
pub const FSYNC_BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable.
    pub appends: u64,
    /// Commit rounds, that is, fdatasyncs of record data.
    pub commits: u64,
    /// Record bytes made durable, frames included.
    pub bytes: u64,
    /// fdatasync durations of commit rounds: counts per bucket of
    /// [`FSYNC_BUCKETS_US`], then the unbounded bucket.
    pub fsync_latency: [u64; FSYNC_BUCKETS_US.len() + 1],
    /// Sum of those durations, in microseconds.
    pub fsync_sum_us: u64,
}

/// The write-ahead log. `Send + Sync`: share it (`Arc<Wal<T>>`) and append
/// from many threads.
pub struct Wal<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    /// Taken by the first `close`.
    committer: Mutex<Option<JoinHandle<()>>>,
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
}

impl<T: Send + 'static> fmt::Debug for Wal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("last_committed_seq", &self.last_committed_seq())
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

impl<T: Send + 'static> Wal<T> {
    /// Opens the log in `dir` (created if missing, its parent synced),
    /// replays every intact record in seq order through `replay(seq,
    /// payload)`, repairs the log (see [`RecoveryEvent`]), starts a fresh
    /// segment file for new records and starts the committer thread.
    ///
    /// New seqs start at the largest of `min_next_seq`, one past the last
    /// replayed seq, and every file's first seq; never at 0. When `open`
    /// returns, every replayed record is durable. An error from `replay`
    /// aborts the open and is returned as is.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        opts: WalOptions,
        min_next_seq: u64,
        replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
        on_commit: OnCommit<T>,
    ) -> Result<(Wal<T>, Vec<RecoveryEvent>)> {
        if opts.group_commit_window > MAX_GROUP_COMMIT_WINDOW {
            return Err(Error::InvalidInput(format!(
                "WAL group commit window {:?} is longer than the maximum {:?}",
                opts.group_commit_window, MAX_GROUP_COMMIT_WINDOW
            )));
        }
        recovery::create_dir_durably(&*vfs, &dir)?;
        let rec = recovery::recover(
            &*vfs,
            &dir,
            opts.quarantine_dir.as_deref(),
            recovery::Repair::Write,
            replay,
        )?;

        // A killed process leaves unsynced records in the page cache, where
        // `replay` saw them: make them durable before anything builds on them.
        // They are in the newest file that holds records: the last file may
        // be a header-only one (a rotation, then the kill).
        if let Some(last) = rec
            .segments
            .iter()
            .rev()
            .find(|s| !rec.empty.contains(&s.path))
        {
            let io_err = |e| Error::io(&last.path, e);
            vfs.open_append(&last.path)
                .and_then(|mut f| f.sync_data())
                .map_err(io_err)?;
        }

        let mut next = rec.next_seq.max(min_next_seq).max(1);
        let mut path = dir.join(format::file_name(next));
        // Only a header-only file can hold the name; anything else is
        // stepped around rather than overwritten.
        while vfs.exists(&path) && !rec.empty.contains(&path) {
            next += 1;
            path = dir.join(format::file_name(next));
        }
        let mut file = vfs.create(&path).map_err(|e| Error::io(&path, e))?;
        file.write_all(&format::encode_header(next))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        vfs.sync_dir(&dir).map_err(|e| Error::io(&dir, e))?;

        // Header-only files carry no records; the new file's name now keeps
        // their seq floor, so they can go.
        let stale: Vec<&PathBuf> = rec.empty.iter().filter(|p| **p != path).collect();
        for p in &stale {
            vfs.remove_file(p).map_err(|e| Error::io(*p, e))?;
        }
        if !stale.is_empty() {
            vfs.sync_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let closed: Vec<Segment> = rec
            .segments
            .into_iter()
            .filter(|s| s.path != path && !rec.empty.contains(&s.path))
            .collect();

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_seq: next,
                pending: Default::default(),
                pending_bytes: 0,
                committed: next - 1,
                poisoned: None,
                closing: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            is_poisoned: AtomicBool::new(false),
            log: Mutex::new(Log {
                vfs: vfs.clone(),
                dir: dir.clone(),
                file,
                current: Segment {
                    first_seq: next,
                    path,
                },
                closed,
                current_has_records: false,
                segment_bytes: opts.segment_bytes,
                rotate_at: opts.segment_bytes,
            }),
            counters: Counters::default(),
            window: opts.group_commit_window,
            max_batch_bytes: opts.max_batch_bytes,
        });
        shared.counters.committed.store(next - 1, Ordering::SeqCst);
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wattson-wal-commit".into())
            .spawn(move || committer::run(thread_shared, on_commit))
            .map_err(|e| Error::io(&dir, e))?;
        let wal = Wal {
            shared,
            committer: Mutex::new(Some(handle)),
            vfs,
            dir,
        };
        Ok((wal, rec.events))
    }

    /// Appends one record and returns its seq once it is durable.
    ///
    /// Durability contract: `Ok(seq)` means the record was written and
    /// fdatasync'd, in a file whose directory entry was already durable, and
    /// `on_commit` has returned for it (and for every smaller seq). After a
    /// crash or power loss, [`Wal::open`] replays it exactly once, unless
    /// [`Wal::trim`] removed it or the disk damaged it (then it is reported).
    /// An `Err` means the record may or may not be replayed later; it was
    /// never passed to `on_commit`.
    ///
    /// Blocks for up to the group-commit window plus one write and fsync;
    /// concurrent appends share the fsync. If any write or sync of the log
    /// fails, the log is poisoned: this append, every queued one and every
    /// later one return [`Error::WalPoisoned`] naming the first failure. The
    /// failed fsync is never retried. Payloads above [`MAX_PAYLOAD`] are
    /// [`Error::InvalidInput`]; appends after [`Wal::close`] are
    /// [`Error::Closed`].
    pub fn append(&self, payload: Vec<u8>, item: T) -> Result<u64> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::InvalidInput(format!(
                "WAL payload of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                payload.len()
            )));
        }
        let shared = &*self.shared;
        let mut q = lock(&shared.queue);
        if let Some(cause) = &q.poisoned {
            return Err(Error::WalPoisoned {
                cause: cause.clone(),
            });
        }
        if q.closing {
            return Err(Error::Closed);
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        let was_idle = q.pending.is_empty();
        q.pending_bytes += format::record_len(payload.len());
        q.pending.push_back(Pending { seq, payload, item });
        // The committer sleeps either for the first record or until the
        // window ends; wake it only when that changes something.
        if was_idle || q.pending_bytes >= shared.max_batch_bytes {
            shared.work.notify_one();
        }
        loop {
            if q.committed >= seq {
                return Ok(seq);
            }
            if let Some(cause) = &q.poisoned {
                return Err(Error::WalPoisoned {
                    cause: cause.clone(),
                });
            }
            q = shared.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs `f(last_committed_seq)` while no commit round is in progress and
    /// none can start, after closing the current file if it holds any record
    /// and starting a new one. Every record `<= last_committed_seq` is then in
    /// a closed file, every later one will be in the new file, so the caller
    /// can freeze its buffer exactly at a file boundary. If the new file
    /// cannot be started (a full disk, say), `f` is not run and the error is
    /// returned; the log goes on in its current file, so the caller may try
    /// again later. Only if the failed file cannot be removed either is the
    /// log poisoned. `f` must not append (that would wait for a round that
    /// cannot start until `f` returns).
    pub fn rotate_with<R>(&self, f: impl FnOnce(u64) -> R) -> Result<R> {
        let mut log = lock(&self.shared.log);
        if let Some(cause) = self.is_poisoned() {
            return Err(Error::WalPoisoned { cause });
        }
        let committed = self.shared.counters.committed.load(Ordering::SeqCst);
        if log.current_has_records {
            match log.rotate(committed + 1) {
                Ok(Rotation::Started) => {}
                Ok(Rotation::Kept(e)) => return Err(e),
                Err(e) => {
                    drop(log);
                    self.shared.poison(e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(f(committed))
    }

    /// Deletes the closed files all of whose records have seq `<= upto` (a
    /// file's last seq is the next file's first seq - 1), oldest first, then
    /// syncs the directory. Never deletes the current file. A file whose
    /// removal failed is forgotten until the next open finds it again.
    pub fn trim(&self, upto: u64) -> Result<()> {
        let doomed: Vec<Segment> = {
            let mut log = lock(&self.shared.log);
            let mut n = 0;
            for i in 0..log.closed.len() {
                let next_first = log
                    .closed
                    .get(i + 1)
                    .map_or(log.current.first_seq, |s| s.first_seq);
                if next_first.saturating_sub(1) > upto {
                    break;
                }
                n = i + 1;
            }
            log.closed.drain(..n).collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        for s in &doomed {
            self.vfs
                .remove_file(&s.path)
                .map_err(|e| Error::io(&s.path, e))?;
        }
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// The highest seq that is durable and was passed to `on_commit`; before
    /// the first commit, the seq before the first new one.
    pub fn last_committed_seq(&self) -> u64 {
        self.shared.counters.committed.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            appends: c.appends.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            fsync_latency: std::array::from_fn(|i| c.fsync_latency[i].load(Ordering::Relaxed)),
            fsync_sum_us: c.fsync_sum_us.load(Ordering::Relaxed),
        }
    }

    /// The first failure, if the log is poisoned.
    pub fn is_poisoned(&self) -> Option<String> {
        if !self.shared.is_poisoned.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.shared.queue).poisoned.clone()
    }

    /// Commits what is queued, stops the committer thread and joins it.
    /// Returns [`Error::WalPoisoned`] if the log is poisoned. Later appends
    /// fail with [`Error::Closed`]. Idempotent; also done on drop.
    pub fn close(&self) -> Result<()> {
        lock(&self.shared.queue).closing = true;
        self.shared.work.notify_all();
        let handle = lock(&self.committer).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            return Err(Error::Internal("the WAL committer thread panicked".into()));
        }
        match self.is_poisoned() {
            Some(cause) => Err(Error::WalPoisoned { cause }),
            None => Ok(()),
        }
    }
}

impl<T: Send + 'static> Drop for Wal<T> {
    fn drop(&mut self) {
        // Errors were already reported to the appenders they concern.
        let _ = self.close();
    }
}
