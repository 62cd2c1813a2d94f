//! [`Store`]: the durable write path, the partition index and the background
//! work (sealing, compaction, retention) that keeps it small and fast.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch;
use crate::catalog::{Catalog, TableDef};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::io::{DirLock, RealFs, Vfs};
use crate::latest::{self, LatestCache, LatestReading};
use crate::memtable::{Memtable, Prepared};
use crate::model::{Month, Reading, same_name, widen};
use crate::scan::{self, Scan, ScanRequest};
use crate::segment::{BlockCache, BlockCacheStats, SegmentReader, WriteOptions};
use crate::wal::{self, Wal, WalOptions};

mod maintenance;
mod recovery;

pub use recovery::RecoveryEvent;

const LOCK_FILE: &str = "LOCK";
const WAL_DIR: &str = "wal";
const TABLES_DIR: &str = "tables";
const QUARANTINE_DIR: &str = "quarantine";
/// How often a read-only open starts over when the writer changed the
/// directory under it. Each attempt races one seal, compaction or retention
/// round, which are minutes apart, so a few suffice.
const READ_ONLY_OPEN_ATTEMPTS: u32 = 5;
pub(crate) const SEGMENT_EXT: &str = "wseg";

/// Settings of a [`Store`]. `Default` gives the production defaults.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub vfs: Arc<dyn Vfs>,
    pub clock: Arc<dyn Clock>,
    /// Memory for buffered rows (active plus being sealed), as estimated from
    /// the values they hold. Sealing starts at half of it; appends wait when
    /// all of it is in use. Batches already admitted may exceed it briefly.
    pub buffer_bytes: usize,
    /// Seal buffered rows at least this often, so restarts replay little WAL.
    pub seal_interval: Duration,
    /// How long the WAL gathers concurrent appends into one fdatasync.
    pub group_commit_window: Duration,
    pub wal_segment_bytes: u64,
    /// Rows per column block in segment files.
    pub block_rows: usize,
    pub zstd_level: i32,
    /// Memory for decoded column chunks kept for later scans; 0 turns the
    /// cache off.
    pub block_cache_bytes: usize,
    /// While its month runs, the background compaction merges a partition's
    /// segment files once this many of similar size are in a row (a tier).
    pub compact_min_segments: usize,
    /// Upper bound of rows merged in one compaction (bounds its memory).
    pub compact_max_rows: usize,
    /// Appends are refused with [`Error::DiskFull`] while the data
    /// directory's disk has less free space than this, so the WAL never
    /// meets ENOSPC (which poisons it until a restart) and sealing and
    /// compaction keep room to work. 0 turns the check off.
    pub min_free_bytes: u64,
    /// A partition whose month has been over for this long, and that got
    /// no new segment for as long, is merged into as few files as
    /// `compact_max_rows` allows.
    pub compact_cold_after: Duration,
    /// How often the maintenance thread looks for compaction and retention work.
    pub maintenance_interval: Duration,
    /// Run sealing, compaction and retention in background threads. Tests
    /// that drive them by hand turn this off. Read-only opens start none.
    pub background: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            vfs: Arc::new(RealFs),
            clock: Arc::new(SystemClock),
            buffer_bytes: 256 << 20,
            seal_interval: Duration::from_secs(600),
            group_commit_window: Duration::from_millis(2),
            wal_segment_bytes: 64 << 20,
            block_rows: 65_536,
            zstd_level: 3,
            block_cache_bytes: crate::segment::default_block_cache_bytes(),
            compact_min_segments: 4,
            compact_max_rows: 1 << 20,
            compact_cold_after: Duration::from_secs(3600),
            min_free_bytes: 256 << 20,
            maintenance_interval: Duration::from_secs(10),
            background: true,
        }
    }
}

/// What a successful [`Store::append`] guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The WAL sequence number of the batch.
    pub seq: u64,
    pub rows: usize,
}

/// One (table, device, month) partition as it is on disk and in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionInfo {
    pub table: String,
    pub device: String,
    pub month: Month,
    /// Rows in segment files (before cross-file deduplication) plus buffered rows.
    pub rows: u64,
    pub buffered_rows: u64,
    pub segments: usize,
    pub bytes_on_disk: u64,
    /// Earliest and latest reading time, ns, from block statistics and the
    /// buffer. Rows replaced by later writes still count.
    pub min_time: i64,
    pub max_time: i64,
}

/// The WAL carries each batch's prepared rows to the commit callback.
pub(crate) type StoreWal = Wal<Prepared>;

pub(crate) type PartKey = (String, String, Month);

/// A frozen buffer waiting to be sealed, with the last WAL sequence number it
/// covers: once it is sealed, WAL files up to that number can go.
#[derive(Debug)]
pub(crate) struct Frozen {
    pub(crate) mem: Memtable,
    pub(crate) through_seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) active: Memtable,
    /// Oldest first.
    pub(crate) frozen: Vec<Arc<Frozen>>,
    /// Segment files of each partition, ordered by their WAL sequence range.
    pub(crate) parts: BTreeMap<PartKey, Vec<Arc<SegmentReader>>>,
    pub(crate) latest: LatestCache,
}

