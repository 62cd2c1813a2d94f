//! `wattson bench storage`: the store's throughput, compression, scan speed
//! and recovery speed on realistic 1 Hz meter data in the seed's 18-column
//! shape (time plus 17 channels), written into a fresh data directory.
//!
//! Phases, all on the real path (WAL with fdatasync, sealing, zstd, mmap):
//! 1. **append**: the first rows, while they fit in the buffer, so the figure
//!    is the durable append path alone (`append_rows_per_s`).
//! 2. **sustained**: the whole data set; sealing, compression and compaction
//!    run in the background and the clock stops only once everything is
//!    sealed (`sustained_rows_per_s`).
//! 3. **size**: every file in the data directory over the values stored
//!    (`bytes_per_value`, timestamps counted as values).
//! 4. **scan**: one projected column over everything, hot, on one thread
//!    (`scan_values_per_s`).
//! 5. **recovery**: a store with an unsealed WAL is reopened and the replay
//!    timed (`recovery_s_per_gib`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use wattson_storage::{Reading, ScanRequest, Store, StoreOptions};

use crate::simdata::{self, SEED_TABLE};

pub mod dashboard;
pub mod flight;
pub mod ingest;
pub mod query;

/// 2022-07-01T00:00:00Z: the seed's month.
pub(crate) const START_NS: i64 = 1_656_633_600_000_000_000;
/// Readings per append: about what one group commit gathers from a fleet.
const BATCH_ROWS: usize = 1_000;
/// Time plus the seed's 17 channels.
const VALUES_PER_ROW: u64 = 18;

/// Sizes and knobs of a storage benchmark run.
#[derive(Debug, Clone)]
pub struct StorageBenchConfig {
    pub devices: usize,
    pub days: f64,
    /// Threads calling `append` concurrently.
    pub writers: usize,
    /// Where to build the store; a fresh temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub progress: bool,
}

impl Default for StorageBenchConfig {
    fn default() -> Self {
        StorageBenchConfig {
            devices: 16,
            days: 28.0,
            writers: 8,
            dir: None,
            progress: true,
        }
    }
}

/// The figures `wattson bench storage --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StorageBenchReport {
    pub devices: usize,
    pub days: f64,
    pub rows: u64,
    pub values: u64,
    pub append_rows_per_s: f64,
    pub append_values_per_s: f64,
    pub sustained_rows_per_s: f64,
    pub sustained_values_per_s: f64,
    pub sustained_seconds: f64,
    pub bytes_on_disk: u64,
    pub bytes_per_value: f64,
    pub scan_values_per_s: f64,
    pub recovery_s_per_gib: f64,
    pub recovery_wal_bytes: u64,
    pub wal_commits: u64,
    pub wal_appends: u64,
}

pub(crate) fn generator(
    devices: usize,
    seconds: u64,
    seed: u64,
) -> impl Iterator<Item = Vec<Reading>> {
    let mut readings = simdata::fleet(SEED_TABLE, devices, START_NS, seconds, seed);
    std::iter::from_fn(move || {
        let batch: Vec<Reading> = readings.by_ref().take(BATCH_ROWS).collect();
        (!batch.is_empty()).then_some(batch)
    })
}

