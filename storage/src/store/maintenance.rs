//! Background work: sealing frozen buffers into segment files, compaction
//! and retention. Each step makes its result durable before it changes the
//! in-memory index, and changes the index before it deletes what it replaced,
//! so a crash at any point leaves either the old files or the new ones
//! (see `docs/storage-format.md`, "Commit protocol").

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, new_null_array};

use super::{
    Frozen, PartKey, Shared, StoreWal, clear_error, create_dir_durably, elapsed_ms, record_error,
    remove_durably, segment_file_name,
};
use crate::catalog::TableDef;
use crate::error::{Error, Result};
use crate::merge::{dedup_order, take, take_values};
use crate::model::Month;
use crate::segment::{SegmentMeta, SegmentReader, write_segment};

/// The sealing thread: freezes the active buffer when it is half full, when
/// asked, or when it is older than the seal interval, and seals frozen
/// buffers oldest first. A failed freeze or seal keeps the buffer (its rows
/// are still in the WAL) and is retried with backoff.
pub(super) fn seal_loop(shared: &Shared, wal: &StoreWal) {
    let mut last_freeze = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        {
            let mut wanted = shared.seal_wanted.lock();
            if !*wanted && !shared.shutdown.load(Ordering::Acquire) {
                shared
                    .seal_signal
                    .wait_for(&mut wanted, Duration::from_millis(500));
            }
            *wanted = false;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let (active_bytes, frozen) = {
            // Under the state lock, as in `buffered_bytes`.
            let state = shared.state.read();
            let queued = shared.pending.lock().bytes;
            (state.active.bytes() + queued, state.frozen.len())
        };
        let due = active_bytes > 0 && last_freeze.elapsed() >= shared.opts.seal_interval;
        let mut result = Ok(());
        if (active_bytes >= shared.opts.buffer_bytes / 2 || due) && frozen == 0 {
            result = freeze_active(shared, wal)
                .map(|()| last_freeze = Instant::now())
                .map_err(|e| ("freezing the buffer", e));
        }
        let result = result
            .and_then(|()| seal_frozen(shared, wal).map_err(|e| ("sealing buffered rows", e)));
        note_seal(shared, result.as_ref().err().map(|(_, e)| e));
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err((what, e)) => {
                record_error(shared, what, &e);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                *shared.seal_wanted.lock() = true;
            }
        }
    }
}

/// Moves the active buffer to the frozen list at a WAL file boundary, so
/// the closed WAL files hold exactly the frozen rows and can be trimmed once
/// they are sealed.
fn freeze_active(shared: &Shared, wal: &StoreWal) -> Result<()> {
    wal.rotate_with(|through_seq| {
        let mut state = shared.state.write();
        // No commit round runs now, so the queue holds exactly the committed
        // rows up to `through_seq` that are not in the buffer yet.
        shared.apply_pending(&mut state);
        if !state.active.is_empty() {
            let mem = std::mem::take(&mut state.active);
            shared.active_bytes.store(0, Ordering::Release);
            state.frozen.push(Arc::new(Frozen { mem, through_seq }));
        }
    })
}

/// Seals everything buffered now: used by `flush` and `close`.
pub(super) fn seal_all(shared: &Shared, wal: &StoreWal) -> Result<()> {
    let result = freeze_active(shared, wal).and_then(|()| seal_frozen(shared, wal));
    note_seal(shared, result.as_ref().err());
    result
}

/// Remembers whether the last freeze-and-seal failed. Appends that find the
/// buffer full then fail at once (they are woken to see it) instead of
/// waiting for space that only a successful seal would free.
fn note_seal(shared: &Shared, failure: Option<&Error>) {
    let mut slot = shared.seal_failure.lock();
    *slot = failure.map(Error::to_string);
    shared.seal_failing.store(slot.is_some(), Ordering::Release);
    drop(slot);
    if failure.is_some() {
        shared.wake_space_waiters();
    }
}

