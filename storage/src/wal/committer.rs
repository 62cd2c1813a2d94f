//! The WAL's one writer thread and the state it shares with appenders.
//!
//! Appenders push `(seq, payload, item)` onto [`Queue`] and sleep on
//! `Shared::done`. The committer takes everything queued (after waiting up to
//! the group-commit window for more), writes it with one `write_all`, makes it
//! durable with one `sync_data`, hands the items to `on_commit`, and only then
//! publishes the new committed seq and wakes the appenders. A failed write or
//! sync of records poisons the log for good: a failed fsync may have dropped
//! dirty pages, so retrying it and getting success would prove nothing. A
//! failure to start a new file does not, once that file is durably removed
//! again: the current file is synced and intact, so the log keeps appending
//! to it and tries a new file later.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::recovery::Segment;
use super::{OnCommit, format};
use crate::error::{Error, Result};
use crate::io::{Vfs, WriteFile};

pub(super) struct Pending<T> {
    pub(super) seq: u64,
    pub(super) payload: Vec<u8>,
    pub(super) item: T,
}

/// What appenders and the committer exchange; guarded by `Shared::queue`.
pub(super) struct Queue<T> {
    /// Seq of the next append; assigned under this lock so queue order is
    /// seq order.
    pub(super) next_seq: u64,
    pub(super) pending: VecDeque<Pending<T>>,
    /// Encoded size of `pending`, to end a round at `max_batch_bytes`.
    pub(super) pending_bytes: usize,
    /// Highest seq that is durable and passed to `on_commit`; waiters with a
    /// seq at or below it return Ok.
    pub(super) committed: u64,
    /// Set once, by the first failure; never cleared.
    pub(super) poisoned: Option<String>,
    pub(super) closing: bool,
}

/// The files, guarded by `Shared::log`: the committer holds this lock for a
/// whole round, so holding it means no round is in progress.
pub(super) struct Log {
    pub(super) vfs: Arc<dyn Vfs>,
    pub(super) dir: PathBuf,
    pub(super) file: Box<dyn WriteFile>,
    pub(super) current: Segment,
    /// Older files, oldest first; `trim` deletes from the front.
    pub(super) closed: Vec<Segment>,
    pub(super) current_has_records: bool,
    pub(super) segment_bytes: u64,
    /// The current file's length at which a round first starts a new file:
    /// `segment_bytes`, or later after a failed attempt.
    pub(super) rotate_at: u64,
}

/// What became of an attempt to start a new file.
pub(super) enum Rotation {
    Started,
    /// The new file failed to start (why) and is gone; the current file,
    /// intact and synced, stays current.
    Kept(Error),
}

impl Log {
    /// Seals the current file (already synced) and starts `first_seq`'s: the
    /// header is synced and the directory entry too before any record goes in.
    ///
    /// If the new file cannot be started, it is removed durably and the
    /// current file stays current ([`Rotation::Kept`]): recovery counts on
    /// no file following the one being written, whose end alone may be
    /// torn. Only if that removal fails too is the error returned, and the
    /// caller poisons the log; no round was written since the last sync.
    pub(super) fn rotate(&mut self, first_seq: u64) -> Result<Rotation> {
        let path = self.dir.join(format::file_name(first_seq));
        let file = match self.start_file(&path, first_seq) {
            Ok(file) => file,
            Err(e) => {
                return match self.discard(&path) {
                    Ok(()) => Ok(Rotation::Kept(e)),
                    Err(rm) => {
                        tracing::error!(error = %e, "a new WAL file failed to start");
                        Err(rm)
                    }
                };
            }
        };
        let old = std::mem::replace(&mut self.current, Segment { first_seq, path });
        self.closed.push(old);
        self.file = file;
        self.current_has_records = false;
        self.rotate_at = self.segment_bytes;
        Ok(Rotation::Started)
    }

    fn discard(&self, path: &Path) -> Result<()> {
        match self.vfs.remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(path, e));
            }
            _ => {}
        }
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
    }

    fn start_file(&self, path: &Path, first_seq: u64) -> Result<Box<dyn WriteFile>> {
        let mut file = self.vfs.create(path).map_err(|e| Error::io(path, e))?;
        file.write_all(&format::encode_header(first_seq))
            .map_err(|e| Error::io(path, e))?;
        file.sync_data().map_err(|e| Error::io(path, e))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        Ok(file)
    }

    /// Writes and syncs one round; returns how long the sync took.
    fn write_round(&mut self, first_seq: u64, buf: &[u8]) -> Result<Duration> {
        if self.current_has_records
            && self.file.len() >= self.rotate_at
            && let Rotation::Kept(e) = self.rotate(first_seq)?
        {
            // Try again after another sixteenth of a file, not every round.
            self.rotate_at = self.file.len() + (self.segment_bytes / 16).max(1);
            tracing::warn!(error = %e, file = %self.current.path.display(), "could not start a new WAL file; appending to the current one");
        }
        let path = &self.current.path;
        self.file.write_all(buf).map_err(|e| Error::io(path, e))?;
        self.current_has_records = true;
        let started = Instant::now();
        self.file.sync_data().map_err(|e| Error::io(path, e))?;
        Ok(started.elapsed())
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) appends: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// fdatasync durations: counts per bucket of `FSYNC_BUCKETS_US`, then
    /// the unbounded bucket.
    pub(super) fsync_latency: [AtomicU64; super::FSYNC_BUCKETS_US.len() + 1],
    pub(super) fsync_sum_us: AtomicU64,
    /// Mirror of the committed seq, updated under the log lock right after
    /// `on_commit`, so `rotate_with` sees exactly what `on_commit` saw.
    pub(super) committed: AtomicU64,
}

