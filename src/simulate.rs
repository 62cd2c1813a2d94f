//! `wattson simulate`: a fleet of virtual meters publishing over real MQTT.
//!
//! Each virtual meter runs the firmware core a board runs
//! (`wattson-firmware`): readings are encoded by its payload encoder, wait in
//! its outbox until the PUBACK, go out through its uplink state machine
//! (live readings one by one, the backlog in batches after a reconnect),
//! reconnect with its backoff, and are stamped through its SNTP-style clock
//! sync. Only the socket is different: rumqttc over TCP instead of
//! embassy-net.
//!
//! Two modes:
//! - `reading`: the load model ([`crate::simdata::MeterSim`]) gives each
//!   second's values directly; thousands of meters per core.
//! - `waveform`: the load model's voltages and currents become synthetic ADC
//!   samples (three phases 120° apart, per-appliance power factor and
//!   harmonics, bias, noise and 12-bit quantisation), which the firmware's
//!   measurement code turns back into readings; a few meters, full fidelity.
//!
//! Determinism: the load model runs on its own clock, which starts at
//! [`MODEL_START_NS`] (a Monday) and advances one period per reading, so the
//! same seed gives the same sequence of values whatever the wall clock says.
//! The timestamps published are the device's idea of UTC at the time.
//!
//! Faults ([`Faults`]) exercise ingest: random disconnects, a skewed time
//! server, duplicate and late readings, bursts, and malformed messages.
//! Every reading the server acknowledged can be logged (`--acked-log`), which
//! is how the end-to-end test checks "acknowledged means stored exactly once".

mod credentials;
mod device;
mod waveform;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use wattson_firmware::reading::Channel;

pub use credentials::{append_credentials, read_credentials};

/// 2022-07-04T00:00:00Z, a Monday: where every load model's clock starts.
pub const MODEL_START_NS: i64 = 1_656_892_800_000_000_000;

/// The seed's 17 channels with the seed's decimals (volts and watts one,
/// amperes two), as the firmware core names them.
pub fn seed_schema() -> [Channel<'static>; 17] {
    wattson_firmware::reading::SEED_SCHEMA
}

/// How readings are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Per-second values straight from the load model: for many meters.
    Reading,
    /// Synthetic ADC waveforms through the firmware's measurement code.
    Waveform,
}

/// Which faults to inject. Parsed from a comma-separated list
/// (`disconnect,skew,duplicate,late,burst,malformed`, or `all`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Drop the connection now and then (about every two minutes per meter).
    pub disconnect: bool,
    /// The meter's time server is off by a few seconds.
    pub skew: bool,
    /// Now and then a reading goes into the outbox twice.
    pub duplicate: bool,
    /// Now and then a reading is held back for 30 s and sent out of order.
    pub late: bool,
    /// Now and then twenty extra readings, milliseconds apart.
    pub burst: bool,
    /// Now and then a message ingest must refuse (broken or nested JSON).
    pub malformed: bool,
}

