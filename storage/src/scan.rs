//! Scans: a consistent snapshot of one table, pruned by device, month and
//! block statistics, streamed as Arrow record batches.
//!
//! A scan takes its snapshot under the state lock (segment handles and a
//! copy of the matching buffered rows) and decodes afterwards, so appends,
//! sealing and compaction go on while it runs. Within a partition, blocks
//! and buffered rows whose time ranges do not overlap stream one at a time;
//! overlapping ones are merged, sorted and deduplicated (last write wins).

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, RecordBatch, RecordBatchOptions, StringArray, TimestampNanosecondArray,
    new_null_array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::catalog::TableDef;
use crate::error::{Error, Result};
use crate::memtable::MemRows;
use crate::merge::{dedup_order, take, take_values};
use crate::model::{ChannelType, DEVICE_COLUMN, Month, TIME_COLUMN};
use crate::segment::{BlockCache, SegmentReader};
use crate::store::State;

/// Largest batch a scan yields.
const MAX_BATCH_ROWS: usize = 65_536;

/// What to read. `Default` plus a table name reads everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanRequest {
    pub table: String,
    /// Only these devices; `None` for all.
    pub devices: Option<Vec<String>>,
    /// Inclusive lower bound, ns since the epoch.
    pub start: Option<i64>,
    /// Exclusive upper bound, ns since the epoch.
    pub end: Option<i64>,
    /// Output columns in this order (`time`, `device` and channel names);
    /// `None` for `time`, `device` and every channel.
    pub columns: Option<Vec<String>>,
    /// Skip blocks that fail their checksum (listed in [`Scan::damaged`])
    /// instead of failing the scan.
    pub skip_damaged: bool,
}

impl ScanRequest {
    pub fn table(name: impl Into<String>) -> Self {
        ScanRequest {
            table: name.into(),
            ..ScanRequest::default()
        }
    }

    pub fn devices<S: Into<String>>(mut self, devices: impl IntoIterator<Item = S>) -> Self {
        self.devices = Some(devices.into_iter().map(Into::into).collect());
        self
    }

    pub fn range(mut self, start: Option<i64>, end: Option<i64>) -> Self {
        self.start = start;
        self.end = end;
        self
    }

    pub fn columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }
}

/// Counters of one scan, for pruning tests and `EXPLAIN ANALYZE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanMetrics {
    /// Partitions that passed device and month pruning.
    pub partitions: usize,
    pub blocks_total: usize,
    /// Blocks skipped by their time statistics without being read.
    pub blocks_pruned: usize,
    pub blocks_read: usize,
    pub buffered_rows: usize,
    pub rows_out: usize,
}

/// The Arrow schema of a table: `time`, `device`, then the channels.
pub fn table_schema(def: &TableDef) -> SchemaRef {
    let mut fields = vec![time_field(), device_field()];
    fields.extend(
        def.channels
            .iter()
            .map(|(name, ty)| Field::new(name, ty.arrow_type(), true)),
    );
    Arc::new(Schema::new(fields))
}

fn time_field() -> Field {
    Field::new(
        TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        false,
    )
}

fn device_field() -> Field {
    Field::new(DEVICE_COLUMN, DataType::Utf8, false)
}

#[derive(Debug, Clone)]
enum OutCol {
    Time,
    Device,
    /// Position among the scan's channels (`Scan::channels`).
    Channel(usize),
}

#[derive(Debug)]
struct PartSnap {
    device: String,
    segments: Vec<Arc<SegmentReader>>,
    mem: Vec<MemRows>,
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Block {
        seg: usize,
        block: usize,
    },
    /// Rows `lo..hi` of the partition's merged buffered rows.
    Mem {
        lo: usize,
        hi: usize,
    },
}

/// A partition being read: its snapshot and the clusters of units not yet decoded.
#[derive(Debug)]
struct Current {
    part: PartSnap,
    /// The partition's buffered rows, sorted by time and deduplicated.
    mem: Option<Rows>,
    clusters: VecDeque<Vec<Unit>>,
}

