//! Parquet files: one row per reading, columns as in CSV but typed.

use std::fs::File;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::compute::cast;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use indicatif::ProgressBar;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use wattson_storage::model::{ChannelType, Value, validate_device_name};

use super::{
    Collector, DeviceSource, Header, ImportOptions, device_source, parse_cell, parse_time,
    split_header,
};

/// How a channel column's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Any float, read as Float64.
    F64,
    /// Signed or 32-bit unsigned integers, read as Int64.
    I64,
    /// UInt64, which may not fit an i64.
    U64,
    Bool,
    /// Strings, parsed like CSV cells.
    Text,
    /// A column of nulls only (pandas writes these for all-NaN columns).
    Null,
}

impl Source {
    fn of(dt: &DataType) -> Option<Source> {
        Some(match dt {
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Source::F64,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Source::I64,
            DataType::UInt64 => Source::U64,
            DataType::Boolean => Source::Bool,
            DataType::Null => Source::Null,
            dt if is_text(dt) => Source::Text,
            _ => return None,
        })
    }

    /// The Arrow type the column is cast to before reading.
    fn read_as(self) -> DataType {
        match self {
            Source::F64 => DataType::Float64,
            Source::I64 => DataType::Int64,
            Source::U64 => DataType::UInt64,
            Source::Bool => DataType::Boolean,
            Source::Text => DataType::Utf8,
            Source::Null => DataType::Null,
        }
    }

    /// Whether values of this column can become a `ty` channel's values.
    fn fits(self, ty: ChannelType) -> bool {
        match self {
            Source::F64 | Source::I64 | Source::U64 => {
                matches!(ty, ChannelType::F64 | ChannelType::I64)
            }
            Source::Bool => ty == ChannelType::Bool,
            Source::Text | Source::Null => true,
        }
    }

    /// A channel's type when the table does not know it yet.
    fn natural_type(self) -> Option<ChannelType> {
        match self {
            Source::F64 => Some(ChannelType::F64),
            Source::I64 | Source::U64 => Some(ChannelType::I64),
            Source::Bool => Some(ChannelType::Bool),
            Source::Text | Source::Null => None,
        }
    }
}

fn is_text(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text(v),
        _ => false,
    }
}

/// How the time column is read.
#[derive(Debug, Clone, Copy)]
enum TimeSource {
    /// A timestamp; values are multiplied by this to get nanoseconds.
    Timestamp(i64),
    /// Int64 epoch milliseconds.
    EpochMs,
    /// Strings in any format [`parse_time`] takes.
    Text,
}

