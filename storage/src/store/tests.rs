//! Store tests: behaviour, a proptest against a `BTreeMap` model, and
//! simulated power loss at every I/O operation of a workload.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;
use crate::io::{FaultFs, FaultPlan};
use crate::model::{ChannelType, Value};

mod read_only;

const SEC: i64 = 1_000_000_000;
/// 2022-07-19T15:24:21Z, the seed's first reading.
const T0: i64 = 1_658_244_261 * SEC;
const DIR: &str = "/data";

fn test_opts(vfs: Arc<dyn Vfs>) -> StoreOptions {
    StoreOptions {
        vfs,
        clock: Arc::new(ManualClock::new(T0)),
        background: false,
        group_commit_window: Duration::ZERO,
        block_rows: 16,
        wal_segment_bytes: 4096,
        ..StoreOptions::default()
    }
}

fn r(device: &str, time: i64, values: &[(&str, Value)]) -> Reading {
    Reading {
        table: "power".into(),
        device: device.into(),
        time,
        values: values
            .iter()
            .map(|(n, v)| ((*n).into(), v.clone()))
            .collect(),
    }
}

fn f(device: &str, time: i64, v: f64) -> Reading {
    r(device, time, &[("p", Value::F64(v))])
}

/// A scan's rows as (device, time, channel values rendered as text).
type Row = (String, i64, Vec<Option<String>>);

fn rows(store: &Store, req: &ScanRequest) -> Vec<Row> {
    let scan = store.scan(req).unwrap();
    let schema = scan.schema();
    let mut out = Vec::new();
    for batch in scan {
        let batch = batch.unwrap();
        assert_eq!(batch.schema(), schema);
        let time = batch.column_by_name("time").and_then(|c| {
            c.as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .cloned()
        });
        let device = batch
            .column_by_name("device")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        for i in 0..batch.num_rows() {
            let mut vals = Vec::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                if f.name() == "time" || f.name() == "device" {
                    continue;
                }
                vals.push(render(col.as_ref(), i));
            }
            out.push((
                device
                    .as_ref()
                    .map_or(String::new(), |d| d.value(i).to_owned()),
                time.as_ref().map_or(0, |t| t.value(i)),
                vals,
            ));
        }
    }
    out
}

fn render(col: &dyn Array, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    let any = col.as_any();
    Some(if let Some(a) = any.downcast_ref::<Float64Array>() {
        format!("{:?}", a.value(i))
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        a.value(i).to_string()
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        a.value(i).to_string()
    } else if let Some(a) = any.downcast_ref::<StringArray>() {
        format!("{:?}", a.value(i))
    } else {
        panic!("unexpected type {:?}", col.data_type())
    })
}

fn all(store: &Store) -> Vec<Row> {
    rows(store, &ScanRequest::table("power"))
}

fn mem_store() -> (Arc<FaultFs>, Store) {
    let fs = Arc::new(FaultFs::new());
    let store = Store::open(DIR, test_opts(fs.clone())).unwrap();
    (fs, store)
}

#[test]
fn appends_are_readable_at_once_and_after_sealing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        vfs: Arc::new(RealFs),
        ..test_opts(Arc::new(RealFs))
    };
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let batch: Vec<Reading> = (0..100)
        .map(|i| f("m1", T0 + i * SEC, i as f64 / 10.0))
        .collect();
    store.append(batch).unwrap();
    let before = all(&store);
    assert_eq!(before.len(), 100);
    assert_eq!(
        before[3],
        ("m1".into(), T0 + 3 * SEC, vec![Some("0.3".into())])
    );
    store.flush().unwrap();
    assert_eq!(all(&store), before);
    let parts = store.partitions();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (parts[0].rows, parts[0].buffered_rows, parts[0].segments),
        (100, 0, 1)
    );
    drop(store);
    let store = Store::open(dir.path(), opts).unwrap();
    assert!(
        store.recovery_report().is_empty(),
        "{:?}",
        store.recovery_report()
    );
    assert_eq!(all(&store), before);
}

