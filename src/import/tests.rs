use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{
    BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

use super::*;

/// The seed system's `seed_fig3.csv`, verbatim.
const SEED_FIG3: &str = "\
dt,pa_v,pb_v,pc_v,wd_a,wd_p,rf_a,rf_p,ac01_a,ac01_p,rh01_a,rh01_p,mo_a,mo_p,ac02_a,ac02_p,rh02_a,rh02_p
2022-07-19 15:24:21,0.0,214.9,0.0,0.38,83.6,0.00,0.0,5.81,2207.8,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
2022-07-19 15:24:23,0.0,0.0,0.0,0.38,83.6,0.00,0.0,5.74,2181.2,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
2022-07-19 15:24:24,0.0,213.8,0.0,0.38,83.6,0.00,0.0,0.00,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
";

const T0: i64 = 1_658_244_261_000_000_000; // 2022-07-19T15:24:21Z
const S: i64 = 1_000_000_000;

struct Run {
    result: Result<ImportReport>,
    chunks: Vec<Vec<Reading>>,
}

impl Run {
    fn readings(&self) -> Vec<Reading> {
        self.chunks.concat()
    }
    fn report(&self) -> &ImportReport {
        self.result.as_ref().unwrap()
    }
    fn error(&self) -> String {
        format!("{:#}", self.result.as_ref().unwrap_err())
    }
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

fn run(path: &Path, device: Option<&str>, on_error: OnError, chunk_rows: usize) -> Run {
    run_typed(path, device, on_error, chunk_rows, &HashMap::new())
}

fn run_typed(
    path: &Path,
    device: Option<&str>,
    on_error: OnError,
    chunk_rows: usize,
    known_types: &HashMap<String, ChannelType>,
) -> Run {
    let opts = ImportOptions {
        table: "power_consumption",
        device,
        on_error,
        chunk_rows,
        known_types,
    };
    let mut chunks = Vec::new();
    let result = import_file(path, &opts, &ProgressBar::hidden(), &mut |c| {
        chunks.push(c);
        Ok(())
    });
    Run { result, chunks }
}

fn csv(text: &str, device: Option<&str>, on_error: OnError) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "in.csv", text);
    run(&path, device, on_error, 2)
}

fn f(name: &str, v: f64) -> (Arc<str>, Value) {
    (name.into(), Value::F64(v))
}