/// Decoded rows of one unit or cluster, before they become a batch.
#[derive(Debug)]
struct Rows {
    n: usize,
    /// Empty when nothing needs them: a block wholly inside the range, not
    /// merged with others, for a scan that does not output `time`. An Arrow
    /// buffer, so cached timestamps reach the batch without a copy.
    times: ScalarBuffer<i64>,
    /// Empty unless the rows take part in a merge.
    seqs: Vec<u64>,
    cols: Vec<Option<ArrayRef>>,
}

/// A running scan: an iterator of record batches in (device, month, time)
/// order, each partition sorted by time without duplicate timestamps.
#[derive(Debug)]
pub struct Scan {
    schema: SchemaRef,
    out: Vec<OutCol>,
    /// Projected channels: name and type.
    channels: Vec<(String, ChannelType)>,
    start: i64,
    end: i64,
    skip_damaged: bool,
    parts: VecDeque<PartSnap>,
    current: Option<Current>,
    pending: VecDeque<RecordBatch>,
    metrics: ScanMetrics,
    damaged: Vec<Error>,
    cache: Arc<BlockCache>,
    /// The `device` column of the latest batch, sliced for the next ones of
    /// the same device instead of built again for every batch.
    device_column: Option<StringArray>,
}

pub(crate) fn snapshot(
    def: &TableDef,
    req: &ScanRequest,
    state: &State,
    cutoff: Option<i64>,
    cache: Arc<BlockCache>,
) -> Result<Scan> {
    let start = req.start.unwrap_or(i64::MIN);
    let end = req.end.unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let mut channels = Vec::new();
    let mut fields = Vec::new();
    let names: Vec<String> = match &req.columns {
        Some(c) => c.clone(),
        None => [TIME_COLUMN, DEVICE_COLUMN]
            .into_iter()
            .map(String::from)
            .chain(def.channels.iter().map(|c| c.0.clone()))
            .collect(),
    };
    for name in names {
        match name.as_str() {
            TIME_COLUMN => {
                out.push(OutCol::Time);
                fields.push(time_field());
            }
            DEVICE_COLUMN => {
                out.push(OutCol::Device);
                fields.push(device_field());
            }
            _ => {
                let idx = def
                    .channel_index(&name)
                    .ok_or_else(|| Error::UnknownColumn {
                        table: def.name.clone(),
                        column: name.clone(),
                    })?;
                let ty = def.channels[idx].1;
                out.push(OutCol::Channel(channels.len()));
                fields.push(Field::new(&name, ty.arrow_type(), true));
                channels.push((name, ty));
            }
        }
    }
    let channel_idx: Vec<usize> = channels
        .iter()
        .filter_map(|(n, _)| def.channel_index(n))
        .collect();
    let device_ok = |d: &str| {
        req.devices
            .as_ref()
            .is_none_or(|ds| ds.iter().any(|x| x == d))
    };
    // Retention drops whole months: an expired month is hidden even before
    // maintenance deletes it, a retained one is read whole.
    let month_ok = |m: &Month| {
        start < end
            && m.end_ns() > start
            && m.start_ns() < end
            && cutoff.is_none_or(|c| m.end_ns() > c)
    };

    let mut parts: std::collections::BTreeMap<(String, Month), PartSnap> = Default::default();
    for ((table, device, month), segs) in &state.parts {
        if table == &def.name && device_ok(device) && month_ok(month) {
            parts.insert(
                (device.clone(), *month),
                PartSnap {
                    device: device.clone(),
                    segments: segs.clone(),
                    mem: Vec::new(),
                },
            );
        }
    }
    let mut buffered_rows = 0;
    let mems = state
        .frozen
        .iter()
        .map(|f| &f.mem)
        .chain(std::iter::once(&state.active));
    for mem in mems {
        for (device, month, part) in mem.partitions(&def.name, &device_ok, start, end) {
            if !month_ok(&month) {
                continue;
            }
            if let Some(rows) = part.extract(start, end, &channel_idx) {
                buffered_rows += rows.times.len();
                parts
                    .entry((device.to_owned(), month))
                    .or_insert_with(|| PartSnap {
                        device: device.to_owned(),
                        segments: Vec::new(),
                        mem: Vec::new(),
                    })
                    .mem
                    .push(rows);
            }
        }
    }
    Ok(Scan {
        schema: Arc::new(Schema::new(fields)),
        out,
        channels,
        start,
        end,
        skip_damaged: req.skip_damaged,
        metrics: ScanMetrics {
            partitions: parts.len(),
            buffered_rows,
            ..ScanMetrics::default()
        },
        parts: parts.into_values().collect(),
        current: None,
        pending: VecDeque::new(),
        device_column: None,
        damaged: Vec::new(),
        cache,
    })
}

