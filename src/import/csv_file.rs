//! CSV files: header line, then one reading per line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use wattson_storage::model::{ChannelType, validate_device_name};

use super::{
    Collector, DeviceSource, Header, ImportOptions, device_source, parse_cell, parse_time,
    split_header,
};

pub(super) fn import(
    file: File,
    opts: &ImportOptions<'_>,
    progress: &ProgressBar,
    out: &mut Collector<'_>,
) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        // Rows with the wrong number of fields are bad rows, not a failed file.
        .flexible(true)
        // Header names may be padded; string values are kept as they are.
        .trim(csv::Trim::Headers)
        .from_reader(LineIndex::new(progress.wrap_read(file)));

    let header = reader
        .headers()
        .context("cannot read the header line")?
        .clone();
    if header.is_empty() {
        bail!(
            "the file is empty: expected a header line such as `dt,pa_v,...` or `time,device,...`"
        );
    }
    let Header {
        time: time_col,
        device: device_col,
        channels,
    } = split_header(header.iter()).context("bad header line")?;
    let devices = device_source(device_col, opts)?;
    // Each channel's type, as far as known: from the table, else from its
    // first value in this file.
    let mut types: Vec<Option<ChannelType>> = channels
        .iter()
        .map(|(_, name)| opts.known_types.get(&**name).copied())
        .collect();

    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // Invalid UTF-8 spoils one row; anything else (I/O) the file.
                let line = e.position().map(|p| reader.get_mut().line_at(p.byte()));
                match (e.kind(), line) {
                    (csv::ErrorKind::Utf8 { .. }, Some(line)) => {
                        out.bad_row(line, "not valid UTF-8".to_owned())?;
                        continue;
                    }
                    _ => return Err(e).context("cannot read the file"),
                }
            }
        }
        let line = record
            .position()
            .map_or(0, |p| reader.get_mut().line_at(p.byte()));
        match parse_row(
            &record,
            time_col,
            &devices,
            &channels,
            &mut types,
            header.len(),
        ) {
            Ok((device, time, values)) => out.push(line, device, time, values)?,
            Err(reason) => out.bad_row(line, reason)?,
        }
    }
    Ok(())
}

type Row = (String, i64, Vec<(Arc<str>, wattson_storage::model::Value)>);

fn parse_row(
    record: &csv::StringRecord,
    time_col: usize,
    devices: &DeviceSource,
    channels: &[(usize, Arc<str>)],
    types: &mut [Option<ChannelType>],
    width: usize,
) -> Result<Row, String> {
    if record.len() != width {
        return Err(format!("expected {width} fields, found {}", record.len()));
    }
    let time = parse_time(record.get(time_col).unwrap_or_default())?;
    let device = match devices {
        DeviceSource::Fixed(d) => d.clone(),
        DeviceSource::Column(i) => {
            let d = record.get(*i).unwrap_or_default().trim();
            validate_device_name(d).map_err(|e| e.to_string())?;
            d.to_owned()
        }
    };
    // Channels typed by this row's values: a bad row must not decide a
    // channel's type, so they are reset if the row fails.
    let mut fresh: Vec<usize> = Vec::new();
    let mut values = Vec::with_capacity(channels.len());
    for (k, (i, name)) in channels.iter().enumerate() {
        let Some(ty) = types.get_mut(k) else {
            continue;
        };
        let raw = record.get(*i).unwrap_or_default();
        let was_typed = ty.is_some();
        let value = parse_cell(raw, ty);
        if !was_typed && ty.is_some() {
            fresh.push(k);
        }
        match value {
            Ok(Some(v)) => values.push((name.clone(), v)),
            Ok(None) => {}
            Err(e) => {
                let kind = ty.map_or_else(String::new, |t| format!(" ({t})"));
                for k in fresh {
                    if let Some(t) = types.get_mut(k) {
                        *t = None;
                    }
                }
                return Err(format!("channel `{name}`{kind}: {e}"));
            }
        }
    }
    Ok((device, time, values))
}

/// Finds physical line numbers for the csv reader's byte offsets.
///
/// `csv::Position::line` undercounts by one for CRLF files (the `\n` of a
/// record's terminator is counted only when the next record is read), so
/// lines are counted here, on the bytes as they pass. Memory stays bounded:
/// only newlines in the csv reader's read-ahead are kept.
#[derive(Debug)]
struct LineIndex<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    /// Offsets of the newlines read but not yet passed by a record start.
    newlines: VecDeque<u64>,
    /// Newlines already passed.
    passed: u64,
}

impl<R> LineIndex<R> {
    fn new(inner: R) -> Self {
        LineIndex {
            inner,
            offset: 0,
            newlines: VecDeque::new(),
            passed: 0,
        }
    }

    /// The 1-based line of the record the csv reader says starts at `byte`.
    /// Offsets must not decrease from call to call.
    fn line_at(&mut self, byte: u64) -> u64 {
        // `<=`: the csv reader puts a CRLF record's start on the `\n` that
        // ends the line before it.
        while self.newlines.front().is_some_and(|&n| n <= byte) {
            self.newlines.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

impl<R: Read> Read for LineIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let base = self.offset;
        self.newlines.extend(
            buf.iter()
                .take(n)
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .map(|(i, _)| base + i as u64),
        );
        self.offset += n as u64;
        Ok(n)
    }
}