fn seal_frozen(shared: &Shared, wal: &StoreWal) -> Result<()> {
    let _one = shared.seal_lock.lock();
    loop {
        let Some(frozen) = shared.state.read().frozen.first().cloned() else {
            return Ok(());
        };
        let started = Instant::now();
        let sealed = seal_one(shared, &frozen)?;
        let files = sealed.len();
        {
            let mut state = shared.state.write();
            let now = shared.opts.clock.now_ns();
            let mut sealed_at = shared.sealed_at.lock();
            for (key, reader) in sealed {
                sealed_at.insert(key.clone(), now);
                let segs = state.parts.entry(key).or_default();
                segs.push(reader);
                segs.sort_by_key(|s| (s.meta().min_seq, s.meta().max_seq));
            }
            state.frozen.retain(|f| !Arc::ptr_eq(f, &frozen));
        }
        shared.wake_space_waiters();
        // The rows are sealed whatever happens next: a WAL file that cannot
        // be deleted only means the next open replays rows the segments
        // already hold, and skips them. Not a failed seal, then.
        match wal.trim(frozen.through_seq) {
            Ok(()) => clear_error(shared),
            Err(e) => record_error(shared, "deleting sealed WAL files", &e),
        }
        tracing::debug!(
            rows = frozen.mem.rows(),
            files,
            ms = elapsed_ms(started),
            "sealed buffered rows"
        );
    }
}

/// Saves the catalog if it changed, so every channel a segment holds is in it.
fn save_catalog(shared: &Shared) -> Result<()> {
    // Held from copy to rename, so an older copy never overwrites a newer
    // file (`set_retention` saves under the same lock).
    let _save = shared.catalog_save.lock();
    let (snapshot, version) = {
        let catalog = shared.catalog.lock();
        let version = shared.catalog_version.lock().0;
        (catalog.clone(), version)
    };
    if shared.catalog_version.lock().1 == version && version != 0 {
        return Ok(());
    }
    snapshot.save(shared.vfs(), &shared.dir)?;
    let mut v = shared.catalog_version.lock();
    v.1 = v.1.max(version);
    Ok(())
}

