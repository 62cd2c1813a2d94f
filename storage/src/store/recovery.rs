//! Opening a data directory after a clean stop or a crash: load the catalog
//! and segment files, isolate what is damaged, finish what an interrupted
//! compaction left, and replay the WAL into the buffer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{PartKey, SEGMENT_EXT, Shared, remove_durably};
use crate::batch;
use crate::catalog::{CATALOG_FILE, Catalog};
use crate::error::{Error, Result};
use crate::model::Month;
use crate::segment::SegmentReader;
use crate::wal;

/// Something recovery found and repaired or isolated.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryEvent {
    /// Found while replaying the write-ahead log.
    Wal(wal::RecoveryEvent),
    /// A segment file failed its checks and was moved out of the store
    /// (`moved_to`), or was only skipped (`None`: a read-only open, or the
    /// move failed).
    SegmentQuarantined {
        file: PathBuf,
        reason: String,
        moved_to: Option<PathBuf>,
    },
    /// A segment whose rows a compacted file already holds (the compaction
    /// was interrupted before it deleted its inputs) was removed.
    CompactionLeftover { file: PathBuf },
    /// A temporary file of an interrupted write was removed.
    TempFileRemoved { file: PathBuf },
    /// The catalog file was damaged; it was moved aside and rebuilt from the
    /// segments and the WAL. Retention settings must be set again.
    CatalogRebuilt {
        reason: String,
        moved_to: Option<PathBuf>,
    },
    /// A WAL record or reading that passed its checksum could not be applied.
    RecordSkipped { seq: u64, reason: String },
}

impl fmt::Display for RecoveryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryEvent::Wal(e) => write!(f, "write-ahead log: {e:?}"),
            RecoveryEvent::SegmentQuarantined {
                file,
                reason,
                moved_to,
            } => match moved_to {
                Some(to) => write!(
                    f,
                    "segment {} is damaged ({reason}); moved to {}",
                    file.display(),
                    to.display()
                ),
                None => write!(
                    f,
                    "segment {} is damaged ({reason}); skipped and left in place",
                    file.display()
                ),
            },
            RecoveryEvent::CompactionLeftover { file } => {
                write!(
                    f,
                    "removed {} left by an interrupted compaction",
                    file.display()
                )
            }
            RecoveryEvent::TempFileRemoved { file } => {
                write!(
                    f,
                    "removed temporary file {} of an interrupted write",
                    file.display()
                )
            }
            RecoveryEvent::CatalogRebuilt { reason, .. } => {
                write!(
                    f,
                    "catalog was damaged ({reason}) and was rebuilt; set retention again"
                )
            }
            RecoveryEvent::RecordSkipped { seq, reason } => {
                write!(f, "WAL record {seq} skipped: {reason}")
            }
        }
    }
}

/// What loading the segments tells WAL replay.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Highest WAL sequence number already sealed in each partition: replay
    /// skips readings at or below it, because a seal writes all of a
    /// partition's rows up to its freeze point into one file.
    part_max_seq: HashMap<PartKey, u64>,
    pub(super) next_seq: u64,
}

/// Whether loading may repair the directory. A read-only open changes
/// nothing: damage is reported and skipped in place, and temporary files
/// and compaction inputs are left to the writer, whose seals and
/// compactions produce both in normal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Write,
    ReadOnly,
}

