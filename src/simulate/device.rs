//! One virtual meter: the firmware core's uplink over a rumqttc connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::time::Instant;
use wattson_firmware::clock::ClockSync;
use wattson_firmware::reading::Reading;
use wattson_firmware::uplink::{Uplink, UplinkConfig};
use wattson_storage::Value;

use super::waveform::WaveMeter;
use super::{MODEL_START_NS, Mode, SimConfig, Totals, seed_schema};
use crate::simdata::{MeterSim, SEED_TABLE};

/// Ten minutes of 1 Hz readings survive an outage, as on the ESP32-C3
/// image; at about 120 bytes a reading that is 72 KB per meter, so a fleet
/// of thousands still fits in memory.
const OUTBOX: usize = 600;
/// Messages in flight per meter.
const IN_FLIGHT: usize = 8;
/// The largest message: 60 readings of 17 channels.
const PAYLOAD_BYTES: usize = 32 * 1024;
/// How long a late reading is held back.
const LATE_BY: Duration = Duration::from_secs(30);
/// How often the meter asks its (simulated) time server.
const SYNC_EVERY: Duration = Duration::from_secs(60);

/// Payloads ingest must refuse at decoding, whole: truncated JSON, and a
/// nested object as a value.
const MALFORMED: [&[u8]; 2] = [
    br#"{"ts":1658244261000,"pa_v":21"#,
    br#"[{"pa_v":230.1},{"pa_v":{"nested":true}}]"#,
];

/// What one meter ran into, for the report.
#[derive(Debug, Default)]
pub(super) struct DeviceStats {
    pub(super) dropped: u64,
    pub(super) resent: u64,
    pub(super) connects: u64,
    pub(super) losses: u64,
}

/// A finished meter.
#[derive(Debug)]
pub(super) struct DeviceResult {
    pub(super) id: String,
    /// (ts_ms, seq) of every acknowledged reading.
    pub(super) acked: Vec<(i64, u32)>,
    pub(super) unacked: u64,
    pub(super) stats: DeviceStats,
}

/// What a message in flight carried: PUBACKs come in publish order, so the
/// oldest entry is what the next PUBACK acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Outbox,
    Malformed,
}

struct Conn {
    client: AsyncClient,
    events: EventLoop,
    sent: VecDeque<Sent>,
}

/// Where readings come from.
enum Source {
    Reading(Box<MeterSim>),
    Waveform(Box<WaveMeter>),
}

impl Source {
    fn values(&mut self, model_ns: i64) -> Vec<f32> {
        match self {
            Source::Reading(sim) => sim
                .reading(SEED_TABLE, model_ns)
                .values
                .iter()
                .map(|(_, v)| match v {
                    Value::F64(x) => *x as f32,
                    _ => f32::NAN,
                })
                .collect(),
            Source::Waveform(w) => w.values(model_ns),
        }
    }
}

pub(super) struct Device {
    pub(super) index: usize,
    pub(super) id: String,
    pub(super) secret: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) cfg: Arc<SimConfig>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) totals: Arc<Totals>,
}

fn utc_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A connection attempt under way.
type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Conn, String>> + Send>>;