/// Appends everything `batches` yields from `writers` threads; returns the
/// rows appended and the time it took.
pub(crate) fn append_all(
    store: &Arc<Store>,
    batches: impl Iterator<Item = Vec<Reading>> + Send + 'static,
    writers: usize,
    bar: &ProgressBar,
) -> Result<(u64, Duration)> {
    let (tx, rx) = sync_channel::<Vec<Reading>>(writers * 4);
    let rx = Arc::new(parking_lot::Mutex::new(rx));
    let producer = std::thread::spawn(move || {
        for b in batches {
            if tx.send(b).is_err() {
                break;
            }
        }
    });
    let rows = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers.max(1))
        .map(|_| {
            let (store, rx, rows, bar) = (store.clone(), rx.clone(), rows.clone(), bar.clone());
            std::thread::spawn(move || -> Result<()> {
                loop {
                    let next = rx.lock().recv();
                    let Ok(batch) = next else { return Ok(()) };
                    let n = batch.len() as u64;
                    store.append(batch)?;
                    rows.fetch_add(n, Ordering::Relaxed);
                    bar.inc(n);
                }
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow!("a writer thread panicked"))??;
    }
    let elapsed = started.elapsed();
    producer
        .join()
        .map_err(|_| anyhow!("the data generator panicked"))?;
    Ok((rows.load(Ordering::Relaxed), elapsed))
}

fn dir_bytes(path: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

pub(crate) fn bar(enabled: bool, len: u64, what: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// Runs the storage benchmark.
pub fn storage(cfg: &StorageBenchConfig) -> Result<StorageBenchReport> {
    let tmp;
    let root = match &cfg.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_owned()
        }
    };
    let data = root.join("bench-data");
    if data.exists() {
        anyhow::bail!(
            "{} exists; the benchmark needs a fresh directory",
            data.display()
        );
    }
    let seconds = (cfg.days * 86_400.0).round() as u64;
    let total_rows = seconds * cfg.devices as u64;
    let opts = StoreOptions::default();
    // Rows that fit in the buffer before sealing starts, with some margin.
    let append_rows = ((opts.buffer_bytes / 2) as u64 / 400)
        .min(total_rows / 4)
        .max(1);

    let store = Arc::new(Store::open(&data, opts.clone())?);
    let b = bar(cfg.progress, total_rows, "append");
    let mut batches = generator(cfg.devices, seconds, 42);
    let first: Vec<Vec<Reading>> = {
        let mut v = Vec::new();
        let mut n = 0;
        while n < append_rows {
            let Some(batch) = batches.next() else { break };
            n += batch.len() as u64;
            v.push(batch);
        }
        v
    };
    let (first_rows, first_time) = append_all(&store, first.into_iter(), cfg.writers, &b)?;

    b.set_message("sustained");
    let sustained_start = Instant::now() - first_time;
    let (rest_rows, _) = append_all(&store, batches, cfg.writers, &b)?;
    store.flush()?;
    while store.compact()? > 0 {}
    let sustained = sustained_start.elapsed();
    b.finish_and_clear();
    let rows = first_rows + rest_rows;
    let wal = store.wal_stats();

    let scan_req = ScanRequest::table(SEED_TABLE).columns(["pa_v"]);
    let mut scanned = 0u64;
    let mut scan_time = Duration::ZERO;
    for round in 0..2 {
        let started = Instant::now();
        let mut n = 0u64;
        for batch in store.scan(&scan_req)? {
            n += batch?.num_rows() as u64;
        }
        if round == 1 {
            scan_time = started.elapsed();
            scanned = n;
        }
    }
    if scanned != rows {
        anyhow::bail!("the scan returned {scanned} rows, {rows} were written");
    }
    store.close()?;
    drop(store);
    let bytes_on_disk = dir_bytes(&data)?;

    let (recovery_s_per_gib, recovery_wal_bytes) = recovery(&root.join("bench-recovery"), cfg)?;

    let values = rows * VALUES_PER_ROW;
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    Ok(StorageBenchReport {
        devices: cfg.devices,
        days: cfg.days,
        rows,
        values,
        append_rows_per_s: first_rows as f64 / secs(first_time),
        append_values_per_s: (first_rows * VALUES_PER_ROW) as f64 / secs(first_time),
        sustained_rows_per_s: rows as f64 / secs(sustained),
        sustained_values_per_s: values as f64 / secs(sustained),
        sustained_seconds: sustained.as_secs_f64(),
        bytes_on_disk,
        bytes_per_value: bytes_on_disk as f64 / values as f64,
        scan_values_per_s: scanned as f64 / secs(scan_time),
        recovery_s_per_gib,
        recovery_wal_bytes,
        wal_commits: wal.commits,
        wal_appends: wal.appends,
    })
}

/// Fills a WAL without sealing, then times the reopen that replays it.
fn recovery(dir: &Path, cfg: &StorageBenchConfig) -> Result<(f64, u64)> {
    let opts = StoreOptions {
        background: false,
        buffer_bytes: 2 << 30,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open(dir, opts.clone())?);
    let rows = 400_000u64
        .min((cfg.days * 86_400.0) as u64 * cfg.devices as u64)
        .max(1);
    let seconds = rows.div_ceil(cfg.devices as u64);
    let b = bar(cfg.progress, seconds * cfg.devices as u64, "recovery");
    append_all(&store, generator(cfg.devices, seconds, 7), cfg.writers, &b)?;
    b.finish_and_clear();
    drop(store);
    let wal_bytes = dir_bytes(&dir.join("wal"))?;
    let started = Instant::now();
    let store = Store::open(dir, opts)?;
    let took = started.elapsed();
    drop(store);
    let gib = wal_bytes as f64 / f64::from(1u32 << 30);
    Ok((took.as_secs_f64() / gib.max(1e-12), wal_bytes))
}

/// The python of the venv at `venv`, created when missing, with `packages`
/// (pinned `name==version` strings) installed from PyPI once: a stamp file
/// named after them marks the venv as done.
pub(crate) fn python_venv(venv: &Path, packages: &[&str]) -> Result<PathBuf> {
    use anyhow::bail;
    use std::process::Command;
    let python = venv.join("bin/python");
    let stamp = venv.join(format!("installed-{}", packages.join("+")));
    if stamp.exists() {
        return Ok(python);
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .context("running python3 -m venv (install python3-venv)")?;
        if !status.success() {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {} failed", packages.join(" "));
    }
    std::fs::write(&stamp, b"")?;
    Ok(python)
}
