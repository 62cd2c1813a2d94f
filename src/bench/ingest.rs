//! `wattson bench ingest`: a load generator of simulated meters publishing
//! QoS 1 JSON readings over real MQTT on loopback to a real `wattson serve`
//! (a child process with a fresh data directory), measuring what was
//! acknowledged, that is, durably stored.
//!
//! The readings come from the simulator's load model and are encoded by the
//! firmware core's payload encoder, byte for byte what `wattson simulate`
//! and a board send. Unlike `wattson simulate`, each connection publishes as
//! fast as acknowledgements allow (up to 100 in flight) rather than through
//! a meter's outbox, because the figure wanted is the server's ceiling.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use serde::Serialize;
use wattson_ingest::auth::{Role, UserStore};
use wattson_storage::Value;

use wattson_firmware::payload;
use wattson_firmware::reading::Reading as FwReading;

use crate::simdata::{MeterSim, SEED_TABLE, device_id};
use crate::simulate::seed_schema;

/// 2022-07-01T00:00:00Z in ms.
const START_MS: i64 = 1_656_633_600_000;

/// Sizes of an ingest benchmark run.
#[derive(Debug, Clone)]
pub struct IngestBenchConfig {
    pub devices: usize,
    /// Messages per second per device; 0 = as fast as acknowledgements allow.
    pub rate_hz: f64,
    /// Readings per message (a JSON array when above 1).
    pub batch: usize,
    pub duration: Duration,
}

/// The figures `wattson bench ingest --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct IngestBenchReport {
    pub devices: usize,
    pub rate_hz: f64,
    pub batch: usize,
    pub duration_s: f64,
    pub messages_acked: u64,
    pub readings_acked: u64,
    pub messages_per_s: f64,
    pub readings_per_s: f64,
    pub puback_p50_ms: f64,
    pub puback_p99_ms: f64,
    pub server_cpu_pct: f64,
    pub server_peak_rss_mb: f64,
    pub connection_errors: u64,
}