/// Waits for the attempt under way to finish, or forever without one.
async fn attempt(connecting: &mut Option<Connecting>) -> Result<Conn, String> {
    match connecting {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Waits for the next event, or forever without a connection.
async fn next_event(conn: &mut Option<Conn>) -> Result<Event, rumqttc::ConnectionError> {
    match conn {
        Some(c) => c.events.poll().await,
        None => std::future::pending().await,
    }
}

impl Device {
    pub(super) async fn run(self) -> DeviceResult {
        let Device {
            index,
            id,
            secret,
            host,
            port,
            cfg,
            stop,
            totals,
        } = self;
        let seed = cfg.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut source = match cfg.mode {
            Mode::Reading => Source::Reading(Box::new(MeterSim::new(&id, cfg.seed))),
            Mode::Waveform => Source::Waveform(Box::new(WaveMeter::new(&id, cfg.seed))),
        };
        let schema = seed_schema();
        let topic = format!("meters/{id}/{}", cfg.table);
        let mut uplink: Box<Uplink<OUTBOX, IN_FLIGHT>> =
            Box::new(Uplink::new(UplinkConfig::default(), rng.random()));
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        let mut acked = Vec::new();

        // The board's clock: monotonic ms since boot, running a little fast
        // or slow; UTC comes from the clock sync, as on a board.
        let boot = Instant::now();
        let drift: f64 = rng.random_range(-40e-6..40e-6);
        let local_ms = || (boot.elapsed().as_secs_f64() * 1000.0 * (1.0 + drift)) as u64;
        // A skewed time server is off by a few seconds, either way.
        let skew_ms = if cfg.faults.skew {
            rng.random_range(-5_000..5_000)
        } else {
            0
        };
        let mut clock = ClockSync::new();
        let mut last_sync: Option<Instant> = None;

        let period = Duration::from_secs_f64(1.0 / cfg.rate_hz);
        let model_step_ns = (1e9 / cfg.rate_hz) as i64;
        let mut model_ns = MODEL_START_NS;
        let mut seq = 0u32;
        // A meter that falls behind skips measurements rather than taking
        // several at once.
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut connecting: Option<Connecting> = None;
        let mut late: VecDeque<(Instant, Reading)> = VecDeque::new();
        let mut conn: Option<Conn> = None;
        let mut drain_until: Option<Instant> = None;

        loop {
            let now = Instant::now();
            if drain_until.is_none() && stop.load(Ordering::Relaxed) {
                drain_until = Some(now + cfg.drain);
                // Held-back readings go out now rather than never.
                while let Some((_, r)) = late.pop_front() {
                    uplink.push(r);
                }
            }
            if let Some(until) = drain_until
                && (uplink.outbox().is_empty() || now >= until)
            {
                break;
            }
            if last_sync.is_none_or(|t| now.duration_since(t) >= SYNC_EVERY) {
                // A simulated SNTP exchange: a few ms each way.
                let t1 = local_ms();
                let server = utc_ms() + skew_ms;
                clock.update(t1, server + 2, server + 2, t1 + 4);
                last_sync = Some(now);
            }

            // Start connecting when the uplink says an attempt is due. The
            // attempt runs alongside measuring, as on a board: a slow broker
            // must not stop the meter's clock.
            if conn.is_none() && connecting.is_none() && uplink.should_connect(local_ms()) {
                connecting = Some(Box::pin(connect(
                    id.clone(),
                    secret.clone(),
                    host.clone(),
                    port,
                )));
            }

            // Publish what the uplink lets out.
            if let Some(c) = &mut conn {
                while let Ok(Some((len, count))) = uplink.next_message(&schema, &mut payload) {
                    let body = payload.get(..len).unwrap_or_default().to_vec();
                    if c.client
                        .try_publish(&topic, QoS::AtLeastOnce, false, body)
                        .is_err()
                    {
                        break;
                    }
                    uplink.published(count);
                    c.sent.push_back(Sent::Outbox);
                }
            }

            let generating = drain_until.is_none();
            tokio::select! {
                result = attempt(&mut connecting) => {
                    connecting = None;
                    match result {
                        Ok(c) => {
                            uplink.connected();
                            tracing::debug!(device = %id, "connected");
                            conn = Some(c);
                        }
                        Err(e) => {
                            let delay = uplink.connection_lost(local_ms());
                            tracing::debug!(device = %id, "connection failed: {e}; retrying in {delay} ms");
                        }
                    }
                }
                _ = ticks.tick(), if generating => {
                    let local = local_ms();
                    let values = source.values(model_ns);
                    model_ns += model_step_ns;
                    let Ok(r) = Reading::new(clock.utc_ms(local), seq, &values) else {
                        continue;
                    };
                    seq = seq.wrapping_add(1);
                    totals.generated.fetch_add(1, Ordering::Relaxed);
                    let f = cfg.faults;
                    if f.late && rng.random_bool(0.01) {
                        late.push_back((now + LATE_BY, r));
                        totals.late.fetch_add(1, Ordering::Relaxed);
                    } else {
                        uplink.push(r);
                    }
                    if f.duplicate && rng.random_bool(0.02) {
                        uplink.push(r);
                        totals.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    if f.burst && rng.random_bool(0.005) {
                        // Twenty extra readings a few ms apart, as from a
                        // meter that flushes a high-rate capture.
                        for k in 1..=20 {
                            let ts = r.ts_ms.map(|t| t + k * 7);
                            let values = source.values(model_ns);
                            if let Ok(b) = Reading::new(ts, seq, &values) {
                                seq = seq.wrapping_add(1);
                                uplink.push(b);
                                totals.burst.fetch_add(1, Ordering::Relaxed);
                                totals.generated.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    while late.front().is_some_and(|(due, _)| *due <= now) {
                        if let Some((_, r)) = late.pop_front() {
                            uplink.push(r);
                        }
                    }
                    if let Some(c) = &mut conn {
                        if f.malformed && rng.random_bool(0.01) {
                            let bad = MALFORMED[rng.random_range(0..MALFORMED.len())];
                            if c.client.try_publish(&topic, QoS::AtLeastOnce, false, bad).is_ok() {
                                c.sent.push_back(Sent::Malformed);
                                totals.malformed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if f.disconnect && rng.random_bool((1.0 / (120.0 * cfg.rate_hz)).min(1.0)) {
                            tracing::debug!(device = %id, "fault: dropping the connection");
                            conn = None;
                            uplink.connection_lost(local_ms());
                        }
                    }
                }
                ev = next_event(&mut conn) => match ev {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        let kind = conn.as_mut().and_then(|c| c.sent.pop_front());
                        if kind == Some(Sent::Outbox) {
                            let n = uplink.puback(|r| acked.push((r.ts_ms.unwrap_or(0), r.seq)));
                            totals.acked.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let delay = uplink.connection_lost(local_ms());
                        tracing::debug!(device = %id, "connection lost: {e}; retrying in {delay} ms");
                        conn = None;
                    }
                },
                // Wakes the loop for reconnect attempts and the drain check.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if let Some(c) = conn {
            let _ = c.client.try_disconnect();
        }
        let s = uplink.stats();
        DeviceResult {
            id,
            acked,
            unacked: uplink.outbox().len() as u64,
            stats: DeviceStats {
                dropped: uplink.outbox().dropped(),
                resent: s.readings_resent,
                connects: s.connects,
                losses: s.connection_losses,
            },
        }
    }
}

/// Opens an MQTT connection and waits for the CONNACK.
async fn connect(id: String, secret: String, host: String, port: u16) -> Result<Conn, String> {
    let mut opts = MqttOptions::new(&id, host, port);
    opts.set_credentials(id, secret);
    opts.set_keep_alive(Duration::from_secs(30));
    // The outbox is the only memory of what is unacknowledged: a fresh
    // session each time, and every resend decided by the uplink.
    opts.set_clean_session(true);
    opts.set_inflight(IN_FLIGHT as u16 + 4);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => {
                return if ack.code == ConnectReturnCode::Success {
                    Ok(Conn {
                        client,
                        events,
                        sent: VecDeque::new(),
                    })
                } else {
                    Err(format!("refused: {:?}", ack.code))
                };
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no CONNACK within 5 s".into()),
        }
    }
}
