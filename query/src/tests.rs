//! Engine tests over a small store written through the storage API: the
//! `.slt` files in `tests/slt/` (run with pruning on and off), pruning
//! metrics, and the read-only and error paths.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use sqllogictest::{DBOutput, DefaultColumnType};
use wattson_storage::{Reading, Store, StoreOptions, Value};

use super::*;

const SEED_CHANNELS: [&str; 17] = [
    "pa_v", "pb_v", "pc_v", "wd_a", "wd_p", "rf_a", "rf_p", "ac01_a", "ac01_p", "rh01_a", "rh01_p",
    "mo_a", "mo_p", "ac02_a", "ac02_p", "rh02_a", "rh02_p",
];

/// The seed system's `seed_fig3.csv` rows, July 2022, device `viconsl`.
const SEED_ROWS: [(&str, [f64; 17]); 3] = [
    (
        "2022-07-19T15:24:21Z",
        [
            0.0, 214.9, 0.0, 0.38, 83.6, 0.0, 0.0, 5.81, 2207.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0,
        ],
    ),
    (
        "2022-07-19T15:24:23Z",
        [
            0.0, 0.0, 0.0, 0.38, 83.6, 0.0, 0.0, 5.74, 2181.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0,
        ],
    ),
    (
        "2022-07-19T15:24:24Z",
        [
            0.0, 213.8, 0.0, 0.38, 83.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ],
    ),
];

fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap()
}

fn reading(table: &str, device: &str, time: i64, values: &[(&str, Value)]) -> Reading {
    Reading {
        table: table.into(),
        device: device.into(),
        time,
        values: values
            .iter()
            .map(|(k, v)| (Arc::from(*k), v.clone()))
            .collect(),
    }
}

/// The store every test here reads. What the `.slt` files expect follows
/// from it:
/// - `power_consumption`
///   - `viconsl`: the three seed rows of July 2022, every channel.
///   - `lab2`: 2022-08-01 00:00 to 01:00, one reading a minute, `pa_v`
///     230 and `wd_p` 1000 W (1 kWh). The 00:30 reading was first written
///     as 5000 W and sealed, then corrected by a late write that stays
///     buffered.
///   - `lab3`: 2022-08-02, 600 W at 0, 60, 120, 3720 and 3780 s: a gap
///     of an hour in the middle.
/// - `energy_meter`: `lab2`'s counter `energy_wh` 100, 150, 200, 10, 30
///   (reset after 200), one a minute from 2022-08-01 00:00.
///
/// Blocks hold 16 rows, so `lab2`'s hour spans four blocks.
pub(crate) fn fixture(dir: &Path) -> Arc<Store> {
    let opts = StoreOptions {
        block_rows: 16,
        background: false,
        ..StoreOptions::default()
    };
    let store = Store::open(dir, opts).unwrap();
    let seed: Vec<Reading> = SEED_ROWS
        .iter()
        .map(|(t, vals)| {
            let values: Vec<(&str, Value)> = SEED_CHANNELS
                .iter()
                .zip(vals)
                .map(|(c, v)| (*c, Value::F64(*v)))
                .collect();
            reading("power_consumption", "viconsl", ns(t), &values)
        })
        .collect();
    store.append(seed).unwrap();
    let hour = ns("2022-08-01T00:00:00Z");
    let lab2: Vec<Reading> = (0..=60)
        .map(|m| {
            let p = if m == 30 { 5000.0 } else { 1000.0 };
            reading(
                "power_consumption",
                "lab2",
                hour + m * 60_000_000_000,
                &[("pa_v", Value::F64(230.0)), ("wd_p", Value::F64(p))],
            )
        })
        .collect();
    store.append(lab2).unwrap();
    let day = ns("2022-08-02T00:00:00Z");
    let lab3: Vec<Reading> = [0, 60, 120, 3720, 3780]
        .iter()
        .map(|s| {
            reading(
                "power_consumption",
                "lab3",
                day + s * 1_000_000_000,
                &[("wd_p", Value::F64(600.0))],
            )
        })
        .collect();
    store.append(lab3).unwrap();
    let counter: Vec<Reading> = [100, 150, 200, 10, 30]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            reading(
                "energy_meter",
                "lab2",
                hour + i as i64 * 60_000_000_000,
                &[("energy_wh", Value::I64(*v))],
            )
        })
        .collect();
    store.append(counter).unwrap();
    store.flush().unwrap();
    // The late correction stays in the buffer.
    store
        .append(vec![reading(
            "power_consumption",
            "lab2",
            hour + 30 * 60_000_000_000,
            &[("pa_v", Value::F64(230.0)), ("wd_p", Value::F64(1000.0))],
        )])
        .unwrap();
    Arc::new(store)
}

fn engine(store: Arc<Store>, prune: bool) -> QueryEngine {
    let opts = QueryOptions {
        prune,
        target_partitions: 2,
        ..QueryOptions::default()
    };
    QueryEngine::new(store, Some(Arc::new(FakeIngest)), &opts).unwrap()
}

/// Counters as the server's ingest would report them.
#[derive(Debug)]
struct FakeIngest;