impl State {
    fn buffered_bytes(&self) -> usize {
        self.active.bytes() + self.frozen.iter().map(|f| f.mem.bytes()).sum::<usize>()
    }
}

/// Committed batches not yet applied to the active buffer, oldest first.
///
/// The WAL's commit callback only queues here, so the committer can start
/// the next write and fdatasync at once; the apply thread (or a scan or a
/// freeze, whichever needs the rows first) moves them into the buffer under
/// the state lock. Every reader of the active buffer applies the queue
/// first, so an acknowledged append is visible to every later scan.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) batches: Vec<(u64, Prepared)>,
    pub(crate) bytes: usize,
}

/// Everything the background threads and the WAL callback share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) opts: StoreOptions,
    pub(crate) catalog: Mutex<Catalog>,
    /// Serialises writers of the catalog file. Lock order: this, then `catalog`.
    pub(crate) catalog_save: Mutex<()>,
    /// Bumped on every catalog change, so sealing saves it only when needed.
    pub(crate) catalog_version: Mutex<(u64, u64)>,
    pub(crate) state: RwLock<State>,
    pub(crate) pending: Mutex<Pending>,
    /// `state.active.bytes()`, readable without the state lock.
    pub(crate) active_bytes: AtomicUsize,
    /// Wakes the apply thread when `pending` fills.
    pub(crate) apply_signal: Condvar,
    /// Woken when buffer space frees up or the store shuts down.
    pub(crate) space: Condvar,
    pub(crate) space_lock: Mutex<()>,
    /// Wakes the sealing thread.
    pub(crate) seal_wanted: Mutex<bool>,
    pub(crate) seal_signal: Condvar,
    pub(crate) shutdown: AtomicBool,
    /// Partition directories whose entries this process has made durable.
    pub(crate) durable_dirs: Mutex<std::collections::HashSet<PathBuf>>,
    /// One sealer at a time: `flush` may run while the background thread does.
    pub(crate) seal_lock: Mutex<()>,
    pub(crate) compact_lock: Mutex<()>,
    /// When each partition last got a sealed segment (clock time, ns): the
    /// background compaction merges a partition by tiers while it grows and
    /// fully once it has gone cold. Lock order: `state`, then this.
    pub(crate) sealed_at: Mutex<HashMap<PartKey, i64>>,
    pub(crate) disk: DiskGuard,
    /// The last background failure, for health reporting.
    pub(crate) last_error: Mutex<Option<String>>,
    /// Why the last attempt to freeze or seal the buffer failed; `None`
    /// once one succeeded. Appends waiting for buffer space fail on it
    /// rather than wait for a seal that may never come.
    pub(crate) seal_failure: Mutex<Option<String>>,
    /// `seal_failure.is_some()`, readable without a lock.
    pub(crate) seal_failing: AtomicBool,
    pub(crate) block_cache: Arc<BlockCache>,
}

/// Keeps appends off a nearly full disk. The free space is asked of the
/// file system once a second of the store's clock, or sooner once a
/// quarter of the reserve has gone into the WAL since: ingest asks for
/// every message, and a bulk import can write fast.
#[derive(Debug)]
pub(crate) struct DiskGuard {
    /// Clock time of the last look.
    checked_at: AtomicI64,
    /// The free bytes then, if below the reserve; `u64::MAX` otherwise.
    short: AtomicU64,
    /// WAL bytes appended since the last look.
    written: AtomicU64,
}

impl Default for DiskGuard {
    fn default() -> Self {
        DiskGuard {
            checked_at: AtomicI64::new(i64::MIN),
            short: AtomicU64::new(u64::MAX),
            written: AtomicU64::new(0),
        }
    }
}

const DISK_CHECK_NS: i64 = 1_000_000_000;

