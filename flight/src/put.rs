//! Bulk import over `DoPut` (admins only): Arrow batches with a `time`
//! timestamp column, a `device` string column and one column per channel
//! go into a table through the store's durable append, so every row is in
//! the fsync'd WAL when the put completes.
//!
//! Channel types follow the Arrow types: floats are f64, integers i64,
//! booleans bool, strings str; a null leaves that channel out of that
//! reading. Memory per put is one decoded batch (bounded by the gRPC message
//! limit) plus one append chunk of readings.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType,
};
use futures::{StreamExt, TryStreamExt};
use wattson_storage::model::{DEVICE_COLUMN, TIME_COLUMN};
use wattson_storage::{Reading, Store, Value};

use crate::error::{Error, Result};

/// Readings per durable append: well under the WAL's payload limit for
/// the seed's 18 channels.
const CHUNK_ROWS: usize = 8_192;

/// What one channel column becomes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    F64,
    I64,
    Bool,
    Str,
}

fn kind(name: &str, dt: &DataType) -> Result<Kind> {
    Ok(match dt {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Kind::F64,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Kind::I64,
        DataType::Boolean => Kind::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Str,
        other => {
            return Err(Error::InvalidArgument(format!(
                "column `{name}` has type {other}; channels must be float, integer (at most 32-bit unsigned), boolean or string"
            )));
        }
    })
}

/// Imports the stream into `table`; returns the rows stored.
pub(crate) async fn import(
    store: Arc<Store>,
    table: &str,
    stream: PeekableFlightDataStream,
) -> Result<u64> {
    wattson_storage::model::validate_table_name(table)?;
    let mut batches =
        FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from));
    let mut stored = 0u64;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| match e {
            FlightError::Arrow(a) => Error::Arrow(a),
            other => Error::InvalidArgument(format!("reading the put stream: {other}")),
        })?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = CHUNK_ROWS.min(batch.num_rows() - offset);
            let chunk = to_readings(table, &batch.slice(offset, len))?;
            offset += len;
            let store = store.clone();
            // The append waits for fdatasync: off the async threads.
            let receipt = tokio::task::spawn_blocking(move || store.append(chunk))
                .await
                .map_err(|e| Error::Internal(format!("append task: {e}")))??;
            stored += receipt.rows as u64;
        }
    }
    Ok(stored)
}

fn to_readings(table: &str, batch: &RecordBatch) -> Result<Vec<Reading>> {
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
    let time = cast(time, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    let times = time.as_primitive::<TimestampNanosecondType>();
    let device = cast(column(DEVICE_COLUMN)?, &DataType::Utf8)
        .map_err(|_| Error::InvalidArgument("`device` must be a string column".into()))?;
    let devices = device.as_string::<i32>();
    let mut channels = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let name = field.name();
        if name == TIME_COLUMN || name == DEVICE_COLUMN {
            continue;
        }
        let k = kind(name, field.data_type())?;
        let array = match k {
            Kind::F64 => cast(batch.column(i), &DataType::Float64)?,
            Kind::I64 => cast(batch.column(i), &DataType::Int64)?,
            Kind::Str => cast(batch.column(i), &DataType::Utf8)?,
            Kind::Bool => batch.column(i).clone(),
        };
        channels.push((Arc::<str>::from(name.as_str()), k, array));
    }
    let table: Arc<str> = Arc::from(table);
    // Rows of one device usually come together: they share its name.
    let mut device: Option<Arc<str>> = None;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if times.is_null(row) || devices.is_null(row) {
            return Err(Error::InvalidArgument(format!(
                "row {row} of a batch has a null `time` or `device`"
            )));
        }
        let mut values = Vec::with_capacity(channels.len());
        for (name, k, array) in &channels {
            if array.is_null(row) {
                continue;
            }
            let v = match k {
                Kind::F64 => Value::F64(array.as_primitive::<Float64Type>().value(row)),
                Kind::I64 => Value::I64(array.as_primitive::<Int64Type>().value(row)),
                Kind::Bool => Value::Bool(array.as_boolean().value(row)),
                Kind::Str => Value::Str(array.as_string::<i32>().value(row).to_owned()),
            };
            values.push((name.clone(), v));
        }
        let name = devices.value(row);
        let device = match &device {
            Some(d) if **d == *name => d.clone(),
            _ => device.insert(Arc::from(name)).clone(),
        };
        out.push(Reading {
            table: table.clone(),
            device,
            time: times.value(row),
            values,
        });
    }
    Ok(out)
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
        let r = to_readings("power", &batch).unwrap();
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
        let err = to_readings("power", &batch).unwrap_err().to_string();
        assert!(err.contains("`time`"), "{err}");
    }
}