impl Counters {
    fn record_fsync(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = super::FSYNC_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(super::FSYNC_BUCKETS_US.len());
        self.fsync_latency[i].fetch_add(1, Ordering::Relaxed);
        self.fsync_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

pub(super) struct Shared<T> {
    pub(super) queue: Mutex<Queue<T>>,
    /// Wakes the committer: work arrived, a batch filled up, or close.
    pub(super) work: Condvar,
    /// Wakes appenders: a round finished or the log was poisoned.
    pub(super) done: Condvar,
    pub(super) log: Mutex<Log>,
    pub(super) counters: Counters,
    /// Set once with `queue.poisoned`, so that asking whether the log is
    /// poisoned, which ingest does for every message, takes no lock.
    pub(super) is_poisoned: AtomicBool,
    pub(super) window: Duration,
    pub(super) max_batch_bytes: usize,
}

/// Locks a mutex whether or not a panicking thread poisoned it: a panic in
/// `on_commit` poisons the WAL through [`ExitGuard`], and the data behind
/// these locks is never left half-edited.
pub(super) fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Shared<T> {
    /// Records the first failure and fails every queued append with it.
    pub(super) fn poison(&self, cause: String) {
        let mut q = lock(&self.queue);
        if q.poisoned.is_none() {
            tracing::error!(%cause, "write-ahead log poisoned");
            q.poisoned = Some(cause);
            self.is_poisoned.store(true, Ordering::Release);
        }
        q.pending.clear();
        q.pending_bytes = 0;
        drop(q);
        self.done.notify_all();
        self.work.notify_all();
    }

    /// Waits for work and gathers one round; `None` once closed and drained,
    /// or poisoned.
    fn next_round(&self) -> Option<Vec<Pending<T>>> {
        let mut q = lock(&self.queue);
        while q.pending.is_empty() {
            if q.closing || q.poisoned.is_some() {
                return None;
            }
            q = self.wait_for_work(q);
        }
        let deadline = Instant::now() + self.window;
        while q.pending_bytes < self.max_batch_bytes && !q.closing {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = self
                .work
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if q.poisoned.is_some() {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = q.pending.front() {
            let size = format::record_len(next.payload.len());
            if !batch.is_empty() && bytes + size > self.max_batch_bytes {
                break;
            }
            bytes += size;
            batch.extend(q.pending.pop_front());
        }
        q.pending_bytes -= bytes;
        Some(batch)
    }

    fn wait_for_work<'a>(&self, q: MutexGuard<'a, Queue<T>>) -> MutexGuard<'a, Queue<T>> {
        self.work.wait(q).unwrap_or_else(|e| e.into_inner())
    }

    fn commit(&self, batch: Vec<Pending<T>>, on_commit: &mut OnCommit<T>) -> Result<()> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first, last) = (first.seq, last.seq);
        let mut buf = Vec::new();
        for p in &batch {
            format::encode_record(&mut buf, p.seq, &p.payload);
        }
        let mut log = lock(&self.log);
        let synced_in = log.write_round(first, &buf)?;
        let count = batch.len() as u64;
        on_commit(batch.into_iter().map(|p| (p.seq, p.item)).collect());
        self.counters.committed.store(last, Ordering::SeqCst);
        drop(log);
        self.counters.appends.fetch_add(count, Ordering::Relaxed);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.record_fsync(synced_in);
        self.counters
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        lock(&self.queue).committed = last;
        self.done.notify_all();
        Ok(())
    }
}

/// Poisons the log if the committer leaves by panicking (in `on_commit`, say),
/// so appenders get an error instead of waiting forever.
struct ExitGuard<'a, T>(&'a Shared<T>);

impl<T> Drop for ExitGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison("the WAL committer thread panicked".into());
        }
    }
}

/// The committer thread's body.
pub(super) fn run<T>(shared: Arc<Shared<T>>, mut on_commit: OnCommit<T>) {
    let _guard = ExitGuard(&shared);
    while let Some(batch) = shared.next_round() {
        if let Err(e) = shared.commit(batch, &mut on_commit) {
            shared.poison(e.to_string());
            return;
        }
    }
}