impl DiskGuard {
    /// The free bytes on `dir`'s file system, if fewer than `reserve` are
    /// left (0 turns the check off). `now` is the store's clock.
    fn short(&self, vfs: &dyn Vfs, dir: &Path, reserve: u64, now: i64) -> Option<u64> {
        if reserve == 0 {
            return None;
        }
        let last = self.checked_at.load(Ordering::Acquire);
        let stale = now < last
            || now.saturating_sub(last) >= DISK_CHECK_NS
            || self.written.load(Ordering::Relaxed) >= reserve / 4;
        // One caller looks; the others use what it found last time.
        if stale
            && self
                .checked_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
            let was_short = self.short.load(Ordering::Acquire) != u64::MAX;
            let short = match vfs.available_bytes(dir) {
                Ok(free) if free < reserve => {
                    if !was_short {
                        tracing::error!(free, reserve, dir = %dir.display(), "disk nearly full: refusing writes until space is freed");
                    }
                    free
                }
                Ok(_) => {
                    if was_short {
                        tracing::info!(dir = %dir.display(), "disk space freed: accepting writes again");
                    }
                    u64::MAX
                }
                // Unknown (an unusual file system): do not block writes on it.
                Err(_) => u64::MAX,
            };
            self.short.store(short, Ordering::Release);
        }
        let short = self.short.load(Ordering::Acquire);
        (short != u64::MAX).then_some(short)
    }

    /// Counts WAL bytes appended, which bring the next look forward.
    fn wrote(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Shared {
    /// Why the last freeze or seal failed, if it did; lock-free otherwise.
    fn seal_failure(&self) -> Option<String> {
        if !self.seal_failing.load(Ordering::Acquire) {
            return None;
        }
        self.seal_failure.lock().clone()
    }

    pub(crate) fn vfs(&self) -> &dyn Vfs {
        self.opts.vfs.as_ref()
    }

    pub(crate) fn tables_dir(&self) -> PathBuf {
        self.dir.join(TABLES_DIR)
    }

    pub(crate) fn quarantine_dir(&self) -> PathBuf {
        self.dir.join(QUARANTINE_DIR)
    }

    pub(crate) fn partition_dir(&self, table: &str, device: &str, month: Month) -> PathBuf {
        self.tables_dir()
            .join(table)
            .join(device)
            .join(month.to_string())
    }

    pub(crate) fn write_options(&self) -> WriteOptions {
        WriteOptions {
            block_rows: self.opts.block_rows,
            zstd_level: self.opts.zstd_level,
        }
    }

    /// Wakes appends waiting for buffer space. Taking `space_lock` first
    /// puts the wake either before a waiter's checks (which then see the new
    /// state) or after it started waiting (which then hears it), never
    /// between the two, where it would be lost.
    pub(crate) fn wake_space_waiters(&self) {
        drop(self.space_lock.lock());
        self.space.notify_all();
    }

    fn request_seal(&self) {
        *self.seal_wanted.lock() = true;
        self.seal_signal.notify_all();
    }

    fn on_commit(&self, committed: Vec<(u64, Prepared)>) {
        let bytes: usize = committed.iter().map(|(_, batch)| batch.bytes).sum();
        let queued = {
            let mut pending = self.pending.lock();
            pending.batches.extend(committed);
            pending.bytes += bytes;
            pending.bytes
        };
        self.apply_signal.notify_one();
        // An atomic, not the state lock: the committer must not wait behind
        // a scan or a seal.
        if queued + self.active_bytes.load(Ordering::Acquire) >= self.opts.buffer_bytes / 2 {
            self.request_seal();
        }
    }

    /// Moves committed batches into the active buffer. Callers hold the
    /// state lock for writing, which orders this with every reader.
    pub(crate) fn apply_pending(&self, state: &mut State) {
        let batches = {
            let mut pending = self.pending.lock();
            pending.bytes = 0;
            std::mem::take(&mut pending.batches)
        };
        for (seq, batch) in batches {
            state.latest.observe_batch(seq, &batch.rows);
            state.active.insert_batch(seq, batch);
        }
        self.active_bytes
            .store(state.active.bytes(), Ordering::Release);
    }

    /// The state with every committed batch applied, for reading.
    pub(crate) fn applied_state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        let mut state = self.state.write();
        self.apply_pending(&mut state);
        parking_lot::RwLockWriteGuard::downgrade(state)
    }

    fn buffered_bytes(&self) -> usize {
        // The queue is read under the state lock, which an apply holds while
        // it moves bytes from the queue into the buffer: read outside it,
        // those bytes could be counted twice, and a buffer far from full
        // refuse an append. (Lock order is state, then pending.)
        let state = self.state.read();
        let queued = self.pending.lock().bytes;
        queued + state.buffered_bytes()
    }
}

/// The store. Cheap to share behind an `Arc`; every method takes `&self`.
///
/// [`Store::open`] takes an exclusive lock on the data directory, replays the
/// WAL and starts the background threads (unless `background` is off).
/// Dropping the store stops them; [`Store::close`] also seals buffered rows
/// first. [`Store::open_read_only`] gives a snapshot that only reads.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    /// `None` for a read-only store, which never writes the log.
    wal: Option<Arc<StoreWal>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    recovery: Vec<RecoveryEvent>,
    closed: AtomicBool,
    /// Held for its `Drop`; `None` for a read-only store, which must not
    /// take the writer's exclusive lock.
    _lock: Option<DirLock>,
}