impl IngestSource for FakeIngest {
    fn counters(&self) -> Vec<(String, u64)> {
        vec![
            ("readings_stored".into(), 70),
            ("lost_acknowledged".into(), 0),
        ]
    }

    fn rejections(&self) -> Vec<DeviceRejections> {
        vec![
            DeviceRejections {
                device: "lab2".into(),
                rejected: 2,
                last_reason: Some("type_conflict: wd_p was f64".into()),
            },
            DeviceRejections {
                device: "ghost".into(),
                rejected: 1,
                last_reason: Some("invalid_json: expected value".into()),
            },
        ]
    }
}

/// Runs `.slt` files against a [`QueryEngine`].
struct SltDb {
    engine: QueryEngine,
}

fn column_type(ty: &DataType) -> DefaultColumnType {
    if ty.is_integer() {
        DefaultColumnType::Integer
    } else if ty.is_floating() {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| {
                        let s = f.value(r).to_string();
                        if s.is_empty() { "(empty)".into() } else { s }
                    })
                    .collect(),
            );
        }
    }
    rows
}

#[async_trait]
impl sqllogictest::AsyncDB for SltDb {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>> {
        let plan = self.engine.plan(sql).await?;
        let types = plan
            .schema()
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let batches = self.engine.collect(sql).await?;
        Ok(DBOutput::Rows {
            types,
            rows: rows_of(&batches),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "wattson"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass_with_and_without_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let slt_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&slt_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", slt_dir.display());
    for prune in [true, false] {
        for file in &files {
            let engine = engine(store.clone(), prune);
            let mut runner = sqllogictest::Runner::new(move || {
                let engine = engine.clone();
                async move { Ok(SltDb { engine }) }
            });
            if let Err(e) = runner.run_file_async(file).await {
                panic!(
                    "{} (pruning {}):\n{e}",
                    file.display(),
                    if prune { "on" } else { "off" }
                );
            }
        }
    }
}

/// The physical plan of `sql` after running it, for its metrics.
async fn executed(engine: &QueryEngine, sql: &str) -> (Arc<dyn ExecutionPlan>, Vec<RecordBatch>) {
    let plan = engine.plan(sql).await.unwrap();
    let df = engine.context().execute_logical_plan(plan).await.unwrap();
    let physical = df.create_physical_plan().await.unwrap();
    let batches = collect(physical.clone(), engine.context().task_ctx())
        .await
        .unwrap();
    (physical, batches)
}

/// The scan node's metric `name`, summed over partitions.
fn scan_metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    fn find(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.name() == "StoreScanExec" {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(find)
    }
    let scan = find(plan).expect("plan has a StoreScanExec");
    scan.metrics()
        .and_then(|m| m.sum_by_name(name))
        .map_or(0, |v| v.as_usize())
}

fn plan_text(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_device_filters_reach_the_scan_and_skip_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(fixture(dir.path()), true);

    let (plan, _) = executed(
        &engine,
        "SELECT count(*) FROM power_consumption \
         WHERE device = 'lab2' AND time >= '2022-08-01T00:50:00Z'",
    )
    .await;
    let text = plan_text(&plan);
    assert!(text.contains("partitions=1"), "{text}");
    assert!(text.contains("time=[2022-08-01T00:50:00Z, ∞)"), "{text}");
    assert!(text.contains("devices=[lab2]"), "{text}");
    assert_eq!(scan_metric(&plan, "partitions_scanned"), 1);
    // 61 rows in blocks of 16: rows from 00:50 on lie in the last block.
    assert_eq!(scan_metric(&plan, "blocks_total"), 4, "{text}");
    assert_eq!(scan_metric(&plan, "blocks_pruned"), 3, "{text}");

    // OR of two devices and a month: only those partitions.
    let (plan, _) = executed(
        &engine,
        "SELECT count(*) FROM power_consumption \
         WHERE (device = 'viconsl' OR device IN ('lab3')) AND time < '2022-08-02T01:00:00Z'",
    )
    .await;
    let text = plan_text(&plan);
    assert!(text.contains("partitions=2"), "{text}");
    assert!(text.contains("devices=[lab3 viconsl]"), "{text}");

    // A contradiction reads nothing.
    let (plan, _) = executed(
        &engine,
        "SELECT * FROM power_consumption WHERE device = 'lab2' AND device = 'lab3'",
    )
    .await;
    let text = plan_text(&plan);
    assert!(
        text.contains("partitions=0") || !text.contains("StoreScanExec"),
        "{text}"
    );

    // The seed's monthly view prunes to its device and month.
    let (plan, _) = executed(&engine, "SELECT * FROM viconsl_power_consumption_2022_07").await;
    let text = plan_text(&plan);
    assert!(text.contains("partitions=1"), "{text}");
    assert!(
        text.contains("time=[2022-07-01T00:00:00Z, 2022-08-01T00:00:00Z)"),
        "{text}"
    );

    // EXPLAIN ANALYZE shows the same counters to users.
    let batches = engine
        .collect(
            "EXPLAIN ANALYZE SELECT count(*) FROM power_consumption \
             WHERE device = 'lab2' AND time >= '2022-08-01T00:50:00Z'",
        )
        .await
        .unwrap();
    let text = rows_of(&batches).concat().join("\n");
    assert!(text.contains("blocks_pruned=3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_off_reads_every_partition_for_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let sql = "SELECT device, count(*), sum(wd_p) FROM power_consumption \
               WHERE time BETWEEN '2022-08-01T00:10:00Z' AND '2022-08-01T00:20:00Z' \
               GROUP BY device ORDER BY device";
    let (on_plan, on) = executed(&engine(store.clone(), true), sql).await;
    let (off_plan, off) = executed(&engine(store, false), sql).await;
    assert_eq!(rows_of(&on), rows_of(&off));
    assert_eq!(
        rows_of(&on),
        vec![vec!["lab2".to_owned(), "11".into(), "11000.0".into()]]
    );
    assert!(
        plan_text(&on_plan).contains("partitions=2"),
        "August: lab2 and lab3"
    );
    assert!(plan_text(&off_plan).contains("partitions=3"));
    assert!(scan_metric(&on_plan, "blocks_pruned") > 0);
    assert_eq!(scan_metric(&off_plan, "blocks_pruned"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_server_file_access_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(fixture(dir.path()), true);
    let copy_to = dir.path().join("copy.csv");
    let copy_csv = format!("COPY (SELECT 1) TO '{}'", copy_to.display());
    let copy_parquet = format!(
        "COPY power_consumption TO '{}'",
        dir.path().join("copy.parquet").display()
    );
    for sql in [
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
        &copy_csv,
        &copy_parquet,
        "INSERT INTO power_consumption VALUES (1)",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE power_consumption",
        "SET datafusion.execution.batch_size = 1",
        "DELETE FROM power_consumption",
    ] {
        match engine.collect(sql).await {
            Err(Error::NotAllowed(msg)) => assert!(msg.contains("read-only"), "{sql}: {msg}"),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    assert!(!copy_to.exists());
    assert!(!dir.path().join("copy.parquet").exists());
    // The tables are still there.
    assert!(
        engine
            .collect("SELECT count(*) FROM power_consumption")
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(fixture(dir.path()), true);
    let err = |sql: &'static str| {
        let engine = engine.clone();
        async move { engine.collect(sql).await.unwrap_err().to_string() }
    };
    let msg = err("SELECT * FROM power_consumptio").await;
    assert!(msg.contains("did you mean `power_consumption`"), "{msg}");
    let msg = err("SELECT * FROM viconsl_power_consumption_2022_7").await;
    assert!(
        msg.contains("did you mean `viconsl_power_consumption_2022_07`"),
        "{msg}"
    );
    let msg = err("SELECT wd_pp FROM power_consumption").await;
    assert!(msg.contains("wd_pp") && msg.contains("wd_p"), "{msg}");
    let msg = err("SELECT * FROM power_consumption WHERE time > '2022-13-45'").await;
    assert!(msg.contains("2022-13-45"), "{msg}");
    let msg = err("SELECT energy_kwh(device, time) FROM power_consumption").await;
    assert!(
        msg.contains("must be numeric") && msg.contains("usage"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_memory_limit_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let opts = QueryOptions {
        memory_limit: 64 << 10,
        target_partitions: 2,
        ..QueryOptions::default()
    };
    let engine = QueryEngine::new(fixture(dir.path()), None, &opts).unwrap();
    let sql = "SELECT a.time, b.time, c.time FROM power_consumption a, power_consumption b, \
               power_consumption c ORDER BY a.wd_p, b.wd_p, c.wd_p";
    match engine.collect(sql).await {
        Err(Error::ResourcesExhausted(msg)) => assert!(!msg.is_empty()),
        other => panic!(
            "expected ResourcesExhausted, got {:?}",
            other.map(|b| b.len())
        ),
    }
    // Small queries still run.
    let rows = engine
        .collect("SELECT device FROM power_consumption WHERE device = 'lab3' LIMIT 1")
        .await
        .unwrap();
    assert_eq!(rows_of(&rows), vec![vec!["lab3".to_owned()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_timeout_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let opts = QueryOptions {
        timeout: Duration::from_millis(200),
        ..QueryOptions::default()
    };
    let engine = QueryEngine::new(fixture(dir.path()), None, &opts).unwrap();
    // A generated cross join keeps the CPU busy well past 200 ms.
    let sql = "SELECT count(*) FROM generate_series(1, 30000) a, generate_series(1, 30000) b \
               WHERE a.value * b.value % 7 = 3";
    let started = std::time::Instant::now();
    match engine.collect(sql).await {
        Err(Error::Timeout(d)) => assert_eq!(d, Duration::from_millis(200)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn suggestions_are_only_for_typos() {
    let names = vec!["power_consumption".to_owned(), "energy_meter".to_owned()];
    assert_eq!(
        suggest("power_consumptoin", &names).as_deref(),
        Some("power_consumption")
    );
    assert_eq!(suggest("weather", &names), None);
    assert_eq!(
        missing_table("table 'wattson.public.x' not found").as_deref(),
        Some("x")
    );
}
