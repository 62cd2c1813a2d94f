use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{
    BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow_schema::{Field, Schema};
use indicatif::ProgressBar;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use wattson_storage::model::{ChannelType, Reading, Value};

use super::*;
use crate::import::{ImportOptions, OnError, import_file};
use crate::simdata;

const T0: i64 = 1_658_244_261_000_000_000; // 2022-07-19T15:24:21Z

fn scan_schema(channels: &[(&str, DataType)]) -> SchemaRef {
    let mut fields = vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("device", DataType::Utf8, false),
    ];
    fields.extend(
        channels
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true)),
    );
    Arc::new(Schema::new(fields))
}

fn small_batch() -> RecordBatch {
    let schema = scan_schema(&[
        ("pa_v", DataType::Float64),
        ("energy_wh", DataType::Int64),
        ("relay", DataType::Boolean),
        ("status", DataType::Utf8),
    ]);
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampNanosecondArray::from(vec![T0, T0 + 1_500_000_000, T0 + 2_000_000_001])
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["viconsl", "viconsl", "meter-0001"])),
            Arc::new(Float64Array::from(vec![Some(214.9), None, Some(0.1 + 0.2)])),
            Arc::new(Int64Array::from(vec![None, Some(12), Some(-3)])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(StringArray::from(vec![
                None,
                Some("E,42 \"x\""),
                Some("ok"),
            ])),
        ],
    )
    .unwrap()
}

fn to_csv(batches: Vec<RecordBatch>, schema: SchemaRef) -> (u64, String) {
    let mut out = Vec::new();
    let rows = export(
        batches.into_iter().map(Ok),
        schema,
        ExportFormat::Csv,
        &mut out,
    )
    .unwrap();
    (rows, String::from_utf8(out).unwrap())
}

#[test]
fn csv_text_is_exact() {
    let batch = small_batch();
    let (rows, text) = to_csv(vec![batch.clone(), batch.slice(0, 1)], batch.schema());
    assert_eq!(rows, 4);
    assert_eq!(
        text,
        "\
time,device,pa_v,energy_wh,relay,status
2022-07-19T15:24:21Z,viconsl,214.9,,true,
2022-07-19T15:24:22.5Z,viconsl,,12,false,\"E,42 \"\"x\"\"\"
2022-07-19T15:24:23.000000001Z,meter-0001,0.30000000000000004,-3,,ok
2022-07-19T15:24:21Z,viconsl,214.9,,true,
"
    );
}

#[test]
fn csv_without_rows_still_has_its_header() {
    let schema = scan_schema(&[("pa_v", DataType::Float64)]);
    let (rows, text) = to_csv(vec![], schema);
    assert_eq!(rows, 0);
    assert_eq!(text, "time,device,pa_v\n");
}

#[test]
fn timestamps_are_rfc3339_with_the_shortest_fraction() {
    let cases = [
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (T0 + 100_000_000, "2022-07-19T15:24:21.1Z"),
        (T0 + 123_456_000, "2022-07-19T15:24:21.123456Z"),
        (i64::MIN, "1677-09-21T00:12:43.145224192Z"),
        (i64::MAX, "2262-04-11T23:47:16.854775807Z"),
    ];
    for (ns, want) in cases {
        let mut s = String::new();
        write_rfc3339(ns, &mut s);
        assert_eq!(s, want);
        assert_eq!(crate::import::parse_time(&s), Ok(ns));
    }
}

#[test]
fn mismatched_batches_are_refused() {
    let batch = small_batch();
    let other = scan_schema(&[("pa_v", DataType::Float64)]);
    let mut out = Vec::new();
    let e = export(
        std::iter::once(Ok(batch)),
        other,
        ExportFormat::Csv,
        &mut out,
    )
    .unwrap_err();
    assert!(e.to_string().contains("differ"), "{e}");
}

#[test]
fn scan_errors_are_passed_on() {
    let schema = scan_schema(&[]);
    for format in [ExportFormat::Csv, ExportFormat::Parquet] {
        let batches = std::iter::once(Err(anyhow::anyhow!("segment corrupt")));
        let e = export(batches, schema.clone(), format, Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "segment corrupt");
    }
}

#[test]
fn parquet_round_trip() {
    let batch = small_batch();
    let mut out = Vec::new();
    let rows = export(
        vec![Ok(batch.clone()), Ok(batch.slice(1, 2))].into_iter(),
        batch.schema(),
        ExportFormat::Parquet,
        &mut out,
    )
    .unwrap();
    assert_eq!(rows, 5);
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &out).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let back: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    let back = arrow::compute::concat_batches(&batch.schema(), &back).unwrap();
    let want = arrow::compute::concat_batches(&batch.schema(), &[batch.clone(), batch.slice(1, 2)])
        .unwrap();
    assert_eq!(back, want);
}