fn new_shared(dir: &Path, opts: &StoreOptions) -> Arc<Shared> {
    Arc::new(Shared {
        dir: dir.to_owned(),
        opts: opts.clone(),
        catalog: Mutex::new(Catalog::default()),
        block_cache: Arc::new(BlockCache::new(opts.block_cache_bytes)),
        catalog_save: Mutex::new(()),
        catalog_version: Mutex::new((0, 0)),
        state: RwLock::new(State::default()),
        pending: Mutex::new(Pending::default()),
        active_bytes: AtomicUsize::new(0),
        apply_signal: Condvar::new(),
        space: Condvar::new(),
        space_lock: Mutex::new(()),
        seal_wanted: Mutex::new(false),
        seal_signal: Condvar::new(),
        shutdown: AtomicBool::new(false),
        durable_dirs: Mutex::new(Default::default()),
        seal_lock: Mutex::new(()),
        compact_lock: Mutex::new(()),
        sealed_at: Mutex::new(HashMap::new()),
        disk: DiskGuard::default(),
        last_error: Mutex::new(None),
        seal_failure: Mutex::new(None),
        seal_failing: AtomicBool::new(false),
    })
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering whatever a crash
    /// left behind. Damage found on the way is isolated and listed in
    /// [`Store::recovery_report`]; it does not stop the store from opening.
    pub fn open(dir: impl Into<PathBuf>, opts: StoreOptions) -> Result<Store> {
        let dir = dir.into();
        let vfs = opts.vfs.clone();
        create_root_durably(vfs.as_ref(), &dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = vfs.lock(&lock_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked { path: dir.clone() }
            } else {
                Error::io(&lock_path, e)
            }
        })?;
        let shared = new_shared(&dir, &opts);
        let mut report = Vec::new();
        let recovered = recovery::load_segments(&shared, recovery::Mode::Write, &mut report)?;
        let on_commit = {
            let shared = shared.clone();
            Box::new(move |committed: Vec<(u64, Prepared)>| shared.on_commit(committed))
        };
        let wal_opts = WalOptions {
            segment_bytes: opts.wal_segment_bytes,
            group_commit_window: opts.group_commit_window,
            quarantine_dir: Some(shared.quarantine_dir()),
            ..WalOptions::default()
        };
        let mut replay = |seq: u64, payload: &[u8]| -> Result<()> {
            recovery::replay_record(&shared, &recovered, seq, payload, &mut report);
            Ok(())
        };
        let (wal, wal_events) = Wal::open(
            vfs.clone(),
            dir.join(WAL_DIR),
            wal_opts,
            recovered.next_seq,
            &mut replay,
            on_commit,
        )?;
        report.extend(wal_events.into_iter().map(RecoveryEvent::Wal));
        let replayed = shared.state.read().active.bytes();
        shared.active_bytes.store(replayed, Ordering::Release);
        for event in &report {
            tracing::warn!(data_dir = %dir.display(), "recovery: {event}");
        }
        let store = Store {
            shared,
            wal: Some(Arc::new(wal)),
            threads: Mutex::new(Vec::new()),
            recovery: report,
            closed: AtomicBool::new(false),
            _lock: Some(lock),
        };
        if opts.background {
            store.start_background();
        }
        Ok(store)
    }

    /// Opens the store in `dir` for reading only, beside a writer that may
    /// hold it open (`wattson serve`), or with none.
    ///
    /// The store is a snapshot of the directory at open time: the sealed
    /// segments plus the WAL replayed into memory, exactly the rows a writer
    /// would see after recovery. It does not follow later writes; open again
    /// for newer data.
    ///
    /// Nothing in `dir` is created, renamed, truncated or deleted, and the
    /// LOCK is not taken. Damaged segments and WAL records are skipped and
    /// listed in [`Store::recovery_report`], left where they are; a torn WAL
    /// tail (usually a record the writer is still writing) is ignored.
    /// `opts.background` is ignored: no thread is started. Writes fail with
    /// [`Error::ReadOnly`]; [`Store::close`] does nothing.
    ///
    /// The writer adds and removes files while this reads them (sealing trims
    /// WAL files once their rows are in new segments). The open checks that
    /// no segment or WAL file came or went while it loaded, and starts over
    /// if one did or if a file vanished under it; after a few attempts it
    /// gives up with [`Error::ChangedDuringOpen`]. A missing `dir` is
    /// [`Error::NoSuchDirectory`].
    pub fn open_read_only(dir: impl Into<PathBuf>, opts: StoreOptions) -> Result<Store> {
        let dir = dir.into();
        let mut attempt = 0;
        loop {
            if !opts.vfs.is_dir(&dir) {
                return Err(Error::NoSuchDirectory { path: dir });
            }
            attempt += 1;
            match Store::try_open_read_only(&dir, &opts) {
                Ok(Some(store)) => return Ok(store),
                Ok(None) => {}
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if attempt >= READ_ONLY_OPEN_ATTEMPTS {
                return Err(Error::ChangedDuringOpen {
                    path: dir,
                    attempts: attempt,
                });
            }
            tracing::debug!(data_dir = %dir.display(), attempt, "directory changed during a read-only open; starting over");
            // Let the writer finish what it is doing (a seal writes several
            // files, then trims the log) before looking again.
            std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
        }
    }

    /// One attempt of [`Store::open_read_only`]: `None` if a segment or WAL
    /// file came or went meanwhile.
    fn try_open_read_only(dir: &Path, opts: &StoreOptions) -> Result<Option<Store>> {
        let shared = new_shared(dir, opts);
        let wal_dir = dir.join(WAL_DIR);
        let before = recovery::listing(&shared, &wal_dir)?;
        let mut report = Vec::new();
        let recovered = recovery::load_segments(&shared, recovery::Mode::ReadOnly, &mut report)?;
        let mut replay = |seq: u64, payload: &[u8]| -> Result<()> {
            recovery::replay_record(&shared, &recovered, seq, payload, &mut report);
            Ok(())
        };
        let wal_events = wal::replay_read_only(opts.vfs.as_ref(), &wal_dir, &mut replay)?;
        report.extend(wal_events.into_iter().map(RecoveryEvent::Wal));
        // Segments were loaded before the log was read; had a seal trimmed
        // log files in between, their rows would be in neither. An unchanged
        // listing rules that out.
        if recovery::listing(&shared, &wal_dir)? != before {
            return Ok(None);
        }
        let replayed = shared.state.read().active.bytes();
        shared.active_bytes.store(replayed, Ordering::Release);
        for event in &report {
            match event {
                // Beside a live writer this is the record being written.
                RecoveryEvent::Wal(wal::RecoveryEvent::TornTail { .. }) => {
                    tracing::debug!(data_dir = %dir.display(), "read-only open: {event}");
                }
                _ => tracing::warn!(data_dir = %dir.display(), "read-only open: {event}"),
            }
        }
        Ok(Some(Store {
            shared,
            wal: None,
            threads: Mutex::new(Vec::new()),
            recovery: report,
            closed: AtomicBool::new(false),
            _lock: None,
        }))
    }

    /// Whether the store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.wal.is_none()
    }

    /// The log, or [`Error::ReadOnly`] naming `operation`.
    fn writable(&self, operation: &'static str) -> Result<&Arc<StoreWal>> {
        self.wal.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.shared.dir.clone(),
            operation,
        })
    }

    /// Opens a store on the real file system with default settings.
    pub fn open_default(dir: impl Into<PathBuf>) -> Result<Store> {
        Store::open(dir, StoreOptions::default())
    }

    fn start_background(&self) {
        let Some(wal) = self.wal.clone() else {
            return;
        };
        let mut threads = self.threads.lock();
        let (shared, seal_wal) = (self.shared.clone(), wal.clone());
        let sealer = std::thread::Builder::new()
            .name("wattson-seal".into())
            .spawn(move || maintenance::seal_loop(&shared, &seal_wal));
        let shared = self.shared.clone();
        let maint = std::thread::Builder::new()
            .name("wattson-maintenance".into())
            .spawn(move || maintenance::maintenance_loop(&shared, &wal));
        let shared = self.shared.clone();
        let apply = std::thread::Builder::new()
            .name("wattson-apply".into())
            .spawn(move || maintenance::apply_loop(&shared));
        for t in [sealer, maint, apply] {
            match t {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::error!("could not start a storage background thread: {e}"),
            }
        }
    }

    /// Appends a batch of readings and returns once the whole batch is durable.
    ///
    /// # Durability contract
    /// - `Ok` means every reading of the batch is in the write-ahead log and
    ///   the log was fdatasync'd: it survives a process crash and a power loss
    ///   (given a disk that honours fsync, see `docs/storage-format.md`). It is
    ///   also visible to every scan that starts after this call returns.
    /// - `Err` means none of the batch was acknowledged. Validation errors
    ///   ([`Error::TypeConflict`], [`Error::InvalidInput`],
    ///   [`Error::BeyondRetention`]) guarantee nothing was written and the
    ///   schema is unchanged. After an I/O failure ([`Error::WalPoisoned`])
    ///   the batch may or may not be on disk and appear after a restart (its
    ///   new channels may already be in the schema); retrying it is safe because
    ///   `(table, device, time)` is a key and the last write wins.
    /// - Concurrent appends share one fdatasync (group commit): the wait is
    ///   at most the commit window plus one fsync when the disk keeps up.
    /// - When the buffer is full and sealing falls behind, `append` blocks
    ///   until space frees up: backpressure, never loss. If the last attempt
    ///   to seal failed, it returns [`Error::SealFailing`] instead of
    ///   waiting for space that may never come.
    pub fn append(&self, readings: Vec<Reading>) -> Result<AppendReceipt> {
        let wal = self.writable("append")?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let rows = readings.len();
        if rows == 0 {
            return Ok(AppendReceipt {
                seq: wal.last_committed_seq(),
                rows: 0,
            });
        }
        self.wait_for_space(wal)?;
        let payload = batch::encode(&readings);
        // Checked before admission, so a rejected batch leaves the schema
        // as it was.
        if payload.len() > wal::MAX_PAYLOAD {
            return Err(Error::InvalidInput(format!(
                "a batch of {rows} readings encodes to {} bytes, more than the {}-byte limit of one append; split it",
                payload.len(),
                wal::MAX_PAYLOAD
            )));
        }
        if let Some(refused) = self.refusal(wal) {
            return Err(refused);
        }
        let prepared = {
            let mut catalog = self.shared.catalog.lock();
            self.check_retention(&catalog, &readings)?;
            let (rows, changed) = catalog.admit(readings)?;
            if changed {
                self.shared.catalog_version.lock().0 += 1;
            }
            rows
        };
        let bytes = payload.len() as u64;
        let seq = wal.append(payload, prepared)?;
        self.shared.disk.wrote(bytes);
        Ok(AppendReceipt { seq, rows })
    }

    fn check_retention(&self, catalog: &Catalog, readings: &[Reading]) -> Result<()> {
        let now = self.shared.opts.clock.now_ns();
        // One lookup per run of readings of one table.
        let mut last: Option<(&Arc<str>, Option<i64>)> = None;
        for r in readings {
            let cutoff = match last {
                Some((t, cutoff)) if same_name(t, &r.table) => cutoff,
                _ => {
                    let cutoff = catalog.table(&r.table).and_then(|d| d.cutoff_ns(now));
                    last = Some((&r.table, cutoff));
                    cutoff
                }
            };
            if let Some(cutoff) = cutoff
                && Month::of(r.time).end_ns() <= cutoff
            {
                return Err(Error::BeyondRetention {
                    table: r.table.to_string(),
                    time_ns: r.time,
                    cutoff_ns: cutoff,
                });
            }
        }
        Ok(())
    }

    fn wait_for_space(&self, wal: &StoreWal) -> Result<()> {
        let limit = self.shared.opts.buffer_bytes;
        let mut guard = self.shared.space_lock.lock();
        loop {
            if self.shared.buffered_bytes() < limit {
                return Ok(());
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            // A poisoned log can never seal again, so no space will come.
            if let Some(cause) = wal.is_poisoned() {
                return Err(Error::WalPoisoned { cause });
            }
            if let Some(cause) = self.shared.seal_failure() {
                return Err(Error::SealFailing { cause });
            }
            self.shared.request_seal();
            self.shared
                .space
                .wait_for(&mut guard, Duration::from_millis(100));
        }
    }

    /// Starts a scan. The scan sees a consistent snapshot: the rows of every
    /// append that returned before this call, none of an append that starts
    /// after it returns, and each concurrent append whole or not at all.
    pub fn scan(&self, req: &ScanRequest) -> Result<Scan> {
        let def = self
            .table(&req.table)
            .ok_or_else(|| Error::UnknownTable(req.table.clone()))?;
        let now = self.shared.opts.clock.now_ns();
        let state = self.shared.applied_state();
        scan::snapshot(
            &def,
            req,
            &state,
            def.cutoff_ns(now),
            self.shared.block_cache.clone(),
        )
    }

    /// What the cache of decoded column chunks holds, and its hit rate.
    pub fn block_cache_stats(&self) -> BlockCacheStats {
        self.shared.block_cache.stats()
    }

    /// The newest reading of every device of `table`, sorted by device:
    /// from memory, except for a device whose newest data has not been
    /// seen since the store opened, which costs one block read once.
    /// Months expired by retention are not reported.
    pub fn latest(&self, table: &str) -> Result<Vec<LatestReading>> {
        let Some(def) = self.table(table) else {
            return Ok(Vec::new());
        };
        let cutoff = def.cutoff_ns(self.shared.opts.clock.now_ns());
        let live = |time: i64| cutoff.is_none_or(|c| Month::of(time).end_ns() > c);
        let mut found: BTreeMap<String, latest::Latest> = BTreeMap::new();
        let mut to_read: Vec<(String, i64)> = Vec::new();
        {
            let state = self.shared.applied_state();
            // The newest time in segment files per device: the blocks of
            // its newest month (partition keys sort by month).
            let mut on_disk: BTreeMap<&str, i64> = BTreeMap::new();
            for ((t, device, _), segs) in state.parts.range(
                (
                    table.to_owned(),
                    String::new(),
                    Month {
                        year: i32::MIN,
                        month: 1,
                    },
                )..,
            ) {
                if t != table {
                    break;
                }
                let newest = segs
                    .iter()
                    .flat_map(|s| s.blocks())
                    .map(|b| b.max_time)
                    .max();
                if let Some(newest) = newest {
                    on_disk.insert(device, newest);
                }
            }
            for device in state.latest.devices(table) {
                on_disk.entry(device).or_insert(i64::MIN);
            }
            for (device, disk_max) in on_disk {
                match state.latest.get(table, device) {
                    Some(l) if l.time >= disk_max => {
                        found.insert(device.to_owned(), l.clone());
                    }
                    _ => to_read.push((device.to_owned(), disk_max)),
                }
            }
        }
        for (device, time) in to_read {
            let req = ScanRequest {
                table: table.to_owned(),
                devices: Some(vec![device.clone()]),
                start: Some(time),
                end: Some(time.saturating_add(1)),
                ..ScanRequest::default()
            };
            let mut newest = None;
            for batch in self.scan(&req)? {
                newest = latest::last_row(&batch?).or(newest);
            }
            if let Some(l) = newest {
                self.shared
                    .state
                    .write()
                    .latest
                    .offer(table, &device, l.clone());
                found.insert(device, l);
            }
        }
        Ok(found
            .into_iter()
            .filter(|(_, l)| live(l.time))
            .map(|(device, l)| {
                let mut values = vec![None; def.channels.len()];
                for (i, v) in l.values {
                    if let Some(slot) = values.get_mut(i) {
                        *slot = Some(v);
                    }
                }
                LatestReading {
                    device,
                    time: l.time,
                    values,
                }
            })
            .collect())
    }

    /// The tables and their schemas.
    pub fn tables(&self) -> Vec<TableDef> {
        self.shared
            .catalog
            .lock()
            .tables
            .values()
            .cloned()
            .collect()
    }

    pub fn table(&self, name: &str) -> Option<TableDef> {
        self.shared.catalog.lock().table(name).cloned()
    }

    /// The Arrow schema scans of `table` produce when no projection is given.
    pub fn schema(&self, table: &str) -> Option<SchemaRef> {
        self.table(table).map(|d| scan::table_schema(&d))
    }

    /// Sets or clears a table's retention period. Takes effect at the next
    /// maintenance round or [`Store::enforce_retention`], and for appends at once.
    pub fn set_retention(&self, table: &str, retention: Option<Duration>) -> Result<()> {
        self.writable("setting retention")?;
        let _save = self.shared.catalog_save.lock();
        let mut catalog = self.shared.catalog.lock();
        if catalog.table(table).is_none() {
            return Err(Error::UnknownTable(table.to_owned()));
        }
        let mut next = catalog.clone();
        next.table_mut(table).retention = retention;
        next.save(self.shared.vfs(), &self.shared.dir)?;
        *catalog = next;
        Ok(())
    }

    /// Drops every month that has fallen out of its table's retention period.
    /// Returns the number of partitions removed.
    pub fn enforce_retention(&self) -> Result<usize> {
        maintenance::enforce_retention(&self.shared, self.writable("enforcing retention")?)
    }

    /// Seals every buffered row into segment files and trims the WAL.
    pub fn flush(&self) -> Result<()> {
        maintenance::seal_all(&self.shared, self.writable("flush")?)
    }

    /// Compacts every partition that has more than one segment file, within
    /// the row bound. Returns how many partitions were compacted.
    pub fn compact(&self) -> Result<usize> {
        self.writable("compaction")?;
        maintenance::compact_all(&self.shared, maintenance::Policy::Everything)
    }

    /// Every partition with its size.
    pub fn partitions(&self) -> Vec<PartitionInfo> {
        self.list_partitions(None, i64::MIN, i64::MAX)
    }

    /// The partitions of `table` whose month overlaps `[start, end)`, with
    /// their sizes: what a query over that table and time range reads.
    pub fn partitions_of(&self, table: &str, start: i64, end: i64) -> Vec<PartitionInfo> {
        self.list_partitions(Some(table), start, end)
    }

    /// Costs one step per segment file and buffered partition, never per
    /// block or row: query plans call this.
    fn list_partitions(&self, table: Option<&str>, start: i64, end: i64) -> Vec<PartitionInfo> {
        let wanted = |t: &str, month: Month| {
            table.is_none_or(|want| want == t) && month.end_ns() > start && month.start_ns() < end
        };
        let state = self.shared.applied_state();
        let mut out: BTreeMap<PartKey, PartitionInfo> = BTreeMap::new();
        for ((table, device, month), segs) in &state.parts {
            if !wanted(table, *month) {
                continue;
            }
            let (min_time, max_time) = segs
                .iter()
                .filter_map(|s| s.time_range())
                .fold(None, |range, (lo, hi)| Some(widen(range, lo, hi)))
                .unwrap_or((i64::MAX, i64::MIN));
            out.insert(
                (table.clone(), device.clone(), *month),
                PartitionInfo {
                    table: table.clone(),
                    device: device.clone(),
                    month: *month,
                    rows: segs.iter().map(|s| s.rows()).sum(),
                    buffered_rows: 0,
                    segments: segs.len(),
                    bytes_on_disk: segs.iter().map(|s| s.file_len()).sum(),
                    min_time,
                    max_time,
                },
            );
        }
        let mems = std::iter::once(&state.active).chain(state.frozen.iter().map(|f| &f.mem));
        for mem in mems {
            for (table, device, month, part) in mem.all() {
                if !wanted(table, month) {
                    continue;
                }
                let info = out
                    .entry((table.to_owned(), device.to_owned(), month))
                    .or_insert_with(|| PartitionInfo {
                        table: table.to_owned(),
                        device: device.to_owned(),
                        month,
                        rows: 0,
                        buffered_rows: 0,
                        segments: 0,
                        bytes_on_disk: 0,
                        min_time: i64::MAX,
                        max_time: i64::MIN,
                    });
                if let Some((min, max)) = part.time_range() {
                    info.min_time = info.min_time.min(min);
                    info.max_time = info.max_time.max(max);
                }
                info.rows += part.rows() as u64;
                info.buffered_rows += part.rows() as u64;
            }
        }
        out.into_values().collect()
    }

    /// What recovery found and repaired when the store was opened.
    pub fn recovery_report(&self) -> &[RecoveryEvent] {
        &self.recovery
    }

    /// Checks every checksum of every segment file. Returns the damage found.
    pub fn verify(&self) -> Vec<Error> {
        let segs: Vec<Arc<SegmentReader>> = self
            .shared
            .state
            .read()
            .parts
            .values()
            .flatten()
            .cloned()
            .collect();
        segs.iter().filter_map(|s| s.verify().err()).collect()
    }

    /// Why appends fail now, for everyone: the I/O failure that poisoned
    /// the write-ahead log (until the store is reopened: after a failed
    /// fsync the page cache cannot be trusted, see `facts.md`), a nearly
    /// full disk (until space is freed), or a full buffer that cannot be
    /// sealed (until a seal succeeds). `None` while appends can succeed,
    /// and on a read-only store, which refuses them anyway. Cheap: ingest
    /// asks for every message.
    pub fn write_failure(&self) -> Option<String> {
        self.refusal(self.wal.as_ref()?).map(|e| e.to_string())
    }

    /// The error every append gets now, whatever it holds: a poisoned log,
    /// a nearly full disk, or a full buffer that cannot be sealed.
    fn refusal(&self, wal: &StoreWal) -> Option<Error> {
        if let Some(cause) = wal.is_poisoned() {
            return Some(Error::WalPoisoned { cause });
        }
        let shared = &self.shared;
        if let Some(cause) = shared.seal_failure()
            && shared.buffered_bytes() >= shared.opts.buffer_bytes
        {
            return Some(Error::SealFailing { cause });
        }
        let reserve = shared.opts.min_free_bytes;
        let now = shared.opts.clock.now_ns();
        let available = shared.disk.short(shared.vfs(), &shared.dir, reserve, now)?;
        Some(Error::DiskFull { available, reserve })
    }

    /// The most recent failure of background work (sealing, compaction,
    /// retention), if it has not succeeded since.
    pub fn last_background_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// Counters of the write-ahead log (all zero for a read-only store).
    pub fn wal_stats(&self) -> wal::WalStats {
        self.wal.as_ref().map(|w| w.stats()).unwrap_or_default()
    }

    /// Stops accepting appends, waits for those in flight, seals the buffer
    /// and stops the background threads. Data is safe in the WAL even if
    /// sealing fails, so an error here loses nothing. On a read-only store
    /// it only marks the store closed: there is nothing to write.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        self.stop_threads();
        let sealed = maintenance::seal_all(&self.shared, wal);
        let closed = wal.close();
        sealed.and(closed)
    }

    fn stop_threads(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.request_seal();
        self.shared.apply_signal.notify_all();
        self.shared.wake_space_waiters();
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                tracing::error!("a storage background thread panicked");
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.stop_threads();
    }
}

