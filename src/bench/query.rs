//! `wattson bench query`: the query issue's four questions over 1 Hz meter
//! data in the seed's 18-column shape, through the real SQL path, with
//! DuckDB over a Parquet export of the same data as the yardstick for (c).
//!
//! - (a) one device, one day, 1-minute averages of three channels;
//! - (b) the latest reading of every device (`last_cache`);
//! - (c) daily kWh per device per appliance for the whole month;
//! - (d) one device-month, every column (the ML pull).
//!
//! Each figure is the median of repeated hot runs. DuckDB (from PyPI, in a
//! venv this command creates) runs the same trapezoid integral as (c) with
//! window functions, in the same process tree on the same machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use wattson_query::{QueryEngine, QueryOptions};
use wattson_storage::{ScanRequest, Store, StoreOptions};

use crate::bench::{START_NS, append_all, bar, generator, python_venv};
use crate::simdata::{SEED_TABLE, device_id};

/// The appliances whose power (`*_p`) query (c) integrates.
const APPLIANCES: [&str; 7] = ["wd", "rf", "ac01", "rh01", "mo", "ac02", "rh02"];
const DUCKDB_VERSION: &str = "1.4.2";

#[derive(Debug, Clone)]
pub struct QueryBenchConfig {
    pub devices: usize,
    pub days: f64,
    /// Keep the store here and reuse it when it already holds the data.
    pub dir: Option<PathBuf>,
    /// Hot runs per query (at least 3 for the heavy ones).
    pub runs: usize,
    /// Where to create the Python venv for DuckDB; `None` skips DuckDB.
    pub venv: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryBenchReport {
    pub devices: usize,
    pub days: f64,
    pub rows: u64,
    pub load_s: Option<f64>,
    pub a_ms: f64,
    pub b_ms: f64,
    pub c_ms: f64,
    pub c_duckdb_ms: Option<f64>,
    /// `c_ms / c_duckdb_ms`: at most 1 means Wattson is no slower.
    pub c_ratio: Option<f64>,
    pub d_ms: f64,
    pub d_rows: u64,
    pub d_rows_per_s: f64,
    pub duckdb_version: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `sql` once and returns the rows it produced.
async fn run_once(engine: &QueryEngine, sql: &str) -> Result<u64> {
    let mut stream = engine.stream(sql).await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        rows += batch.map_err(wattson_query::Error::from)?.num_rows() as u64;
    }
    Ok(rows)
}

/// Median milliseconds of `runs` hot runs after one warm-up.
async fn time_query(engine: &QueryEngine, sql: &str, runs: usize) -> Result<(f64, u64)> {
    let rows = run_once(engine, sql)
        .await
        .with_context(|| format!("running {sql}"))?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        run_once(engine, sql).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(times), rows))
}