#[test]
fn schema_evolves_and_old_rows_read_null() {
    let (_fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    store
        .append(vec![r(
            "m1",
            T0 + SEC,
            &[
                ("p", Value::F64(2.0)),
                ("energy_wh", Value::I64(7)),
                ("relay", Value::Bool(true)),
                ("status", Value::Str("ok".into())),
            ],
        )])
        .unwrap();
    let def = store.table("power").unwrap();
    let names: Vec<_> = def.channels.iter().map(|c| (c.0.as_str(), c.1)).collect();
    assert_eq!(
        names,
        [
            ("p", ChannelType::F64),
            ("energy_wh", ChannelType::I64),
            ("relay", ChannelType::Bool),
            ("status", ChannelType::Str)
        ]
    );
    let expect = vec![
        (
            "m1".to_owned(),
            T0,
            vec![Some("1.0".to_owned()), None, None, None],
        ),
        (
            "m1".to_owned(),
            T0 + SEC,
            vec![
                Some("2.0".into()),
                Some("7".into()),
                Some("true".into()),
                Some("\"ok\"".into()),
            ],
        ),
    ];
    assert_eq!(all(&store), expect);
    store.flush().unwrap();
    assert_eq!(all(&store), expect);
}

#[test]
fn type_conflict_rejects_the_whole_batch_with_a_clear_error() {
    let (_fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    let err = store
        .append(vec![
            f("m1", T0 + SEC, 2.0),
            r("m1", T0 + 2 * SEC, &[("p", Value::Str("x".into()))]),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `power`: channel `p` is f64 but the reading has string; the reading was rejected"
    );
    assert_eq!(all(&store).len(), 1);
}

#[test]
fn last_write_wins_and_late_readings_land_in_their_month() {
    let (_fs, store) = mem_store();
    let june = T0 - 40 * 86_400 * SEC;
    store
        .append(vec![f("m1", T0, 1.0), f("m1", T0 + SEC, 1.0)])
        .unwrap();
    store.flush().unwrap();
    // Overwrite one sealed row, one buffered row twice, and add a late June reading.
    store
        .append(vec![f("m1", T0, 5.0), f("m1", june, 9.0)])
        .unwrap();
    store.append(vec![f("m1", T0 + 2 * SEC, 3.0)]).unwrap();
    store.append(vec![f("m1", T0 + 2 * SEC, 4.0)]).unwrap();
    let expect = vec![
        ("m1".to_owned(), june, vec![Some("9.0".to_owned())]),
        ("m1".to_owned(), T0, vec![Some("5.0".to_owned())]),
        ("m1".to_owned(), T0 + SEC, vec![Some("1.0".to_owned())]),
        ("m1".to_owned(), T0 + 2 * SEC, vec![Some("4.0".to_owned())]),
    ];
    assert_eq!(all(&store), expect);
    let months: Vec<_> = store
        .partitions()
        .iter()
        .map(|p| p.month.to_string())
        .collect();
    assert_eq!(months, ["2022-06", "2022-07"]);
    store.flush().unwrap();
    assert_eq!(all(&store), expect);
    assert_eq!(store.compact().unwrap(), 1);
    assert_eq!(all(&store), expect);
    assert_eq!(store.partitions()[1].segments, 1);
}

#[test]
fn background_compaction_merges_by_tiers_while_sealing_and_fully_once_cold() {
    let fs = Arc::new(FaultFs::new());
    let clock = ManualClock::new(T0);
    let opts = StoreOptions {
        clock: Arc::new(clock.clone()),
        ..test_opts(fs)
    };
    let cold_after = opts.compact_cold_after.as_secs() as i64 * SEC;
    let store = Store::open(DIR, opts.clone()).unwrap();
    let mut next = 0;
    let mut seal = |store: &Store, rows: i64| {
        let batch = (next..next + rows).map(|i| f("m1", T0 + i * SEC, i as f64));
        store.append(batch.collect()).unwrap();
        store.flush().unwrap();
        next += rows;
    };
    let background = |store: &Store| {
        maintenance::compact_all(&store.shared, maintenance::Policy::Background).unwrap()
    };
    let files = |store: &Store| -> Vec<u64> {
        let state = store.shared.state.read();
        state.parts.values().flatten().map(|s| s.rows()).collect()
    };
    for _ in 0..4 {
        seal(&store, 8);
    }
    assert_eq!(background(&store), 1);
    assert_eq!(files(&store), [32]);
    seal(&store, 8);
    seal(&store, 8);
    // Two small files after a larger one: not a tier yet, and July 2022 is
    // still running on this clock.
    assert_eq!(background(&store), 0);
    assert_eq!(files(&store), [32, 8, 8]);
    let july_end = Month::of(T0).end_ns();
    clock.set(july_end + cold_after - SEC);
    assert_eq!(background(&store), 0, "the month ended under an hour ago");
    clock.advance(2 * SEC);
    assert_eq!(background(&store), 1, "cold: one merge of everything");
    assert_eq!(files(&store), [48]);
    assert_eq!(background(&store), 0);
    // A late reading waits while its burst may go on...
    seal(&store, 1);
    assert_eq!(background(&store), 0);
    assert_eq!(files(&store), [48, 1]);
    // ...but after a restart nothing says when it came: merged at once.
    drop(store);
    let store = Store::open(DIR, opts).unwrap();
    assert_eq!(background(&store), 1);
    assert_eq!(files(&store), [49]);
    let want: Vec<Row> = (0..49)
        .map(|i| {
            (
                "m1".into(),
                T0 + i * SEC,
                vec![Some(format!("{:?}", i as f64))],
            )
        })
        .collect();
    assert_eq!(all(&store), want);
}

#[test]
fn repeated_scans_hit_the_block_cache_and_rewritten_rows_are_never_stale() {
    let (_fs, store) = mem_store();
    let batch = |sign: f64| -> Vec<Reading> {
        (0..40)
            .map(|i| f("m1", T0 + i * SEC, sign * (i as f64 + 1.0)))
            .collect()
    };
    store.append(batch(1.0)).unwrap();
    store.flush().unwrap();
    let first = all(&store);
    let misses = store.block_cache_stats().misses;
    assert!(misses > 0, "the first scan decodes");
    assert_eq!(all(&store), first);
    let s = store.block_cache_stats();
    assert_eq!(s.misses, misses, "the second scan decodes nothing");
    assert!(s.hits >= misses && s.bytes > 0 && s.bytes <= s.capacity);
    // Overwrite every sealed row, seal, then merge the segments into one:
    // each new segment is read afresh, never from the old one's chunks.
    store.append(batch(-1.0)).unwrap();
    store.flush().unwrap();
    let want = |rows: Vec<Row>| {
        assert_eq!(rows.len(), 40);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.2[0], Some(format!("{:?}", -(i as f64 + 1.0))));
        }
    };
    want(all(&store));
    assert!(store.block_cache_stats().bytes > 0);
    store.compact().unwrap();
    assert_eq!(
        store.block_cache_stats().bytes,
        0,
        "the merged files' chunks left the cache with them"
    );
    want(all(&store));
    want(all(&store));
}

#[test]
fn timestamps_are_cached_like_channels() {
    let (_fs, store) = mem_store();
    store
        .append((0..40).map(|i| f("m1", T0 + i * SEC, i as f64)).collect())
        .unwrap();
    store.flush().unwrap();
    let scan = |columns: &[&str]| -> Vec<RecordBatch> {
        let req = ScanRequest::table("power").columns(columns.iter().copied());
        store.scan(&req).unwrap().map(|b| b.unwrap()).collect()
    };
    let first = scan(&["p"]);
    let channels_only = store.block_cache_stats();
    let with_time = scan(&["time", "p"]);
    let s = store.block_cache_stats();
    let blocks = with_time
        .iter()
        .map(|b| b.num_rows())
        .sum::<usize>()
        .div_ceil(16);
    assert_eq!(
        s.misses - channels_only.misses,
        blocks as u64,
        "one time chunk per block"
    );
    assert!(s.bytes > channels_only.bytes);
    let again = scan(&["time", "p"]);
    assert_eq!(store.block_cache_stats().misses, s.misses, "decoded once");
    assert_eq!(again, with_time);
    assert_eq!(with_time[0].column(1), first[0].column(0));
    // A range inside the blocks slices the cached timestamps.
    let req = ScanRequest::table("power")
        .range(Some(T0 + 3 * SEC), Some(T0 + 21 * SEC))
        .columns(["time"]);
    let times: Vec<i64> = store
        .scan(&req)
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            b.column(0)
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(times, (3..21).map(|i| T0 + i * SEC).collect::<Vec<_>>());
    assert_eq!(store.block_cache_stats().misses, s.misses);
}

#[test]
fn a_zero_block_cache_keeps_nothing() {
    let fs = Arc::new(FaultFs::new());
    let store = Store::open(
        DIR,
        StoreOptions {
            block_cache_bytes: 0,
            ..test_opts(fs)
        },
    )
    .unwrap();
    store
        .append((0..40).map(|i| f("m1", T0 + i * SEC, 1.0)).collect())
        .unwrap();
    store.flush().unwrap();
    assert_eq!(all(&store).len(), 40);
    assert_eq!(all(&store).len(), 40);
    let s = store.block_cache_stats();
    assert_eq!((s.hits, s.bytes), (0, 0));
}

#[test]
fn scans_prune_by_device_time_and_projection() {
    let (_fs, store) = mem_store();
    let batch: Vec<Reading> = (0..64)
        .flat_map(|i| ["a", "b"].map(|d| f(d, T0 + i * SEC, i as f64)))
        .collect();
    store.append(batch).unwrap();
    store.flush().unwrap();
    let req = ScanRequest::table("power")
        .devices(["b"])
        .range(Some(T0 + 20 * SEC), Some(T0 + 24 * SEC))
        .columns(["p", "time"]);
    let mut scan = store.scan(&req).unwrap();
    let names: Vec<_> = scan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["p", "time"]);
    let batches: Vec<_> = scan.by_ref().map(|b| b.unwrap()).collect();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 4);
    let m = scan.metrics();
    // One device's partition, 64 rows in blocks of 16: only block 1 overlaps.
    assert_eq!(
        (m.partitions, m.blocks_total, m.blocks_pruned, m.blocks_read),
        (1, 4, 3, 1)
    );
    let err = store
        .scan(&ScanRequest::table("power").columns(["nope"]))
        .unwrap_err();
    assert_eq!(err.to_string(), "table `power` has no column `nope`");
    let err = store.scan(&ScanRequest::table("nope")).unwrap_err();
    assert_eq!(err.to_string(), "unknown table `nope`");
}

