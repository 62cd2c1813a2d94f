//! Criterion benchmarks of SQL over the store on seed-shaped data (4 meters
//! × 2 days at 1 Hz, 691,200 rows, sealed), through `QueryEngine`.
//!
//! | bench | query |
//! |---|---|
//! | `device_day_minute_avg` | one device-day, 1-minute averages of three channels (the (a)) |
//! | `latest_per_device` | `last_cache`: the newest reading of every device ((b)) |
//! | `daily_kwh` | `energy_kwh` of seven appliances per device and day ((c)) |
//! | `device_day_all_columns` | one device-day, every column ((d) at a smaller scale) |
//!
//! | `plan_among_many_partitions` | one device-month of a few rows, among 2,400 sealed partitions and a buffered month of 600,000 rows: what planning costs as a store grows |
//!
//! `wattson bench query` runs the same questions at the scale (20
//! meters × 30 days) and compares (c) with DuckDB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use wattson::simdata::{self, SEED_TABLE};
use wattson_query::{QueryEngine, QueryOptions};
use wattson_storage::{Store, StoreOptions};

const START_NS: i64 = 1_656_633_600_000_000_000;

async fn rows(engine: &QueryEngine, sql: &str) -> usize {
    let mut stream = engine.stream(sql).await.unwrap();
    let mut n = 0;
    while let Some(b) = stream.next().await {
        n += b.unwrap().num_rows();
    }
    n
}

fn queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
    let data: Vec<_> = simdata::fleet(SEED_TABLE, 4, START_NS, 2 * 86_400, 3).collect();
    for chunk in data.chunks(10_000) {
        store.append(chunk.to_vec()).unwrap();
    }
    store.flush().unwrap();
    let engine = QueryEngine::new(store.clone(), None, &QueryOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let device = simdata::device_id(1);
    let cases = [
        (
            "device_day_minute_avg",
            format!(
                "SELECT date_bin(INTERVAL '1 minute', time) AS m, avg(pa_v), avg(wd_p), avg(ac01_p) \
                 FROM {SEED_TABLE} WHERE device = '{device}' AND time >= '2022-07-02T00:00:00Z' \
                 AND time < '2022-07-03T00:00:00Z' GROUP BY m"
            ),
        ),
        (
            "latest_per_device",
            format!("SELECT * FROM last_cache('{SEED_TABLE}')"),
        ),
        (
            "daily_kwh",
            format!(
                "SELECT device, date_bin(INTERVAL '1 day', time) AS day, energy_kwh(wd_p, time), \
                 energy_kwh(rf_p, time), energy_kwh(ac01_p, time), energy_kwh(rh01_p, time), \
                 energy_kwh(mo_p, time), energy_kwh(ac02_p, time), energy_kwh(rh02_p, time) \
                 FROM {SEED_TABLE} GROUP BY device, day"
            ),
        ),
        (
            "device_day_all_columns",
            format!(
                "SELECT * FROM {SEED_TABLE} WHERE device = '{device}' \
                 AND time >= '2022-07-02T00:00:00Z' AND time < '2022-07-03T00:00:00Z'"
            ),
        ),
    ];
    let mut group = c.benchmark_group("query");
    group.sample_size(10);
    for (name, sql) in &cases {
        assert!(
            rt.block_on(rows(&engine, sql)) > 0,
            "{name} returned nothing"
        );
        group.bench_function(*name, |b| b.iter(|| rt.block_on(rows(&engine, sql))));
    }
    group.finish();
    drop(engine);
    store.close().unwrap();
}

/// A small query in a store with many partitions: planning lists the
/// partitions, and must not cost a step per block or buffered row.
fn planning(c: &mut Criterion) {
    const DAY_NS: i64 = 86_400_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
    // 200 meters × 12 months, two readings each, one sealed file per partition.
    for k in 0..12 {
        let start = START_NS - 365 * DAY_NS + k * 31 * DAY_NS;
        let month: Vec<_> = simdata::fleet(SEED_TABLE, 200, start, 2, 5).collect();
        store.append(month).unwrap();
        store.flush().unwrap();
    }
    // One meter's buffered month, as on a live server between seals.
    let live: Vec<_> = simdata::fleet(SEED_TABLE, 1, START_NS, 600_000, 6).collect();
    for chunk in live.chunks(10_000) {
        store.append(chunk.to_vec()).unwrap();
    }
    let engine = QueryEngine::new(store.clone(), None, &QueryOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sql = format!(
        "SELECT count(*) FROM {SEED_TABLE} WHERE device = '{}' \
         AND time >= '2022-06-01T00:00:00Z' AND time < '2022-07-01T00:00:00Z'",
        simdata::device_id(7)
    );
    let mut group = c.benchmark_group("query");
    group.bench_function("plan_among_many_partitions", |b| {
        b.iter(|| rt.block_on(rows(&engine, &sql)))
    });
    group.finish();
    drop(engine);
    store.close().unwrap();
}

criterion_group!(benches, queries, planning);
criterion_main!(benches);
