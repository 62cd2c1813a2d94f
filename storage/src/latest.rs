//! The latest reading of every (table, device), kept current by every
//! applied row, so that "the latest reading of each device" reads a few
//! rows from memory instead of scanning.
//!
//! Rows reach the cache as they are applied to the buffer (live appends
//! and WAL replay). A device whose newest data is only in segment files
//! (after a restart whose WAL was already sealed) is looked up once from
//! the newest block and then cached; see [`Store::latest`].
//!
//! [`Store::latest`]: crate::Store::latest

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use rustc_hash::FxHashMap;

use crate::memtable::PreparedRow;
use crate::model::{Value, same_name};

/// One device's newest row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Latest {
    pub(crate) time: i64,
    /// WAL sequence number of the write; 0 when read back from a segment.
    /// A later write of the same time wins, as in scans.
    pub(crate) seq: u64,
    /// Channel position in the table definition, and value.
    pub(crate) values: Vec<(usize, Value)>,
}

/// The newest reading of a device, as [`Store::latest`] returns it.
///
/// [`Store::latest`]: crate::Store::latest
#[derive(Debug, Clone, PartialEq)]
pub struct LatestReading {
    pub device: String,
    /// Nanoseconds since the epoch, UTC.
    pub time: i64,
    /// One entry per channel of the table, in the table's order; `None`
    /// for channels the reading did not carry.
    pub values: Vec<Option<Value>>,
}

#[derive(Debug, Default)]
pub(crate) struct LatestCache {
    /// table → device → newest row. Nested so the hot path looks up by
    /// `&str` without allocating.
    /// FxHash: the keys are our own validated names, and this runs on the
    /// apply path for every batch.
    tables: FxHashMap<String, FxHashMap<String, Latest>>,
}

impl LatestCache {
    /// Takes note of the rows of one applied batch. Newest first, so a
    /// batch of many readings of one device copies the values of one row,
    /// not of every row, on the apply path that every scan waits behind.
    pub(crate) fn observe_batch(&mut self, seq: u64, rows: &[PreparedRow]) {
        // Within a run of one device's rows only the newest can win: one
        // lookup per run (a later row wins a tie, as in scans).
        let mut rows = rows.iter().rev().peekable();
        while let Some(first) = rows.next() {
            let mut newest = first;
            while let Some(row) = rows.next_if(|r| {
                same_name(&r.table, &first.table) && same_name(&r.device, &first.device)
            }) {
                if row.time > newest.time {
                    newest = row;
                }
            }
            self.observe(seq, newest);
        }
    }

    fn observe(&mut self, seq: u64, row: &PreparedRow) {
        if !self.tables.contains_key(&*row.table) {
            self.tables
                .insert(row.table.to_string(), FxHashMap::default());
        }
        let Some(devices) = self.tables.get_mut(&*row.table) else {
            return;
        };
        match devices.get_mut(&*row.device) {
            // Equal (time, seq): a row earlier in the same batch, which the
            // later one (seen first) replaces.
            Some(l) if (row.time, seq) <= (l.time, l.seq) => {}
            Some(l) => {
                l.time = row.time;
                l.seq = seq;
                l.values.clone_from(&row.values);
            }
            None => {
                devices.insert(
                    row.device.to_string(),
                    Latest {
                        time: row.time,
                        seq,
                        values: row.values.clone(),
                    },
                );
            }
        }
    }

    pub(crate) fn get(&self, table: &str, device: &str) -> Option<&Latest> {
        self.tables.get(table)?.get(device)
    }

    pub(crate) fn devices(&self, table: &str) -> impl Iterator<Item = &String> {
        self.tables.get(table).into_iter().flat_map(|d| d.keys())
    }

    /// Stores a row read back from a segment, unless something newer
    /// arrived meanwhile.
    pub(crate) fn offer(&mut self, table: &str, device: &str, latest: Latest) {
        let devices = self.tables.entry(table.to_owned()).or_default();
        match devices.get(device) {
            Some(l) if (l.time, l.seq) >= (latest.time, latest.seq) => {}
            _ => {
                devices.insert(device.to_owned(), latest);
            }
        }
    }
}

/// The last row of a scan batch (`time`, `device`, then every channel) as
/// cached values.
pub(crate) fn last_row(batch: &RecordBatch) -> Option<Latest> {
    let row = batch.num_rows().checked_sub(1)?;
    let time = batch
        .column(0)
        .as_primitive_opt::<arrow_array::types::TimestampNanosecondType>()?
        .value(row);
    let mut values = Vec::new();
    for (i, col) in batch.columns().iter().enumerate().skip(2) {
        if col.is_null(row) {
            continue;
        }
        let value = match col.data_type() {
            DataType::Float64 => Value::F64(col.as_primitive::<Float64Type>().value(row)),
            DataType::Int64 => Value::I64(col.as_primitive::<Int64Type>().value(row)),
            DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
            DataType::Utf8 => Value::Str(col.as_string::<i32>().value(row).to_owned()),
            _ => continue,
        };
        values.push((i - 2, value));
    }
    Some(Latest {
        time,
        seq: 0,
        values,
    })
}
