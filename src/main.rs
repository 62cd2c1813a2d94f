//! The `wattson` command: CLI parsing and wiring of the crates.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use wattson::bench::{self, StorageBenchConfig};
use wattson::export::{self, ExportFormat};
use wattson::import::{self, DEFAULT_CHUNK_ROWS, ImportOptions, OnError};
use wattson::serve;
use wattson_ingest::auth::{EntryKind, Role, UserStore};
use wattson_storage::{ScanRequest, Store, StoreOptions};

/// Wattson: a time-series engine for energy data.
///
/// One binary that ingests meter readings, stores them durably in a compact
/// columnar store and serves them to SQL, Arrow Flight and a dashboard.
#[derive(Debug, Parser)]
#[command(name = "wattson", version, propagate_version = true)]
struct Cli {
    /// The data directory. One process at a time may write readings to it
    /// (`serve`, `import`, `demo`); `sql`, `export` and user and device
    /// changes also work beside a running server.
    #[arg(
        long,
        global = true,
        env = "WATTSON_DATA_DIR",
        default_value = "./wattson-data"
    )]
    data_dir: PathBuf,

    /// Log filter, as in RUST_LOG (for example `info` or `wattson_storage=debug`).
    #[arg(
        long,
        global = true,
        env = "WATTSON_LOG",
        default_value = "info",
        value_parser = log_filter
    )]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: meters publish over MQTT (1883), people subscribe to
    /// live readings (1884), analysts query over Arrow Flight and Flight SQL
    /// (50051) and use the dashboard and HTTP API (8080). Needs an admin
    /// account (`wattson user add NAME --role admin`). Stops cleanly on
    /// SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Show the configuration.
    Config {
        /// Print every setting with its default and an explanation.
        #[arg(long)]
        print_default: bool,
    },
    /// Import readings from a CSV or Parquet file.
    ///
    /// CSV comes in the seed system's shape (`dt` then channels, one device
    /// per file, so --device is required) or as `time,device,channels...`.
    /// Times without a zone are UTC; integer times are epoch milliseconds.
    /// Bad rows are reported with their line number.
    Import(ImportArgs),
    /// Export readings of one table to CSV or Parquet.
    ///
    /// The data directory is opened read-only, so this works beside a
    /// running server and exports the data as of its start.
    Export(ExportArgs),
    /// Run one read-only SQL query against the data directory and print
    /// the result.
    ///
    /// Tables: `power_consumption` and the like (`time`, `device`, then the
    /// channels); the seed system's `{device}_{table}_{yyyy}_{mm}` (`dt`,
    /// then the channels) and `{table}_{yyyy}_{mm}`; `system.devices`,
    /// `system.partitions`, `system.ingest`. Energy functions:
    /// `energy_kwh(power_w, time)`, `twa(value, time)`,
    /// `energy_coverage(time)`, `counter_delta(counter, time)`, gap filling
    /// with `date_bin_gapfill`, `locf`, `interpolate`, and
    /// `last_cache('table')`. The directory is opened read-only, so this
    /// works beside a running server and sees the data as of its start.
    Sql(SqlArgs),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Manage people who may log in (dashboard, SQL, Flight, MQTT
    /// subscribers). No account exists until you add one.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage meters that may publish readings over MQTT.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Run simulated meters against a Wattson server over MQTT.
    ///
    /// Each meter runs the firmware core (payload, store and forward,
    /// reconnect with backoff, clock sync) on realistic household loads. The
    /// meters must exist on the server: `wattson device add ID --credentials
    /// FILE` creates one and appends `ID SECRET` to FILE, which this command
    /// reads. Same --seed, same values. Prints a JSON summary at the end.
    Simulate(SimulateArgs),
    /// Start the server with demo accounts and simulated meters, so that
    /// live data flows within seconds. Prints the credentials once.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Number of meters; the first N entries of --credentials are used.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Readings per second per meter.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// The server's meter listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Meter ids and secrets, one `ID SECRET` per line (as written by
    /// `wattson device add ID --credentials FILE`).
    #[arg(long)]
    credentials: PathBuf,
    /// Seed of the load models.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Faults to inject, comma-separated: disconnect, skew, duplicate, late,
    /// burst, malformed, or all.
    #[arg(long, default_value = "none")]
    faults: wattson::simulate::Faults,
    /// `reading`: values straight from the load model (thousands of meters);
    /// `waveform`: synthetic ADC samples through the firmware's measurement
    /// code (a few meters).
    #[arg(long, value_enum, default_value = "reading")]
    mode: wattson::simulate::Mode,
    /// The table the meters publish to.
    #[arg(long, default_value = "power_consumption")]
    table: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds to wait for unacknowledged readings after stopping.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Write `device,ts_ms,seq` of every acknowledged reading to this file.
    #[arg(long)]
    acked_log: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Keep the demo's data in this directory (default: a temporary one,
    /// deleted at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of simulated meters.
    #[arg(long, default_value_t = 3)]
    devices: usize,
    /// How the meters produce readings (see `wattson simulate --help`).
    #[arg(long, value_enum, default_value = "waveform")]
    mode: wattson::simulate::Mode,
    /// Seed of the simulated readings: the same seed gives the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where meters connect.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: std::net::SocketAddr,
    /// Where people subscribe to live readings.
    #[arg(long, default_value = "127.0.0.1:1884")]
    subscribers_listen: std::net::SocketAddr,
    /// Where Arrow Flight and Flight SQL clients connect.
    #[arg(long, default_value = "127.0.0.1:50051")]
    flight_listen: std::net::SocketAddr,
    /// Where the dashboard listens.
    #[arg(
        long,
        env = "WATTSON_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    dashboard_listen: std::net::SocketAddr,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a person with a role: viewer (dashboard), analyst (viewer plus
    /// SQL and Flight reads) or admin (everything).
    Add {
        /// The login name: 1 to 64 ASCII letters, digits, `_`, `.`, `@` or `-`.
        name: String,
        /// What the person may do.
        #[arg(long)]
        role: Role,
        /// Read the password from the first line of standard input instead
        /// of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List people and meters (never their secrets).
    List,
    /// Remove a person (the last admin cannot be removed). Their tokens and
    /// dashboard sessions stop working. Meters are removed with `wattson
    /// device remove`.
    Remove {
        /// The person's login name.
        name: String,
    },
    /// Set a new password for a person.
    Passwd {
        /// The person's login name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Add a meter and print its new random secret once: store it on the
    /// meter, it cannot be shown again.
    Add {
        /// The meter's id, which is also its MQTT username and client id and
        /// names its topics (`meters/{id}/...`): ASCII letters, digits, `_`
        /// and `-`.
        id: String,
        /// Also append `ID SECRET` to this file (created with mode 0600),
        /// for `wattson simulate --credentials FILE`.
        #[arg(long)]
        credentials: Option<PathBuf>,
    },
    /// List meters.
    List,
    /// Remove a meter; it can no longer connect. Its readings stay.
    Remove {
        /// The meter's id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file; `./wattson.toml` is used when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where meters connect, overriding mqtt.listen (for example 127.0.0.1:0).
    #[arg(long)]
    mqtt_listen: Option<std::net::SocketAddr>,
    /// Where people subscribe, overriding subscribers.listen.
    #[arg(long)]
    subscribers_listen: Option<std::net::SocketAddr>,
    /// Where Arrow Flight and Flight SQL clients connect, overriding
    /// flight.listen.
    #[arg(long, env = "WATTSON_FLIGHT_LISTEN")]
    flight_listen: Option<std::net::SocketAddr>,
    /// Where the dashboard and HTTP API listen, overriding dashboard.listen.
    #[arg(long, env = "WATTSON_DASHBOARD_LISTEN")]
    dashboard_listen: Option<std::net::SocketAddr>,
    /// Where /metrics answers without a token, overriding
    /// dashboard.metrics_listen ("off" turns that listener off).
    #[arg(long, env = "WATTSON_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The file to import (`.csv` or `.parquet`).
    file: PathBuf,
    /// The table the readings go to, for example `power_consumption`.
    #[arg(long)]
    table: String,
    /// The meter the file belongs to, for files without a `device` column.
    #[arg(long)]
    device: Option<String>,
    /// What to do with a row that cannot be imported.
    #[arg(long, value_enum, default_value = "skip")]
    on_error: OnError,
    /// Readings per durable append.
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS)]
    batch_rows: usize,
}

#[derive(Debug, Args)]
struct SqlArgs {
    /// The query, for example
    /// "SELECT device, count(*) FROM power_consumption GROUP BY device".
    query: String,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    format: wattson::sql::SqlFormat,
    /// Ask a running server over Flight SQL instead of reading the data
    /// directory, for example `--server 127.0.0.1:50051` (plain gRPC unless
    /// --tls-ca is given).
    #[arg(long, value_name = "HOST:PORT", requires = "user")]
    server: Option<String>,
    /// The analyst or admin to log in as with --server. The password comes
    /// from WATTSON_PASSWORD or a prompt.
    #[arg(long)]
    user: Option<String>,
    /// Talk TLS to --server and trust the CA certificates in this PEM file
    /// (the server's certificate must name HOST). For a publicly signed
    /// certificate pass the system bundle, for example
    /// /etc/ssl/certs/ca-certificates.crt.
    #[arg(long, value_name = "PEM", requires = "server")]
    tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The table to export.
    #[arg(long)]
    table: String,
    /// Only these devices (repeat the flag for several).
    #[arg(long)]
    device: Vec<String>,
    /// Inclusive start: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or epoch milliseconds.
    #[arg(long)]
    start: Option<String>,
    /// Exclusive end, in the same forms as --start.
    #[arg(long)]
    end: Option<String>,
    /// Output format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Output file, or `-` for standard output.
    file: PathBuf,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Write simulated 1 Hz meter data (the seed's 18 columns) into a fresh
    /// store and measure append, sustained and scan throughput, bytes per
    /// value and WAL recovery speed. Build with --release for real figures.
    Storage {
        /// Number of simulated meters.
        #[arg(long, default_value_t = 16)]
        devices: usize,
        /// Days of 1 Hz data per meter.
        #[arg(long, default_value_t = 28.0)]
        days: f64,
        /// Threads appending concurrently, like many meters' connections:
        /// group commit shares each fdatasync among them.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Build the store under this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The dashboard: latency from an MQTT publish to the live view's
    /// server-sent event with simulated meters at 1 Hz (target p99 at most
    /// 200 ms), and the history request for one channel over a month of
    /// 1 Hz data downsampled to 1000 pixels (target at most 300 ms). Build
    /// with --release for real figures.
    Dashboard {
        /// Simulated meters publishing once a second.
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Days of 1 Hz history for the history request (at most 31).
        #[arg(long, default_value_t = 30.0)]
        days: f64,
        /// Seconds of live events measured, after a 3 s warm-up.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Hot runs of the history request (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time the query issue's questions over simulated 1 Hz meter data
    /// (default 20 meters × 30 days, about 52 M rows): (a) one device-day of
    /// 1-minute averages, (b) the latest reading of every device, (c) daily
    /// kWh per device and appliance for the month, also in DuckDB over a
    /// Parquet export, and (d) one device-month, every column. Build with
    /// --release for real figures.
    Query {
        /// Simulated meters.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Days of 1 Hz data (at most 31: one month).
        #[arg(long, default_value_t = 30.0)]
        days: f64,
        /// Keep the generated store (and its Parquet export) here and reuse
        /// it on the next run.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Hot runs per light query; the heavy ones run 3 to 5 times.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Where to create the Python venv with DuckDB from PyPI.
        #[arg(long, default_value = "target/bench-venv")]
        venv: PathBuf,
        /// Skip the DuckDB comparison.
        #[arg(long)]
        no_duckdb: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Pull one simulated device-month (default 2.68 M rows × 18 channels)
    /// from a Flight server on loopback: DoGet into pyarrow, and the seed's
    /// `pd.read_sql_table` over ADBC Flight SQL, against the same
    /// `pd.read_sql_table` from PostgreSQL (installed with apt-get when
    /// missing), which holds the rows twice: in the seed's fixed-point
    /// `numeric` columns and in `double precision` ones. Reports MB/s,
    /// rows/s and client peak memory. Build with --release for real
    /// figures.
    Flight {
        /// Rows of the device-month (1 Hz; at most 2678400, all of July).
        #[arg(long, default_value_t = 2_678_400)]
        rows: u64,
        /// Where to create the Python venv with pyarrow, ADBC, pandas and
        /// SQLAlchemy from PyPI.
        #[arg(long, default_value = "target/bench-venv")]
        venv: PathBuf,
        /// Skip the PostgreSQL comparison.
        #[arg(long)]
        no_postgres: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Start a real server in a fresh data directory and publish simulated
    /// QoS 1 readings to it over MQTT on loopback; report what was
    /// acknowledged (durably stored), PUBACK latency and the server's CPU
    /// and memory. Build with --release for real figures.
    Ingest {
        /// Simulated meters, one MQTT connection each.
        #[arg(long, default_value_t = 8)]
        devices: usize,
        /// Messages per second per meter; 0 publishes as fast as
        /// acknowledgements allow.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Readings per message.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Extra meters that log in and stay silent during the load, to
        /// measure how many idle connections the server holds.
        #[arg(long, default_value_t = 0)]
        idle: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

// A database's allocation pattern (many small, short-lived buffers from many
// threads) is where glibc's allocator spends a quarter of the ingest path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (the same index in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc gives freed memory back to the kernel 10 ms after it is freed.
/// Ingest frees and allocates large buffers all the time (WAL payloads,
/// buffered columns), so the kernel zeroed the same pages again and again:
/// a 1 s delay gained about 8 % of `bench ingest --batch 10` throughput.
/// Memory still goes back a second after load drops. An operator's own
/// `MIMALLOC_PURGE_DELAY` wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain getters and setters of mimalloc's global options, which
    // are atomics inside mimalloc; no pointers are involved. The default of
    // 10 confirms the index names the purge delay before we change it.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000);
        }
    }
}

/// A `--log` value that tracing accepts: a malformed one (`=debug`,
/// `wattson_storage=loud`) must not silently turn into the default level.
/// A lone misspelt level (`debg`) still reads as a target name: tracing
/// cannot tell the two apart.
fn log_filter(text: &str) -> std::result::Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| {
            format!("{e} (use for example `info`, `debug` or `wattson_storage=debug,info`)")
        })
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    // Checked when the arguments were parsed.
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // rumqttd opens `error_span!`s for every message it routes, with the
    // topic formatted into a field: they pass any level filter, and cost the
    // embedded broker more CPU than routing itself (measured with perf under
    // `bench ingest`). Its events still get through.
    let no_broker_spans = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target().starts_with("rumqttd"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(no_broker_spans)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import(args) => import_cmd(&cli.data_dir, args),
        Command::Export(args) => export_cmd(&cli.data_dir, args),
        Command::Sql(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match (&args.server, &args.user) {
                (Some(server), Some(user)) => {
                    let password = match std::env::var("WATTSON_PASSWORD") {
                        Ok(p) => p,
                        Err(_) => rpassword::prompt_password(format!("password for {user}: "))
                            .context("reading the password")?,
                    };
                    wattson::sql::run_remote(
                        &wattson::sql::Remote {
                            server,
                            user,
                            password: &password,
                            tls_ca: args.tls_ca.as_deref(),
                        },
                        &args.query,
                        args.format,
                        &mut out,
                    )
                }
                _ => wattson::sql::run(&cli.data_dir, &args.query, args.format, &mut out),
            }
        }
        Command::Serve(args) => {
            let mut config = serve::Config::load(args.config.as_deref())?;
            if let Some(addr) = args.mqtt_listen {
                config.mqtt.listen = addr;
            }
            if let Some(addr) = args.subscribers_listen {
                config.subscribers.listen = addr;
            }
            if let Some(addr) = args.flight_listen {
                config.flight.listen = addr;
            }
            if let Some(addr) = args.dashboard_listen {
                config.dashboard.listen = addr;
            }
            if let Some(addr) = args.metrics_listen {
                config.dashboard.metrics_listen = addr;
            }
            serve::run(&cli.data_dir, config)
        }
        Command::Config { print_default } => {
            if !print_default {
                bail!("say what to show: `wattson config --print-default`");
            }
            print!("{}", serve::DEFAULT_CONFIG);
            Ok(())
        }
        Command::User(cmd) => user_cmd(&cli.data_dir, cmd),
        Command::Simulate(args) => simulate_cmd(args),
        Command::Demo(args) => wattson::demo::run(&wattson::demo::DemoConfig {
            dir: args.dir,
            devices: args.devices,
            mode: args.mode,
            seed: args.seed,
            meters_listen: args.mqtt_listen,
            subscribers_listen: args.subscribers_listen,
            flight_listen: args.flight_listen,
            dashboard_listen: args.dashboard_listen,
        }),
        Command::Device(cmd) => device_cmd(&cli.data_dir, cmd),
        Command::Bench(BenchCommand::Ingest {
            devices,
            rate,
            batch,
            duration,
            idle,
            json,
        }) => {
            if !(duration > 0.0 && rate >= 0.0) {
                bail!("--duration must be positive and --rate not negative");
            }
            let report = wattson::bench::ingest::run(&wattson::bench::ingest::IngestBenchConfig {
                devices,
                rate_hz: rate,
                batch,
                duration: std::time::Duration::from_secs_f64(duration),
                idle,
            })?;
            print_report(&report, json)
        }
        Command::Bench(BenchCommand::Flight {
            rows,
            venv,
            no_postgres,
            json,
        }) => {
            let report = bench::flight::run(&bench::flight::FlightBenchConfig {
                rows,
                venv,
                postgres: !no_postgres,
                progress: !json,
            })?;
            print_report(&report, json)
        }
        Command::Bench(BenchCommand::Query {
            devices,
            days,
            dir,
            runs,
            venv,
            no_duckdb,
            json,
        }) => {
            let report = bench::query::run(&bench::query::QueryBenchConfig {
                devices,
                days,
                dir,
                runs,
                venv: (!no_duckdb).then_some(venv),
                progress: !json,
            })?;
            print_report(&report, json)
        }
        Command::Bench(BenchCommand::Dashboard {
            devices,
            days,
            seconds,
            runs,
            json,
        }) => {
            let report = bench::dashboard::run(&bench::dashboard::DashboardBenchConfig {
                devices,
                days,
                seconds,
                runs,
                progress: !json,
            })?;
            print_report(&report, json)
        }
        Command::Bench(BenchCommand::Storage {
            devices,
            days,
            writers,
            dir,
            json,
        }) => bench_storage(
            StorageBenchConfig {
                devices,
                days,
                writers,
                dir,
                progress: !json,
            },
            json,
        ),
    }
}

fn simulate_cmd(args: SimulateArgs) -> Result<()> {
    let secs = |x: f64, what: &str| -> Result<std::time::Duration> {
        std::time::Duration::try_from_secs_f64(x)
            .map_err(|_| anyhow::anyhow!("--{what} must be a non-negative number of seconds"))
    };
    let cfg = wattson::simulate::SimConfig {
        broker: args.broker,
        credentials: wattson::simulate::read_credentials(&args.credentials)?,
        devices: args.devices,
        rate_hz: args.rate,
        seed: args.seed,
        mode: args.mode,
        faults: args.faults,
        table: args.table,
        duration: args.duration.map(|d| secs(d, "duration")).transpose()?,
        drain: secs(args.drain, "drain")?,
        acked_log: args.acked_log,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report = wattson::simulate::run(&cfg, stop)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A benchmark's report: one JSON line for scripts, or indented for people.
fn print_report(report: &impl serde::Serialize, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

fn open_store(data_dir: &std::path::Path) -> Result<Store> {
    let store = Store::open(data_dir, StoreOptions::default())
        .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
    for event in store.recovery_report() {
        eprintln!("recovery: {event}");
    }
    Ok(store)
}

fn import_cmd(data_dir: &std::path::Path, args: ImportArgs) -> Result<()> {
    if args.batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    let store = open_store(data_dir)?;
    let known: HashMap<_, _> = store
        .table(&args.table)
        .map(|t| t.channels.into_iter().collect())
        .unwrap_or_default();
    let opts = ImportOptions {
        table: &args.table,
        device: args.device.as_deref(),
        on_error: args.on_error,
        chunk_rows: args.batch_rows,
        known_types: &known,
    };
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "[{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    let mut appended = 0u64;
    let result = import::import_file(&args.file, &opts, &bar, &mut |chunk| {
        let n = chunk.len() as u64;
        store.append(chunk)?;
        appended += n;
        Ok(())
    });
    bar.finish_and_clear();
    let closed = store.close();
    let report = result.with_context(|| {
        format!(
            "importing {} ({appended} readings were stored before the error)",
            args.file.display()
        )
    })?;
    closed?;
    println!(
        "imported {} readings into `{}` from {}; skipped {} bad rows",
        report.rows,
        args.table,
        args.file.display(),
        report.skipped
    );
    for (line, reason) in &report.first_errors {
        println!("  line {line}: {reason}");
    }
    if report.skipped > report.first_errors.len() as u64 {
        println!(
            "  ... and {} more",
            report.skipped - report.first_errors.len() as u64
        );
    }
    Ok(())
}

fn export_cmd(data_dir: &std::path::Path, args: ExportArgs) -> Result<()> {
    let time = |s: &Option<String>, what: &str| -> Result<Option<i64>> {
        s.as_deref()
            .map(|s| import::parse_time(s).map_err(|e| anyhow::anyhow!("--{what} `{s}`: {e}")))
            .transpose()
    };
    let mut req =
        ScanRequest::table(&args.table).range(time(&args.start, "start")?, time(&args.end, "end")?);
    if !args.device.is_empty() {
        req = req.devices(args.device.clone());
    }
    // Read-only, as `sql`: no lock, nothing written, so an export works
    // beside a running server and sees the data as of this open.
    let store = Store::open_read_only(data_dir, StoreOptions::default())
        .with_context(|| format!("opening {} read-only", data_dir.display()))?;
    let scan = store.scan(&req)?;
    let schema = scan.schema();
    let progress = ProgressBar::new_spinner();
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {human_pos} rows ({per_sec})")
    {
        progress.set_style(style);
    }
    let batches = scan.map(|b| {
        if let Ok(b) = &b {
            progress.inc(b.num_rows() as u64);
        }
        b.map_err(anyhow::Error::from)
    });
    let rows = if args.file.as_os_str() == "-" {
        let rows = export::export(
            batches,
            schema,
            args.format,
            std::io::BufWriter::new(std::io::stdout()),
        )?;
        std::io::stdout().flush()?;
        rows
    } else {
        let file = std::fs::File::create(&args.file)
            .with_context(|| format!("creating {}", args.file.display()))?;
        export::export(batches, schema, args.format, std::io::BufWriter::new(file))?
    };
    progress.finish_and_clear();
    store.close()?;
    eprintln!("exported {rows} rows of `{}`", args.table);
    Ok(())
}

fn bench_storage(cfg: StorageBenchConfig, json: bool) -> Result<()> {
    if cfg.devices == 0 || cfg.days <= 0.0 {
        bail!("--devices and --days must be positive");
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench storage` for real figures"
        );
    }
    let report = bench::storage(&cfg)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Reads a new password: the first line of stdin, or twice from the
/// terminal without echo.
fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("New password: ")
        .context("reading the password (use --password-stdin when there is no terminal)")?;
    let second = rpassword::prompt_password("Repeat it: ")?;
    if first != second {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

fn user_cmd(data_dir: &std::path::Path, cmd: UserCommand) -> Result<()> {
    let users = UserStore::open(data_dir)?;
    match cmd {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            users.add_user(&name, role, &password)?;
            println!("added {role} `{name}`");
        }
        UserCommand::List => {
            let entries = users.list();
            if entries.is_empty() {
                println!(
                    "no users or devices yet; add an admin with `wattson user add NAME --role admin`"
                );
            }
            println!("{:<32} {:<8} {:<8} created", "name", "kind", "role");
            for e in entries {
                let created = e
                    .created
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let kind = match e.kind {
                    EntryKind::User => "user",
                    EntryKind::Device => "device",
                };
                println!(
                    "{:<32} {:<8} {:<8} {}",
                    e.name,
                    kind,
                    e.role,
                    format_unix(created)
                );
            }
        }
        UserCommand::Remove { name } => {
            refuse_other_kind(&users, &name, EntryKind::User)?;
            users.remove(&name)?;
            println!("removed `{name}`");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            users.set_password(&name, &password)?;
            println!("password of `{name}` changed");
        }
    }
    Ok(())
}

fn device_cmd(data_dir: &std::path::Path, cmd: DeviceCommand) -> Result<()> {
    let users = UserStore::open(data_dir)?;
    match cmd {
        DeviceCommand::Add { id, credentials } => {
            let secret = users.add_device(&id)?;
            if let Some(path) = credentials {
                wattson::simulate::append_credentials(&path, &id, &secret)?;
                eprintln!("appended `{id}` to {}", path.display());
            }
            eprintln!(
                "added meter `{id}`; its MQTT username is `{id}` and its password is printed below, once:"
            );
            println!("{secret}");
        }
        DeviceCommand::List => {
            for e in users
                .list()
                .into_iter()
                .filter(|e| e.kind == EntryKind::Device)
            {
                println!("{}", e.name);
            }
        }
        DeviceCommand::Remove { id } => {
            refuse_other_kind(&users, &id, EntryKind::Device)?;
            users.remove(&id)?;
            println!("removed meter `{id}`");
        }
    }
    Ok(())
}

/// `user remove` removes people and `device remove` meters: a slip between
/// the two must not take away the wrong kind of account.
fn refuse_other_kind(users: &UserStore, name: &str, wanted: EntryKind) -> Result<()> {
    let found = users.list().into_iter().find(|e| e.name == name);
    match (found.map(|e| e.kind), wanted) {
        (Some(EntryKind::Device), EntryKind::User) => {
            bail!("`{name}` is a meter; remove it with `wattson device remove {name}`")
        }
        (Some(EntryKind::User), EntryKind::Device) => {
            bail!("`{name}` is a person; remove them with `wattson user remove {name}`")
        }
        _ => Ok(()),
    }
}

/// `YYYY-MM-DD HH:MM:SS` UTC, without a date library in the binary.
fn format_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = wattson_storage::model::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
