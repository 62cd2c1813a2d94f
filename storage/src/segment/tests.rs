//! Segment tests: round trips, encoding choices, compression on realistic
//! data and the format freeze. Damage and fuzz tests are in `robustness`,
//! random round trips in `props`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};

use super::encoding as enc;
use super::*;
use crate::io::RealFs;

mod durability;
mod props;
mod robustness;

/// One cell, floats by bit pattern so -0.0 and NaN payloads compare exactly.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    F(u64),
    I(i64),
    B(bool),
    S(String),
}

pub(super) fn cells(a: &dyn Array) -> Vec<Option<Cell>> {
    let any = a.as_any();
    (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                return None;
            }
            Some(if let Some(a) = any.downcast_ref::<Float64Array>() {
                Cell::F(a.value(i).to_bits())
            } else if let Some(a) = any.downcast_ref::<Int64Array>() {
                Cell::I(a.value(i))
            } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
                Cell::B(a.value(i))
            } else if let Some(a) = any.downcast_ref::<StringArray>() {
                Cell::S(a.value(i).to_owned())
            } else {
                panic!("unexpected array type {}", a.data_type())
            })
        })
        .collect()
}

pub(super) const MONTH: Month = Month {
    year: 2024,
    month: 3,
};

pub(super) fn meta(columns: &[(&str, ChannelType)]) -> SegmentMeta {
    SegmentMeta {
        table: "power".into(),
        device: "meter-01".into(),
        month: MONTH,
        min_seq: 10,
        max_seq: 20,
        columns: columns.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
    }
}

pub(super) fn write(
    dir: &Path,
    meta: &SegmentMeta,
    times: &[i64],
    columns: &[ArrayRef],
    opts: &WriteOptions,
) -> (PathBuf, u64) {
    let path = dir.join("seg.wseg");
    let len = write_segment(&RealFs, &path, meta, times, columns, opts).unwrap();
    (path, len)
}

/// Everything in the file, blocks concatenated, after a full `verify`.
/// A segment's times and cells, blocks concatenated.
pub(super) type Contents = (Vec<i64>, Vec<Vec<Option<Cell>>>);

pub(super) fn read_all(r: &SegmentReader) -> Result<Contents> {
    r.verify()?;
    let mut times = Vec::new();
    let mut cols = vec![Vec::new(); r.meta().columns.len()];
    for b in 0..r.blocks().len() {
        times.extend(r.read_times(b)?);
        for (c, out) in cols.iter_mut().enumerate() {
            let array = r.read_column(b, c)?;
            if array.len() != r.blocks()[b].rows as usize {
                return Err(Error::Internal("wrong length".into()));
            }
            out.extend(cells(array.as_ref()));
        }
    }
    Ok((times, cols))
}

pub(super) fn assert_round_trip(
    meta: &SegmentMeta,
    times: &[i64],
    columns: &[ArrayRef],
    opts: &WriteOptions,
) -> SegmentReader {
    let dir = tempfile::tempdir().unwrap();
    let (path, len) = write(dir.path(), meta, times, columns, opts);
    let r = SegmentReader::open(&RealFs, &path).unwrap();
    assert_eq!(r.file_len(), len);
    assert_eq!(r.meta(), meta);
    assert_eq!(r.rows(), times.len() as u64);
    let (got_times, got_cols) = read_all(&r).unwrap();
    assert_eq!(got_times, times);
    for (i, col) in columns.iter().enumerate() {
        assert_eq!(got_cols[i], cells(col.as_ref()), "column {i}");
    }
    assert!(!RealFs.exists(&path.with_extension("wseg.tmp")));
    r
}

pub(super) fn secs(n: usize) -> Vec<i64> {
    (0..n as i64)
        .map(|i| MONTH.start_ns() + i * 1_000_000_000)
        .collect()
}

fn all_types() -> SegmentMeta {
    meta(&[
        ("f", ChannelType::F64),
        ("i", ChannelType::I64),
        ("b", ChannelType::Bool),
        ("s", ChannelType::Str),
    ])
}