#[test]
fn seed_file_imports_with_device() {
    let r = csv(SEED_FIG3, Some("viconsl"), OnError::Reject);
    assert_eq!(
        r.report(),
        &ImportReport {
            rows: 3,
            skipped: 0,
            first_errors: vec![]
        }
    );
    // Chunks of at most 2 readings, in file order.
    assert_eq!(r.chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    let readings = r.readings();
    let times: Vec<i64> = readings.iter().map(|r| r.time).collect();
    assert_eq!(times, [T0, T0 + 2 * S, T0 + 3 * S]);
    let first = &readings[0];
    assert_eq!(&*first.table, "power_consumption");
    assert_eq!(&*first.device, "viconsl");
    assert_eq!(first.values.len(), 17);
    assert_eq!(first.values[0], f("pa_v", 0.0));
    assert_eq!(first.values[1], f("pb_v", 214.9));
    assert_eq!(first.values[3], f("wd_a", 0.38));
    assert_eq!(first.values[8], f("ac01_p", 2207.8));
    assert_eq!(readings[2].values[1], f("pb_v", 213.8));
}

#[test]
fn seed_file_needs_device() {
    let r = csv(SEED_FIG3, None, OnError::Skip);
    assert!(r.error().contains("--device is required"), "{}", r.error());
    assert!(r.chunks.is_empty());
    let r = csv(SEED_FIG3, Some("bad/id"), OnError::Skip);
    assert!(r.error().contains("device id `bad/id`"), "{}", r.error());
}

#[test]
fn device_column_form_with_typed_values() {
    let text = "\
time,device,pa_v,energy_wh,relay,status
2022-07-19T15:24:21Z,m1,230.1,12,true,ok
2022-07-19T17:24:22.5+02:00,m2,,13,FALSE,
1658244263000,m1,229.9,,,E 42
";
    let known = HashMap::from([("energy_wh".to_owned(), ChannelType::I64)]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "in.csv", text);
    let r = run_typed(&path, None, OnError::Reject, 10, &known);
    assert_eq!(r.report().rows, 3);
    let rs = r.readings();
    assert_eq!(
        rs[0],
        Reading {
            table: "power_consumption".into(),
            device: "m1".into(),
            time: T0,
            values: vec![
                f("pa_v", 230.1),
                ("energy_wh".into(), Value::I64(12)),
                ("relay".into(), Value::Bool(true)),
                ("status".into(), Value::Str("ok".into())),
            ],
        }
    );
    assert_eq!(&*rs[1].device, "m2");
    assert_eq!(rs[1].time, T0 + S + S / 2);
    assert_eq!(
        rs[1].values,
        vec![
            ("energy_wh".into(), Value::I64(13)),
            ("relay".into(), Value::Bool(false))
        ]
    );
    assert_eq!(rs[2].time, T0 + 2 * S);
    assert_eq!(
        rs[2].values,
        vec![
            f("pa_v", 229.9),
            ("status".into(), Value::Str("E 42".into()))
        ]
    );

    // Without the table's types, integers are f64.
    let r = run(&path, None, OnError::Reject, 10);
    assert_eq!(r.readings()[0].values[1], f("energy_wh", 12.0));

    // --device with a device column is refused.
    let r = run(&path, Some("m1"), OnError::Reject, 10);
    assert!(
        r.error()
            .contains("cannot be used with a file that has a `device` column"),
        "{}",
        r.error()
    );
}

#[test]
fn timestamps() {
    assert_eq!(parse_time("2022-07-19T15:24:21Z"), Ok(T0));
    assert_eq!(parse_time("2022-07-19 15:24:21"), Ok(T0));
    assert_eq!(parse_time("2022-07-19T15:24:21"), Ok(T0));
    assert_eq!(parse_time("2022-07-19 15:24:21.000000001"), Ok(T0 + 1));
    assert_eq!(parse_time("2022-07-19t15:24:21.25z"), Ok(T0 + S / 4));
    assert_eq!(parse_time("2022-07-19T16:24:21+01:00"), Ok(T0));
    assert_eq!(parse_time("1658244261000"), Ok(T0));
    assert_eq!(parse_time("-1000"), Ok(-S));
    assert!(parse_time("99999999999999999").is_err()); // ms overflow ns
    assert!(parse_time("19/07/2022").is_err());
    assert!(parse_time("").is_err());
    assert!(parse_time("2022-07-19").is_err());
}

const WITH_BAD_ROWS: &str = "\
time,device,pa_v,relay
2022-07-19T15:24:21Z,m1,230.1,true
yesterday,m1,230.2,true
2022-07-19T15:24:23Z,m1,230.3
2022-07-19T15:24:24Z,m/1,230.4,true
2022-07-19T15:24:25Z,m1,abc,true
2022-07-19T15:24:26Z,m1,230.6,maybe
2022-07-19T15:24:27Z,m1,,
2022-07-19T15:24:28Z,m1,230.8,false
";

#[test]
fn bad_rows_are_skipped_with_line_numbers() {
    let r = csv(WITH_BAD_ROWS, None, OnError::Skip);
    let report = r.report();
    assert_eq!(report.rows, 2);
    assert_eq!(report.skipped, 6);
    let lines: Vec<u64> = report.first_errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8]);
    let reasons: Vec<&str> = report
        .first_errors
        .iter()
        .map(|(_, e)| e.as_str())
        .collect();
    assert!(reasons[0].contains("time `yesterday`"), "{}", reasons[0]);
    assert!(
        reasons[1].contains("expected 4 fields, found 3"),
        "{}",
        reasons[1]
    );
    assert!(reasons[2].contains("device id `m/1`"), "{}", reasons[2]);
    assert!(
        reasons[3].contains("channel `pa_v` (f64): `abc` is not a number"),
        "{}",
        reasons[3]
    );
    assert!(
        reasons[4].contains("channel `relay` (bool): `maybe`"),
        "{}",
        reasons[4]
    );
    assert!(reasons[5].contains("no channel values"), "{}", reasons[5]);
    let times: Vec<i64> = r.readings().iter().map(|r| r.time).collect();
    assert_eq!(times, [T0, T0 + 7 * S]);
}

