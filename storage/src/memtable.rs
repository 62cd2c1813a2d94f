//! The in-memory buffer: durable rows not yet sealed into segment files,
//! readable by scans at once.
//!
//! Rows are kept per (table, device, month) in arrival order, with the WAL
//! sequence number of the batch they came in. Sorting and last-write-wins
//! deduplication happen when the buffer is read or sealed, so inserting is a
//! cheap append on the commit path.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, BooleanArray};
use rustc_hash::FxHashMap;

use crate::model::{ChannelType, Month, Value, same_name, widen};

/// A reading resolved against the catalog: channel names replaced by their
/// index in the table's channel list.
#[derive(Debug)]
pub(crate) struct PreparedRow {
    pub(crate) table: Arc<str>,
    pub(crate) device: Arc<str>,
    pub(crate) time: i64,
    pub(crate) values: Vec<(usize, Value)>,
}

/// What a row costs in the buffer besides its values, for its memory bound.
pub(crate) const ROW_BYTES: usize = 16;

/// What a value costs in the buffer.
pub(crate) fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Str(s) => 9 + s.len(),
        _ => 9,
    }
}

/// The rows of one admitted batch and what they cost in the buffer, counted
/// once at admission rather than again by every thread that moves them.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub(crate) rows: Vec<PreparedRow>,
    pub(crate) bytes: usize,
}

#[derive(Debug)]
enum ColBuf {
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl ColBuf {
    fn new(ty: ChannelType, nulls: usize) -> Self {
        let mut col = match ty {
            ChannelType::F64 => ColBuf::F64(Float64Builder::new()),
            ChannelType::I64 => ColBuf::I64(Int64Builder::new()),
            ChannelType::Bool => ColBuf::Bool(BooleanBuilder::new()),
            ChannelType::Str => ColBuf::Str(StringBuilder::new()),
        };
        col.push_nulls(nulls);
        col
    }

    fn len(&self) -> usize {
        match self {
            ColBuf::F64(b) => b.len(),
            ColBuf::I64(b) => b.len(),
            ColBuf::Bool(b) => b.len(),
            ColBuf::Str(b) => b.len(),
        }
    }

    fn push_nulls(&mut self, n: usize) {
        match self {
            ColBuf::F64(b) => b.append_nulls(n),
            ColBuf::I64(b) => b.append_nulls(n),
            ColBuf::Bool(b) => b.append_nulls(n),
            ColBuf::Str(b) => (0..n).for_each(|_| b.append_null()),
        }
    }

    /// Appends a value; the catalog guarantees the type matches, a mismatch
    /// is stored as null rather than corrupting the column.
    fn push(&mut self, value: Value) {
        match (self, value) {
            (ColBuf::F64(b), Value::F64(v)) => b.append_value(v),
            (ColBuf::I64(b), Value::I64(v)) => b.append_value(v),
            (ColBuf::Bool(b), Value::Bool(v)) => b.append_value(v),
            (ColBuf::Str(b), Value::Str(v)) => b.append_value(v),
            (col, _) => col.push_nulls(1),
        }
    }

    fn snapshot(&self) -> ArrayRef {
        match self {
            ColBuf::F64(b) => Arc::new(b.finish_cloned()),
            ColBuf::I64(b) => Arc::new(b.finish_cloned()),
            ColBuf::Bool(b) => Arc::new(b.finish_cloned()),
            ColBuf::Str(b) => Arc::new(b.finish_cloned()),
        }
    }
}

/// One partition's buffered rows.
#[derive(Debug, Default)]
pub(crate) struct PartBuf {
    times: Vec<i64>,
    /// Earliest and latest of `times`, kept as rows arrive: partition
    /// listings (every query plan) ask for them and the buffer can hold
    /// millions of rows.
    time_range: Option<(i64, i64)>,
    seqs: Vec<u64>,
    /// Indexed like the table's channels; `None` while the channel has no
    /// value in this partition yet.
    cols: Vec<Option<ColBuf>>,
}

/// Rows of one partition copied out of the buffer, in arrival order.
#[derive(Debug, Clone)]
pub(crate) struct MemRows {
    pub(crate) times: Vec<i64>,
    pub(crate) seqs: Vec<u64>,
    /// Per requested channel; `None` where every row is null.
    pub(crate) cols: Vec<Option<ArrayRef>>,
}

impl PartBuf {
    pub(crate) fn rows(&self) -> usize {
        self.times.len()
    }

    /// Earliest and latest buffered time; `None` when empty.
    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        self.time_range
    }

    /// Appends a row; returns how many channels it left null, whose slots
    /// cost memory too.
    fn push(&mut self, time: i64, seq: u64, values: Vec<(usize, Value)>) -> usize {
        let row = self.times.len();
        self.times.push(time);
        self.time_range = Some(widen(self.time_range, time, time));
        self.seqs.push(seq);
        for (idx, value) in values {
            if self.cols.len() <= idx {
                self.cols.resize_with(idx + 1, || None);
            }
            let col = self.cols[idx].get_or_insert_with(|| ColBuf::new(value.channel_type(), row));
            col.push(value);
        }
        let mut padded = 0;
        for col in self.cols.iter_mut().flatten() {
            if col.len() == row {
                col.push_nulls(1);
                padded += 1;
            }
        }
        padded
    }