impl std::str::FromStr for Faults {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut f = Faults::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => {
                    f = Faults {
                        disconnect: true,
                        skew: true,
                        duplicate: true,
                        late: true,
                        burst: true,
                        malformed: true,
                    }
                }
                "none" => f = Faults::default(),
                "disconnect" => f.disconnect = true,
                "skew" => f.skew = true,
                "duplicate" => f.duplicate = true,
                "late" => f.late = true,
                "burst" => f.burst = true,
                "malformed" => f.malformed = true,
                other => {
                    return Err(format!(
                        "unknown fault `{other}`; use disconnect, skew, duplicate, late, burst, malformed, all or none"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// A simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `host:port` of the meters' MQTT listener.
    pub broker: String,
    /// (device id, secret) per meter; the run uses the first `devices`.
    pub credentials: Vec<(String, String)>,
    pub devices: usize,
    /// Readings per second per meter.
    pub rate_hz: f64,
    pub seed: u64,
    pub mode: Mode,
    pub faults: Faults,
    pub table: String,
    /// Stop generating after this long; `None` runs until `stop` is set.
    pub duration: Option<Duration>,
    /// After generating stops, how long to wait for the outboxes to drain.
    pub drain: Duration,
    /// Where to write `device,ts_ms,seq` of every acknowledged reading.
    pub acked_log: Option<PathBuf>,
}

/// What a run did, summed over the meters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    pub devices: usize,
    pub readings_generated: u64,
    pub readings_acked: u64,
    /// Readings still in outboxes when the run ended (not acknowledged).
    pub readings_unacked: u64,
    pub readings_dropped: u64,
    pub readings_resent: u64,
    pub duplicates_sent: u64,
    pub late_sent: u64,
    pub burst_readings: u64,
    pub malformed_sent: u64,
    pub connects: u64,
    pub connection_losses: u64,
    pub elapsed_s: f64,
}

/// Counters the meters add to while they run.
#[derive(Debug, Default)]
struct Totals {
    generated: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    burst: AtomicU64,
    malformed: AtomicU64,
}

/// Runs the fleet until `duration` passes or `stop` is set, then lets the
/// outboxes drain for up to `drain`.
pub fn run(cfg: &SimConfig, stop: Arc<AtomicBool>) -> Result<SimReport> {
    if cfg.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if !(cfg.rate_hz > 0.0 && cfg.rate_hz <= 50.0) {
        bail!("--rate must be above 0 and at most 50 readings per second");
    }
    if cfg.credentials.len() < cfg.devices {
        bail!(
            "{} meters asked for, but the credentials name only {}; add meters with \
             `wattson device add ID --credentials FILE`",
            cfg.devices,
            cfg.credentials.len()
        );
    }
    let (host, port) = cfg
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker `{}` is not HOST:PORT", cfg.broker))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let totals = Arc::new(Totals::default());
    let started = std::time::Instant::now();
    let results = runtime.block_on(async {
        if let Some(d) = cfg.duration {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                stop.store(true, Ordering::SeqCst);
            });
        }
        // One shared copy of the settings, without the credentials: each
        // meter gets only its own.
        let shared = Arc::new(SimConfig {
            credentials: Vec::new(),
            ..cfg.clone()
        });
        let mut tasks = Vec::with_capacity(cfg.devices);
        for (index, (id, secret)) in cfg.credentials.iter().take(cfg.devices).enumerate() {
            let dev = device::Device {
                index,
                id: id.clone(),
                secret: secret.clone(),
                host: host.clone(),
                port,
                cfg: shared.clone(),
                stop: stop.clone(),
                totals: totals.clone(),
            };
            tasks.push(tokio::spawn(dev.run()));
        }
        {
            // Ctrl-C or SIGTERM ends generation; the outboxes still drain.
            let stop = stop.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                if let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    tracing::info!("stopping: draining the meters' outboxes");
                    stop.store(true, Ordering::SeqCst);
                }
            });
        }
        {
            // A line every ten seconds, so a person sees the data flow.
            let (totals, stop) = (totals.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    tracing::info!(
                        generated = totals.generated.load(Ordering::Relaxed),
                        acknowledged = totals.acked.load(Ordering::Relaxed),
                        "simulated meters: readings so far"
                    );
                }
            });
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let mut report = SimReport {
        devices: cfg.devices,
        ..SimReport::default()
    };
    let mut log = String::new();
    for r in results {
        let r = r.context("a simulated meter panicked")?;
        report.readings_acked += r.acked.len() as u64;
        report.readings_unacked += r.unacked;
        report.readings_dropped += r.stats.dropped;
        report.readings_resent += r.stats.resent;
        report.connects += r.stats.connects;
        report.connection_losses += r.stats.losses;
        for (ts, seq) in &r.acked {
            log.push_str(&format!("{},{ts},{seq}\n", r.id));
        }
    }
    report.readings_generated = totals.generated.load(Ordering::SeqCst);
    report.duplicates_sent = totals.duplicates.load(Ordering::SeqCst);
    report.late_sent = totals.late.load(Ordering::SeqCst);
    report.burst_readings = totals.burst.load(Ordering::SeqCst);
    report.malformed_sent = totals.malformed.load(Ordering::SeqCst);
    report.elapsed_s = started.elapsed().as_secs_f64();
    if let Some(path) = &cfg.acked_log {
        std::fs::write(path, format!("device,ts_ms,seq\n{log}"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests;

// The load model and the firmware name the seed's channels alike.
const _: () = {
    let (a, b) = (
        crate::simdata::SEED_CHANNELS,
        wattson_firmware::reading::SEED_SCHEMA,
    );
    let mut k = 0;
    while k < a.len() {
        let (x, y) = (a[k].as_bytes(), b[k].name.as_bytes());
        assert!(x.len() == y.len());
        let mut i = 0;
        while i < x.len() {
            assert!(x[i] == y[i]);
            i += 1;
        }
        k += 1;
    }
};
