//! `wattson bench dashboard`: the dashboard's two speed promises, against a
//! child `wattson serve`:
//! - **live**: simulated meters (default 100, 1 Hz, real MQTT) publish;
//!   a client reads `/api/live` like the page does (server-sent events
//!   over one HTTP connection) and measures each reading's age on arrival:
//!   receive time minus the reading's timestamp, which the meter sets just
//!   before it publishes (`live_p50_ms`, `live_p99_ms`, `live_max_ms`).
//! - **history**: one channel of one device over a month of 1 Hz readings
//!   (2.6 million, generated into the data directory first), downsampled
//!   by `/api/history` to 1000 pixels; the median of hot runs
//!   (`history_ms`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use wattson_ingest::auth::{Role, UserStore};
use wattson_storage::{Store, StoreOptions};

use crate::bench::{START_NS, append_all, bar, generator};
use crate::simdata::{SEED_TABLE, device_id};
use crate::simulate::{self, Faults, Mode, SimConfig};

#[derive(Debug, Clone)]
pub struct DashboardBenchConfig {
    pub devices: usize,
    pub days: f64,
    /// Seconds of live readings measured (after a warm-up of 3 s).
    pub seconds: u64,
    /// Hot runs of the history request.
    pub runs: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DashboardBenchReport {
    pub devices: usize,
    pub live_events: usize,
    pub live_p50_ms: f64,
    pub live_p99_ms: f64,
    pub live_max_ms: f64,
    pub history_rows: u64,
    pub history_points: usize,
    pub history_ms: f64,
}

const PASSWORD: &str = "bench dashboard password";

pub fn run(cfg: &DashboardBenchConfig) -> Result<DashboardBenchReport> {
    if cfg.devices == 0 || !(cfg.days > 0.0 && cfg.days <= 31.0) {
        bail!("--devices must be at least 1 and --days between 0 and 31");
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let data = tmp.path().join("data");
    let users = UserStore::open(&data)?;
    users.add_user("bench-admin", Role::Admin, PASSWORD)?;
    let ids: Vec<String> = (1..=cfg.devices).map(device_id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let credentials: Vec<(String, String)> =
        ids.iter().cloned().zip(users.add_devices(&refs)?).collect();
    drop(users);

    let seconds = (cfg.days * 86_400.0) as u64;
    {
        let store = Arc::new(Store::open(&data, StoreOptions::default())?);
        let progress = bar(cfg.progress, seconds, "generating history");
        append_all(&store, generator(1, seconds, 42), 4, &progress)?;
        progress.finish_and_clear();
        store.close()?;
    }

    let (mut server, mqtt, http) = start_server(&data)?;
    let result = drive(cfg, mqtt, http, credentials, seconds);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    result
}

fn drive(
    cfg: &DashboardBenchConfig,
    mqtt: u16,
    http: u16,
    credentials: Vec<(String, String)>,
    seconds: u64,
) -> Result<DashboardBenchReport> {
    let cookie = login(http)?;

    // History: one channel of device 1 over the generated range.
    let from = START_NS / 1_000_000;
    let to = from + seconds as i64 * 1000;
    let path = format!(
        "/api/history?table={SEED_TABLE}&device={}&channels=pa_v&from={from}&to={to}&width=1000",
        device_id(1)
    );
    let mut times = Vec::new();
    let mut rows = 0;
    let mut points = 0;
    for i in 0..=cfg.runs.max(1) {
        let started = Instant::now();
        let body = get(http, &path, &cookie)?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        let v: serde_json::Value = serde_json::from_slice(&body).context("history answer")?;
        rows = v["rows"].as_u64().unwrap_or(0);
        points = v["series"]["pa_v"].as_array().map_or(0, Vec::len);
        if i > 0 {
            times.push(took);
        }
    }
    times.sort_by(f64::total_cmp);
    let history_ms = times[times.len() / 2];

    // Live: the meters publish while a page-like client listens.
    let stop = Arc::new(AtomicBool::new(false));
    let mut stream = TcpStream::connect(("127.0.0.1", http))?;
    write!(
        stream,
        "GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let sim_cfg = SimConfig {
        broker: format!("127.0.0.1:{mqtt}"),
        credentials,
        devices: cfg.devices,
        rate_hz: 1.0,
        seed: 7,
        mode: Mode::Waveform,
        faults: Faults::default(),
        table: SEED_TABLE.to_owned(),
        duration: Some(Duration::from_secs(cfg.seconds + 4)),
        drain: Duration::from_secs(1),
        acked_log: None,
    };
    let sim_stop = stop.clone();
    let sim = std::thread::spawn(move || simulate::run(&sim_cfg, sim_stop));
    let mut lines = BufReader::new(stream).lines();
    let started = Instant::now();
    let warmup = Duration::from_secs(3);
    let mut ages = Vec::new();
    while started.elapsed() < warmup + Duration::from_secs(cfg.seconds) {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("the live stream ended"))?
            .context("reading the live stream")?;
        let Some(json) = line.strip_prefix("data: ") else {
            continue;
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        if started.elapsed() < warmup {
            continue;
        }
        for r in v["r"].as_array().into_iter().flatten() {
            if let Some(t) = r[0].as_i64() {
                ages.push((now_ms - t) as f64);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = sim.join();
    if ages.is_empty() {
        bail!("no live events arrived");
    }
    ages.sort_by(f64::total_cmp);
    let pct = |p: f64| ages[((ages.len() - 1) as f64 * p).round() as usize];
    Ok(DashboardBenchReport {
        devices: cfg.devices,
        live_events: ages.len(),
        live_p50_ms: pct(0.5),
        live_p99_ms: pct(0.99),
        live_max_ms: pct(1.0),
        history_rows: rows,
        history_points: points,
        history_ms,
    })
}

fn start_server(data: &Path) -> Result<(Child, u16, u16)> {
    let exe = std::env::current_exe().context("finding the wattson executable")?;
    let mut child = Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(["--log", "info", "serve", "--mqtt-listen", "127.0.0.1:0"])
        .args(["--subscribers-listen", "127.0.0.1:0"])
        .args(["--flight-listen", "127.0.0.1:0"])
        .args([
            "--dashboard-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wattson serve")?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no server log"))?;
    let mut lines = BufReader::new(stderr).lines();
    let port = |line: &str, field: &str| -> Option<u16> {
        let rest = line.split(&format!(" {field}=")).nth(1)?;
        rest.split_whitespace()
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    };
    let (mut mqtt, mut http) = (None, None);
    while mqtt.is_none() || http.is_none() {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("wattson serve exited before listening"))??;
        if line.contains("meters listening") {
            mqtt = port(&line, "listen");
        } else if line.contains("dashboard listening") {
            http = port(&line, "dashboard_listen");
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((child, mqtt.unwrap_or(0), http.unwrap_or(0)))
}

/// One request; returns the status line, the headers and the raw body.
fn request(port: u16, head: &str, body: &[u8]) -> Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer"))?;
    Ok((
        String::from_utf8_lossy(&raw[..split]).into_owned(),
        raw[split + 4..].to_vec(),
    ))
}

fn login(port: u16) -> Result<String> {
    let body = format!("user=bench-admin&password={}", PASSWORD.replace(' ', "+"));
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (head, _) = request(port, &head, body.as_bytes())?;
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.trim().split(';').next().map(str::to_owned))
        .ok_or_else(|| anyhow!("login failed: {head}"))
}

/// A GET with HTTP/1.0, so the body is not chunked.
fn get(port: u16, path: &str, cookie: &str) -> Result<Vec<u8>> {
    let head = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n");
    let (head, body) = request(port, &head, b"")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}\n{}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}