fn ts(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn run(cfg: &QueryBenchConfig) -> Result<QueryBenchReport> {
    if cfg.devices == 0 || !(cfg.days > 0.0 && cfg.days <= 31.0) {
        bail!("--devices must be at least 1 and --days between 0 and 31 (one month)");
    }
    let temp;
    let dir = match &cfg.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let seconds = (cfg.days * 86_400.0) as u64;
    let expected = seconds * cfg.devices as u64;
    let store = Arc::new(Store::open(&dir, StoreOptions::default())?);
    let have: u64 = store
        .partitions()
        .iter()
        .filter(|p| p.table == SEED_TABLE)
        .map(|p| p.rows)
        .sum();
    let load_s = if have == expected {
        None
    } else {
        if have != 0 {
            bail!(
                "{} holds other data ({have} rows, expected {expected}); give an empty --dir",
                dir.display()
            );
        }
        let progress = bar(cfg.progress, expected, "loading");
        let started = Instant::now();
        append_all(&store, generator(cfg.devices, seconds, 42), 8, &progress)?;
        store.flush()?;
        progress.finish_and_clear();
        Some(started.elapsed().as_secs_f64())
    };

    let engine = QueryEngine::new(store.clone(), None, &QueryOptions::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let device = device_id(1);
    let day = START_NS + 86_400_000_000_000 * ((cfg.days as i64 / 2).max(0));
    let a_sql = format!(
        "SELECT date_bin(INTERVAL '1 minute', time) AS minute, avg(pa_v), avg(wd_p), avg(ac01_p) \
         FROM {SEED_TABLE} WHERE device = '{device}' AND time >= '{}' AND time < '{}' \
         GROUP BY minute ORDER BY minute",
        ts(day),
        ts(day + 86_400_000_000_000)
    );
    let b_sql = format!("SELECT * FROM last_cache('{SEED_TABLE}')");
    let energy: Vec<String> = APPLIANCES
        .iter()
        .map(|a| format!("energy_kwh({a}_p, time) AS {a}_kwh"))
        .collect();
    let c_sql = format!(
        "SELECT device, date_bin(INTERVAL '1 day', time) AS day, {} FROM {SEED_TABLE} \
         WHERE time >= '{}' AND time < '{}' GROUP BY device, day",
        energy.join(", "),
        ts(START_NS),
        ts(START_NS + seconds as i64 * 1_000_000_000)
    );
    let d_sql = format!("SELECT * FROM \"{device}_{SEED_TABLE}_2022_07\"");
    let heavy = cfg.runs.clamp(3, 5);
    let report = runtime.block_on(async {
        let (a_ms, _) = time_query(&engine, &a_sql, cfg.runs).await?;
        let (b_ms, b_rows) = time_query(&engine, &b_sql, cfg.runs * 5).await?;
        if b_rows != cfg.devices as u64 {
            bail!(
                "last_cache returned {b_rows} rows for {} devices",
                cfg.devices
            );
        }
        let (c_ms, _) = time_query(&engine, &c_sql, heavy).await?;
        let (d_ms, d_rows) = time_query(&engine, &d_sql, heavy).await?;
        anyhow::Ok((a_ms, b_ms, c_ms, d_ms, d_rows))
    })?;
    let (a_ms, b_ms, c_ms, d_ms, d_rows) = report;
    let duckdb = match &cfg.venv {
        Some(venv) => Some(duckdb_c(&store, &dir, venv, cfg, heavy)?),
        None => None,
    };
    drop(engine);
    store.close()?;
    Ok(QueryBenchReport {
        devices: cfg.devices,
        days: cfg.days,
        rows: expected,
        load_s,
        a_ms,
        b_ms,
        c_ms,
        c_duckdb_ms: duckdb,
        c_ratio: duckdb.map(|d| c_ms / d),
        d_ms,
        d_rows,
        d_rows_per_s: d_rows as f64 / (d_ms / 1e3),
        duckdb_version: cfg.venv.as_ref().map(|_| DUCKDB_VERSION.to_owned()),
    })
}

/// Exports the table to Parquet (once) and times query (c) in DuckDB.
fn duckdb_c(
    store: &Store,
    dir: &Path,
    venv: &Path,
    cfg: &QueryBenchConfig,
    runs: usize,
) -> Result<f64> {
    let parquet = dir.join("bench-export.parquet");
    if !parquet.exists() {
        let scan = store.scan(&ScanRequest::table(SEED_TABLE))?;
        let schema = scan.schema();
        let tmp = dir.join("bench-export.parquet.tmp");
        let file = std::fs::File::create(&tmp)?;
        crate::export::export(
            scan.map(|b| b.map_err(anyhow::Error::from)),
            schema,
            crate::export::ExportFormat::Parquet,
            std::io::BufWriter::new(file),
        )?;
        std::fs::rename(&tmp, &parquet)?;
    }
    // DuckDB returns time-zone-aware timestamps through pytz.
    let duckdb = format!("duckdb=={DUCKDB_VERSION}");
    let python = python_venv(venv, &[&duckdb, "pytz"])?;
    let seconds = (cfg.days * 86_400.0) as i64;
    let lags: Vec<String> = APPLIANCES
        .iter()
        .map(|a| format!("lag({a}_p) OVER w AS {a}_p0"))
        .collect();
    let sums: Vec<String> = APPLIANCES
        .iter()
        .map(|a| {
            format!(
                "sum(CASE WHEN gap <= 300 THEN ({a}_p + {a}_p0) / 2 * gap END) / 3.6e6 AS {a}_kwh"
            )
        })
        .collect();
    let sql = format!(
        "WITH s AS (SELECT *, epoch(time) - epoch(lag(time) OVER w) AS gap, {lags} \
         FROM read_parquet('{file}') WHERE time >= '{start}' AND time < '{end}' \
         WINDOW w AS (PARTITION BY device ORDER BY time)) \
         SELECT device, date_trunc('day', time) AS day, {sums} FROM s GROUP BY device, day",
        lags = lags.join(", "),
        sums = sums.join(", "),
        file = parquet.display(),
        start = ts(START_NS),
        end = ts(START_NS + seconds * 1_000_000_000),
    );
    let script = format!(
        r#"
import duckdb, statistics, time, json
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
sql = {sql:?}
con.execute(sql).fetchall()
times = []
for _ in range({runs}):
    t = time.perf_counter()
    con.execute(sql).fetchall()
    times.append((time.perf_counter() - t) * 1000)
print("median_ms", json.dumps(statistics.median(times)))
"#
    );
    let out = Command::new(&python).args(["-c", &script]).output()?;
    if !out.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ms: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("median_ms "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no timing in DuckDB's output: {stdout}"))?;
    Ok(ms)
}