#[test]
fn reject_stops_before_handing_on_the_chunk() {
    let r = csv(WITH_BAD_ROWS, None, OnError::Reject);
    let e = r.error();
    assert!(e.contains("line 3: time `yesterday`"), "{e}");
    // Line 2 was read but its chunk (size 2) was not complete: nothing handed on.
    assert!(r.chunks.is_empty());

    // A bad row in the second chunk: the first chunk was already handed on.
    let text = "time,device,x\n1000,m1,1\n2000,m1,2\n3000,m1,3\n4000,m1,true\n";
    let r = csv(text, None, OnError::Reject);
    assert!(
        r.error()
            .contains("line 5: channel `x` (f64): `true` is not a number"),
        "{}",
        r.error()
    );
    assert!(
        r.error()
            .contains("2 readings before this chunk were imported"),
        "{}",
        r.error()
    );
    assert_eq!(r.chunks.len(), 1);
}

#[test]
fn a_bad_row_does_not_decide_a_channel_type() {
    // Line 2 fails on `y`; its `x` value must not make `x` a string channel.
    let text = "time,device,x,y\n1000,m1,hello,1.5\n2000,m1,2.5,3\n";
    let known = HashMap::from([("y".to_owned(), ChannelType::I64)]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "in.csv", text);
    let r = run_typed(&path, None, OnError::Skip, 10, &known);
    assert_eq!(r.report().skipped, 1);
    assert!(
        r.report().first_errors[0]
            .1
            .contains("channel `y` (i64): `1.5` is not an integer")
    );
    assert_eq!(
        r.readings()[0].values,
        vec![f("x", 2.5), ("y".into(), Value::I64(3))]
    );
}

#[test]
fn more_than_twenty_errors_are_counted_not_listed() {
    let mut text = String::from("time,device,x\n");
    for _ in 0..30 {
        text.push_str("bad,m1,1\n");
    }
    text.push_str("1000,m1,1\n");
    let r = csv(&text, None, OnError::Skip);
    assert_eq!(r.report().skipped, 30);
    assert_eq!(r.report().rows, 1);
    assert_eq!(r.report().first_errors.len(), MAX_REPORTED_ERRORS);
    assert_eq!(r.report().first_errors[19].0, 21);
}

#[test]
fn bad_headers_and_files() {
    let r = csv("", Some("m1"), OnError::Skip);
    assert!(r.error().contains("empty"), "{}", r.error());

    let r = csv("dt,pa_v\n", Some("m1"), OnError::Skip);
    assert_eq!(r.report(), &ImportReport::default());
    assert!(r.chunks.is_empty());

    let r = csv("pa_v,pb_v\n1,2\n", Some("m1"), OnError::Skip);
    assert!(r.error().contains("no time column"), "{}", r.error());
    let r = csv("dt,time,pa_v\n", Some("m1"), OnError::Skip);
    assert!(r.error().contains("two time columns"), "{}", r.error());
    let r = csv("dt,pa_v,pa_v\n", Some("m1"), OnError::Skip);
    assert!(r.error().contains("`pa_v` appears twice"), "{}", r.error());
    let r = csv("dt,pa v\n", Some("m1"), OnError::Skip);
    assert!(r.error().contains("channel name `pa v`"), "{}", r.error());

    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "in.json", "{}");
    let r = run(&path, Some("m1"), OnError::Skip, 10);
    assert!(
        r.error()
            .contains("accepted extensions are .csv and .parquet"),
        "{}",
        r.error()
    );
    let r = run(
        &dir.path().join("missing.csv"),
        Some("m1"),
        OnError::Skip,
        10,
    );
    assert!(r.error().contains("cannot open"), "{}", r.error());

    let path = write_file(&dir, "in.CSV", SEED_FIG3);
    let opts = ImportOptions {
        table: "Bad Table",
        device: Some("m1"),
        on_error: OnError::Skip,
        chunk_rows: 10,
        known_types: &HashMap::new(),
    };
    let e = import_file(&path, &opts, &ProgressBar::hidden(), &mut |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("table name"), "{e}");
}

#[test]
fn sink_errors_stop_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "in.csv", SEED_FIG3);
    let opts = ImportOptions {
        table: "power_consumption",
        device: Some("m1"),
        on_error: OnError::Skip,
        chunk_rows: 1,
        known_types: &HashMap::new(),
    };
    let mut calls = 0;
    let e = import_file(&path, &opts, &ProgressBar::hidden(), &mut |_| {
        calls += 1;
        anyhow::bail!("disk full")
    })
    .unwrap_err();
    assert_eq!(calls, 1);
    assert!(format!("{e:#}").contains("disk full"));
}