pub(super) fn load_segments(
    shared: &Shared,
    mode: Mode,
    report: &mut Vec<RecoveryEvent>,
) -> Result<Recovered> {
    let writable = mode == Mode::Write;
    let vfs = shared.vfs();
    let mut catalog = match Catalog::load(vfs, &shared.dir) {
        Ok(Some(c)) => c,
        Ok(None) => {
            if shared.vfs().is_dir(&shared.tables_dir()) {
                report.push(RecoveryEvent::CatalogRebuilt {
                    reason: "the catalog file is missing".into(),
                    moved_to: None,
                });
            }
            Catalog::default()
        }
        Err(e @ Error::Corrupt { .. }) => {
            let path = shared.dir.join(CATALOG_FILE);
            let moved_to = if writable {
                quarantine(shared, &path)
            } else {
                None
            };
            report.push(RecoveryEvent::CatalogRebuilt {
                reason: e.to_string(),
                moved_to,
            });
            Catalog::default()
        }
        Err(e) => return Err(e),
    };
    // Ordered, so a rebuilt catalog lists channels in a stable order.
    let mut parts: BTreeMap<PartKey, Vec<Arc<SegmentReader>>> = BTreeMap::new();
    let tables_dir = shared.tables_dir();
    for table_dir in list_dirs(shared, &tables_dir)? {
        for device_dir in list_dirs(shared, &table_dir)? {
            for month_dir in list_dirs(shared, &device_dir)? {
                let (Some(table), Some(device), Some(month)) = (
                    file_name(&table_dir),
                    file_name(&device_dir),
                    file_name(&month_dir).and_then(Month::parse),
                ) else {
                    continue;
                };
                for file in vfs
                    .list_dir(&month_dir)
                    .map_err(|e| Error::io(&month_dir, e))?
                {
                    let name = file_name(&file).unwrap_or_default();
                    if name.ends_with(".tmp") {
                        // Beside a live writer this is a seal or compaction
                        // in progress; it is not part of the store either way.
                        if !writable {
                            continue;
                        }
                        remove_durably(vfs, &file)?;
                        report.push(RecoveryEvent::TempFileRemoved { file });
                        continue;
                    }
                    if !name.ends_with(&format!(".{SEGMENT_EXT}")) {
                        continue;
                    }
                    let checked = SegmentReader::open(vfs, &file).and_then(|seg| {
                        check_segment(&seg, &catalog, table, device, month)?;
                        Ok(seg)
                    });
                    match checked {
                        Ok(seg) => parts
                            .entry((table.to_owned(), device.to_owned(), month))
                            .or_default()
                            .push(Arc::new(seg)),
                        // Only damage is isolated; an I/O error (permissions,
                        // memory) says nothing about the file and stops the open.
                        Err(e @ Error::Corrupt { .. }) => {
                            let moved_to = if writable {
                                quarantine(shared, &file)
                            } else {
                                None
                            };
                            report.push(RecoveryEvent::SegmentQuarantined {
                                file,
                                reason: e.to_string(),
                                moved_to,
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    let mut recovered = Recovered {
        next_seq: 1,
        ..Recovered::default()
    };
    let mut state = shared.state.write();
    for (key, mut segs) in parts {
        segs.sort_by_key(|s| (s.meta().min_seq, std::cmp::Reverse(s.meta().max_seq)));
        // A compacted file replaces its leftover inputs only once every block
        // of it checks out; a damaged one is isolated and its inputs stay.
        let covers = |k: &SegmentReader, s: &SegmentReader| {
            !std::ptr::eq(k, s)
                && k.meta().min_seq <= s.meta().min_seq
                && s.meta().max_seq <= k.meta().max_seq
        };
        let mut i = 0;
        while i < segs.len() {
            let covering = segs.iter().any(|s| covers(&segs[i], s));
            if covering && let Err(e @ Error::Corrupt { .. }) = segs[i].verify() {
                let seg = segs.remove(i);
                let moved_to = if writable {
                    quarantine(shared, seg.path())
                } else {
                    None
                };
                report.push(RecoveryEvent::SegmentQuarantined {
                    file: seg.path().to_owned(),
                    reason: e.to_string(),
                    moved_to,
                });
                continue;
            }
            i += 1;
        }
        let mut kept: Vec<Arc<SegmentReader>> = Vec::new();
        for seg in segs {
            let (lo, hi) = (seg.meta().min_seq, seg.meta().max_seq);
            if kept
                .iter()
                .any(|k| k.meta().min_seq <= lo && hi <= k.meta().max_seq)
            {
                // The same rule the writer applies, so a reader sees what the
                // writer will; only the writer deletes the file (beside a live
                // writer it is usually a compaction about to delete it).
                if writable {
                    remove_durably(vfs, seg.path())?;
                    report.push(RecoveryEvent::CompactionLeftover {
                        file: seg.path().to_owned(),
                    });
                }
                continue;
            }
            kept.push(seg);
        }
        let def = catalog.table_mut(&key.0);
        for seg in &kept {
            for (name, ty) in &seg.meta().columns {
                if def.channel_index(name).is_none() {
                    def.add_channel(name, *ty);
                }
            }
        }
        let max = kept.iter().map(|s| s.meta().max_seq).max().unwrap_or(0);
        recovered.next_seq = recovered.next_seq.max(max + 1);
        recovered.part_max_seq.insert(key.clone(), max);
        state.parts.insert(key, kept);
    }
    *shared.catalog.lock() = catalog;
    Ok(recovered)
}

/// Applies one WAL record to the buffer during replay.
pub(super) fn replay_record(
    shared: &Shared,
    recovered: &Recovered,
    seq: u64,
    payload: &[u8],
    report: &mut Vec<RecoveryEvent>,
) {
    let Some(readings) = batch::decode(payload) else {
        report.push(RecoveryEvent::RecordSkipped {
            seq,
            reason: "the payload passed its checksum but is not a valid batch".into(),
        });
        return;
    };
    let now = shared.opts.clock.now_ns();
    let mut catalog = shared.catalog.lock();
    let mut state = shared.state.write();
    for r in readings {
        let month = Month::of(r.time);
        let key = (r.table.to_string(), r.device.to_string(), month);
        if recovered.part_max_seq.get(&key).is_some_and(|m| *m >= seq) {
            continue;
        }
        if let Some(def) = catalog.table(&r.table)
            && def.cutoff_ns(now).is_some_and(|c| month.end_ns() <= c)
        {
            continue;
        }
        match catalog.admit(vec![r]) {
            Ok((batch, _)) => {
                state.latest.observe_batch(seq, &batch.rows);
                state.active.insert_batch(seq, batch);
            }
            Err(e) => report.push(RecoveryEvent::RecordSkipped {
                seq,
                reason: e.to_string(),
            }),
        }
    }
    // Channels learned from the WAL are not in the catalog file yet.
    shared.catalog_version.lock().0 += 1;
}

/// A segment must belong where it lies and agree with the catalog's types.
fn check_segment(
    seg: &SegmentReader,
    catalog: &Catalog,
    table: &str,
    device: &str,
    month: Month,
) -> Result<()> {
    let m = seg.meta();
    if m.table != table || m.device != device || m.month != month {
        return Err(Error::corrupt(
            seg.path(),
            0,
            "segment metadata does not match its directory",
        ));
    }
    if let Some(def) = catalog.table(table) {
        for (name, ty) in &m.columns {
            if let Some(i) = def.channel_index(name)
                && def.channels[i].1 != *ty
            {
                return Err(Error::corrupt(
                    seg.path(),
                    0,
                    format!(
                        "column `{name}` is {ty} but the catalog says {}",
                        def.channels[i].1
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every segment file and WAL file of the directory, sorted: a read-only
/// open compares this before and after it loads, because the writer only
/// ever adds and removes these files (never rewrites one), so an unchanged
/// listing means the open saw one consistent state.
pub(super) fn listing(shared: &Shared, wal_dir: &Path) -> Result<Vec<PathBuf>> {
    let vfs = shared.vfs();
    let mut out = Vec::new();
    for table_dir in list_dirs(shared, &shared.tables_dir())? {
        for device_dir in list_dirs(shared, &table_dir)? {
            for month_dir in list_dirs(shared, &device_dir)? {
                for file in vfs
                    .list_dir(&month_dir)
                    .map_err(|e| Error::io(&month_dir, e))?
                {
                    if file_name(&file).is_some_and(|n| n.ends_with(&format!(".{SEGMENT_EXT}"))) {
                        out.push(file);
                    }
                }
            }
        }
    }
    if vfs.is_dir(wal_dir) {
        out.extend(vfs.list_dir(wal_dir).map_err(|e| Error::io(wal_dir, e))?);
    }
    out.sort();
    Ok(out)
}

fn list_dirs(shared: &Shared, dir: &Path) -> Result<Vec<PathBuf>> {
    let vfs = shared.vfs();
    if !vfs.is_dir(dir) {
        return Ok(Vec::new());
    }
    Ok(vfs
        .list_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .into_iter()
        .filter(|p| vfs.is_dir(p))
        .collect())
}

fn file_name(p: &Path) -> Option<&str> {
    p.file_name()?.to_str()
}

/// Moves a damaged file into `quarantine/`, named after its path in the
/// store, so it stops affecting reads but stays available for forensics.
fn quarantine(shared: &Shared, file: &Path) -> Option<PathBuf> {
    let vfs = shared.vfs();
    let qdir = shared.quarantine_dir();
    let rel = file.strip_prefix(&shared.dir).unwrap_or(file);
    let name: String = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("__");
    let mut target = qdir.join(&name);
    let mut n = 1;
    while vfs.exists(&target) {
        target = qdir.join(format!("{name}.{n}"));
        n += 1;
    }
    let moved = vfs
        .create_dir_all(&qdir)
        .and_then(|()| vfs.sync_dir(&shared.dir))
        .and_then(|()| vfs.rename(file, &target))
        .and_then(|()| vfs.sync_dir(&qdir));
    if let Some(parent) = file.parent() {
        let _ = vfs.sync_dir(parent);
    }
    match moved {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::error!(
                "could not move damaged {} to quarantine: {e}",
                file.display()
            );
            None
        }
    }
}
