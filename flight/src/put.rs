//! Bulk import over `DoPut` (admins only): Arrow batches with a `time`
//! timestamp column, a `device` string column and one column per channel
//! go into a table through the store's durable append, so every row is in
//! the fsync'd WAL when the put completes.
//!
//! Channel types follow the Arrow types: floats are f64, integers i64,
//! booleans bool, strings str; a null leaves that channel out of that
//! reading. A batch is checked whole before any of it is appended (times,
//! devices, names, strings, channel types against the table), so such a bad
//! row refuses its batch. What only the store decides (retention, a disk
//! that fills) can still stop a batch midway; earlier rows stay stored, and the error says how
//! many. Memory per put is one decoded batch (bounded by the gRPC message
//! limit), its cast columns, and one append chunk of readings.

use std::ops::Range;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType,
};
use futures::{StreamExt, TryStreamExt};
use wattson_storage::model::{DEVICE_COLUMN, MAX_STRING_BYTES, TIME_COLUMN};
use wattson_storage::{ChannelType, Reading, Store, TableDef, Value};

use crate::error::{Error, Result};

/// Readings per durable append: well under the WAL's payload limit for
/// the seed's 18 channels.
const CHUNK_ROWS: usize = 8_192;

/// The type a channel column is stored as.
fn channel_type(name: &str, dt: &DataType) -> Result<ChannelType> {
    Ok(match dt {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => ChannelType::F64,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => ChannelType::I64,
        DataType::Boolean => ChannelType::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ChannelType::Str,
        other => {
            return Err(Error::InvalidArgument(format!(
                "column `{name}` has type {other}; channels must be float, integer (at most 32-bit unsigned), boolean or string"
            )));
        }
    })
}

/// Imports the stream into `table`; returns the rows stored.
///
/// Each batch is checked whole before any of it is appended, so a batch
/// with a bad row stores nothing. Batches before it stay stored: the error
/// then says how many rows were.
pub(crate) async fn import(
    store: Arc<Store>,
    table: &str,
    stream: PeekableFlightDataStream,
) -> Result<u64> {
    wattson_storage::model::validate_table_name(table)?;
    let mut stored = 0u64;
    match import_batches(store, table, stream, &mut stored).await {
        Ok(()) => Ok(stored),
        Err(cause) if stored > 0 => Err(Error::PutStoppedAfter {
            stored,
            cause: Box::new(cause),
        }),
        Err(e) => Err(e),
    }
}

async fn import_batches(
    store: Arc<Store>,
    table: &str,
    stream: PeekableFlightDataStream,
    stored: &mut u64,
) -> Result<()> {
    let mut batches =
        FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from));
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| match e {
            FlightError::Arrow(a) => Error::Arrow(a),
            other => Error::InvalidArgument(format!("reading the put stream: {other}")),
        })?;
        let known = store.table(table);
        let checked = Arc::new(Checked::new(table, known.as_ref(), &batch)?);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let rows = offset..CHUNK_ROWS.min(batch.num_rows() - offset) + offset;
            offset = rows.end;
            let (store, checked) = (store.clone(), checked.clone());
            // The append waits for fdatasync: off the async threads.
            let receipt = tokio::task::spawn_blocking(move || store.append(checked.readings(rows)))
                .await
                .map_err(|e| Error::Internal(format!("append task: {e}")))??;
            *stored += receipt.rows as u64;
        }
    }
    Ok(())
}

/// A batch whose every row is known to make a valid reading: times in
/// range, devices named, channel types known.
struct Checked {
    table: Arc<str>,
    times: ArrayRef,
    devices: ArrayRef,
    channels: Vec<(Arc<str>, ChannelType, ArrayRef)>,
}

