//! Criterion benchmarks of the store on seed-shaped data (time plus 17 f64
//! channels at 1 Hz, from `wattson::simdata`).
//!
//! | bench | parameter grid |
//! |---|---|
//! | `append_durable` | batches of 1, 100 and 1000 readings, each one fdatasync'd append |
//! | `seal` | 65,536 buffered rows of 4 meters sealed into segment files (sort, encode, zstd, fsync) |
//! | `scan_one_column` | one f64 column of 1,048,576 sealed rows, hot |
//!
//! `wattson bench storage` measures the same paths end to end at scale.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wattson::simdata::{self, SEED_TABLE};
use wattson_storage::{Reading, ScanRequest, Store, StoreOptions};

const START_NS: i64 = 1_656_633_600_000_000_000;

fn readings(devices: usize, seconds: u64, seed: u64) -> Vec<Reading> {
    simdata::fleet(SEED_TABLE, devices, START_NS, seconds, seed).collect()
}

fn append_durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_durable");
    // 100,000 readings, cycled: later rounds overwrite earlier keys, which
    // is the same work for the append path.
    let data = readings(10, 10_000, 1);
    for size in [1usize, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut offset = 0usize;
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                if offset + size > data.len() {
                    offset = 0;
                }
                store.append(data[offset..offset + size].to_vec()).unwrap();
                offset += size;
            })
        });
        store.close().unwrap();
    }
    group.finish();
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    let data = readings(4, 16_384, 2);
    group.throughput(Throughput::Elements(data.len() as u64));
    group.sample_size(10);
    group.bench_function("65536_rows", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let opts = StoreOptions {
                    background: false,
                    ..StoreOptions::default()
                };
                let store = Store::open(dir.path(), opts).unwrap();
                store.append(data.clone()).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                store.flush().unwrap();
                (dir, store)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn scan_one_column(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan_one_column");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for chunk in readings(4, 262_144, 3).chunks(10_000) {
        store.append(chunk.to_vec()).unwrap();
    }
    store.flush().unwrap();
    group.throughput(Throughput::Elements(1_048_576));
    group.sample_size(10);
    // Repeated scans, as dashboards and ML clients make: after the first,
    // chunks come from the block cache.
    for columns in [&["pa_v"][..], &["time", "pa_v"], &["device", "pa_v"]] {
        let req = ScanRequest::table(SEED_TABLE).columns(columns.iter().copied());
        group.bench_function(columns.join("+"), |b| {
            b.iter(|| {
                let n: usize = store
                    .scan(&req)
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum();
                assert_eq!(n, 1_048_576);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append_durable, seal, scan_one_column);
criterion_main!(benches);