fn seal_one(shared: &Shared, frozen: &Frozen) -> Result<Vec<(PartKey, Arc<SegmentReader>)>> {
    save_catalog(shared)?;
    let catalog = shared.catalog.lock().clone();
    let now = shared.opts.clock.now_ns();
    let mut out = Vec::new();
    for (table, device, month, part) in frozen.mem.all() {
        let def = catalog
            .table(table)
            .ok_or_else(|| Error::Internal(format!("buffered rows of unknown table `{table}`")))?;
        if def.cutoff_ns(now).is_some_and(|c| month.end_ns() <= c) {
            continue; // expired while buffered: retention would drop it at once
        }
        let rows = part.take_all(def.channels.len());
        let (times, cols) = match dedup_order(&rows.times, &rows.seqs) {
            None => (rows.times, rows.cols),
            Some(order) => (
                take_values(&rows.times, &order),
                rows.cols
                    .iter()
                    .map(|c| c.as_ref().map(|a| take(a, &order)).transpose())
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let (columns, arrays): (Vec<_>, Vec<ArrayRef>) = cols
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| Some((def.channels[i].clone(), a?)))
            .unzip();
        let min_seq = rows.seqs.iter().copied().min().unwrap_or(0);
        let max_seq = rows.seqs.iter().copied().max().unwrap_or(0);
        let meta = SegmentMeta {
            table: table.to_owned(),
            device: device.to_owned(),
            month,
            min_seq,
            max_seq,
            columns,
        };
        let reader = write_and_open(shared, &meta, &times, &arrays)?;
        out.push(((table.to_owned(), device.to_owned(), month), reader));
    }
    Ok(out)
}

/// The apply thread: moves committed batches into the active buffer soon
/// after each commit, off the committer's critical path.
pub(super) fn apply_loop(shared: &Shared) {
    loop {
        {
            let mut pending = shared.pending.lock();
            if pending.batches.is_empty() && !shared.shutdown.load(Ordering::Acquire) {
                shared
                    .apply_signal
                    .wait_for(&mut pending, Duration::from_millis(100));
            }
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let mut state = shared.state.write();
        shared.apply_pending(&mut state);
    }
}

/// Writes a partition's segment file durably, named after its sequence
/// range, and opens it.
fn write_and_open(
    shared: &Shared,
    meta: &SegmentMeta,
    times: &[i64],
    arrays: &[ArrayRef],
) -> Result<Arc<SegmentReader>> {
    let dir = shared.partition_dir(&meta.table, &meta.device, meta.month);
    create_dir_durably(shared, &dir)?;
    let path = dir.join(segment_file_name(meta.min_seq, meta.max_seq));
    write_segment(
        shared.vfs(),
        &path,
        meta,
        times,
        arrays,
        &shared.write_options(),
    )?;
    Ok(Arc::new(SegmentReader::open(shared.vfs(), &path)?))
}

/// The maintenance thread: retention and compaction, every interval.
pub(super) fn maintenance_loop(shared: &Shared, wal: &StoreWal) {
    loop {
        let wake = Instant::now() + shared.opts.maintenance_interval;
        while Instant::now() < wake {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = enforce_retention(shared, wal) {
            record_error(shared, "retention", &e);
        }
        if let Err(e) = compact_all(shared, Policy::Background) {
            record_error(shared, "compaction", &e);
        }
    }
}

/// Which runs of segments a compaction pass merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Policy {
    /// The maintenance thread. A partition of a running month merges by
    /// size tiers ([`tiered_run`]), so each row is rewritten a few times
    /// over the month instead of with every seal. Once its month has been
    /// over for `compact_cold_after`, and nothing was sealed into it for as
    /// long (late readings come in bursts), it is merged into as few files
    /// as the row bound allows ([`greedy_run`]).
    Background,
    /// [`Store::compact`](super::Store::compact): as few files as the row
    /// bound allows, everywhere, now.
    Everything,
}

/// Runs one compaction pass; returns how many runs were merged.
pub(super) fn compact_all(shared: &Shared, policy: Policy) -> Result<usize> {
    // Two compactions of one run would write the same file name.
    let _one = shared.compact_lock.lock();
    let now = shared.opts.clock.now_ns();
    let cold_after = i64::try_from(shared.opts.compact_cold_after.as_nanos()).unwrap_or(i64::MAX);
    let max_rows = shared.opts.compact_max_rows as u64;
    let candidates: Vec<(PartKey, Vec<Arc<SegmentReader>>)> = {
        let state = shared.state.read();
        let sealed_at = shared.sealed_at.lock();
        state
            .parts
            .iter()
            .filter(|(_, segs)| segs.len() >= 2)
            .filter_map(|(key, segs)| {
                let rows: Vec<u64> = segs.iter().map(|s| s.rows()).collect();
                let quiet_since = |t: i64| now.saturating_sub(t) >= cold_after;
                // Not sealed into since this process started: long ago.
                let cold = quiet_since(key.2.end_ns())
                    && sealed_at.get(key).is_none_or(|t| quiet_since(*t));
                let run = if policy == Policy::Everything || cold {
                    greedy_run(&rows, max_rows)
                } else {
                    tiered_run(&rows, max_rows, shared.opts.compact_min_segments)
                }?;
                Some((key.clone(), segs[run].to_vec()))
            })
            .collect()
    };
    let mut done = 0;
    let mut first_error = None;
    for (key, run) in candidates {
        if shared.shutdown.load(Ordering::Acquire) {
            break;
        }
        // One partition that cannot be compacted (a damaged block, say)
        // must not starve the others.
        match compact_run(shared, &key, &run) {
            Ok(()) => done += 1,
            Err(e) => {
                let (table, device, month) = &key;
                record_error(shared, &format!("compacting {table}/{device}/{month}"), &e);
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// The first run of at least two consecutive segments whose rows together
/// fit `max_rows`, given each segment's rows, oldest first. Only consecutive
/// files may merge: the merged file takes their whole sequence range, and
/// recovery treats files inside another file's range as leftovers of an
/// interrupted compaction.
pub(super) fn greedy_run(rows: &[u64], max_rows: u64) -> Option<Range<usize>> {
    for start in 0..rows.len() {
        let mut total = 0u64;
        let mut end = start;
        while end < rows.len() && total + rows[end] <= max_rows {
            total += rows[end];
            end += 1;
        }
        if end - start >= 2 {
            return Some(start..end);
        }
    }
    None
}

/// A run of at least `min_segments` consecutive segments of similar size
/// to merge while a partition is still growing, or `None`. From a newest
/// segment backwards, an older segment joins while it holds at most 1.5
/// times the rows of the run so far (and the run fits `max_rows`), so files
/// grow in tiers of about `min_segments` times the one below: a row is
/// rewritten once per tier, a handful of times per month, not with every
/// seal as a merge into the one big file would. Smaller stragglers between
/// larger files join the next run that reaches them; the slack above 1
/// lets seals that shrink a little each time (a fleet growing within one
/// buffer) still form runs.
pub(super) fn tiered_run(rows: &[u64], max_rows: u64, min_segments: usize) -> Option<Range<usize>> {
    for end in (0..rows.len()).rev() {
        let mut total = rows[end];
        let mut start = end;
        while start > 0
            && 2 * u128::from(rows[start - 1]) <= 3 * u128::from(total)
            && total + rows[start - 1] <= max_rows
        {
            start -= 1;
            total += rows[start];
        }
        if end + 1 - start >= min_segments.max(2) {
            return Some(start..end + 1);
        }
    }
    None
}

fn compact_run(shared: &Shared, key: &PartKey, run: &[Arc<SegmentReader>]) -> Result<()> {
    let started = Instant::now();
    let (table, device, month) = key;
    let def: TableDef = shared
        .catalog
        .lock()
        .table(table)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("segments of unknown table `{table}`")))?;
    // Columns of the merged file: the union, in table order.
    let columns: Vec<_> = def
        .channels
        .iter()
        .filter(|(name, _)| {
            run.iter()
                .any(|s| s.meta().columns.iter().any(|c| &c.0 == name))
        })
        .cloned()
        .collect();
    let mut times = Vec::new();
    let mut seqs = Vec::new();
    let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); columns.len()];
    for seg in run {
        for b in 0..seg.blocks().len() {
            let t = seg.read_times(b)?;
            seqs.extend(std::iter::repeat_n(seg.meta().max_seq, t.len()));
            for (ci, (name, ty)) in columns.iter().enumerate() {
                let array = match seg.meta().columns.iter().position(|c| &c.0 == name) {
                    Some(i) => seg.read_column(b, i)?,
                    None => new_null_array(&ty.arrow_type(), t.len()),
                };
                parts[ci].push(array);
            }
            times.extend(t);
        }
    }
    let mut arrays = Vec::with_capacity(columns.len());
    for p in &parts {
        let refs: Vec<&dyn arrow_array::Array> = p.iter().map(|a| a.as_ref()).collect();
        arrays.push(
            arrow_select::concat::concat(&refs)
                .map_err(|e| Error::Internal(format!("concatenating columns failed: {e}")))?,
        );
    }
    let (times, arrays) = match dedup_order(&times, &seqs) {
        None => (times, arrays),
        Some(order) => (
            take_values(&times, &order),
            arrays
                .iter()
                .map(|a| take(a, &order))
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let min_seq = run.iter().map(|s| s.meta().min_seq).min().unwrap_or(0);
    let max_seq = run.iter().map(|s| s.meta().max_seq).max().unwrap_or(0);
    let meta = SegmentMeta {
        table: table.clone(),
        device: device.clone(),
        month: *month,
        min_seq,
        max_seq,
        columns,
    };
    let merged = write_and_open(shared, &meta, &times, &arrays)?;
    let path = merged.path().to_owned();
    let replaced = {
        let mut state = shared.state.write();
        match state.parts.get_mut(key) {
            Some(segs) => match segs.iter().position(|s| Arc::ptr_eq(s, &run[0])) {
                Some(at)
                    if segs.len() >= at + run.len()
                        && segs[at..at + run.len()]
                            .iter()
                            .zip(run)
                            .all(|(a, b)| Arc::ptr_eq(a, b)) =>
                {
                    segs.splice(at..at + run.len(), [merged.clone()]);
                    true
                }
                _ => false,
            },
            None => false,
        }
    };
    if !replaced {
        // Retention dropped the partition meanwhile: the merged file is not needed.
        return remove_durably(shared.vfs(), &path);
    }
    for seg in run {
        delete_segment(shared, seg)?;
    }
    tracing::debug!(
        partition = %format!("{table}/{device}/{month}"),
        files = run.len(),
        rows = merged.rows(),
        ms = elapsed_ms(started),
        "compacted"
    );
    Ok(())
}

/// Deletes a segment file that has left the index, and its decoded chunks
/// with it: they would only crowd live data out of the cache.
fn delete_segment(shared: &Shared, seg: &SegmentReader) -> Result<()> {
    shared.block_cache.forget(seg.cache_id());
    remove_durably(shared.vfs(), seg.path())
}

/// Drops whole months older than each table's retention period.
pub(super) fn enforce_retention(shared: &Shared, wal: &StoreWal) -> Result<usize> {
    let now = shared.opts.clock.now_ns();
    let cutoffs: Vec<(String, i64)> = shared
        .catalog
        .lock()
        .tables
        .values()
        .filter_map(|d| Some((d.name.clone(), d.cutoff_ns(now)?)))
        .collect();
    if cutoffs.is_empty() {
        return Ok(0);
    }
    let expired = |table: &str, month: Month| {
        cutoffs
            .iter()
            .any(|(t, cutoff)| t == table && month.end_ns() <= *cutoff)
    };
    // Buffered rows of an expired month (retention was shortened after they
    // arrived) go through a seal, which skips them and trims their WAL, so
    // they cannot come back after a restart.
    let buffered_expired = {
        let state = shared.applied_state();
        std::iter::once(&state.active)
            .chain(state.frozen.iter().map(|f| &f.mem))
            .any(|m| m.all().any(|(t, _, month, _)| expired(t, month)))
    };
    if buffered_expired {
        seal_all(shared, wal)?;
    }
    let expired: Vec<(PartKey, Vec<Arc<SegmentReader>>)> = {
        let mut state = shared.state.write();
        let keys: Vec<PartKey> = state
            .parts
            .keys()
            .filter(|(table, _, month)| expired(table, *month))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| state.parts.remove(&k).map(|v| (k, v)))
            .collect()
    };
    {
        let mut sealed_at = shared.sealed_at.lock();
        for (key, _) in &expired {
            sealed_at.remove(key);
        }
    }
    let vfs = shared.vfs();
    for ((table, device, month), segs) in &expired {
        for seg in segs {
            delete_segment(shared, seg)?;
        }
        let dir = shared.partition_dir(table, device, *month);
        if let Ok(rest) = vfs.list_dir(&dir) {
            for f in rest {
                remove_durably(vfs, &f)?;
            }
        }
        let _ = vfs.remove_dir(&dir);
        shared.durable_dirs.lock().remove(&dir);
        if let Some(parent) = dir.parent() {
            vfs.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
        }
        tracing::info!(%table, %device, %month, "retention dropped a month");
    }
    Ok(expired.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX_ROWS: u64 = 1 << 20;

    /// Seals segments of `sizes` rows into one partition, merging with
    /// `pick` after every seal as the maintenance thread would. Returns
    /// (rows rewritten / rows sealed, most files at once, files at the end).
    fn month(
        sizes: impl IntoIterator<Item = u64>,
        pick: impl Fn(&[u64]) -> Option<Range<usize>>,
    ) -> (f64, usize, Vec<u64>) {
        let (mut segs, mut rewritten, mut sealed, mut most) = (Vec::new(), 0, 0, 0);
        for rows in sizes {
            segs.push(rows);
            sealed += rows;
            while let Some(run) = pick(&segs) {
                let merged: u64 = segs[run.clone()].iter().sum();
                rewritten += merged;
                segs.splice(run, [merged]);
            }
            most = most.max(segs.len());
        }
        (rewritten as f64 / sealed as f64, most, segs)
    }

    fn tiers(segs: &[u64]) -> Option<Range<usize>> {
        tiered_run(segs, MAX_ROWS, 4)
    }

    /// A 1 Hz meter sealed every 10 minutes for a 31-day month.
    const SEALS: usize = 4464;

    #[test]
    fn a_growing_month_rewrites_each_row_a_few_times_not_with_every_seal() {
        let (amplification, most, segs) = month(vec![600; SEALS], tiers);
        assert!(amplification < 6.0, "{amplification}");
        assert!(most <= 16, "{most} files at once");
        assert_eq!(segs.iter().sum::<u64>(), SEALS as u64 * 600);
        // Merging into the first file that still has room, as before tiers,
        // rewrites the month hundreds of times.
        let (greedy, _, _) = month(vec![600; SEALS], |s| {
            (s.len() >= 4).then(|| greedy_run(s, MAX_ROWS)).flatten()
        });
        assert!(greedy > 300.0, "{greedy}");
        // Gone cold, the month merges into as few files as the bound allows.
        let (_, _, cold) = month(segs, |s| greedy_run(s, MAX_ROWS));
        assert!(cold.len() <= 5, "{cold:?}");
    }

    #[test]
    fn seals_that_shrink_a_little_each_time_still_merge() {
        let shrinking = (0..SEALS as u64).map(|i| 600 - i / 8);
        let (amplification, most, _) = month(shrinking, tiers);
        assert!(amplification < 6.0, "{amplification}");
        assert!(most <= 16, "{most} files at once");
    }

    #[test]
    fn a_small_straggler_between_larger_files_is_picked_up() {
        assert_eq!(tiers(&[2400, 1000, 1030, 600, 600]), Some(0..5));
        assert_eq!(tiers(&[9600, 1000, 1030, 600, 600]), Some(1..5));
        assert_eq!(tiers(&[600, 600, 600, 600, 10]), Some(0..4));
        assert_eq!(tiers(&[9600, 600, 600, 600]), None);
        assert_eq!(tiers(&[MAX_ROWS, 1, 1, 1]), None);
        assert_eq!(greedy_run(&[MAX_ROWS, MAX_ROWS], MAX_ROWS), None);
        assert_eq!(greedy_run(&[MAX_ROWS, 5, 7], MAX_ROWS), Some(1..3));
    }

    proptest! {
        #[test]
        fn picked_runs_are_consecutive_bounded_and_merging_ends(
            mut segs in proptest::collection::vec(1u64..5_000, 0..60),
            max_rows in 1u64..20_000,
            min_segments in 0usize..6,
            tiered in any::<bool>(),
        ) {
            let pick = |s: &[u64]| if tiered {
                tiered_run(s, max_rows, min_segments)
            } else {
                greedy_run(s, max_rows)
            };
            for _ in 0..=60 {
                let Some(run) = pick(&segs) else { return Ok(()) };
                let least = if tiered { min_segments.max(2) } else { 2 };
                prop_assert!(run.end <= segs.len() && run.len() >= least);
                let merged: u64 = segs[run.clone()].iter().sum();
                prop_assert!(merged <= max_rows);
                segs.splice(run, [merged]);
            }
            prop_assert!(false, "merging did not end");
        }
    }
}
