//! A real child process appends to a real data directory and is killed with
//! SIGKILL at random moments; after each kill the directory must hold every
//! acknowledged batch exactly once, no batch that was never sent, and the
//! batch in flight either whole or not at all.
//!
//! The child is this test binary itself, re-executed with an environment
//! variable that makes `child_writer` run (the pattern of sled's crash tests).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, StringArray, TimestampNanosecondArray};
use rand::{Rng, SeedableRng};
use wattson_storage::clock::SystemClock;
use wattson_storage::io::RealFs;
use wattson_storage::{Reading, ScanRequest, Store, StoreOptions, Value};

const CHILD_ENV: &str = "WATTSON_KILL_CHILD_DIR";
const ROUND_ENV: &str = "WATTSON_KILL_CHILD_ROUND";
const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_658_244_261 * SEC;
const DEVICES: usize = 8;
const ROUNDS: u64 = 50;

fn options() -> StoreOptions {
    StoreOptions {
        vfs: Arc::new(RealFs),
        clock: Arc::new(SystemClock),
        // Small buffers and eager maintenance, so kills land in sealing and
        // compaction as well as in appends.
        buffer_bytes: 256 << 10,
        wal_segment_bytes: 64 << 10,
        block_rows: 256,
        compact_min_segments: 2,
        maintenance_interval: Duration::from_millis(50),
        ..StoreOptions::default()
    }
}

/// Batch `id` of round `round`: one reading per device, unique keys.
fn batch(round: u64, id: u64) -> Vec<Reading> {
    let t = T0 + ((round * 1_000_000 + id) as i64) * SEC;
    (0..DEVICES)
        .map(|d| Reading {
            table: "power".into(),
            device: format!("m{d}").into(),
            time: t,
            values: vec![("p".into(), Value::F64(id as f64 / 10.0))],
        })
        .collect()
}

#[test]
#[ignore = "runs only as the child of sigkill_during_heavy_appends"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = Store::open(dir, options()).unwrap();
    let mut id = 0;
    loop {
        store.append(batch(round, id)).unwrap();
        println!("ack {id}");
        id += 1;
    }
}

fn run_child(dir: &Path, round: u64, kill_after: Duration) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "storage_kill::child_writer",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may print on the same line first
            // ("test storage_kill::child_writer ... ack 0").
            if let Some(pos) = line.rfind("ack ")
                && let Ok(id) = line[pos + 4..].trim().parse::<u64>()
            {
                last = Some(id);
            }
        }
        last
    });
    std::thread::sleep(kill_after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn sigkill_during_heavy_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked_per_round: Vec<Option<u64>> = Vec::new();
    let mut total_acked = 0;
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.random_range(30..400));
        let last = run_child(dir.path(), round, kill_after);
        total_acked += last.map_or(0, |l| l + 1);
        acked_per_round.push(last);

        let store = Store::open(dir.path(), options()).unwrap();
        let mut counts: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for b in store
            .scan(&ScanRequest::table("power").columns(["time", "device"]))
            .unwrap()
        {
            let b = b.unwrap();
            let times = b
                .column(0)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .unwrap();
            let devices = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                let n = ((times.value(i) - T0) / SEC) as u64;
                assert!(!devices.is_null(i));
                *counts.entry((n / 1_000_000, n % 1_000_000)).or_default() += 1;
            }
        }
        for (r, last) in acked_per_round.iter().enumerate() {
            let r = r as u64;
            let acked = last.map_or(0, |l| l + 1);
            for id in 0..acked {
                assert_eq!(
                    counts.get(&(r, id)),
                    Some(&DEVICES),
                    "round {r}: acknowledged batch {id} is not whole"
                );
            }
            // The batch in flight is whole or absent; nothing after it exists.
            let in_flight = counts.get(&(r, acked)).copied().unwrap_or(0);
            assert!(
                in_flight == 0 || in_flight == DEVICES,
                "round {r}: batch {acked} is torn"
            );
            let beyond = counts.range((r, acked + 1)..(r + 1, 0)).count();
            assert_eq!(
                beyond, 0,
                "round {r}: batches that were never sent are present"
            );
        }
        store.close().unwrap();
    }
    eprintln!("{ROUNDS} kills, {total_acked} acknowledged batches checked");
    assert!(
        total_acked > ROUNDS,
        "the child acknowledged almost nothing; the test proves little"
    );
}