#[test]
fn round_trip_every_type_with_nulls_across_blocks() {
    let n = 50;
    let times = secs(n);
    let f: Float64Array = (0..n)
        .map(|i| (i % 4 != 1).then_some(i as f64 * 0.1 + 214.9))
        .collect();
    let i: Int64Array = (0..n)
        .map(|i| (i % 5 != 0).then_some(i as i64 * 1000 - 7))
        .collect();
    let b: BooleanArray = (0..n).map(|i| (i % 3 != 0).then_some(i % 2 == 0)).collect();
    let s: StringArray = (0..n)
        .map(|i| (i % 6 != 2).then(|| ["ok", "", "fault ⚡", "ÄÖÜ", "idle"][i % 5]))
        .collect();
    let cols: Vec<ArrayRef> = vec![Arc::new(f), Arc::new(i), Arc::new(b), Arc::new(s)];
    for block_rows in [1, 7, 50, 65_536] {
        let opts = WriteOptions {
            block_rows,
            ..WriteOptions::default()
        };
        let r = assert_round_trip(&all_types(), &times, &cols, &opts);
        assert_eq!(r.blocks().len(), n.div_ceil(block_rows));
    }
}

#[test]
fn round_trip_special_values() {
    let times = vec![MONTH.start_ns(), MONTH.start_ns() + 1, MONTH.end_ns() - 1];
    let special = [
        (f64::NAN, i64::MIN, ""),
        (-0.0, i64::MAX, "日本語 🌞"),
        (f64::NEG_INFINITY, 0, "\0"),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from_iter_values(special.iter().map(|s| s.0))),
        Arc::new(Int64Array::from_iter_values(special.iter().map(|s| s.1))),
        Arc::new(BooleanArray::from(vec![None, None, None])),
        Arc::new(StringArray::from_iter_values(special.iter().map(|s| s.2))),
    ];
    let r = assert_round_trip(&all_types(), &times, &cols, &WriteOptions::default());
    let blk = &r.blocks()[0];
    assert_eq!(
        blk.columns[0].stats,
        Stats::F64 {
            min: f64::NEG_INFINITY,
            max: -0.0
        }
    );
    assert_eq!(blk.columns[2].stats, Stats::AllNull);
    assert_eq!(blk.columns[2].encoding, enc::ALL_NULL);
    assert_eq!(blk.columns[2].len, 0);
    // NaN payloads other than the canonical one survive too.
    let odd_nan = f64::from_bits(0xfff0_0000_dead_beef);
    let nan_only: ArrayRef = Arc::new(Float64Array::from(vec![odd_nan, f64::NAN, odd_nan]));
    let m = meta(&[("x", ChannelType::F64)]);
    let r = assert_round_trip(&m, &times, &[nan_only], &WriteOptions::default());
    match &r.blocks()[0].columns[0].stats {
        Stats::F64 { min, max } => assert!(min.is_nan() && max.is_nan()),
        s => panic!("{s:?}"),
    }
}

#[test]
fn empty_segment_round_trips() {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(Vec::<f64>::new())),
        Arc::new(Int64Array::from(Vec::<i64>::new())),
        Arc::new(BooleanArray::from(Vec::<bool>::new())),
        Arc::new(StringArray::from(Vec::<&str>::new())),
    ];
    let r = assert_round_trip(&all_types(), &[], &cols, &WriteOptions::default());
    assert!(r.blocks().is_empty());
}

#[test]
fn sliced_input_arrays_are_respected() {
    let full: ArrayRef = Arc::new(Int64Array::from(vec![
        Some(1),
        None,
        Some(3),
        Some(4),
        None,
    ]));
    let m = meta(&[("x", ChannelType::I64)]);
    assert_round_trip(&m, &secs(3), &[full.slice(1, 3)], &WriteOptions::default());
}

#[test]
fn encodings_are_chosen_per_chunk() {
    let n = 1000;
    let m = meta(&[
        ("dec", ChannelType::F64),
        ("raw", ChannelType::F64),
        ("runs", ChannelType::Bool),
        ("bits", ChannelType::Bool),
    ]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| (38 + i) as f64 / 100.0),
        )),
        Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| (i as f64).sqrt()),
        )),
        Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i < 600)))),
        Arc::new(BooleanArray::from_iter(
            (0..n).map(|_| Some(next() & 1 == 1)),
        )),
    ];
    let r = assert_round_trip(&m, &secs(n), &cols, &WriteOptions::default());
    let tags: Vec<u8> = r.blocks()[0]
        .columns
        .iter()
        .map(|c| c.encoding & !enc::ZSTD)
        .collect();
    assert_eq!(tags[0], enc::F64_DECIMAL);
    assert!(
        matches!(tags[1], enc::F64_SHUFFLE | enc::F64_XOR),
        "{tags:?}"
    );
    assert_eq!(tags[2], enc::BOOL_RLE);
    assert_eq!(tags[3], enc::BOOL_BITS);
}