    /// Copies the rows with `start <= time < end`, for the given channels.
    pub(crate) fn extract(&self, start: i64, end: i64, channels: &[usize]) -> Option<MemRows> {
        let (min, max) = self.time_range?;
        if max < start || min >= end {
            return None;
        }
        let whole = min >= start && max < end;
        let mask = (!whole).then(|| {
            BooleanArray::from_iter(self.times.iter().map(|t| Some(*t >= start && *t < end)))
        });
        let pick = |a: ArrayRef| -> Option<ArrayRef> {
            match &mask {
                None => Some(a),
                Some(m) => arrow_select::filter::filter(&a, m).ok(),
            }
        };
        let keep = |v: &[i64]| -> Vec<i64> {
            v.iter()
                .copied()
                .filter(|t| *t >= start && *t < end)
                .collect()
        };
        let times = if whole {
            self.times.clone()
        } else {
            keep(&self.times)
        };
        let seqs = if whole {
            self.seqs.clone()
        } else {
            self.times
                .iter()
                .zip(&self.seqs)
                .filter(|(t, _)| **t >= start && **t < end)
                .map(|(_, s)| *s)
                .collect()
        };
        let cols = channels
            .iter()
            .map(|&c| {
                let col = self.cols.get(c)?.as_ref()?;
                pick(col.snapshot())
            })
            .collect();
        Some(MemRows { times, seqs, cols })
    }

    /// All rows and every channel the table had when the buffer was frozen.
    pub(crate) fn take_all(&self, channels: usize) -> MemRows {
        MemRows {
            times: self.times.clone(),
            seqs: self.seqs.clone(),
            cols: (0..channels)
                .map(|c| {
                    self.cols
                        .get(c)
                        .and_then(|c| c.as_ref())
                        .map(ColBuf::snapshot)
                })
                .collect(),
        }
    }
}

/// A buffer of partitions. One is active (receiving commits); frozen ones are
/// being sealed and stay readable until their segments are in place.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    /// Table, then device, then month. FxHash: looked up for every row.
    parts: FxHashMap<String, FxHashMap<String, BTreeMap<Month, PartBuf>>>,
    bytes: usize,
    rows: usize,
}

impl Memtable {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Inserts the rows of one committed batch. Consecutive rows of one
    /// (table, device, month), the usual shape of a meter's batch, share one
    /// partition lookup: this runs on the apply path every scan waits behind.
    pub(crate) fn insert_batch(&mut self, seq: u64, batch: Prepared) {
        self.bytes += batch.bytes;
        let mut rows = batch.rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let month = Month::of(first.time);
            let (start, end) = (month.start_ns(), month.end_ns());
            let devices = match self.parts.get_mut(&*first.table) {
                Some(d) => d,
                None => self.parts.entry(first.table.to_string()).or_default(),
            };
            let months = match devices.get_mut(&*first.device) {
                Some(m) => m,
                None => devices.entry(first.device.to_string()).or_default(),
            };
            let part = months.entry(month).or_default();
            let (table, device) = (first.table.clone(), first.device.clone());
            let mut next = Some(first);
            while let Some(row) = next {
                let padded = part.push(row.time, seq, row.values);
                self.bytes += 9 * padded;
                self.rows += 1;
                next = rows.next_if(|r| {
                    same_name(&r.table, &table)
                        && same_name(&r.device, &device)
                        && (start..end).contains(&r.time)
                });
            }
        }
    }

    /// Partitions of `table` whose device passes `device_ok` and whose month
    /// overlaps `[start, end)`.
    pub(crate) fn partitions<'a>(
        &'a self,
        table: &str,
        device_ok: &'a dyn Fn(&str) -> bool,
        start: i64,
        end: i64,
    ) -> impl Iterator<Item = (&'a str, Month, &'a PartBuf)> + 'a {
        self.parts
            .get(table)
            .into_iter()
            .flat_map(|devices| devices.iter())
            .filter(move |(device, _)| device_ok(device))
            .flat_map(move |(device, months)| {
                months
                    .iter()
                    .filter(move |(m, _)| m.end_ns() > start && m.start_ns() < end)
                    .map(move |(m, p)| (device.as_str(), *m, p))
            })
    }

    /// Every partition, for sealing.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&str, &str, Month, &PartBuf)> {
        self.parts.iter().flat_map(|(table, devices)| {
            devices.iter().flat_map(move |(device, months)| {
                months
                    .iter()
                    .map(move |(m, p)| (table.as_str(), device.as_str(), *m, p))
            })
        })
    }
}