#[test]
fn progress_follows_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "in.csv", SEED_FIG3);
    let bar = ProgressBar::hidden();
    let opts = ImportOptions {
        table: "power_consumption",
        device: Some("m1"),
        on_error: OnError::Skip,
        chunk_rows: 10,
        known_types: &HashMap::new(),
    };
    import_file(&path, &opts, &bar, &mut |_| Ok(())).unwrap();
    assert_eq!(bar.length(), Some(SEED_FIG3.len() as u64));
    assert_eq!(bar.position(), SEED_FIG3.len() as u64);
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_with_device_column() {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("device", DataType::Utf8, true),
        Field::new("pa_v", DataType::Float64, true),
        Field::new("temp", DataType::Float32, true),
        Field::new("count", DataType::Int32, true),
        Field::new("relay", DataType::Boolean, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("__index_level_0__", DataType::Int64, true),
    ]));
    let t0_ms = T0 / 1_000_000;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampMillisecondArray::from(vec![
                    Some(t0_ms),
                    None,
                    Some(t0_ms + 1500),
                    Some(t0_ms + 3000),
                ])
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![
                Some("m1"),
                Some("m1"),
                Some("m2"),
                Some("bad id"),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(230.1),
                Some(1.0),
                None,
                Some(1.0),
            ])),
            Arc::new(Float32Array::from(vec![Some(21.5), None, None, None])),
            Arc::new(Int32Array::from(vec![Some(7), None, Some(8), None])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                None,
                Some(false),
                None,
            ])),
            Arc::new(StringArray::from(vec![Some("ok"), None, None, None])),
            Arc::new(Int64Array::from(vec![0, 1, 2, 3])),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.parquet");
    write_parquet(&path, &batch);

    let r = run(&path, None, OnError::Skip, 10);
    let report = r.report();
    assert_eq!(report.rows, 2);
    assert_eq!(report.skipped, 2);
    assert_eq!(report.first_errors[0], (2, "no time".to_owned()));
    assert_eq!(report.first_errors[1].0, 4);
    assert!(report.first_errors[1].1.contains("device id `bad id`"));
    let rs = r.readings();
    assert_eq!(
        rs[0],
        Reading {
            table: "power_consumption".into(),
            device: "m1".into(),
            time: T0,
            values: vec![
                f("pa_v", 230.1),
                f("temp", 21.5),
                ("count".into(), Value::I64(7)),
                ("relay".into(), Value::Bool(true)),
                ("status".into(), Value::Str("ok".into())),
            ],
        }
    );
    assert_eq!(&*rs[1].device, "m2");
    assert_eq!(rs[1].time, T0 + 3 * S / 2);
    assert_eq!(
        rs[1].values,
        vec![
            ("count".into(), Value::I64(8)),
            ("relay".into(), Value::Bool(false))
        ]
    );

    // The table's types win where they fit; a column that cannot fit fails.
    let known = HashMap::from([
        ("count".to_owned(), ChannelType::F64),
        ("pa_v".to_owned(), ChannelType::I64),
    ]);
    let r = run_typed(&path, None, OnError::Skip, 10, &known);
    assert_eq!(r.readings()[0].values[0], f("count", 8.0));
    // 230.1 is not an integer: row 1 is bad now.
    assert_eq!(r.report().first_errors[0].0, 1);
    assert!(
        r.report().first_errors[0]
            .1
            .contains("channel `pa_v` (i64): 230.1 is not an integer")
    );
    let known = HashMap::from([("relay".to_owned(), ChannelType::F64)]);
    let r = run_typed(&path, None, OnError::Skip, 10, &known);
    assert!(
        r.error()
            .contains("column `relay` is Boolean, but channel `relay` is f64"),
        "{}",
        r.error()
    );

    let r = run(&path, Some("m1"), OnError::Skip, 10);
    assert!(r.error().contains("`device` column"), "{}", r.error());
}