#[test]
fn meter_decimals_take_the_scaled_path() {
    let scale = |values: &[f64]| match enc::f64_candidates(values).as_slice() {
        [(enc::F64_DECIMAL, bytes)] => Some(bytes[0]),
        _ => None,
    };
    assert_eq!(scale(&[214.9, 2207.8, 83.6]), Some(1));
    assert_eq!(scale(&[214.9, 0.38, 2207.8, 83.6]), Some(2));
    assert_eq!(scale(&[0.0, 1.0, -7.0]), Some(0));
    assert_eq!(scale(&[0.123456789, 1e6]), Some(9));
    assert_eq!(scale(&[0.1 + 0.2]), None);
    for special in [-0.0, f64::NAN, f64::INFINITY, 1e300, 2f64.powi(53)] {
        assert_eq!(scale(&[1.5, special]), None, "{special}");
    }
}

#[test]
fn reader_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync>() {}
    check::<SegmentReader>();
}

#[test]
fn bad_input_is_rejected_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.wseg");
    let m = meta(&[("x", ChannelType::I64)]);
    let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]));
    let t = secs(3);
    let opts = WriteOptions::default();
    let cases: Vec<(Vec<i64>, Vec<ArrayRef>, WriteOptions)> = vec![
        (t[..2].to_vec(), vec![ints.clone()], opts.clone()),
        (vec![t[0], t[2], t[1]], vec![ints.clone()], opts.clone()),
        (vec![t[0], t[0], t[1]], vec![ints.clone()], opts.clone()),
        (
            vec![t[0], t[1], MONTH.end_ns()],
            vec![ints.clone()],
            opts.clone(),
        ),
        (t.clone(), vec![floats], opts.clone()),
        (t.clone(), vec![], opts.clone()),
        (
            t.clone(),
            vec![ints.clone()],
            WriteOptions {
                block_rows: 0,
                ..opts.clone()
            },
        ),
    ];
    for (times, cols, opts) in cases {
        let err = write_segment(&RealFs, &path, &m, &times, &cols, &opts).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        assert!(!RealFs.exists(&path));
    }
    let long: ArrayRef = Arc::new(StringArray::from(vec!["x".repeat(2000); 3]));
    let m = meta(&[("s", ChannelType::Str)]);
    assert!(write_segment(&RealFs, &path, &m, &t, &[long], &opts).is_err());
    let mut dup = meta(&[("x", ChannelType::I64), ("x", ChannelType::I64)]);
    assert!(
        write_segment(
            &RealFs,
            &path,
            &dup,
            &t,
            &[ints.clone(), ints.clone()],
            &opts
        )
        .is_err()
    );
    dup.columns.pop();
    dup.min_seq = 30;
    assert!(write_segment(&RealFs, &path, &dup, &t, &[ints], &opts).is_err());
}

#[test]
fn reader_rejects_out_of_range_indices() {
    let m = meta(&[("x", ChannelType::I64)]);
    let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let r = assert_round_trip(&m, &secs(3), &[ints], &WriteOptions::default());
    assert!(matches!(r.read_times(1), Err(Error::InvalidInput(_))));
    assert!(matches!(r.read_column(0, 1), Err(Error::InvalidInput(_))));
}

/// 64k rows of a realistic meter: 1 Hz time, voltage around 230 V with one
/// decimal and small noise, and a load switching between 0 and ~2200 W.
#[test]
fn realistic_meter_data_compresses_to_a_fraction_of_a_byte_per_value() {
    let n = 65_536;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut on = false;
    let (mut volts, mut watts) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let drift = 20.0 * (i as f64 / 3600.0).sin(); // tenths of a volt
        let tenths = 2300 + drift.round() as i64 + rand(5) as i64 - 2;
        volts.push(tenths as f64 / 10.0);
        if rand(900) == 0 {
            on = !on;
        }
        watts.push(if on {
            (22_000 + rand(41) as i64 - 20) as f64 / 10.0
        } else {
            0.0
        });
    }
    let m = meta(&[("voltage", ChannelType::F64), ("power", ChannelType::F64)]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(volts)),
        Arc::new(Float64Array::from(watts)),
    ];
    let r = assert_round_trip(&m, &secs(n), &cols, &WriteOptions::default());
    let b = &r.blocks()[0];
    let per = |len: u64| len as f64 / n as f64;
    let (time, volt, watt) = (b.time.len, b.columns[0].len, b.columns[1].len);
    let per_value = r.file_len() as f64 / (3 * n) as f64;
    println!(
        "file {} bytes for {n} rows x 3 values (time, voltage, power) = {per_value:.4} \
         bytes/value ({:.4} per channel value); chunks: time {:.4}, voltage {:.4}, \
         power {:.4} bytes/value",
        r.file_len(),
        r.file_len() as f64 / (2 * n) as f64,
        per(u64::from(time)),
        per(u64::from(volt)),
        per(u64::from(watt)),
    );
    assert!(per_value < 0.5, "{per_value} bytes/value");
    assert!(per(u64::from(time)) < 0.01);
    for c in &b.columns {
        assert_eq!(c.encoding, enc::F64_DECIMAL | enc::ZSTD);
    }
}