pub(super) fn import(
    file: File,
    opts: &ImportOptions<'_>,
    progress: &ProgressBar,
    out: &mut Collector<'_>,
) -> Result<()> {
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).context("not a readable Parquet file")?;
    let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let schema = builder.schema().clone();

    // pandas stores an unnamed index as `__index_level_0__`: not a channel.
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| {
            schema
                .fields()
                .get(i)
                .is_some_and(|f| !f.name().starts_with("__index_level_"))
        })
        .collect();
    let Header {
        time: time_pos,
        device: device_pos,
        channels: channel_pos,
    } = split_header(
        keep.iter()
            .filter_map(|&i| schema.fields().get(i).map(|f| f.name().as_str())),
    )
    .context("bad columns")?;
    let col = |pos: usize| keep.get(pos).copied().unwrap_or(usize::MAX);
    let time_col = col(time_pos);
    let devices = match device_source(device_pos.map(col), opts)? {
        DeviceSource::Column(i) => {
            let dt = schema.field(i).data_type();
            if !is_text(dt) {
                bail!("the `device` column is {dt}, not a string");
            }
            DeviceSource::Column(i)
        }
        fixed => fixed,
    };

    let time_type = schema.field(time_col).data_type();
    let time_source = match time_type {
        DataType::Timestamp(unit, _) => TimeSource::Timestamp(match unit {
            TimeUnit::Second => 1_000_000_000,
            TimeUnit::Millisecond => 1_000_000,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1,
        }),
        DataType::Int64 => TimeSource::EpochMs,
        dt if is_text(dt) => TimeSource::Text,
        dt => bail!(
            "the time column `{}` is {dt}; expected a timestamp, int64 epoch milliseconds or a string",
            schema.field(time_col).name()
        ),
    };

    let mut channels = Vec::with_capacity(channel_pos.len());
    let mut types = Vec::with_capacity(channel_pos.len());
    for (pos, name) in channel_pos {
        let i = col(pos);
        let dt = schema.field(i).data_type();
        let Some(source) = Source::of(dt) else {
            bail!("column `{name}` is {dt}; channels must be float, integer, bool or string");
        };
        let ty = match opts.known_types.get(&*name) {
            Some(&t) if !source.fits(t) => bail!(
                "column `{name}` is {dt}, but channel `{name}` is {t} in table `{}`",
                opts.table
            ),
            Some(&t) => Some(t),
            None => source.natural_type(),
        };
        channels.push((i, name, source));
        types.push(ty);
    }

    let reader = builder
        .with_batch_size(opts.chunk_rows.min(65_536))
        .build()
        .context("cannot read the Parquet file")?;
    let mut row_base = 0u64;
    for batch in reader {
        let batch = batch.context("cannot read the Parquet file")?;
        let n = batch.num_rows();
        read_batch(
            &batch,
            row_base,
            (time_col, time_source),
            &devices,
            &channels,
            &mut types,
            out,
        )?;
        row_base += n as u64;
        if total_rows > 0 {
            let done = u128::from(file_len) * u128::from(row_base) / u128::from(total_rows);
            progress.set_position(u64::try_from(done).unwrap_or(file_len));
        }
    }
    Ok(())
}

fn cast_to(batch: &RecordBatch, i: usize, dt: &DataType) -> Result<ArrayRef> {
    let array = batch.column(i);
    if array.data_type() == dt {
        Ok(array.clone())
    } else {
        cast(array, dt).with_context(|| {
            format!(
                "cannot read column `{}` as {dt}",
                batch.schema().field(i).name()
            )
        })
    }
}

fn read_batch(
    batch: &RecordBatch,
    row_base: u64,
    (time_col, time_source): (usize, TimeSource),
    devices: &DeviceSource,
    channels: &[(usize, Arc<str>, Source)],
    types: &mut [Option<ChannelType>],
    out: &mut Collector<'_>,
) -> Result<()> {
    let times = match time_source {
        TimeSource::Timestamp(_) | TimeSource::EpochMs => {
            cast_to(batch, time_col, &DataType::Int64)?
        }
        TimeSource::Text => cast_to(batch, time_col, &DataType::Utf8)?,
    };
    let device_array = match devices {
        DeviceSource::Column(i) => Some(cast_to(batch, *i, &DataType::Utf8)?),
        DeviceSource::Fixed(_) => None,
    };
    let columns: Vec<ArrayRef> = channels
        .iter()
        .map(|(i, _, source)| cast_to(batch, *i, &source.read_as()))
        .collect::<Result<_>>()?;

    for r in 0..batch.num_rows() {
        let line = row_base + r as u64 + 1;
        let row = read_time(&times, time_source, r).and_then(|time| {
            let device = match (devices, &device_array) {
                (DeviceSource::Column(_), Some(a)) => {
                    let a = a.as_string::<i32>();
                    if a.is_null(r) {
                        return Err("no device".to_owned());
                    }
                    let d = a.value(r);
                    validate_device_name(d).map_err(|e| e.to_string())?;
                    d.to_owned()
                }
                (DeviceSource::Fixed(d), _) => d.clone(),
                (DeviceSource::Column(_), None) => return Err("no device".to_owned()),
            };
            let values = read_values(&columns, channels, types, r)?;
            Ok((device, time, values))
        });
        match row {
            Ok((device, time, values)) => out.push(line, device, time, values)?,
            Err(reason) => out.bad_row(line, reason)?,
        }
    }
    Ok(())
}

