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

use crate::simdata::{MeterSim, SEED_TABLE, device_id};

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
    /// Extra device connections that log in and then stay silent during
    /// the load (keep-alive 0), to measure holding many idle meters.
    pub idle: usize,
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
    /// Idle connections asked for, logged in, and still open after the load.
    pub idle_requested: usize,
    pub idle_connected: usize,
    pub idle_held: usize,
    /// Seconds to log in all idle connections (at most 256 at a time).
    pub idle_connect_s: f64,
    /// The server's resident memory with the idle connections open, before
    /// the load (MiB).
    pub server_rss_idle_mb: f64,
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
    // One write of the user file for all meters.
    let ids: Vec<String> = (0..cfg.devices)
        .map(|i| device_id(i + 1))
        .chain((0..cfg.idle).map(|i| format!("idle-{i}")))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut secrets: Vec<(String, String)> =
        ids.iter().cloned().zip(users.add_devices(&refs)?).collect();
    let idle = secrets.split_off(cfg.devices);
    drop(users);
    if cfg.idle > 0 {
        // Each idle meter is a socket here too.
        wattson_ingest::mqtt::raise_open_file_limit().context("raising the open-file limit")?;
    }
    let config = tmp.path().join("wattson.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nmax_connections = {}\n",
            (cfg.devices + cfg.idle + 64).max(10_000)
        ),
    )
    .context("writing the server's configuration")?;

    let (mut server, port) = start_server(&data, &config)?;
    let result = drive(cfg, port, secrets, idle, server.id());
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

fn start_server(data: &Path, config: &Path) -> Result<(Child, u16)> {
    let exe = std::env::current_exe().context("finding the wattson executable")?;
    let subscribers = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(["--log", "info", "serve", "--mqtt-listen", "127.0.0.1:0"])
        .args(["--flight-listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(config)
        .arg("--subscribers-listen")
        .arg(subscribers.to_string())
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

/// How many distinct readings each simulated meter cycles through.
/// Rendering a reading (simulation plus 17 float-to-text conversions) cost
/// the load generator about as much CPU as the server spends storing it, on
/// the same two cores; so each meter renders this many once and repeats
/// their values under fresh timestamps (every reading stays a new key).
const RENDERED_READINGS: usize = 64;

/// A meter's pre-rendered channel parts (`,"pa_v":214.9,...`).
struct Rendered(Vec<String>);

impl Rendered {
    fn new(sim: &mut MeterSim) -> Rendered {
        let parts = (0..RENDERED_READINGS as i64)
            .map(|k| {
                let r = sim.reading(SEED_TABLE, (START_MS + k * 1000) * 1_000_000);
                let mut part = String::with_capacity(400);
                for (name, v) in &r.values {
                    if let Value::F64(x) = v {
                        part.push_str(&format!(",\"{name}\":{x:?}"));
                    }
                }
                part
            })
            .collect();
        Rendered(parts)
    }

    /// One JSON message of `batch` readings starting at reading `first`.
    fn message(&self, first: u64, batch: usize) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(batch * 400);
        if batch > 1 {
            out.push('[');
        }
        for k in 0..batch as u64 {
            if k > 0 {
                out.push(',');
            }
            let n = first + k;
            let ts = START_MS + (n as i64) * 1000;
            let _ = write!(out, "{{\"ts\":{ts}");
            if let Some(part) = self.0.get(n as usize % self.0.len().max(1)) {
                out.push_str(part);
            }
            out.push('}');
        }
        if batch > 1 {
            out.push(']');
        }
        out
    }
}

fn drive(
    cfg: &IngestBenchConfig,
    port: u16,
    secrets: Vec<(String, String)>,
    idle: Vec<(String, String)>,
    server_pid: u32,
) -> Result<IngestBenchReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let idle_started = Instant::now();
    let idle_requested = idle.len();
    let idle_socks = rt.block_on(open_idle(port, idle));
    let idle_connect_s = idle_started.elapsed().as_secs_f64();
    let idle_connected = idle_socks.len();
    let server_rss_idle_mb = rss_kb(server_pid, "VmRSS:")? as f64 / 1024.0;
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
    let idle_held = idle_socks.iter().filter(|s| still_open(s)).count();
    drop(idle_socks);
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
        idle_requested,
        idle_connected,
        idle_held,
        idle_connect_s,
        server_rss_idle_mb,
    })
}

/// Logs in every idle meter over a raw socket (CONNECT with keep-alive 0,
/// so neither side needs to ping), at most 256 handshakes at a time so the
/// listen backlog never overflows. Returns the sockets that got an
/// accepting CONNACK.
async fn open_idle(port: u16, idle: Vec<(String, String)>) -> Vec<std::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for (id, secret) in idle {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            s.write_all(&connect_packet(&id, &secret)).await.ok()?;
            let mut connack = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut connack))
                .await
                .ok()?
                .ok()?;
            // Held as a std socket: no task, no timer, just the descriptor.
            (connack == [0x20, 2, 0, 0])
                .then(|| s.into_std().ok())
                .flatten()
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(s)) = done {
            out.push(s);
        }
    }
    out
}

/// True when the server has not closed the socket (nothing to read yet).
fn still_open(mut s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 1];
    // `into_std` keeps the socket non-blocking.
    matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// An MQTT 3.1.1 CONNECT with username, password and keep-alive 0.
fn connect_packet(id: &str, secret: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 0];
    for field in [id, id, secret] {
        let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
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
            let rendered = Rendered::new(&mut sim);
            let period = (cfg.rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.rate_hz));
            let mut next = tokio::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = period {
                    tokio::time::sleep_until(next).await;
                    next += p;
                }
                let body = rendered.message(n * cfg.batch as u64, cfg.batch);
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
    rss_kb(pid, "VmHWM:")
}

/// A memory field of /proc/PID/status (`VmRSS:`, `VmHWM:`), in KiB.
fn rss_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}
