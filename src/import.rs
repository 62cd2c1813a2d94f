//! Bulk import: CSV and Parquet files to [`Reading`]s, in bounded chunks.
//!
//! Owns `wattson import`'s file formats, timestamp and value parsing, and the
//! bad-row policy. The store is not touched here: readings are handed to a
//! caller's sink in chunks of at most [`ImportOptions::chunk_rows`], so memory
//! stays bounded whatever the file size.
//!
//! # Formats (chosen by the file extension)
//! - `.csv`: a header line, then one reading per line. One column is the time
//!   (`time`, `dt` or `ts`); an optional `device` column names each row's
//!   meter; every other column is a channel. The seed system's export
//!   (`dt,pa_v,pb_v,...`) has no device column, so `--device` says which meter
//!   the file belongs to. A file with a `device` column (such as the output of
//!   `wattson export`) must not be given `--device`: its rows name their
//!   meters, and a filter that silently drops rows would be a surprise.
//! - `.parquet`: the same columns. The time column may be a timestamp of any
//!   unit and time zone, int64 epoch milliseconds, or a string; channel
//!   columns may be float, integer, bool or string. pandas' unnamed index
//!   columns (`__index_level_0__`) are ignored.
//!
//! # Timestamps
//! RFC 3339 (`2022-07-19T15:24:21Z`, `2022-07-19T17:24:21.250+02:00`, `T` or
//! a space between date and time), the seed's `2022-07-19 15:24:21` without a
//! zone, which is taken as **UTC**, both with optional fractional seconds, or
//! an integer, which is epoch **milliseconds** (as in MQTT payloads).
//!
//! # Values
//! An empty or blank cell (or a Parquet null) means the channel is absent
//! from that reading. Numbers and bools may be padded with spaces; strings
//! are kept exactly. Text cells of a channel whose type is known (from the table, via
//! [`ImportOptions::known_types`], or from the first value seen in this file)
//! are parsed as that type; otherwise `true`/`false` is a bool, a number is an
//! f64 (integers too: energy data is mostly measurements, and a counter that
//! should be i64 gets that type from the table), anything else a string.
//!
//! # Bad rows
//! A row that cannot be parsed (bad time, wrong number of fields, a value that
//! does not fit its channel's type, an invalid device id, no values at all) is
//! reported with its line number: for CSV the physical line, the header being
//! line 1; for Parquet the 1-based row number. With [`OnError::Skip`] it is
//! counted and skipped; with [`OnError::Reject`] the import stops with an
//! error before the chunk holding that row is handed on. Chunks handed on
//! before it stay imported: the import is streaming, not transactional.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use wattson_storage::model::{
    ChannelType, MAX_STRING_BYTES, Reading, Value, validate_channel_name, validate_device_name,
    validate_table_name,
};

mod csv_file;
mod parquet_file;
#[cfg(test)]
mod tests;

/// Chunk size `wattson import` uses unless told otherwise.
pub const DEFAULT_CHUNK_ROWS: usize = 10_000;
/// How many bad rows an [`ImportReport`] describes; the rest are only counted.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// What to do with a row that cannot be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Skip the row, count it, and go on.
    Skip,
    /// Stop the import with an error naming the row.
    Reject,
}

/// What to import and how.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// The table every reading goes to.
    pub table: &'a str,
    /// The meter of a file without a `device` column.
    pub device: Option<&'a str>,
    pub on_error: OnError,
    /// Most readings handed to the sink at once (at least 1).
    pub chunk_rows: usize,
    /// Channel types the table already has, so that text values are parsed
    /// as the type the store will accept (`12` as an i64 for an i64 channel).
    pub known_types: &'a HashMap<String, ChannelType>,
}

/// The outcome of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Readings handed to the sink.
    pub rows: u64,
    /// Bad rows skipped (always 0 with [`OnError::Reject`]).
    pub skipped: u64,
    /// The first [`MAX_REPORTED_ERRORS`] bad rows: line number and reason.
    pub first_errors: Vec<(u64, String)>,
}