impl Checked {
    fn new(table: &str, known: Option<&TableDef>, batch: &RecordBatch) -> Result<Checked> {
        let schema = batch.schema();
        let column = |name: &str| -> Result<&ArrayRef> {
            schema
                .index_of(name)
                .map(|i| batch.column(i))
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "the batch has no `{name}` column; a put needs `time` (timestamp), `device` (string) and channel columns"
                    ))
                })
        };
        let time = column(TIME_COLUMN)?;
        if !matches!(time.data_type(), DataType::Timestamp(_, _)) {
            return Err(Error::InvalidArgument(format!(
                "`time` has type {}; it must be a timestamp",
                time.data_type()
            )));
        }
        let strict = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let times = cast_with_options(
            time,
            &DataType::Timestamp(TimeUnit::Nanosecond, None),
            &strict,
        )
        .map_err(|e| Error::InvalidArgument(format!("`time` does not fit in nanoseconds: {e}")))?;
        let devices = cast(column(DEVICE_COLUMN)?, &DataType::Utf8)
            .map_err(|_| Error::InvalidArgument("`device` must be a string column".into()))?;
        for (name, array) in [(TIME_COLUMN, &times), (DEVICE_COLUMN, &devices)] {
            if let Some(row) = (0..array.len()).find(|&row| array.is_null(row)) {
                return Err(Error::InvalidArgument(format!(
                    "row {row} of a batch has a null `{name}`; nothing of the batch was stored"
                )));
            }
        }
        for (row, time) in times
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .iter()
            .enumerate()
        {
            wattson_storage::model::validate_time(table, *time).map_err(|e| {
                Error::InvalidArgument(format!("row {row}: {e}; nothing of the batch was stored"))
            })?;
        }
        let mut last: Option<&str> = None;
        for (row, name) in devices.as_string::<i32>().iter().enumerate() {
            let name = name.unwrap_or_default();
            if last != Some(name) {
                wattson_storage::model::validate_device_name(name).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "row {row}: {e}; nothing of the batch was stored"
                    ))
                })?;
                last = Some(name);
            }
        }
        let mut channels = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            let name = field.name();
            if name == TIME_COLUMN || name == DEVICE_COLUMN {
                continue;
            }
            wattson_storage::model::validate_channel_name(name)?;
            let ty = channel_type(name, field.data_type())?;
            // The store would refuse the first chunk with a value here, after
            // earlier chunks of the batch were stored.
            if let Some((_, have)) = known
                .and_then(|def| def.channels.iter().find(|(n, _)| n == name))
                .filter(|(_, have)| *have != ty)
            {
                return Err(Error::InvalidArgument(format!(
                    "channel `{name}` of table `{table}` holds {have}, the batch has {ty}; nothing of the batch was stored"
                )));
            }
            let array = match ty {
                ChannelType::F64 => cast(batch.column(i), &DataType::Float64)?,
                ChannelType::I64 => cast(batch.column(i), &DataType::Int64)?,
                ChannelType::Str => cast(batch.column(i), &DataType::Utf8)?,
                ChannelType::Bool => batch.column(i).clone(),
            };
            if ty == ChannelType::Str
                && let Some(row) = array
                    .as_string::<i32>()
                    .iter()
                    .position(|v| v.is_some_and(|v| v.len() > MAX_STRING_BYTES))
            {
                return Err(Error::InvalidArgument(format!(
                    "row {row}: `{name}` is longer than {MAX_STRING_BYTES} bytes; nothing of the batch was stored"
                )));
            }
            channels.push((Arc::<str>::from(name.as_str()), ty, array));
        }
        Ok(Checked {
            table: Arc::from(table),
            times,
            devices,
            channels,
        })
    }

    /// The readings of `rows`.
    fn readings(&self, rows: Range<usize>) -> Vec<Reading> {
        let times = self.times.as_primitive::<TimestampNanosecondType>();
        let devices = self.devices.as_string::<i32>();
        // Rows of one device usually come together: they share its name.
        let mut device: Option<Arc<str>> = None;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(self.channels.len());
            for (name, ty, array) in &self.channels {
                if array.is_null(row) {
                    continue;
                }
                let v = match ty {
                    ChannelType::F64 => Value::F64(array.as_primitive::<Float64Type>().value(row)),
                    ChannelType::I64 => Value::I64(array.as_primitive::<Int64Type>().value(row)),
                    ChannelType::Bool => Value::Bool(array.as_boolean().value(row)),
                    ChannelType::Str => Value::Str(array.as_string::<i32>().value(row).to_owned()),
                };
                values.push((name.clone(), v));
            }
            let name = devices.value(row);
            let device = match &device {
                Some(d) if **d == *name => d.clone(),
                _ => device.insert(Arc::from(name)).clone(),
            };
            out.push(Reading {
                table: self.table.clone(),
                device,
                time: times.value(row),
                values,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn batches_become_readings_and_nulls_are_absent_channels() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("device", DataType::Utf8, false),
            Field::new("pa_v", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["m1", "m2"])),
                Arc::new(Float64Array::from(vec![Some(230.0), None])),
            ],
        )
        .unwrap();
        let r = Checked::new("power", None, &batch).unwrap().readings(0..2);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].time, 1_000_000);
        assert_eq!(r[0].values, vec![(Arc::from("pa_v"), Value::F64(230.0))]);
        assert!(r[1].values.is_empty());
    }

    #[test]
    fn a_batch_without_time_is_refused_with_the_expected_shape() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "device",
            DataType::Utf8,
            false,
        )]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["m1"]))]).unwrap();
        let err = Checked::new("power", None, &batch)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`time`"), "{err}");
    }
    proptest::proptest! {
        // Put batches come from clients: any times (any unit, nulls, the
        // extremes), device names and channel names are checked, or make
        // readings that the store's own checks accept.
        #[test]
        fn any_batch_is_checked_or_refused(
            unit in 0..4usize,
            times in proptest::collection::vec(proptest::option::weighted(0.95, proptest::prelude::any::<i64>()), 1..20),
            devices in proptest::collection::vec(proptest::option::weighted(0.95, "[a-z0-9_.-]{0,5}"), 20),
            channel in "[a-z_][a-z0-9_]{0,6}|.{0,4}",
        ) {
            use datafusion::arrow::array::{
                TimestampMicrosecondArray, TimestampNanosecondArray, TimestampSecondArray,
            };
            let n = times.len();
            let (time, unit) = match unit {
                0 => (Arc::new(TimestampSecondArray::from(times)) as ArrayRef, TimeUnit::Second),
                1 => (Arc::new(TimestampMillisecondArray::from(times)) as _, TimeUnit::Millisecond),
                2 => (Arc::new(TimestampMicrosecondArray::from(times)) as _, TimeUnit::Microsecond),
                _ => (Arc::new(TimestampNanosecondArray::from(times)) as _, TimeUnit::Nanosecond),
            };
            let schema = Arc::new(Schema::new(vec![
                Field::new("time", DataType::Timestamp(unit, None), true),
                Field::new("device", DataType::Utf8, true),
                Field::new(channel.clone(), DataType::Float64, true),
            ]));
            let devices: Vec<Option<String>> = devices.into_iter().take(n).collect();
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    time,
                    Arc::new(StringArray::from(devices)),
                    Arc::new(Float64Array::from(vec![Some(1.5); n])),
                ],
            );
            // Same names for two columns: no batch to check.
            let Ok(batch) = batch else { return Ok(()) };
            if let Ok(checked) = Checked::new("power", None, &batch) {
                let readings = checked.readings(0..n);
                proptest::prop_assert_eq!(readings.len(), n);
                for r in &readings {
                    proptest::prop_assert!(wattson_storage::model::validate_time("power", r.time).is_ok());
                    proptest::prop_assert!(wattson_storage::model::validate_device_name(&r.device).is_ok());
                }
            }
        }
    }
}