#[test]
fn a_nearly_full_disk_refuses_appends_until_space_is_freed() {
    let fs = Arc::new(FaultFs::new());
    let clock = ManualClock::new(T0);
    let opts = StoreOptions {
        clock: Arc::new(clock.clone()),
        min_free_bytes: 1 << 20,
        ..test_opts(fs.clone())
    };
    let store = Store::open(DIR, opts.clone()).unwrap();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    assert_eq!(store.write_failure(), None);
    fs.set_available(Some(1000));
    // The free space is looked up once a second, or once a quarter of the
    // reserve (256 KiB) has gone into the WAL since.
    store.append(vec![f("m1", T0 + SEC, 2.0)]).unwrap();
    let burst = (0..20_000).map(|i| f("m2", T0 + i * SEC, 0.5)).collect();
    store.append(burst).unwrap();
    let err = store.append(vec![f("m1", T0 + 2 * SEC, 3.0)]).unwrap_err();
    assert!(
        matches!(err, Error::DiskFull { available: 1000, reserve } if reserve == 1 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("min_free_mib"), "{err}");
    let why = store.write_failure().unwrap();
    assert!(why.contains("1000 bytes are free"), "{why}");
    // Sealing and scans go on; the refused reading was not written.
    store.flush().unwrap();
    assert_eq!(all(&store).len(), 20_002);
    fs.set_available(Some(2 << 20));
    assert!(store.write_failure().is_some(), "not looked up again yet");
    clock.advance(SEC);
    assert_eq!(store.write_failure(), None);
    store.append(vec![f("m1", T0 + 2 * SEC, 3.0)]).unwrap();
    assert_eq!(all(&store).len(), 20_003);
    drop(store);
    // 0 turns the check off.
    fs.set_available(Some(0));
    let store = Store::open(
        DIR,
        StoreOptions {
            min_free_bytes: 0,
            ..opts
        },
    )
    .unwrap();
    store.append(vec![f("m1", T0 + 3 * SEC, 4.0)]).unwrap();
    assert_eq!(store.write_failure(), None);
}

#[test]
fn a_wal_that_cannot_start_a_file_keeps_the_store_writable() {
    let (fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    // No file can be created (no inode left, say): sealing cannot freeze
    // the buffer at a new WAL file, but the log is not poisoned by that.
    fs.set_plan(FaultPlan::default().fail_create_after(1));
    let err = store.flush().unwrap_err();
    assert!(err.to_string().contains("os error 28"), "{err}");
    assert_eq!(store.write_failure(), None);
    // More than a WAL file's worth (4 KiB here): rounds that would start a
    // new file go into the current one.
    for n in 0..6 {
        let burst = (1..=50).map(|i| f("m1", T0 + (n * 50 + i) * SEC, 0.5));
        store.append(burst.collect()).unwrap();
    }
    assert_eq!(all(&store).len(), 301);
    let wal = Path::new(DIR).join("wal");
    let files = fs.list_dir(&wal).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(fs.read(&files[0]).unwrap().len() > 4096);
    fs.set_plan(FaultPlan::default());
    store.flush().unwrap();
    store.append(vec![f("m2", T0, 2.0)]).unwrap();
    drop(store);
    let after = Store::open(DIR, test_opts(Arc::new(fs.power_loss(3)))).unwrap();
    assert_eq!(all(&after).len(), 302);
}

#[test]
fn a_disk_filled_to_the_last_byte_by_others_does_not_poison_the_log() {
    let fs = Arc::new(FaultFs::new());
    let clock = ManualClock::new(T0);
    let store = Store::open(
        DIR,
        StoreOptions {
            clock: Arc::new(clock.clone()),
            min_free_bytes: 1 << 20,
            ..test_opts(fs.clone())
        },
    )
    .unwrap();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    // Something else takes every byte: not one more can be written.
    fs.set_available(Some(0));
    fs.set_plan(FaultPlan::default().space_limit_bytes(fs.used_bytes()));
    clock.advance(SEC);
    assert!(matches!(
        store.append(vec![f("m1", T0 + SEC, 2.0)]),
        Err(Error::DiskFull { .. })
    ));
    // Sealing needs a new WAL file, whose header does not fit.
    let err = store.flush().unwrap_err();
    assert!(err.to_string().contains("os error 28"), "{err}");
    let why = store.write_failure().unwrap();
    assert!(why.contains("0 bytes are free"), "not poisoned: {why}");
    // Space comes back: sealing and appends resume without a restart.
    fs.set_plan(FaultPlan::default());
    fs.set_available(None);
    clock.advance(SEC);
    store.flush().unwrap();
    store.append(vec![f("m1", T0 + SEC, 2.0)]).unwrap();
    assert_eq!(store.write_failure(), None);
    drop(store);
    let after = Store::open(DIR, test_opts(Arc::new(fs.power_loss(5)))).unwrap();
    assert_eq!(all(&after).len(), 2);
}

#[test]
fn retention_drops_whole_months_and_rejects_old_readings() {
    let fs = Arc::new(FaultFs::new());
    let clock = ManualClock::new(T0);
    let opts = StoreOptions {
        clock: Arc::new(clock.clone()),
        ..test_opts(fs.clone())
    };
    let store = Store::open(DIR, opts.clone()).unwrap();
    let may = T0 - 60 * 86_400 * SEC;
    store
        .append(vec![f("m1", may, 1.0), f("m1", T0, 2.0)])
        .unwrap();
    store.flush().unwrap();
    assert_eq!(all(&store).len(), 2);
    let cached = store.block_cache_stats();
    store
        .set_retention("power", Some(Duration::from_secs(30 * 86_400)))
        .unwrap();
    assert_eq!(store.enforce_retention().unwrap(), 1);
    let kept = store.block_cache_stats();
    assert!(
        0 < kept.bytes && kept.bytes < cached.bytes,
        "the dropped month's chunks left the cache: {cached:?} -> {kept:?}"
    );
    assert_eq!(
        all(&store),
        vec![("m1".into(), T0, vec![Some("2.0".into())])]
    );
    let rescanned = store.block_cache_stats();
    assert_eq!(
        (rescanned.misses, rescanned.bytes),
        (kept.misses, kept.bytes),
        "the kept month is still cached"
    );
    let err = store.append(vec![f("m1", may, 3.0)]).unwrap_err();
    assert!(matches!(err, Error::BeyondRetention { .. }), "{err}");
    assert!(matches!(
        store.set_retention("nope", None),
        Err(Error::UnknownTable(_))
    ));
    drop(store);
    // Retention is persisted and the dropped month stays gone.
    let store = Store::open(DIR, opts).unwrap();
    assert_eq!(
        store.table("power").unwrap().retention,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(all(&store).len(), 1);
}

#[test]
fn a_second_process_gets_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), test_opts(Arc::new(RealFs))).unwrap();
    let err = Store::open(dir.path(), test_opts(Arc::new(RealFs))).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another Wattson process")
    );
}