#[test]
fn parquet_seed_shape_with_dt_strings_and_epoch_ms() {
    let dir = tempfile::tempdir().unwrap();
    // `dt` as strings, as pandas writes an object column.
    let schema = Arc::new(Schema::new(vec![
        Field::new("dt", DataType::Utf8, false),
        Field::new("pb_v", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                "2022-07-19 15:24:21",
                "2022-07-19 15:24:23",
            ])),
            Arc::new(Float64Array::from(vec![214.9, 0.0])),
        ],
    )
    .unwrap();
    let path = dir.path().join("a.parquet");
    write_parquet(&path, &batch);
    let r = run(&path, Some("viconsl"), OnError::Reject, 1);
    assert_eq!(r.chunks.len(), 2);
    let rs = r.readings();
    assert_eq!(rs[0].time, T0);
    assert_eq!(&*rs[0].device, "viconsl");
    assert_eq!(rs[1].values, vec![f("pb_v", 0.0)]);
    let r = run(&path, None, OnError::Reject, 1);
    assert!(r.error().contains("--device is required"), "{}", r.error());

    // `time` as int64 epoch milliseconds.
    let schema = Arc::new(Schema::new(vec![
        Field::new("time", DataType::Int64, false),
        Field::new("pb_v", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![T0 / 1_000_000])),
            Arc::new(Float64Array::from(vec![214.9])),
        ],
    )
    .unwrap();
    let path = dir.path().join("b.parquet");
    write_parquet(&path, &batch);
    let r = run(&path, Some("viconsl"), OnError::Reject, 10);
    assert_eq!(r.readings()[0].time, T0);

    // Not Parquet at all.
    let path = write_file(&dir, "c.parquet", SEED_FIG3);
    let r = run(&path, Some("viconsl"), OnError::Reject, 10);
    assert!(
        r.error().contains("not a readable Parquet file"),
        "{}",
        r.error()
    );
}

#[test]
fn windows_style_csv_with_bom_crlf_and_padding() {
    let text = "\u{feff}dt, pb_v ,status\r\n2022-07-19 15:24:21, 214.9 , ok \r\n2022-07-19 15:24:22,  ,\r\n2022-07-19 15:24:23,x,\r\n";
    let r = csv(text, Some("viconsl"), OnError::Skip);
    assert_eq!(r.report().rows, 1);
    assert_eq!(r.report().skipped, 2);
    // Line 3 has only blank values; line 4 a bad number. Lines count CRLF once.
    let lines: Vec<u64> = r.report().first_errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4]);
    assert_eq!(
        r.readings()[0].values,
        vec![
            f("pb_v", 214.9),
            ("status".into(), Value::Str(" ok ".into()))
        ]
    );
}

#[test]
fn line_numbers_are_physical_lines() {
    // A quoted value spanning two lines, then a bad row on line 4.
    let text = "time,device,note\n1000,m1,\"two\nlines\"\nbad,m1,x\n\n2000,m1,y\nworse,m1,z\n";
    let r = csv(text, None, OnError::Skip);
    let lines: Vec<u64> = r.report().first_errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [4, 7]);
    assert_eq!(r.readings()[0].values[0].1, Value::Str("two\nlines".into()));
    let r = csv(&text.replace('\n', "\r\n"), None, OnError::Reject);
    assert!(r.error().contains("line 4: time `bad`"), "{}", r.error());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    // Files to import come from anywhere: any CSV text, in either shape and
    // in either error mode, imports or fails with a reason; what it hands
    // on is readings the store's own checks accept.
    #[test]
    fn any_csv_text_imports_or_fails(
        header in "(dt|time|device|[a-z_]{1,4}|,|;| |\"){0,12}",
        rows in proptest::collection::vec("([0-9:. T+Z-]{0,20}|[a-z0-9_-]{0,6}|true|1e309|-|,|\"|\n){0,10}", 0..6),
        device in proptest::option::of("[a-z0-9]{1,4}"),
        reject in proptest::prelude::any::<bool>(),
    ) {
        let text = format!("{header}\n{}", rows.join("\n"));
        let mode = if reject { OnError::Reject } else { OnError::Skip };
        let run = csv(&text, device.as_deref(), mode);
        for r in run.readings() {
            proptest::prop_assert!(wattson_storage::model::validate_time("t", r.time).is_ok());
            proptest::prop_assert!(wattson_storage::model::validate_device_name(&r.device).is_ok());
        }
    }

    // The same for bytes that are not text at all.
    #[test]
    fn any_bytes_import_or_fail(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["in.csv", "in.parquet"] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            let _ = run(&path, Some("m1"), OnError::Skip, 2);
        }
    }
}