/// Imports `path`, handing readings to `sink` in chunks of at most
/// `opts.chunk_rows`, in file order. `progress` advances with the bytes read;
/// if it has no length yet, it is given the file's size.
///
/// Fails on a file that cannot be read or whose header or schema does not fit
/// (unknown extension, no time column, invalid channel names, a `--device`
/// that is missing or not allowed), on an error from `sink`, and with
/// [`OnError::Reject`] on the first bad row.
pub fn import_file(
    path: &Path,
    opts: &ImportOptions<'_>,
    progress: &ProgressBar,
    sink: &mut dyn FnMut(Vec<Reading>) -> Result<()>,
) -> Result<ImportReport> {
    validate_table_name(opts.table)?;
    if let Some(device) = opts.device {
        validate_device_name(device)?;
    }
    if opts.chunk_rows == 0 {
        bail!("chunk_rows must be at least 1");
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("csv") => Format::Csv,
        Some("parquet") => Format::Parquet,
        _ => bail!(
            "cannot import `{}`: unknown file type; accepted extensions are .csv and .parquet",
            path.display()
        ),
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    if progress.length().is_none()
        && let Ok(meta) = file.metadata()
    {
        progress.set_length(meta.len());
    }
    let mut out = Collector::new(opts, sink);
    let result = match format {
        Format::Csv => csv_file::import(file, opts, progress, &mut out),
        Format::Parquet => parquet_file::import(file, opts, progress, &mut out),
    };
    result
        .and_then(|()| out.finish())
        .with_context(|| format!("import of `{}` failed", path.display()))
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    Parquet,
}

/// How each row finds its device.
#[derive(Debug, Clone)]
enum DeviceSource {
    /// Every row is this device (`--device`).
    Fixed(String),
    /// The column at this index names each row's device.
    Column(usize),
}

/// Decides where devices come from, given the index of a `device` column.
fn device_source(device_column: Option<usize>, opts: &ImportOptions<'_>) -> Result<DeviceSource> {
    match (device_column, opts.device) {
        (Some(i), None) => Ok(DeviceSource::Column(i)),
        (None, Some(d)) => Ok(DeviceSource::Fixed(d.to_owned())),
        (Some(_), Some(d)) => bail!(
            "--device {d} cannot be used with a file that has a `device` column: each row names its own meter"
        ),
        (None, None) => bail!(
            "the file has no `device` column, so --device is required to say which meter its readings belong to"
        ),
    }
}

/// Checks a column header and tells what the column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnRole {
    Time,
    Device,
    Channel,
}

fn column_role(name: &str) -> ColumnRole {
    match name {
        "time" | "dt" | "ts" => ColumnRole::Time,
        "device" => ColumnRole::Device,
        _ => ColumnRole::Channel,
    }
}

/// A file's columns, by position.
#[derive(Debug)]
struct Header {
    time: usize,
    device: Option<usize>,
    /// Position and name of each channel column, in file order.
    channels: Vec<(usize, Arc<str>)>,
}

/// Splits a header into the time column, the optional device column and the
/// channels, validating names and rejecting duplicates.
fn split_header<'h>(names: impl Iterator<Item = &'h str>) -> Result<Header> {
    let mut time = None;
    let mut device = None;
    let mut channels: Vec<(usize, Arc<str>)> = Vec::new();
    for (i, name) in names.enumerate() {
        match column_role(name) {
            ColumnRole::Time => {
                if let Some((_, first)) = time {
                    bail!("two time columns, `{first}` and `{name}`: keep one");
                }
                time = Some((i, name));
            }
            ColumnRole::Device => {
                if device.is_some() {
                    bail!("the `device` column appears twice");
                }
                device = Some(i);
            }
            ColumnRole::Channel => {
                validate_channel_name(name)?;
                if channels.iter().any(|(_, n)| **n == *name) {
                    bail!("channel `{name}` appears twice");
                }
                channels.push((i, Arc::from(name)));
            }
        }
    }
    let Some((time, _)) = time else {
        bail!("no time column: the first line must name one column `time`, `dt` or `ts`");
    };
    Ok(Header {
        time,
        device,
        channels,
    })
}

/// Parses a timestamp (see the module doc) to nanoseconds since the epoch.
pub fn parse_time(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    if !s.is_empty()
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
    {
        let ms: i64 = s
            .parse()
            .map_err(|_| format!("epoch milliseconds `{s}` out of range"))?;
        return ms
            .checked_mul(1_000_000)
            .ok_or_else(|| format!("epoch milliseconds `{s}` out of range"));
    }
    let utc = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        t.to_utc()
    } else if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
    {
        t.and_utc()
    } else {
        return Err(format!(
            "time `{s}` is not RFC 3339 (2022-07-19T15:24:21Z), `2022-07-19 15:24:21` (UTC) or epoch milliseconds"
        ));
    };
    utc.timestamp_nanos_opt()
        .ok_or_else(|| format!("time `{s}` is outside the years 1677 to 2262"))
}