#[test]
fn failed_fsync_poisons_and_nothing_unsynced_is_acknowledged() {
    let (fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    fs.set_plan(FaultPlan {
        fail_sync_after: Some(0),
        ..FaultPlan::default()
    });
    let err = store.append(vec![f("m1", T0 + SEC, 2.0)]).unwrap_err();
    assert!(matches!(err, Error::WalPoisoned { .. }), "{err}");
    fs.set_plan(FaultPlan::default());
    // Never retried as if it had worked.
    let err = store.append(vec![f("m1", T0 + 2 * SEC, 3.0)]).unwrap_err();
    assert!(err.to_string().contains("poisoned"), "{err}");
    assert_eq!(all(&store).len(), 1);
    drop(store);
    let after = Store::open(DIR, test_opts(Arc::new(fs.power_loss(1)))).unwrap();
    assert_eq!(
        all(&after),
        vec![("m1".into(), T0, vec![Some("1.0".into())])]
    );
}

#[test]
fn disk_full_is_reported_and_loses_nothing_acknowledged() {
    let (fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    fs.set_plan(FaultPlan {
        space_limit_bytes: Some(0),
        ..FaultPlan::default()
    });
    let err = store.append(vec![f("m1", T0 + SEC, 2.0)]).unwrap_err();
    assert!(matches!(err, Error::WalPoisoned { .. }), "{err}");
    assert!(store.flush().is_err());
    drop(store);
    fs.set_plan(FaultPlan::default());
    let after = Store::open(DIR, test_opts(Arc::new(fs.power_loss(2)))).unwrap();
    assert_eq!(all(&after).len(), 1);
}

#[test]
fn scans_see_whole_batches_while_appends_continue() {
    let fs = Arc::new(FaultFs::new());
    let store = Arc::new(
        Store::open(
            DIR,
            StoreOptions {
                buffer_bytes: 64 << 10,
                background: true,
                ..test_opts(fs)
            },
        )
        .unwrap(),
    );
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..200i64 {
                let batch = (0..10)
                    .map(|d| f(&format!("m{d}"), T0 + i * SEC, i as f64))
                    .collect();
                store.append(batch).unwrap();
            }
        })
    };
    while !writer.is_finished() {
        if store.table("power").is_none() {
            continue;
        }
        let n = all(&store).len();
        assert_eq!(n % 10, 0, "a scan saw part of a batch: {n} rows");
    }
    writer.join().unwrap();
    assert_eq!(all(&store).len(), 2000);
    store.close().unwrap();
}

