//! `wattson bench flight`: the ML pull of one device-month (2.68 M rows ×
//! 18 channels at 1 Hz) from a fresh store, over Arrow Flight `DoGet` into
//! pyarrow and over ADBC Flight SQL into pandas (the seed's
//! `pd.read_sql_table` code), against the seed's original path:
//! `pd.read_sql_table` through SQLAlchemy from PostgreSQL holding the same
//! rows.
//!
//! PostgreSQL holds them twice. The seed's path reads fixed-point `numeric`
//! columns: the seed's table prints `rf_a` as `0.00` next to `rf_p` as `0.0`
//! in one row (`seed_fig3.csv`), a fixed scale per column, which a float
//! column does not print. psycopg2 turns each such value into a Python
//! `Decimal`, which is what makes the seed's path slow (the issue measured
//! 45 s on this machine; this takes 40-54 s). The same rows in
//! `double precision` columns, PostgreSQL's fastest path into pandas, are
//! pulled too and reported beside it (`*_float8`).
//!
//! The Flight server runs in this process on loopback; each client phase
//! (`benches/flight_pull.py`, embedded) runs in its own Python process so
//! its peak RSS is that phase's. PostgreSQL comes from Debian (installed
//! with apt-get when missing), runs as the `postgres` user on a temporary
//! directory and a free port, and is loaded with `COPY`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use wattson_ingest::auth::{Role, TokenStore, UserStore, Verifier};
use wattson_query::{QueryEngine, QueryOptions};
use wattson_storage::{Month, Store, StoreOptions};

use crate::bench::{START_NS, append_all, bar, generator, python_venv};
use crate::simdata::SEED_TABLE;

const SCRIPT: &str = include_str!("../../benches/flight_pull.py");
/// Pinned client packages.
const PACKAGES: &[&str] = &[
    "pyarrow==26.0.1",
    "adbc-driver-manager==1.13.0",
    "adbc-driver-flightsql==1.13.0",
    "pandas==3.1.1",
    "sqlalchemy==2.1.9",
    "psycopg2-binary==2.9.13",
];

/// Pulls through ADBC into pandas per run; the report gives their median.
const ADBC_RUNS: usize = 3;