fn read_time(times: &ArrayRef, source: TimeSource, r: usize) -> Result<i64, String> {
    if times.is_null(r) {
        return Err("no time".to_owned());
    }
    match source {
        TimeSource::Timestamp(factor) => {
            let v = times.as_primitive::<Int64Type>().value(r);
            v.checked_mul(factor)
                .ok_or_else(|| format!("timestamp {v} is outside the years 1677 to 2262"))
        }
        TimeSource::EpochMs => {
            let v = times.as_primitive::<Int64Type>().value(r);
            v.checked_mul(1_000_000)
                .ok_or_else(|| format!("epoch milliseconds {v} out of range"))
        }
        TimeSource::Text => parse_time(times.as_string::<i32>().value(r)),
    }
}

fn read_values(
    columns: &[ArrayRef],
    channels: &[(usize, Arc<str>, Source)],
    types: &mut [Option<ChannelType>],
    r: usize,
) -> Result<Vec<(Arc<str>, Value)>, String> {
    let mut values = Vec::with_capacity(channels.len());
    // Text channels typed by this row's values; reset if the row fails, so
    // that a bad row does not decide a channel's type.
    let mut fresh: Vec<usize> = Vec::new();
    for (k, (array, (_, name, source))) in columns.iter().zip(channels).enumerate() {
        if array.is_null(r) {
            continue;
        }
        let ty = types.get(k).copied().flatten();
        let value = match (source, ty) {
            (Source::Null, _) => continue,
            (Source::F64, Some(ChannelType::I64)) => {
                let x = array.as_primitive::<Float64Type>().value(r);
                float_to_i64(x).map(Value::I64)
            }
            (Source::F64, _) => Ok(Value::F64(array.as_primitive::<Float64Type>().value(r))),
            (Source::I64, Some(ChannelType::F64)) => {
                Ok(Value::F64(array.as_primitive::<Int64Type>().value(r) as f64))
            }
            (Source::I64, _) => Ok(Value::I64(array.as_primitive::<Int64Type>().value(r))),
            (Source::U64, Some(ChannelType::F64)) => Ok(Value::F64(
                array.as_primitive::<UInt64Type>().value(r) as f64,
            )),
            (Source::U64, _) => {
                let x = array.as_primitive::<UInt64Type>().value(r);
                i64::try_from(x)
                    .map(Value::I64)
                    .map_err(|_| format!("{x} does not fit an i64"))
            }
            (Source::Bool, _) => Ok(Value::Bool(array.as_boolean().value(r))),
            (Source::Text, _) => {
                let raw = array.as_string::<i32>().value(r);
                let mut t = ty;
                let parsed = parse_cell(raw, &mut t);
                if ty.is_none() && t.is_some() {
                    if let Some(slot) = types.get_mut(k) {
                        *slot = t;
                    }
                    fresh.push(k);
                }
                match parsed {
                    Ok(Some(v)) => Ok(v),
                    Ok(None) => continue,
                    Err(e) => Err(e),
                }
            }
        };
        match value {
            Ok(v) => values.push((name.clone(), v)),
            Err(e) => {
                for k in fresh {
                    if let Some(slot) = types.get_mut(k) {
                        *slot = None;
                    }
                }
                let kind = ty.map_or_else(String::new, |t| format!(" ({t})"));
                return Err(format!("channel `{name}`{kind}: {e}"));
            }
        }
    }
    Ok(values)
}

fn float_to_i64(x: f64) -> Result<i64, String> {
    // i64::MAX as f64 rounds up to 2^63, which does not fit: exclusive bound.
    if x.fract() == 0.0 && x >= i64::MIN as f64 && x < i64::MAX as f64 {
        Ok(x as i64)
    } else {
        Err(format!("{x} is not an integer"))
    }
}