/// File name of a segment holding WAL sequence numbers `min..=max`.
pub(crate) fn segment_file_name(min_seq: u64, max_seq: u64) -> String {
    format!("{min_seq:020}-{max_seq:020}.{SEGMENT_EXT}")
}

pub(crate) fn record_error(shared: &Shared, what: &str, e: &Error) {
    tracing::error!("{what} failed: {e}");
    *shared.last_error.lock() = Some(format!("{what} failed: {e}"));
}

pub(crate) fn clear_error(shared: &Shared) {
    *shared.last_error.lock() = None;
}

/// Removes a file and syncs its directory; a file that is already gone is fine.
pub(crate) fn remove_durably(vfs: &dyn Vfs, path: &Path) -> Result<()> {
    match vfs.remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    if let Some(parent) = path.parent() {
        vfs.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
    }
    Ok(())
}

/// Creates the data directory if needed, making each new directory's entry
/// durable in its parent.
fn create_root_durably(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !vfs.is_dir(a))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    vfs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    Ok(())
}

/// Creates a partition directory and makes its entry durable in every
/// ancestor up to the data directory. A directory that exists is not proof
/// that its entry is durable (an earlier attempt may have failed before the
/// sync, or a killed process left it in the page cache), so each is synced
/// once per process before a file is placed in it.
pub(crate) fn create_dir_durably(shared: &Shared, dir: &Path) -> Result<()> {
    if shared.durable_dirs.lock().contains(dir) {
        return Ok(());
    }
    let vfs = shared.vfs();
    vfs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut cur = dir;
    while let Some(parent) = cur.parent() {
        vfs.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
        if parent == shared.dir {
            break;
        }
        cur = parent;
    }
    shared.durable_dirs.lock().insert(dir.to_owned());
    Ok(())
}

pub(crate) fn elapsed_ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

#[cfg(test)]
mod tests;