#[derive(Debug, Clone)]
pub struct FlightBenchConfig {
    /// Rows of the device-month (1 Hz from the month's start; at most 31 days).
    pub rows: u64,
    /// Where to create the Python venv.
    pub venv: PathBuf,
    /// Skip the PostgreSQL comparison.
    pub postgres: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlightBenchReport {
    pub rows: u64,
    pub columns: usize,
    /// Arrow bytes of the pulled table (pyarrow's `nbytes`).
    pub arrow_bytes: u64,
    pub load_s: f64,
    /// The first pull, right after loading: every block is decoded from
    /// disk (the OS page cache is warm, the block cache is not).
    pub doget_cold_s: f64,
    pub doget_cold_mb_per_s: f64,
    /// The second pull, with decoded blocks in the block cache: the figure
    /// for data read again, as ML training and notebooks do.
    pub doget_s: f64,
    pub doget_mb_per_s: f64,
    pub doget_rows_per_s: f64,
    pub doget_client_peak_mb: f64,
    /// The median of [`ADBC_RUNS`] pulls, each by a fresh client process.
    pub adbc_pandas_s: f64,
    /// Every pull, in order. They spread by up to half on this 2-core VM,
    /// mostly in the client's page faults while pandas builds the frame.
    pub adbc_pandas_runs_s: Vec<f64>,
    pub adbc_pandas_rows_per_s: f64,
    pub adbc_pandas_client_peak_mb: f64,
    /// The seed's path: its fixed-point `numeric` columns.
    pub postgres_pandas_s: Option<f64>,
    pub postgres_pandas_rows_per_s: Option<f64>,
    pub postgres_pandas_client_peak_mb: Option<f64>,
    /// The same rows in `double precision` columns.
    pub postgres_float8_pandas_s: Option<f64>,
    pub postgres_float8_pandas_client_peak_mb: Option<f64>,
    /// `postgres_pandas_s / adbc_pandas_s`: both end in a pandas DataFrame.
    pub speedup_vs_postgres: Option<f64>,
    /// `postgres_float8_pandas_s / adbc_pandas_s`.
    pub speedup_vs_postgres_float8: Option<f64>,
    /// `postgres_pandas_s / doget_s`: the seed's path against a pyarrow pull.
    pub doget_speedup_vs_postgres: Option<f64>,
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
}

#[derive(Debug, Deserialize)]
struct Phase {
    s: f64,
    rows: u64,
    columns: usize,
    bytes: u64,
    peak_rss_mb: f64,
}

pub fn run(cfg: &FlightBenchConfig) -> Result<FlightBenchReport> {
    let max_rows = 31 * 86_400;
    if cfg.rows == 0 || cfg.rows > max_rows {
        bail!("--rows must be between 1 and {max_rows} (one month at 1 Hz)");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let data = dir.path().join("data");
    let python = python_venv(&cfg.venv, PACKAGES)?;

    let store = Arc::new(Store::open(&data, StoreOptions::default())?);
    let progress = bar(cfg.progress, cfg.rows, "loading");
    let started = Instant::now();
    append_all(&store, generator(1, cfg.rows, 42), 4, &progress)?;
    store.flush()?;
    progress.finish_and_clear();
    let load_s = started.elapsed().as_secs_f64();
    let device = store
        .partitions()
        .first()
        .map(|p| p.device.clone())
        .context("the generator wrote nothing")?;
    let month = Month::of(START_NS);
    let view = format!(
        "{device}_{SEED_TABLE}_{}",
        month.to_string().replace('-', "_")
    );

    let users = Arc::new(UserStore::open(&data)?);
    let password = format!("bench-{:016x}", rand::random::<u64>());
    users.add_user("bench", Role::Analyst, &password)?;
    let engine = Arc::new(QueryEngine::new(
        store.clone(),
        None,
        &QueryOptions::default(),
    )?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let server = runtime.block_on(wattson_flight::FlightServer::start(
        &wattson_flight::FlightOptions {
            listen: "127.0.0.1:0".parse()?,
            ..wattson_flight::FlightOptions::default()
        },
        wattson_flight::Deps {
            store: store.clone(),
            engine: engine.clone(),
            verifier: Verifier::new(users.clone())?,
            tokens: Arc::new(TokenStore::new(users, std::time::Duration::from_secs(3600))),
        },
    ))?;
    let script = dir.path().join("flight_pull.py");
    std::fs::write(&script, SCRIPT)?;
    let ts = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let env: Vec<(&str, String)> = vec![
        ("PORT", server.local_addr().port().to_string()),
        ("BENCH_USER", "bench".into()),
        ("BENCH_PASSWORD", password),
        ("TABLE", SEED_TABLE.into()),
        ("DEVICE", device.clone()),
        ("MONTH_START", ts(month.start_ns())),
        ("MONTH_END", ts(month.end_ns())),
        ("VIEW", view.clone()),
    ];
    let phase = |name: &str, extra: &[(&str, String)]| -> Result<Phase> {
        if cfg.progress {
            eprintln!("pulling: {name}");
        }
        let out = Command::new(&python)
            .arg(&script)
            .arg(name)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .context("running the Python client")?;
        if !out.status.success() {
            bail!(
                "the {name} client failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("reading the {name} figures: {text}"))
    };
    let doget_cold = phase("doget", &[])?;
    let doget = phase("doget", &[])?;
    let mut adbc_runs = (0..ADBC_RUNS)
        .map(|_| phase("adbc", &[]))
        .collect::<Result<Vec<Phase>>>()?;
    let adbc_runs_s: Vec<f64> = adbc_runs.iter().map(|p| p.s).collect();
    adbc_runs.sort_by(|a, b| a.s.total_cmp(&b.s));
    let adbc = adbc_runs.swap_remove(ADBC_RUNS / 2);
    for (name, p) in [("doget", &doget_cold), ("doget", &doget), ("adbc", &adbc)] {
        if p.rows != cfg.rows {
            bail!(
                "the {name} pull returned {} rows, expected {}",
                p.rows,
                cfg.rows
            );
        }
    }
    let (pg, pg_float8) = if cfg.postgres {
        let pg = Postgres::start(dir.path())?;
        let pulls = pg
            .load(&runtime, &engine, &view, dir.path())
            .and_then(|()| {
                let numeric = phase("postgres", &[("PG_URL", pg.url(Some(NUMERIC_SCHEMA)))])?;
                let float8 = phase("postgres", &[("PG_URL", pg.url(None))])?;
                Ok((numeric, float8))
            });
        pg.stop();
        let (numeric, float8) = pulls?;
        for p in [&numeric, &float8] {
            if p.rows != cfg.rows {
                bail!("PostgreSQL returned {} rows, expected {}", p.rows, cfg.rows);
            }
        }
        (Some(numeric), Some(float8))
    } else {
        (None, None)
    };
    runtime.block_on(server.shutdown())?;
    let cache = store.block_cache_stats();
    drop(engine);
    store.close()?;
    let rows = cfg.rows as f64;
    Ok(FlightBenchReport {
        rows: cfg.rows,
        columns: doget.columns,
        arrow_bytes: doget.bytes,
        load_s,
        doget_cold_s: doget_cold.s,
        doget_cold_mb_per_s: doget_cold.bytes as f64 / 1e6 / doget_cold.s,
        doget_s: doget.s,
        doget_mb_per_s: doget.bytes as f64 / 1e6 / doget.s,
        doget_rows_per_s: rows / doget.s,
        doget_client_peak_mb: doget.peak_rss_mb,
        adbc_pandas_s: adbc.s,
        adbc_pandas_runs_s: adbc_runs_s,
        adbc_pandas_rows_per_s: rows / adbc.s,
        adbc_pandas_client_peak_mb: adbc.peak_rss_mb,
        postgres_pandas_s: pg.as_ref().map(|p| p.s),
        postgres_pandas_rows_per_s: pg.as_ref().map(|p| rows / p.s),
        postgres_pandas_client_peak_mb: pg.as_ref().map(|p| p.peak_rss_mb),
        postgres_float8_pandas_s: pg_float8.as_ref().map(|p| p.s),
        postgres_float8_pandas_client_peak_mb: pg_float8.as_ref().map(|p| p.peak_rss_mb),
        speedup_vs_postgres: pg.as_ref().map(|p| p.s / adbc.s),
        speedup_vs_postgres_float8: pg_float8.as_ref().map(|p| p.s / adbc.s),
        doget_speedup_vs_postgres: pg.as_ref().map(|p| p.s / doget.s),
        block_cache_hits: cache.hits,
        block_cache_misses: cache.misses,
    })
}

/// Where the seed's fixed-point copy of the month lives.
const NUMERIC_SCHEMA: &str = "seed_numeric";

/// A throwaway PostgreSQL cluster.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn start(dir: &Path) -> Result<Postgres> {
        let bin = match find_pg_bin() {
            Some(b) => b,
            None => {
                eprintln!("installing PostgreSQL with apt-get");
                let ok = Command::new("apt-get")
                    .args(["install", "-y", "-q", "postgresql"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                match find_pg_bin() {
                    Some(b) if ok => b,
                    _ => bail!(
                        "PostgreSQL is not installed and apt-get could not install it; install `postgresql` or pass --no-postgres"
                    ),
                }
            }
        };
        // PostgreSQL refuses to run as root: run it as `postgres` then.
        let uid = Command::new("id").arg("-u").output()?;
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let pg_dir = dir.join("pg");
        std::fs::create_dir_all(&pg_dir)?;
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir)
                .status()?
                .success();
            if !ok {
                bail!("chown of {} to postgres failed", dir.display());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Postgres {
            bin,
            data: pg_dir.join("data"),
            port,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg_dir.display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-o",
                &opts,
                "-l",
                &pg_dir.join("log").to_string_lossy(),
                "-w",
                "start",
            ],
        )?;
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self.command(tool).args(args).output()?;
        if !out.status.success() {
            bail!(
                "{tool} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// SQLAlchemy's URL; with `schema`, that schema comes first in the
    /// search path, so `read_sql_table(view)` finds its copy of the view.
    fn url(&self, schema: Option<&str>) -> String {
        let options = schema.map_or(String::new(), |s| format!("?options=-csearch_path%3D{s}"));
        format!(
            "postgresql+psycopg2://postgres@127.0.0.1:{}/postgres{options}",
            self.port
        )
    }

    /// Creates `view` with the seed's columns in `double precision` and
    /// COPYs the same rows in, then a copy in [`NUMERIC_SCHEMA`] with
    /// fixed-point columns, and checks that the copy holds the same values.
    fn load(
        &self,
        runtime: &tokio::runtime::Runtime,
        engine: &QueryEngine,
        view: &str,
        dir: &Path,
    ) -> Result<()> {
        let csv = dir.join("pg").join("month.csv");
        let columns = runtime.block_on(async {
            let mut stream = engine
                .stream(&format!("SELECT * FROM \"{view}\" ORDER BY dt"))
                .await?;
            let schema = stream.schema();
            let file = std::fs::File::create(&csv)?;
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::BufWriter::new(file));
            while let Some(batch) = stream.next().await {
                writer.write(&batch.map_err(wattson_query::Error::from)?)?;
            }
            Ok::<_, anyhow::Error>(schema)
        })?;
        if self.as_postgres {
            Command::new("chown").arg("postgres:").arg(&csv).status()?;
        }
        let channels: Vec<&str> = columns
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| *name != "dt")
            .collect();
        let joined = |names: &mut dyn Iterator<Item = String>| names.collect::<Vec<_>>().join(", ");
        let float8 = joined(&mut channels.iter().map(|c| format!("\"{c}\" double precision")));
        // Currents have two decimals, voltages and powers one (`simdata`);
        // the check below refuses a copy that rounded anything.
        let numeric = joined(&mut channels.iter().map(|c| {
            let scale = if c.ends_with("_a") { 2 } else { 1 };
            format!("\"{c}\"::numeric(12, {scale}) AS \"{c}\"")
        }));
        let plain = joined(&mut channels.iter().map(|c| format!("f.\"{c}\"")));
        let back = joined(
            &mut channels
                .iter()
                .map(|c| format!("n.\"{c}\"::double precision")),
        );
        let sql = format!(
            "CREATE TABLE \"{view}\" (dt timestamp, {float8});
             COPY \"{view}\" FROM '{csv}' WITH (FORMAT csv, HEADER true);
             ANALYZE \"{view}\";
             CREATE SCHEMA {NUMERIC_SCHEMA};
             CREATE TABLE {NUMERIC_SCHEMA}.\"{view}\" AS SELECT dt, {numeric} FROM \"{view}\" ORDER BY dt;
             ANALYZE {NUMERIC_SCHEMA}.\"{view}\";
             DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM public.\"{view}\" f FULL JOIN {NUMERIC_SCHEMA}.\"{view}\" n USING (dt)
                          WHERE ({plain}) IS DISTINCT FROM ({back})) THEN
                 RAISE EXCEPTION 'the numeric copy of the month differs from its rows';
               END IF;
             END $$;",
            csv = csv.display()
        );
        self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                &sql,
            ],
        )
    }

    fn stop(&self) {
        let data = self.data.to_string_lossy().into_owned();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]) {
            eprintln!("stopping PostgreSQL: {e}");
        }
    }
}

fn find_pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}