/// Builds the scan batch for readings of one table, as the store would.
fn batch_of(readings: &[Reading], channels: &[(&str, ChannelType)]) -> RecordBatch {
    let schema = scan_schema(
        &channels
            .iter()
            .map(|(n, t)| (*n, t.arrow_type()))
            .collect::<Vec<_>>(),
    );
    let value = |r: &Reading, name: &str| {
        r.values
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, v)| v.clone())
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampNanosecondArray::from(readings.iter().map(|r| r.time).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(
            readings.iter().map(|r| &*r.device).collect::<Vec<_>>(),
        )),
    ];
    for (name, ty) in channels {
        let vals: Vec<Option<Value>> = readings.iter().map(|r| value(r, name)).collect();
        let array: ArrayRef = match ty {
            ChannelType::F64 => Arc::new(Float64Array::from_iter(vals.iter().map(|v| match v {
                Some(Value::F64(x)) => Some(*x),
                _ => None,
            }))),
            ChannelType::I64 => Arc::new(Int64Array::from_iter(vals.iter().map(|v| match v {
                Some(Value::I64(x)) => Some(*x),
                _ => None,
            }))),
            ChannelType::Bool => Arc::new(BooleanArray::from_iter(vals.iter().map(|v| match v {
                Some(Value::Bool(x)) => Some(*x),
                _ => None,
            }))),
            ChannelType::Str => Arc::new(StringArray::from_iter(vals.iter().map(|v| match v {
                Some(Value::Str(x)) => Some(x.clone()),
                _ => None,
            }))),
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema, columns).unwrap()
}

fn import_back(
    dir: &tempfile::TempDir,
    name: &str,
    bytes: &[u8],
    known_types: &HashMap<String, ChannelType>,
) -> Vec<Reading> {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let opts = ImportOptions {
        table: "power_consumption",
        device: None,
        on_error: OnError::Reject,
        chunk_rows: 7,
        known_types,
    };
    let mut back = Vec::new();
    let report = import_file(&path, &opts, &ProgressBar::hidden(), &mut |c| {
        back.extend(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(report.skipped, 0);
    back
}

#[test]
fn export_then_import_gives_the_same_readings() {
    // Simulated meter data plus sparse channels of every type.
    let mut readings: Vec<Reading> = simdata::fleet("power_consumption", 3, T0, 20, 11).collect();
    for (i, r) in readings.iter_mut().enumerate() {
        r.time += (i as i64 % 3) * 1_234_567; // sub-second times
        if i % 2 == 0 {
            r.values
                .push(("energy_wh".into(), Value::I64(i as i64 * 1000)));
        }
        if i % 3 == 0 {
            r.values.push(("relay".into(), Value::Bool(i % 2 == 0)));
        }
        if i % 5 == 0 {
            r.values
                .push(("status".into(), Value::Str(format!("E{i}, \"ok\""))));
        }
        if i == 4 {
            r.values.push(("tiny".into(), Value::F64(1e-300)));
        }
    }
    let mut channels: Vec<(&str, ChannelType)> = simdata::SEED_CHANNELS
        .iter()
        .map(|n| (*n, ChannelType::F64))
        .collect();
    channels.extend([
        ("energy_wh", ChannelType::I64),
        ("relay", ChannelType::Bool),
        ("status", ChannelType::Str),
        ("tiny", ChannelType::F64),
    ]);
    let known: HashMap<String, ChannelType> = channels
        .iter()
        .map(|(n, t)| ((*n).to_owned(), *t))
        .collect();
    let batch = batch_of(&readings, &channels);
    let dir = tempfile::tempdir().unwrap();

    let mut csv = Vec::new();
    export(
        std::iter::once(Ok(batch.clone())),
        batch.schema(),
        ExportFormat::Csv,
        &mut csv,
    )
    .unwrap();
    assert_eq!(import_back(&dir, "out.csv", &csv, &known), readings);

    let mut pq = Vec::new();
    export(
        std::iter::once(Ok(batch.clone())),
        batch.schema(),
        ExportFormat::Parquet,
        &mut pq,
    )
    .unwrap();
    // Parquet carries its own types: no table types needed.
    assert_eq!(
        import_back(&dir, "out.parquet", &pq, &HashMap::new()),
        readings
    );
}