#[test]
fn damaged_segment_blocks_are_reported_and_the_rest_stays_readable() {
    let (fs, store) = mem_store();
    let batch: Vec<Reading> = (0..64)
        .map(|i| f("m1", T0 + i * SEC, i as f64 * 1.5))
        .collect();
    store.append(batch).unwrap();
    store.flush().unwrap();
    let seg = store.shared.state.read().parts.values().next().unwrap()[0].clone();
    let path = seg.path().to_owned();
    let block = seg.blocks()[1].clone();
    drop(seg);
    drop(store);
    // Flip a bit inside the second block's data.
    let at = block.offset as usize + 1;
    fs.corrupt(&path, |b| b[at] ^= 0x10).unwrap();
    let store = Store::open(DIR, test_opts(fs.clone())).unwrap();
    let err = store
        .scan(&ScanRequest::table("power"))
        .unwrap()
        .find_map(|b| b.err())
        .expect("damage must surface");
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if p == &path),
        "{err}"
    );
    let mut scan = store
        .scan(&ScanRequest {
            skip_damaged: true,
            ..ScanRequest::table("power")
        })
        .unwrap();
    let n: usize = scan.by_ref().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 48);
    assert_eq!(scan.damaged().len(), 1);
    assert_eq!(store.verify().len(), 1);
}