/// The fixed data behind `testdata/segment-v1.wseg`. Never change it: the
/// golden file must stay byte-identical to what this writes.
pub(super) fn golden_input() -> (SegmentMeta, Vec<i64>, Vec<ArrayRef>, WriteOptions) {
    let m = SegmentMeta {
        table: "energy".into(),
        device: "meter-7".into(),
        month: Month {
            year: 2022,
            month: 7,
        },
        min_seq: 100,
        max_seq: 142,
        columns: vec![
            ("voltage".into(), ChannelType::F64),
            ("ratio".into(), ChannelType::F64),
            ("energy_wh".into(), ChannelType::I64),
            ("relay".into(), ChannelType::Bool),
            ("status".into(), ChannelType::Str),
            ("missing".into(), ChannelType::F64),
        ],
    };
    let n = 40;
    let start = m.month.start_ns() + 1_658_244_261_000_000_000 % 86_400_000_000_000;
    let times = (0..n as i64)
        .map(|i| start + i * 1_000_000_000 + (i % 3) * 1_000)
        .collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from_iter((0..n).map(|i| {
            (i % 7 != 3).then_some([214.9, 230.1, 229.8, 2207.8, 83.6][i % 5])
        }))),
        Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| (i as f64 + 1.0).ln()),
        )),
        Arc::new(Int64Array::from_iter(
            (0..n).map(|i| (i != 5).then_some(i64::MAX - 9 * i as i64)),
        )),
        Arc::new(BooleanArray::from_iter(
            (0..n).map(|i| (i % 11 != 0).then_some(i < 25)),
        )),
        Arc::new(StringArray::from_iter((0..n).map(|i| {
            (i % 4 != 0).then_some(["ok", "", "Überlast ⚡"][i % 3])
        }))),
        Arc::new(Float64Array::from(vec![None; n])),
    ];
    let opts = WriteOptions {
        block_rows: 16,
        zstd_level: 7,
    };
    (m, times, cols, opts)
}

fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/segment-v1.wseg")
}

/// Run with `WATTSON_BLESS_SEGMENT=1` only when creating a NEW format version's
/// golden file; never to paper over a change to version 1.
#[test]
fn golden_file_is_byte_identical_to_what_we_write_today() {
    let (m, times, cols, opts) = golden_input();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write(dir.path(), &m, &times, &cols, &opts);
    let today = RealFs.read(&path).unwrap();
    if std::env::var_os("WATTSON_BLESS_SEGMENT").is_some() {
        let golden = golden_path();
        let mut f = RealFs.create(&golden).unwrap();
        f.write_all(&today).unwrap();
        f.sync_data().unwrap();
    }
    let golden = RealFs.read(&golden_path()).unwrap();
    assert!(
        today == golden,
        "THE SEGMENT FILE FORMAT CHANGED: writing the fixed golden data no longer \
         produces the bytes of {}. Files on users' disks are in the old format. \
         If the change is intended, bump FORMAT_VERSION, keep a reader for version 1 \
         (and this golden file, which must stay readable), and add a golden file for \
         the new version. (If only the bundled zstd library changed its output, \
         confirm `golden_file_still_reads` passes and say so in the commit.)",
        golden_path().display()
    );
}

#[test]
fn golden_file_still_reads() {
    let (m, times, cols, _) = golden_input();
    let r = SegmentReader::open(&RealFs, &golden_path()).unwrap();
    assert_eq!(r.meta(), &m);
    assert_eq!(r.blocks().len(), 3);
    let (got_times, got_cols) = read_all(&r).unwrap();
    assert_eq!(got_times, times);
    for (i, col) in cols.iter().enumerate() {
        assert_eq!(got_cols[i], cells(col.as_ref()), "column {i}");
    }
}