/// Parses a non-empty text cell as `ty`.
fn parse_as(raw: &str, ty: ChannelType) -> std::result::Result<Value, String> {
    // Strings are kept as they are; numbers and bools may be padded.
    let trimmed = raw.trim();
    match ty {
        ChannelType::F64 => trimmed
            .parse()
            .map(Value::F64)
            .map_err(|_| format!("`{trimmed}` is not a number")),
        ChannelType::I64 => trimmed
            .parse()
            .map(Value::I64)
            .map_err(|_| format!("`{trimmed}` is not an integer")),
        ChannelType::Bool => parse_bool(trimmed)
            .map(Value::Bool)
            .ok_or_else(|| format!("`{trimmed}` is not true or false")),
        ChannelType::Str => {
            if raw.len() > MAX_STRING_BYTES {
                Err(format!(
                    "string of {} bytes is longer than {MAX_STRING_BYTES}",
                    raw.len()
                ))
            } else {
                Ok(Value::Str(raw.to_owned()))
            }
        }
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    if raw.eq_ignore_ascii_case("true") {
        Some(true)
    } else if raw.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The type of an untyped channel's first value.
fn infer_type(raw: &str) -> ChannelType {
    if parse_bool(raw).is_some() {
        ChannelType::Bool
    } else if raw.parse::<f64>().is_ok() {
        ChannelType::F64
    } else {
        ChannelType::Str
    }
}

/// Parses a text cell of a channel: `None` if empty or blank. `ty` is the
/// channel's type if known; an untyped channel takes the type of its first
/// value.
fn parse_cell(
    raw: &str,
    ty: &mut Option<ChannelType>,
) -> std::result::Result<Option<Value>, String> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    let t = *ty.get_or_insert_with(|| infer_type(raw.trim()));
    parse_as(raw, t).map(Some)
}

/// Gathers readings into chunks for the sink and applies the bad-row policy.
struct Collector<'s> {
    table: Arc<str>,
    on_error: OnError,
    chunk_rows: usize,
    chunk: Vec<Reading>,
    report: ImportReport,
    sink: &'s mut dyn FnMut(Vec<Reading>) -> Result<()>,
}

impl<'s> Collector<'s> {
    fn new(opts: &ImportOptions<'_>, sink: &'s mut dyn FnMut(Vec<Reading>) -> Result<()>) -> Self {
        Collector {
            table: Arc::from(opts.table),
            on_error: opts.on_error,
            chunk_rows: opts.chunk_rows,
            chunk: Vec::with_capacity(opts.chunk_rows.min(DEFAULT_CHUNK_ROWS)),
            report: ImportReport::default(),
            sink,
        }
    }

    /// Takes one good row; an empty `values` is a bad row.
    fn push(
        &mut self,
        line: u64,
        device: String,
        time: i64,
        values: Vec<(Arc<str>, Value)>,
    ) -> Result<()> {
        if values.is_empty() {
            return self.bad_row(line, "no channel values".to_owned());
        }
        self.chunk.push(Reading {
            table: self.table.clone(),
            device: device.into(),
            time,
            values,
        });
        if self.chunk.len() >= self.chunk_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Reports a bad row: skips it, or stops the import.
    fn bad_row(&mut self, line: u64, reason: String) -> Result<()> {
        match self.on_error {
            OnError::Reject => bail!(
                "line {line}: {reason} (import stopped; {} readings before this chunk were imported)",
                self.report.rows
            ),
            OnError::Skip => {
                self.report.skipped += 1;
                if self.report.first_errors.len() < MAX_REPORTED_ERRORS {
                    self.report.first_errors.push((line, reason));
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(
            &mut self.chunk,
            Vec::with_capacity(self.chunk_rows.min(DEFAULT_CHUNK_ROWS)),
        );
        let n = chunk.len() as u64;
        (self.sink)(chunk)?;
        self.report.rows += n;
        Ok(())
    }

    fn finish(mut self) -> Result<ImportReport> {
        self.flush()?;
        Ok(self.report)
    }
}