#[test]
fn a_damaged_segment_footer_is_quarantined_at_open() {
    let (fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    store.flush().unwrap();
    store.append(vec![f("m2", T0, 2.0)]).unwrap();
    store.flush().unwrap();
    let path = store.shared.state.read().parts.values().next().unwrap()[0]
        .path()
        .to_owned();
    drop(store);
    fs.corrupt(&path, |b| {
        let n = b.len();
        b[n - 10] ^= 0xff;
    })
    .unwrap();
    let store = Store::open(DIR, test_opts(fs.clone())).unwrap();
    assert!(
        matches!(store.recovery_report(), [RecoveryEvent::SegmentQuarantined { file, .. }] if file == &path),
        "{:?}",
        store.recovery_report()
    );
    assert_eq!(
        all(&store),
        vec![("m2".into(), T0, vec![Some("2.0".into())])]
    );
    assert!(!fs.exists(&path));
}

// ---- proptest against a BTreeMap model -------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// (device, second offset, value) triples, appended as one batch.
    Append(Vec<(u8, i64, i64)>),
    Scan {
        device: Option<u8>,
        start: i64,
        len: i64,
    },
    Flush,
    Compact,
    /// Keep this many days (relative to the clock, which sits at T0 + 100 days).
    Retention(Option<u16>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = (0u8..3, -150i64 * 86_400..100 * 86_400, -1000i64..1000);
    prop_oneof![
        6 => proptest::collection::vec(key, 1..12).prop_map(Op::Append),
        2 => (proptest::option::of(0u8..3), -150i64 * 86_400..100 * 86_400, 0i64..200 * 86_400)
            .prop_map(|(device, start, len)| Op::Scan { device, start, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => proptest::option::of(20u16..200).prop_map(Op::Retention),
        1 => Just(Op::Reopen),
    ]
}

type Model = BTreeMap<(String, i64), f64>;

fn model_rows(model: &Model, device: Option<&str>, start: i64, end: i64) -> Vec<Row> {
    let mut out: Vec<Row> = model
        .iter()
        .filter(|((d, t), _)| device.is_none_or(|x| x == d) && *t >= start && *t < end)
        .map(|((d, t), v)| (d.clone(), *t, vec![Some(format!("{v:?}"))]))
        .collect();
    // Scans order by device, then month, then time: the same as (device, time).
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

type Bounds = BTreeMap<(String, Month), (i64, i64)>;

/// Each partition's earliest and latest time, as listed by the store.
fn partition_bounds(parts: &[PartitionInfo]) -> Bounds {
    parts
        .iter()
        .map(|p| ((p.device.clone(), p.month), (p.min_time, p.max_time)))
        .collect()
}

/// The same from the model: rewriting a key keeps its time, so the bounds of
/// what is stored are the bounds of the model's keys.
fn model_bounds(model: &Model) -> Bounds {
    let mut out = Bounds::new();
    for (d, t) in model.keys() {
        let e = out.entry((d.clone(), Month::of(*t))).or_insert((*t, *t));
        *e = (e.0.min(*t), e.1.max(*t));
    }
    out
}

fn expire(model: &mut Model, retention_days: Option<u16>, now: i64) {
    if let Some(days) = retention_days {
        let cutoff = now - i64::from(days) * 86_400 * SEC;
        model.retain(|(_, t), _| Month::of(*t).end_ns() > cutoff);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..40)) {
        let now = T0 + 100 * 86_400 * SEC;
        let fs = Arc::new(FaultFs::new());
        let opts = StoreOptions {
            clock: Arc::new(ManualClock::new(now)),
            compact_max_rows: 64,
            ..test_opts(fs.clone())
        };
        let mut store = Store::open(DIR, opts.clone()).unwrap();
        let mut model = Model::new();
        let mut retention = None;
        for op in ops {
            match op {
                Op::Append(keys) => {
                    let batch: Vec<Reading> = keys
                        .iter()
                        .map(|(d, s, v)| f(&format!("d{d}"), T0 + s * SEC, *v as f64 / 10.0))
                        .collect();
                    let cutoff = retention.map(|d: u16| now - i64::from(d) * 86_400 * SEC);
                    let expired = batch.iter().any(|r| cutoff.is_some_and(|c| Month::of(r.time).end_ns() <= c));
                    match store.append(batch.clone()) {
                        Ok(_) => {
                            prop_assert!(!expired);
                            for r in batch {
                                let Value::F64(v) = r.values[0].1 else { unreachable!() };
                                model.insert((r.device.to_string(), r.time), v);
                            }
                        }
                        Err(Error::BeyondRetention { .. }) => prop_assert!(expired),
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                Op::Scan { device, start, len } => {
                    if model.is_empty() && store.table("power").is_none() {
                        continue;
                    }
                    let device = device.map(|d| format!("d{d}"));
                    let (start, end) = (T0 + start * SEC, T0 + (start + len) * SEC);
                    let mut req = ScanRequest::table("power").range(Some(start), Some(end));
                    if let Some(d) = &device {
                        req = req.devices([d.clone()]);
                    }
                    prop_assert_eq!(rows(&store, &req), model_rows(&model, device.as_deref(), start, end));
                    prop_assert_eq!(partition_bounds(&store.partitions()), model_bounds(&model));
                    let overlapping: Vec<_> = store
                        .partitions()
                        .into_iter()
                        .filter(|p| p.month.end_ns() > start && p.month.start_ns() < end)
                        .collect();
                    prop_assert_eq!(store.partitions_of("power", start, end), overlapping);
                    prop_assert!(store.partitions_of("other", start, end).is_empty());
                }
                Op::Flush => store.flush().unwrap(),
                Op::Compact => { store.compact().unwrap(); }
                Op::Retention(days) => {
                    if store.table("power").is_none() {
                        continue;
                    }
                    store.set_retention("power", days.map(|d| Duration::from_secs(u64::from(d) * 86_400))).unwrap();
                    store.enforce_retention().unwrap();
                    retention = days;
                    expire(&mut model, retention, now);
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(DIR, opts.clone()).unwrap();
                    prop_assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
                }
            }
        }
        if store.table("power").is_some() {
            prop_assert_eq!(all(&store), model_rows(&model, None, i64::MIN, i64::MAX));
        }
    }
}

// ---- simulated power loss ---------------------------------------------------

/// A workload with appends, seals and a compaction. Each append is one batch
/// of three readings with unique keys. Returns the batches it got
/// acknowledged and the one in flight when it failed, if any.
fn crash_workload(store: &Store) -> (Vec<usize>, Option<usize>) {
    let mut acked = Vec::new();
    for i in 0..12usize {
        if (i == 4 || i == 8) && store.flush().is_err() {
            return (acked, None);
        }
        if i == 10 && store.compact().is_err() {
            return (acked, None);
        }
        match store.append(crash_batch(i)) {
            Ok(_) => acked.push(i),
            Err(_) => return (acked, Some(i)),
        }
    }
    (acked, None)
}

fn crash_batch(i: usize) -> Vec<Reading> {
    (0..3)
        .map(|d| {
            f(
                &format!("d{d}"),
                T0 + (i as i64) * SEC + i64::from(d),
                i as f64,
            )
        })
        .collect()
}

fn check_oracle(store: &Store, acked: &[usize], in_flight: Option<usize>, what: &str) {
    let got = if store.table("power").is_some() {
        all(store)
    } else {
        Vec::new()
    };
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for (device, time, _) in &got {
        *seen.entry((device.clone(), *time)).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "{what}: a row appears twice: {got:?}"
    );
    for i in 0..12 {
        let present = crash_batch(i)
            .iter()
            .filter(|r| seen.contains_key(&(r.device.to_string(), r.time)))
            .count();
        if acked.contains(&i) {
            assert_eq!(present, 3, "{what}: acknowledged batch {i} is missing rows");
        } else if in_flight == Some(i) {
            assert!(
                present == 0 || present == 3,
                "{what}: batch {i} is torn: {present} of 3 rows"
            );
        } else {
            assert_eq!(
                present, 0,
                "{what}: batch {i} was never acknowledged but is present"
            );
        }
    }
}

#[test]
fn power_loss_at_every_io_operation_keeps_every_acknowledged_reading() {
    // Count the operations of a clean run first.
    let fs = Arc::new(FaultFs::new());
    let store = Store::open(DIR, test_opts(fs.clone())).unwrap();
    let (acked, _) = crash_workload(&store);
    assert_eq!(acked.len(), 12);
    let total_ops = fs.ops();
    drop(store);
    let mut states = 0;
    let seeds_per_point = (5_000 / total_ops as usize + 1).max(3) as u64;
    for crash_at in 0..=total_ops {
        for seed in 0..seeds_per_point {
            let fs = Arc::new(FaultFs::new());
            fs.set_plan(FaultPlan {
                crash_after_ops: Some(crash_at),
                ..FaultPlan::default()
            });
            let (acked, in_flight) = match Store::open(DIR, test_opts(fs.clone())) {
                Ok(store) => crash_workload(&store),
                Err(_) => (Vec::new(), None),
            };
            let after = Arc::new(fs.power_loss(seed));
            let what = format!("crash after op {crash_at}, seed {seed}");
            let store = Store::open(DIR, test_opts(after.clone()))
                .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
            check_oracle(&store, &acked, in_flight, &what);
            // Recovery must itself be durable: lose power again right away.
            drop(store);
            let again = Store::open(DIR, test_opts(Arc::new(after.power_loss(seed + 1))))
                .unwrap_or_else(|e| panic!("{what}: second reopen failed: {e}"));
            check_oracle(
                &again,
                &acked,
                in_flight,
                &format!("{what}, after a second power loss"),
            );
            states += 1;
        }
    }
    assert!(states >= 5_000, "only {states} crash states");
    eprintln!("checked {states} crash states over {total_ops} I/O operations");
}

#[test]
fn store_files_live_where_the_format_doc_says() {
    let (fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    store.flush().unwrap();
    let part = Path::new(DIR).join("tables/power/m1/2022-07");
    let files = fs.list_dir(&part).unwrap();
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .to_string_lossy()
            .ends_with("00000000000000000001-00000000000000000001.wseg")
    );
    assert!(fs.exists(&Path::new(DIR).join("catalog.wcat")));
    assert!(fs.is_dir(&Path::new(DIR).join("wal")));
}

#[test]
fn wal_bit_flips_never_give_a_wrong_answer() {
    let (fs, store) = mem_store();
    let batches: Vec<Vec<Reading>> = (0..4)
        .map(|b| {
            (0..3)
                .map(|i| f("m1", T0 + (b * 3 + i) * SEC, (b * 3 + i) as f64 + 0.5))
                .collect()
        })
        .collect();
    for b in &batches {
        store.append(b.clone()).unwrap();
    }
    let expected = all(&store);
    drop(store);
    let wal_dir = Path::new(DIR).join("wal");
    let files = fs.list_dir(&wal_dir).unwrap();
    let original = fs.read(&files[0]).unwrap();
    let mut detected = 0;
    for byte in 0..original.len() {
        let copy = Arc::new(fs.power_loss(0));
        copy.corrupt(&files[0], |b| b[byte] ^= 1 << (byte % 8))
            .unwrap();
        let store = Store::open(DIR, test_opts(copy)).unwrap();
        let got = if store.table("power").is_some() {
            all(&store)
        } else {
            Vec::new()
        };
        for row in &got {
            assert!(
                expected.contains(row),
                "flip at byte {byte} produced a wrong row {row:?}"
            );
        }
        if got.len() < expected.len() {
            assert!(
                !store.recovery_report().is_empty(),
                "flip at byte {byte} lost rows without a report"
            );
        }
        detected += usize::from(!store.recovery_report().is_empty());
    }
    assert_eq!(
        detected,
        original.len(),
        "every flipped byte must be reported"
    );
}

#[test]
fn wal_truncation_at_every_length_keeps_every_whole_record() {
    let (fs, store) = mem_store();
    for b in 0..4i64 {
        store.append(vec![f("m1", T0 + b * SEC, b as f64)]).unwrap();
    }
    let expected = all(&store);
    drop(store);
    let file = fs.list_dir(&Path::new(DIR).join("wal")).unwrap()[0].clone();
    let len = fs.read(&file).unwrap().len();
    for cut in 0..len {
        let copy = Arc::new(fs.power_loss(0));
        copy.corrupt(&file, |b| b.truncate(cut)).unwrap();
        let store = Store::open(DIR, test_opts(copy)).unwrap();
        let got = if store.table("power").is_some() {
            all(&store)
        } else {
            Vec::new()
        };
        // A cut keeps a prefix of the records, never a damaged one.
        assert_eq!(got, expected[..got.len()], "cut at {cut}");
    }
}

/// A data directory written by format version 1 (catalog, one sealed
/// segment, and a WAL holding unsealed rows) must stay readable by every
/// later version. `WATTSON_BLESS_STORE=1` rewrites it; do that only when
/// adding a new format version, and keep the old directory too.
#[test]
fn a_version_1_data_directory_stays_readable() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/store-v1");
    let readings = || {
        (0..40i64)
            .map(|i| {
                r(
                    if i % 2 == 0 { "viconsl" } else { "meter-2" },
                    T0 + i * SEC,
                    &[
                        ("pa_v", Value::F64(214.9 + i as f64 / 10.0)),
                        ("energy_wh", Value::I64(1000 + i)),
                        ("relay", Value::Bool(i % 3 == 0)),
                        ("status", Value::Str(format!("s{}", i % 4))),
                    ],
                )
            })
            .collect::<Vec<_>>()
    };
    if std::env::var_os("WATTSON_BLESS_STORE").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        let store = Store::open(&golden, test_opts(Arc::new(RealFs))).unwrap();
        let all_readings = readings();
        store.append(all_readings[..20].to_vec()).unwrap();
        store.flush().unwrap();
        store.append(all_readings[20..].to_vec()).unwrap();
        drop(store);
        let _ = std::fs::remove_file(golden.join("LOCK"));
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&golden, dir.path());
    let store = Store::open(dir.path(), test_opts(Arc::new(RealFs))).unwrap();
    assert!(
        store.recovery_report().is_empty(),
        "{:?}",
        store.recovery_report()
    );
    let parts = store.partitions();
    assert!(
        parts.iter().any(|p| p.segments > 0),
        "the golden directory has a segment"
    );
    assert!(
        parts.iter().any(|p| p.buffered_rows > 0),
        "the golden directory has WAL rows"
    );
    let mut want: Vec<Row> = readings()
        .into_iter()
        .map(|r| {
            let vals = r
                .values
                .iter()
                .map(|(_, v)| {
                    Some(match v {
                        Value::F64(x) => format!("{x:?}"),
                        Value::I64(x) => x.to_string(),
                        Value::Bool(x) => x.to_string(),
                        Value::Str(x) => format!("{x:?}"),
                    })
                })
                .collect();
            (r.device.to_string(), r.time, vals)
        })
        .collect();
    want.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(all(&store), want);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn times_outside_the_supported_range_are_rejected_clearly() {
    let (_fs, store) = mem_store();
    let err = store.append(vec![f("m1", i64::MAX, 1.0)]).unwrap_err();
    assert!(
        err.to_string().contains("outside the supported range"),
        "{err}"
    );
    assert!(
        store.table("power").is_none(),
        "a rejected batch must not change the schema"
    );
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    store.flush().unwrap();
    assert_eq!(all(&store).len(), 1);
}

#[test]
fn an_inverted_time_range_scans_nothing() {
    let (_fs, store) = mem_store();
    store
        .append((0..20).map(|i| f("m1", T0 + i * SEC, 1.0)).collect())
        .unwrap();
    store.flush().unwrap();
    store.append(vec![f("m1", T0 + 30 * SEC, 1.0)]).unwrap();
    let req = ScanRequest::table("power").range(Some(T0 + 15 * SEC), Some(T0 + 5 * SEC));
    assert!(rows(&store, &req).is_empty());
}

#[test]
fn a_full_buffer_that_cannot_be_sealed_fails_instead_of_waiting() {
    let fs = Arc::new(FaultFs::new());
    let store = Store::open(
        DIR,
        StoreOptions {
            buffer_bytes: 200,
            ..test_opts(fs.clone())
        },
    )
    .unwrap();
    store
        .append((0..20).map(|i| f("m1", T0 + i * SEC, 1.0)).collect())
        .unwrap();
    // Every sync fails: the new WAL file a seal starts from cannot be made
    // durable. That does not poison the log, but no space will come.
    fs.set_plan(FaultPlan::default().fail_sync_after(0));
    assert!(store.flush().is_err());
    let err = store.append(vec![f("m1", T0, 2.0)]).unwrap_err();
    let Error::SealFailing { cause } = &err else {
        panic!("{err}")
    };
    assert!(cause.contains("os error 5"), "{cause}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    // Once a seal succeeds, appends go through again.
    fs.set_plan(FaultPlan::default());
    store.flush().unwrap();
    store.append(vec![f("m1", T0, 2.0)]).unwrap();
    assert_eq!(all(&store).len(), 20);
}

#[test]
fn appends_waiting_on_a_failing_background_seal_get_its_error() {
    let fs = Arc::new(FaultFs::new());
    let store = Store::open(
        DIR,
        StoreOptions {
            background: true,
            buffer_bytes: 4000,
            ..test_opts(fs.clone())
        },
    )
    .unwrap();
    // No file can be created: neither a WAL file to freeze the buffer at
    // nor a segment file.
    fs.set_plan(FaultPlan::default().fail_create_after(1));
    let batch = |n: i64| {
        (0..10)
            .map(|i| f("m1", T0 + (n * 10 + i) * SEC, 1.0))
            .collect()
    };
    let mut stored = 0;
    let err = loop {
        match store.append(batch(stored)) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10_000, "the full buffer never refused an append");
    };
    assert!(
        matches!(&err, Error::SealFailing { cause } if cause.contains("os error 28")),
        "{err}"
    );
    let why = store.write_failure().unwrap();
    assert!(why.contains("write buffer is full"), "{why}");
    // The sealing thread retries with backoff; once files can be created
    // again, space comes back without a restart.
    fs.set_plan(FaultPlan::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = store.append(batch(stored)) {
        assert!(std::time::Instant::now() < deadline, "still refused: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(all(&store).len() as i64, (stored + 1) * 10);
    assert_eq!(store.write_failure(), None);
}

#[test]
fn buffered_rows_spanning_a_month_do_not_merge_every_block_at_once() {
    let (_fs, store) = mem_store();
    // Four sealed blocks of 16 rows, one minute apart.
    store
        .append((0..64).map(|i| f("m1", T0 + i * 60 * SEC, 1.0)).collect())
        .unwrap();
    store.flush().unwrap();
    // Buffered rows before, inside (overwriting) and after them.
    store
        .append(vec![
            f("m1", T0 - 86_400 * SEC, 2.0),
            f("m1", T0 + 20 * 60 * SEC, 3.0),
            f("m1", T0 + 86_400 * SEC, 4.0),
        ])
        .unwrap();
    let scan = store.scan(&ScanRequest::table("power")).unwrap();
    let sizes: Vec<usize> = scan.map(|b| b.unwrap().num_rows()).collect();
    // Before, four blocks (the second merged with its overwrite), after.
    assert_eq!(sizes, vec![1, 16, 16, 16, 16, 1]);
    let got = all(&store);
    assert_eq!(got.len(), 66);
    assert_eq!(
        got[21],
        ("m1".into(), T0 + 20 * 60 * SEC, vec![Some("3.0".into())])
    );
}

fn latest_of(store: &Store) -> Vec<(String, i64, Vec<Option<Value>>)> {
    store
        .latest("power")
        .unwrap()
        .into_iter()
        .map(|l| (l.device, l.time, l.values))
        .collect()
}

#[test]
fn latest_follows_appends_late_data_rewrites_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = test_opts(Arc::new(RealFs));
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    assert!(store.latest("power").unwrap().is_empty());
    store
        .append((0..40).map(|i| f("m1", T0 + i * SEC, i as f64)).collect())
        .unwrap();
    store
        .append(vec![r("m2", T0, &[("q", Value::I64(7))])])
        .unwrap();
    let p = |v: f64| Some(Value::F64(v));
    assert_eq!(
        latest_of(&store),
        vec![
            ("m1".into(), T0 + 39 * SEC, vec![p(39.0), None]),
            ("m2".into(), T0, vec![None, Some(Value::I64(7))]),
        ]
    );
    // Late data does not move it; a rewrite of the newest time does.
    store.append(vec![f("m1", T0 + 5 * SEC, 500.0)]).unwrap();
    assert_eq!(latest_of(&store)[0].2[0], p(39.0));
    store.append(vec![f("m1", T0 + 39 * SEC, 390.0)]).unwrap();
    assert_eq!(latest_of(&store)[0].2[0], p(390.0));
    let before = latest_of(&store);

    // Sealed and reopened with an empty WAL: read back from the newest block.
    store.flush().unwrap();
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(latest_of(&store), before);
    // Newer data after the restart wins over what the segments hold.
    store.append(vec![f("m1", T0 + 60 * SEC, 1.5)]).unwrap();
    assert_eq!(latest_of(&store)[0].1, T0 + 60 * SEC);
    // An older write after the restart does not hide the segments' newest.
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), opts).unwrap();
    store.append(vec![f("m2", T0 - SEC, 1.0)]).unwrap();
    assert_eq!(latest_of(&store)[1].1, T0, "m2's newest is on disk");
    assert!(store.latest("nothing").unwrap().is_empty());
}