/// Runs the benchmark against a child `wattson serve`.
pub fn run(cfg: &IngestBenchConfig) -> Result<IngestBenchReport> {
    if cfg.devices == 0 || cfg.batch == 0 {
        bail!("--devices and --batch must be at least 1");
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let data = tmp.path().join("data");
    let users = UserStore::open(&data)?;
    let admin_password = format!("bench-{:032x}", rand::random::<u128>());
    users.add_user("bench-admin", Role::Admin, &admin_password)?;
    let mut secrets = Vec::with_capacity(cfg.devices);
    for i in 0..cfg.devices {
        secrets.push((device_id(i + 1), users.add_device(&device_id(i + 1))?));
    }
    drop(users);

    let (mut server, port) = start_server(&data)?;
    let result = drive(cfg, port, secrets, server.id());
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let status = server.wait().context("waiting for the server to stop")?;
    let report = result?;
    if !status.success() {
        bail!("the server did not stop cleanly: {status}");
    }
    Ok(report)
}

fn start_server(data: &Path) -> Result<(Child, u16)> {
    let exe = std::env::current_exe().context("finding the wattson executable")?;
    let subscribers = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(["--log", "info", "serve", "--mqtt-listen", "127.0.0.1:0"])
        .arg("--subscribers-listen")
        .arg(subscribers.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wattson serve")?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("wattson serve exited before listening"))??;
        if line.contains("meters listening")
            && let Some(addr) = line.split("listen=").nth(1)
        {
            let port = addr.trim().rsplit(':').next().unwrap_or_default();
            break port.parse::<u16>().context("parsing the server's port")?;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, port))
}

/// One device's JSON message of `batch` readings starting at reading `first`,
/// encoded by the firmware core's payload encoder, as `wattson simulate`'s
/// meters and the ESP32-C3 image send it.
fn message(sim: &mut MeterSim, first: u64, batch: usize) -> String {
    let schema = seed_schema();
    let readings: Vec<FwReading> = (0..batch as u64)
        .filter_map(|k| {
            let ts = START_MS + ((first + k) as i64) * 1000;
            let r = sim.reading(SEED_TABLE, ts * 1_000_000);
            let values: Vec<f32> = r
                .values
                .iter()
                .map(|(_, v)| match v {
                    Value::F64(x) => *x as f32,
                    _ => f32::NAN,
                })
                .collect();
            FwReading::new(Some(ts), (first + k) as u32, &values).ok()
        })
        .collect();
    // 17 channels take under 400 bytes a reading.
    let mut buf = vec![0u8; 512 * batch.max(1)];
    let len = if batch > 1 {
        payload::encode_batch(&schema, &readings, batch, &mut buf).map(|(n, _)| n)
    } else {
        readings
            .first()
            .map_or(Ok(0), |r| payload::encode_reading(&schema, r, &mut buf))
    };
    buf.truncate(len.unwrap_or(0));
    String::from_utf8(buf).unwrap_or_default()
}

fn drive(
    cfg: &IngestBenchConfig,
    port: u16,
    secrets: Vec<(String, String)>,
    server_pid: u32,
) -> Result<IngestBenchReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_ticks(server_pid)?;
    let started = Instant::now();
    let latencies: Vec<Vec<Duration>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, (id, secret)) in secrets.into_iter().enumerate() {
            let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
            let cfg = cfg.clone();
            tasks.push(tokio::spawn(async move {
                device(i, id, secret, port, cfg, acked, errors, stop).await
            }));
        }
        tokio::time::sleep(cfg.duration).await;
        stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap_or_default());
        }
        all
    });
    let elapsed = started.elapsed();
    let cpu_after = cpu_ticks(server_pid)?;
    let mut lat: Vec<Duration> = latencies.into_iter().flatten().collect();
    lat.sort();
    let pct = |p: f64| -> f64 {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let messages = acked.load(Ordering::SeqCst);
    let secs = elapsed.as_secs_f64();
    Ok(IngestBenchReport {
        devices: cfg.devices,
        rate_hz: cfg.rate_hz,
        batch: cfg.batch,
        duration_s: secs,
        messages_acked: messages,
        readings_acked: messages * cfg.batch as u64,
        messages_per_s: messages as f64 / secs,
        readings_per_s: (messages * cfg.batch as u64) as f64 / secs,
        puback_p50_ms: pct(0.50),
        puback_p99_ms: pct(0.99),
        server_cpu_pct: (cpu_after - cpu_before) as f64 / clock_ticks_per_s() / secs * 100.0,
        server_peak_rss_mb: peak_rss_kb(server_pid)? as f64 / 1024.0,
        connection_errors: errors.load(Ordering::SeqCst),
    })
}

#[allow(clippy::too_many_arguments)]
async fn device(
    index: usize,
    id: String,
    secret: String,
    port: u16,
    cfg: IngestBenchConfig,
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
    opts.set_credentials(id.clone(), secret);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(100);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 200);
    let topic = format!("meters/{id}/{SEED_TABLE}");
    let publisher = {
        let stop = stop.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let mut sim = MeterSim::new(&format!("bench-{index}"), index as u64);
            let period = (cfg.rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.rate_hz));
            let mut next = tokio::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = period {
                    tokio::time::sleep_until(next).await;
                    next += p;
                }
                let body = message(&mut sim, n * cfg.batch as u64, cfg.batch);
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, body)
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
            let _ = client.disconnect().await;
        })
    };
    let mut sent: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                sent.insert(pkid, Instant::now());
            }
            Ok(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                if let Some(t) = sent.remove(&ack.pkid) {
                    latencies.push(t.elapsed());
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                if !stop.load(Ordering::Relaxed) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
    publisher.abort();
    latencies
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields count from after its ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()
            .context("parsing /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    Ok(field(11)? + field(12)?)
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}