impl Scan {
    /// The schema of every batch this scan yields.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn metrics(&self) -> &ScanMetrics {
        &self.metrics
    }

    /// Damaged blocks skipped so far (only with `skip_damaged`).
    pub fn damaged(&self) -> &[Error] {
        &self.damaged
    }

    /// Groups a partition's blocks into clusters of overlapping time ranges,
    /// after pruning them by their statistics, and places the buffered rows:
    /// rows inside a cluster's range join it, rows between clusters form
    /// clusters of their own. So a cluster is never larger than its
    /// overlapping blocks plus the buffered rows in their range, whatever
    /// the buffered rows span.
    fn plan(&mut self, part: PartSnap) -> Result<Current> {
        let mut blocks: Vec<(i64, i64, Unit)> = Vec::new();
        for (si, seg) in part.segments.iter().enumerate() {
            for (bi, b) in seg.blocks().iter().enumerate() {
                self.metrics.blocks_total += 1;
                if b.max_time < self.start || b.min_time >= self.end {
                    self.metrics.blocks_pruned += 1;
                } else {
                    blocks.push((b.min_time, b.max_time, Unit::Block { seg: si, block: bi }));
                }
            }
        }
        blocks.sort_by_key(|u| (u.0, u.1));
        let mut block_clusters: Vec<(i64, i64, Vec<Unit>)> = Vec::new();
        for (min, max, unit) in blocks {
            match block_clusters.last_mut() {
                Some(c) if min <= c.1 => {
                    c.1 = c.1.max(max);
                    c.2.push(unit);
                }
                _ => block_clusters.push((min, max, vec![unit])),
            }
        }
        let mem = self.merge_buffered(&part)?;
        let times: &[i64] = mem.as_ref().map_or(&[], |m| &m.times);
        let mut clusters: VecDeque<Vec<Unit>> = VecDeque::new();
        let gap = |clusters: &mut VecDeque<Vec<Unit>>, lo: usize, hi: usize| {
            let mut at = lo;
            while at < hi {
                let end = hi.min(at + MAX_BATCH_ROWS);
                clusters.push_back(vec![Unit::Mem { lo: at, hi: end }]);
                at = end;
            }
        };
        let mut next = 0;
        for (min, max, mut units) in block_clusters {
            let lo = next + times[next..].partition_point(|t| *t < min);
            let hi = lo + times[lo..].partition_point(|t| *t <= max);
            gap(&mut clusters, next, lo);
            if hi > lo {
                units.push(Unit::Mem { lo, hi });
            }
            clusters.push_back(units);
            next = hi;
        }
        gap(&mut clusters, next, times.len());
        Ok(Current {
            part,
            mem,
            clusters,
        })
    }

    /// All buffered rows of a partition (from the active and frozen
    /// buffers) as one sorted run without duplicate timestamps.
    fn merge_buffered(&self, part: &PartSnap) -> Result<Option<Rows>> {
        if part.mem.is_empty() {
            return Ok(None);
        }
        let chunks = part
            .mem
            .iter()
            .map(|m| Rows {
                n: m.times.len(),
                times: m.times.clone().into(),
                seqs: m.seqs.clone(),
                cols: m.cols.clone(),
            })
            .collect();
        let rows = self.concat(chunks)?;
        Ok(Some(match dedup_order(&rows.times, &rows.seqs) {
            None => rows,
            Some(order) => Rows {
                n: order.len(),
                times: take_values(&rows.times, &order).into(),
                seqs: take_values(&rows.seqs, &order),
                cols: rows
                    .cols
                    .iter()
                    .map(|c| c.as_ref().map(|a| take(a, &order)).transpose())
                    .collect::<Result<_>>()?,
            },
        }))
    }

    fn decode_unit(
        &mut self,
        part: &PartSnap,
        mem: Option<&Rows>,
        unit: Unit,
        merging: bool,
    ) -> Result<Option<Rows>> {
        match unit {
            Unit::Mem { lo, hi } => {
                let Some(m) = mem else {
                    return Err(Error::Internal(
                        "a scan unit names missing buffered rows".into(),
                    ));
                };
                Ok(Some(Rows {
                    n: hi - lo,
                    times: m.times[lo..hi].to_vec().into(),
                    seqs: m.seqs[lo..hi].to_vec(),
                    cols: m
                        .cols
                        .iter()
                        .map(|c| c.as_ref().map(|a| a.slice(lo, hi - lo)))
                        .collect(),
                }))
            }
            Unit::Block { seg, block } => {
                let seg = &part.segments[seg];
                self.metrics.blocks_read += 1;
                let wants_time = self.out.iter().any(|c| matches!(c, OutCol::Time));
                let decoded = (|| -> Result<Rows> {
                    let meta = &seg.blocks()[block];
                    let whole = meta.min_time >= self.start && meta.max_time < self.end;
                    let mut times = if merging || !whole || wants_time {
                        seg.read_times_cached(&self.cache, block)?
                    } else {
                        ScalarBuffer::from(Vec::new())
                    };
                    let (lo, hi) = if whole {
                        (0, meta.rows as usize)
                    } else {
                        (
                            times.partition_point(|t| *t < self.start),
                            times.partition_point(|t| *t < self.end),
                        )
                    };
                    let mut cols = Vec::with_capacity(self.channels.len());
                    for (name, _) in &self.channels {
                        let col = match seg.meta().columns.iter().position(|c| &c.0 == name) {
                            Some(i) => Some(
                                seg.read_column_cached(&self.cache, block, i)?
                                    .slice(lo, hi - lo),
                            ),
                            None => None,
                        };
                        cols.push(col);
                    }
                    let n = hi - lo;
                    if !whole {
                        times = times.slice(lo, hi - lo);
                    }
                    Ok(Rows {
                        n,
                        times,
                        seqs: if merging {
                            vec![seg.meta().max_seq; n]
                        } else {
                            Vec::new()
                        },
                        cols,
                    })
                })();
                match decoded {
                    Ok(rows) => Ok(Some(rows)),
                    Err(e @ Error::Corrupt { .. }) if self.skip_damaged => {
                        tracing::error!("scan skipped a damaged block: {e}");
                        self.damaged.push(e);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Decodes one cluster into batches on `pending`.
    fn run_cluster(&mut self, part: &PartSnap, mem: Option<&Rows>, cluster: &[Unit]) -> Result<()> {
        let mut chunks = Vec::with_capacity(cluster.len());
        let merging = cluster.len() > 1;
        for unit in cluster {
            if let Some(rows) = self.decode_unit(part, mem, *unit, merging)? {
                chunks.push(rows);
            }
        }
        // Each block and the merged buffered rows are sorted and unique on
        // their own; only several of them together need a merge.
        let needs_merge = chunks.len() > 1;
        let rows = if chunks.len() == 1 {
            chunks.pop().unwrap_or(Rows {
                n: 0,
                times: ScalarBuffer::from(Vec::new()),
                seqs: Vec::new(),
                cols: Vec::new(),
            })
        } else {
            self.concat(chunks)?
        };
        let rows = if needs_merge {
            match dedup_order(&rows.times, &rows.seqs) {
                None => rows,
                Some(order) => Rows {
                    n: order.len(),
                    times: take_values(&rows.times, &order).into(),
                    seqs: Vec::new(),
                    cols: rows
                        .cols
                        .iter()
                        .map(|c| c.as_ref().map(|a| take(a, &order)).transpose())
                        .collect::<Result<_>>()?,
                },
            }
        } else {
            rows
        };
        if rows.n == 0 {
            return Ok(());
        }
        let batch = self.make_batch(&part.device, rows)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = MAX_BATCH_ROWS.min(batch.num_rows() - offset);
            self.pending.push_back(batch.slice(offset, len));
            offset += len;
        }
        Ok(())
    }

    fn concat(&self, chunks: Vec<Rows>) -> Result<Rows> {
        let mut times = Vec::new();
        let mut seqs = Vec::new();
        let mut cols = Vec::with_capacity(self.channels.len());
        for (ci, (_, ty)) in self.channels.iter().enumerate() {
            if chunks.iter().all(|c| c.cols[ci].is_none()) {
                cols.push(None);
                continue;
            }
            let arrays: Vec<ArrayRef> = chunks
                .iter()
                .map(|c| {
                    c.cols[ci]
                        .clone()
                        .unwrap_or_else(|| new_null_array(&ty.arrow_type(), c.n))
                })
                .collect();
            let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
            cols.push(Some(arrow_select::concat::concat(&refs).map_err(|e| {
                Error::Internal(format!("concatenating scan columns failed: {e}"))
            })?));
        }
        let mut n = 0;
        for c in chunks {
            n += c.n;
            times.extend_from_slice(&c.times);
            seqs.extend(c.seqs);
        }
        Ok(Rows {
            n,
            times: times.into(),
            seqs,
            cols,
        })
    }

    fn make_batch(&mut self, device: &str, rows: Rows) -> Result<RecordBatch> {
        let n = rows.n;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.out.len());
        let time: ArrayRef =
            Arc::new(TimestampNanosecondArray::new(rows.times, None).with_timezone("UTC"));
        for col in &self.out {
            columns.push(match col {
                OutCol::Time => time.clone(),
                OutCol::Device => Arc::new(repeated(&mut self.device_column, device, n)?),
                OutCol::Channel(i) => rows.cols[*i]
                    .clone()
                    .unwrap_or_else(|| new_null_array(&self.channels[*i].1.arrow_type(), n)),
            });
        }
        self.metrics.rows_out += n;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .map_err(|e| Error::Internal(format!("building a scan batch failed: {e}")))
    }
}

/// `device` repeated `n` times, sliced from `last` (the previous batch's
/// column; a partition's first batch is its largest) when that has the
/// same device and enough rows, else built from buffers directly: a
/// month's pull would otherwise copy the id row by row, millions of times.
fn repeated(last: &mut Option<StringArray>, device: &str, n: usize) -> Result<StringArray> {
    if let Some(c) = last
        && c.len() >= n
        && !c.is_empty()
        && c.value(0) == device
    {
        return Ok(c.slice(0, n));
    }
    let column = (|| {
        let len = i32::try_from(device.len()).ok()?;
        let count = i32::try_from(n).ok()?;
        i32::try_from(n.checked_mul(device.len())?).ok()?;
        let offsets = ScalarBuffer::from_iter((0..=count).map(|i| i * len));
        let values = arrow_buffer::Buffer::from(device.as_bytes().repeat(n));
        StringArray::try_new(OffsetBuffer::new(offsets), values, None).ok()
    })()
    .ok_or_else(|| {
        Error::Internal(format!(
            "{n} rows of device `{device}` do not fit one string column"
        ))
    })?;
    *last = Some(column.clone());
    Ok(column.slice(0, n))
}

impl Iterator for Scan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            let mut current = match self.current.take() {
                Some(c) => c,
                None => {
                    let part = self.parts.pop_front()?;
                    match self.plan(part) {
                        Ok(c) => c,
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            if let Some(cluster) = current.clusters.pop_front() {
                let result = self.run_cluster(&current.part, current.mem.as_ref(), &cluster);
                self.current = Some(current);
                if let Err(e) = result {
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_columns_are_reused_for_the_same_device_and_rebuilt_for_another() {
        let mut last = None;
        let a = repeated(&mut last, "viconsl", 3).unwrap();
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![Some("viconsl"); 3]);
        let built = last.as_ref().unwrap().values().as_ptr();
        let again = repeated(&mut last, "viconsl", 70_000).unwrap();
        assert_eq!(again.len(), 70_000);
        assert_eq!(again.value(69_999), "viconsl");
        let bigger = last.as_ref().unwrap().values().as_ptr();
        assert_ne!(bigger, built, "more rows than kept: built anew");
        let small = repeated(&mut last, "viconsl", 10).unwrap();
        assert_eq!(small.values().as_ptr(), bigger, "sliced, not built");
        let other = repeated(&mut last, "m-2", 2).unwrap();
        assert_eq!(other.iter().collect::<Vec<_>>(), [Some("m-2"), Some("m-2")]);
        assert_eq!(repeated(&mut last, "", 4).unwrap().value(3), "");
        assert_eq!(repeated(&mut last, "x", 0).unwrap().len(), 0);
    }
}
