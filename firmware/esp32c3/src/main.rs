//! Wattson meter image for the ESP32-C3.
//!
//! Once a second the meter samples its five ADC1 inputs (GPIO0: the phase
//! voltage through a voltage transformer; GPIO1-4: four Hall-effect current
//! sensors) for 200 ms at 2 kHz, measures them with `wattson-firmware`, and
//! buffers the reading in the core's outbox. A network task keeps Wi-Fi,
//! DHCP and one MQTT 3.1.1 connection to the Wattson server up, publishes the
//! outbox with QoS 1 and removes readings only on PUBACK, which Wattson sends
//! once they are on disk. SNTP sets the clock at start and every hour.
//!
//! Settings (Wi-Fi, broker, device id and secret, time server) are fixed at
//! build time: see `build.rs` and the README. The Wi-Fi driver needs a heap
//! (esp-alloc); the firmware core itself allocates nothing.

#![no_std]
#![no_main]

use core::cell::RefCell;
use core::fmt::Write as _;

use embassy_executor::Spawner;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpAddress, IpEndpoint, Runner, Stack, StackResources};
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel as Queue;
use embassy_time::{Duration, Instant, Timer, with_timeout};
use esp_backtrace as _;
use esp_hal::Blocking;
use esp_hal::analog::adc::{Adc, AdcConfig, AdcPin, Attenuation};
use esp_hal::clock::CpuClock;
use esp_hal::peripherals::{ADC1, GPIO0, GPIO1, GPIO2, GPIO3, GPIO4};
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config, Interface, WifiController};
use static_cell::StaticCell;
use wattson_firmware::clock::{ClockSync, sntp};
use wattson_firmware::hal::Sampler;
use wattson_firmware::measure::{Calibration, Circuit, MeterConfig};
use wattson_firmware::reading::{Channel, MAX_CHANNELS, Reading};
use wattson_firmware::uplink::{LinkState, Uplink, UplinkConfig};

esp_bootloader_esp_idf::esp_app_desc!();

const SSID: &str = env!("WATTSON_WIFI_SSID");
const WIFI_PASSWORD: &str = env!("WATTSON_WIFI_PASSWORD");
const BROKER: &str = env!("WATTSON_BROKER");
const DEVICE_ID: &str = env!("WATTSON_DEVICE_ID");
const DEVICE_SECRET: &str = env!("WATTSON_DEVICE_SECRET");
const TABLE: &str = env!("WATTSON_TABLE");
const NTP: &str = env!("WATTSON_NTP");

/// Frames per second and per window: 200 ms at 2 kHz is ten 50 Hz cycles.
const SAMPLE_RATE_HZ: u32 = 2000;
const FRAMES: usize = 400;
const CHANNELS: usize = 5;

/// Nominal calibration for the wiring in docs/firmware.md: 11 dB attenuation
/// (about 0.61 mV per count up to 2.5 V), inputs biased to 1.25 V (count
/// 2048); 230 V rms through a 230:11 V transformer and a 16:1 divider
/// (0.204 V per count); a ±20 A Hall sensor at 100 mV/A halved by a
/// divider (0.0122 A per count). Calibrate each board as described there.
const PHASES: [Calibration; 1] = [Calibration::new(0.204, 2048.0)];
const CURRENT: Calibration = Calibration::new(0.0122, 2048.0);
const CIRCUITS: [Circuit; 4] = [
    Circuit {
        phase: 0,
        cal: CURRENT,
    },
    Circuit {
        phase: 0,
        cal: CURRENT,
    },
    Circuit {
        phase: 0,
        cal: CURRENT,
    },
    Circuit {
        phase: 0,
        cal: CURRENT,
    },
];
const SCHEMA: &[Channel<'static>] = &[
    Channel {
        name: "pa_v",
        decimals: 1,
    },
    Channel {
        name: "wd_a",
        decimals: 2,
    },
    Channel {
        name: "wd_p",
        decimals: 1,
    },
    Channel {
        name: "rf_a",
        decimals: 2,
    },
    Channel {
        name: "rf_p",
        decimals: 1,
    },
    Channel {
        name: "ac01_a",
        decimals: 2,
    },
    Channel {
        name: "ac01_p",
        decimals: 1,
    },
    Channel {
        name: "rh01_a",
        decimals: 2,
    },
    Channel {
        name: "rh01_p",
        decimals: 1,
    },
];

/// Ten minutes of 1 Hz readings (about 70 KiB) survive a broker outage.
const OUTBOX: usize = 600;
const IN_FLIGHT: usize = 4;

type MeterUplink = Uplink<OUTBOX, IN_FLIGHT>;

/// New readings, from the measuring loop to the uplink task, which owns the
/// outbox. The lock is held only to move one reading, so the radio's
/// interrupts are never held off for long.
static READINGS: Queue<CriticalSectionRawMutex, Reading, 16> = Queue::new();
/// The clock sync, written by the clock task, read once per reading.
static CLOCK: Mutex<CriticalSectionRawMutex, RefCell<ClockSync>> =
    Mutex::new(RefCell::new(ClockSync::new()));
/// The outbox lives in static memory (about 70 KiB), not on a task's stack.
static UPLINK: StaticCell<MeterUplink> = StaticCell::new();

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 36 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let rng = Rng::new();
    let seed = rng.random();
    let uplink = UPLINK.init(Uplink::new(UplinkConfig::default(), seed));

    println!("wattson meter {DEVICE_ID}: connecting to Wi-Fi `{SSID}`");
    let mut controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(c) => c,
        Err(e) => halt("Wi-Fi driver", e),
    };
    let station = Interface::station();
    let auth = match WIFI_PASSWORD.try_into() {
        Ok(p) if !WIFI_PASSWORD.is_empty() => AuthenticationMethodConfig::WpaWpa2Personal(p),
        _ => AuthenticationMethodConfig::Open,
    };
    let ssid = match SSID.try_into() {
        Ok(s) => s,
        Err(_) => halt("WATTSON_WIFI_SSID", "longer than 32 bytes"),
    };
    let config = Config::Station(
        StationConfig::default()
            .with_ssid(ssid)
            .with_authentication(auth),
    );
    if let Err(e) = controller.set_config(&config) {
        halt("Wi-Fi configuration", e);
    }

    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let net_seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    let (stack, runner) = embassy_net::new(
        station,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        net_seed,
    );
    spawner.spawn(wifi_task(controller).unwrap_or_else(|e| halt("spawn", e)));
    spawner.spawn(net_task(runner).unwrap_or_else(|e| halt("spawn", e)));
    spawner.spawn(uplink_task(stack, uplink).unwrap_or_else(|e| halt("spawn", e)));
    spawner.spawn(clock_task(stack).unwrap_or_else(|e| halt("spawn", e)));

    // The measuring loop runs here: ADC1 on GPIO0..4.
    let mut adc_config = AdcConfig::new();
    let v = adc_config.enable_pin(peripherals.GPIO0, Attenuation::_11dB);
    let i1 = adc_config.enable_pin(peripherals.GPIO1, Attenuation::_11dB);
    let i2 = adc_config.enable_pin(peripherals.GPIO2, Attenuation::_11dB);
    let i3 = adc_config.enable_pin(peripherals.GPIO3, Attenuation::_11dB);
    let i4 = adc_config.enable_pin(peripherals.GPIO4, Attenuation::_11dB);
    let adc = Adc::new(peripherals.ADC1, adc_config);
    let mut sampler = AdcSampler {
        adc,
        v,
        i1,
        i2,
        i3,
        i4,
    };
    let meter = MeterConfig {
        sample_rate_hz: SAMPLE_RATE_HZ as f32,
        phases: &PHASES,
        circuits: &CIRCUITS,
    };
    let mut window = [0u16; FRAMES * CHANNELS];
    let mut seq = 0u32;
    let mut next_second = Instant::now();
    loop {
        // 200 ms out of every second; the radio keeps running in esp-rtos
        // threads meanwhile and TCP buffers what arrives.
        let Ok(()) = sampler.sample(&mut window);
        match meter.measure(&window) {
            Ok(m) => {
                let mut values = [0.0; MAX_CHANNELS];
                let n = m.values(&mut values);
                let local = Instant::now().as_millis();
                let values = values.get(..n).unwrap_or_default();
                // Before the first SNTP answer a reading keeps its board time,
                // and the uplink task stamps it once the clock is known.
                let reading = match CLOCK.lock(|c| c.borrow().utc_ms(local)) {
                    Some(ts) => Reading::new(Some(ts), seq, values),
                    None => Reading::unstamped(local, seq, values),
                };
                if let Ok(r) = reading
                    && READINGS.try_send(r).is_err()
                {
                    println!("the uplink task is behind: reading {seq} dropped");
                }
                seq = seq.wrapping_add(1);
            }
            Err(e) => println!("measurement failed: {e}"),
        }
        next_second += Duration::from_secs(1);
        Timer::at(next_second).await;
    }
}

/// ADC1 on GPIO0 (voltage) and GPIO1-4 (currents), one-shot conversions
/// paced by the system timer at `SAMPLE_RATE_HZ` frames per second.
struct AdcSampler {
    adc: Adc<'static, ADC1<'static>, Blocking>,
    v: AdcPin<GPIO0<'static>, ADC1<'static>>,
    i1: AdcPin<GPIO1<'static>, ADC1<'static>>,
    i2: AdcPin<GPIO2<'static>, ADC1<'static>>,
    i3: AdcPin<GPIO3<'static>, ADC1<'static>>,
    i4: AdcPin<GPIO4<'static>, ADC1<'static>>,
}

impl Sampler for AdcSampler {
    type Error = core::convert::Infallible;

    fn sample(&mut self, window: &mut [u16]) -> Result<(), Self::Error> {
        let period = esp_hal::time::Duration::from_micros(1_000_000 / u64::from(SAMPLE_RATE_HZ));
        let mut due = esp_hal::time::Instant::now();
        let adc = &mut self.adc;
        for frame in window.chunks_exact_mut(CHANNELS) {
            // Busy-wait to the frame's time: a conversion takes tens of µs,
            // a frame is 500 µs, and the window must be evenly spaced.
            while esp_hal::time::Instant::now() < due {}
            due += period;
            // A one-shot conversion reports WouldBlock until it is done.
            let read = |f: &mut dyn FnMut() -> nb::Result<u16, ()>| loop {
                if let Ok(x) = f() {
                    break x;
                }
            };
            let samples = [
                read(&mut || adc.read_oneshot(&mut self.v)),
                read(&mut || adc.read_oneshot(&mut self.i1)),
                read(&mut || adc.read_oneshot(&mut self.i2)),
                read(&mut || adc.read_oneshot(&mut self.i3)),
                read(&mut || adc.read_oneshot(&mut self.i4)),
            ];
            frame.copy_from_slice(&samples);
        }
        Ok(())
    }
}

/// Stops with a message: a misconfigured image cannot do anything useful.
fn halt(what: &str, e: impl core::fmt::Debug) -> ! {
    println!("fatal: {what}: {e:?}");
    loop {
        core::hint::spin_loop();
    }
}

#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    let mut backoff = wattson_firmware::backoff::Backoff::new(1000, 60_000, 7);
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("Wi-Fi connected");
                backoff.reset();
                let _ = controller.wait_for_disconnect_async().await;
                println!("Wi-Fi lost");
            }
            Err(e) => {
                let delay = backoff.next_delay_ms();
                println!("Wi-Fi connection failed ({e:?}); retrying in {delay} ms");
                Timer::after_millis(u64::from(delay)).await;
            }
        }
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

async fn resolve(stack: Stack<'static>, host: &str) -> Option<IpAddress> {
    if let Ok(ip) = host.parse::<core::net::Ipv4Addr>() {
        return Some(IpAddress::Ipv4(ip));
    }
    stack
        .dns_query(host, DnsQueryType::A)
        .await
        .ok()
        .and_then(|a| a.first().copied())
}

/// Sets the clock over SNTP at start and hourly after that (every ten
/// seconds until the first exchange succeeds).
#[embassy_executor::task]
async fn clock_task(stack: Stack<'static>) {
    loop {
        stack.wait_config_up().await;
        let ok = sync_clock(stack).await;
        Timer::after_secs(if ok { 3600 } else { 10 }).await;
    }
}

/// One SNTP exchange with the configured server; true if it was accepted.
async fn sync_clock(stack: Stack<'static>) -> bool {
    let Some(server) = resolve(stack, NTP).await else {
        println!("SNTP: cannot resolve {NTP}");
        return false;
    };
    let (mut rx_meta, mut tx_meta) = ([PacketMetadata::EMPTY; 2], [PacketMetadata::EMPTY; 2]);
    let (mut rx, mut tx) = ([0u8; 128], [0u8; 128]);
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    if socket.bind(0).is_err() {
        return false;
    }
    let t1 = Instant::now().as_millis();
    if socket
        .send_to(&sntp::request(t1), IpEndpoint::new(server, 123))
        .await
        .is_err()
    {
        return false;
    }
    let mut reply = [0u8; sntp::PACKET_LEN];
    let got = with_timeout(Duration::from_secs(2), socket.recv_from(&mut reply)).await;
    let t4 = Instant::now().as_millis();
    let Ok(Ok((n, _))) = got else {
        println!("SNTP: no answer from {NTP}");
        return false;
    };
    match sntp::parse_reply(reply.get(..n).unwrap_or_default(), t1) {
        Ok((t2, t3)) => {
            let offset = CLOCK.lock(|c| c.borrow_mut().update(t1, t2, t3, t4));
            println!("SNTP: offset {offset:?} ms");
            offset.is_some()
        }
        Err(e) => {
            println!("SNTP: {e}");
            false
        }
    }
}

/// Keeps the MQTT connection up and drains the outbox through it.
#[embassy_executor::task]
async fn uplink_task(stack: Stack<'static>, uplink: &'static mut MeterUplink) {
    let mut topic = topic_buf();
    let (host, port) = match BROKER.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(1883)),
        None => (BROKER, 1883),
    };
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 4096]);
    let mut payload = [0u8; 3072];
    let mut packet = [0u8; 3200];
    loop {
        stack.wait_config_up().await;
        take_readings(uplink);
        let now = Instant::now().as_millis();
        if !uplink.should_connect(now) {
            Timer::after_millis(200).await;
            continue;
        }
        let Some(addr) = resolve(stack, host).await else {
            lost(uplink, "cannot resolve the broker");
            continue;
        };
        let mut socket = TcpSocket::new(stack, &mut rx, &mut tx);
        socket.set_timeout(Some(Duration::from_secs(30)));
        if socket.connect(IpEndpoint::new(addr, port)).await.is_err() {
            lost(uplink, "TCP connect failed");
            continue;
        }
        if let Err(e) = session(
            &mut socket,
            uplink,
            topic.as_str(),
            &mut payload,
            &mut packet,
        )
        .await
        {
            lost(uplink, e);
        }
        socket.abort();
        let _ = socket.flush().await;
        topic = topic_buf();
    }
}

fn lost(uplink: &mut MeterUplink, why: &str) {
    let delay = uplink.connection_lost(Instant::now().as_millis());
    println!("MQTT: {why}; next attempt in {delay} ms");
}

/// Without a time server for this long, readings go out without `ts`
/// (ingest stamps them on arrival; a resend may then be stored twice).
const CLOCK_PATIENCE_MS: u64 = 5 * 60 * 1000;

/// Moves new readings into the outbox and stamps those taken before the
/// clock was known.
fn take_readings(uplink: &mut MeterUplink) {
    while let Ok(r) = READINGS.try_receive() {
        if uplink.push(r).is_some() {
            println!(
                "outbox full: dropped the oldest reading ({} so far)",
                uplink.outbox().dropped()
            );
        }
    }
    let synced = CLOCK.lock(|c| c.borrow().is_synced());
    if synced {
        uplink.stamp(|local| CLOCK.lock(|c| c.borrow().utc_ms(local)));
    }
    uplink.send_unstamped(!synced && Instant::now().as_millis() > CLOCK_PATIENCE_MS);
}

/// `meters/{id}/{table}` in a fixed buffer.
struct Topic {
    buf: [u8; 128],
    len: usize,
}

impl Topic {
    fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl core::fmt::Write for Topic {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn topic_buf() -> Topic {
    let mut t = Topic {
        buf: [0; 128],
        len: 0,
    };
    let _ = write!(t, "meters/{DEVICE_ID}/{TABLE}");
    t
}

/// What the broker sends a meter.
enum Incoming {
    /// `refused` says why, for the log; `None` when accepted.
    ConnAck {
        refused: Option<&'static str>,
    },
    PubAck,
    Other,
}

/// Bytes received and not yet decoded. Kept across calls, so a read cut
/// short by a timeout loses nothing.
struct Rx {
    buf: [u8; 256],
    have: usize,
}

impl Rx {
    /// Takes one whole packet off the front, if one is there.
    fn take(&mut self) -> Result<Option<Incoming>, &'static str> {
        let data = self.buf.get(..self.have).unwrap_or_default();
        let total = match wattson_firmware::mqtt::frame_len(data, self.buf.len()) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(_) => return Err("malformed or oversized packet from the broker"),
        };
        let packet = data.get(..total).unwrap_or_default();
        let incoming = match mqttrs::decode_slice(packet) {
            Ok(Some(mqttrs::Packet::Connack(c))) => Incoming::ConnAck {
                refused: refusal(c.code),
            },
            Ok(Some(mqttrs::Packet::Puback(_))) => Incoming::PubAck,
            Ok(_) => Incoming::Other,
            Err(_) => return Err("malformed packet from the broker"),
        };
        self.buf.copy_within(total..self.have, 0);
        self.have -= total;
        Ok(Some(incoming))
    }

    async fn next(&mut self, socket: &mut TcpSocket<'_>) -> Result<Incoming, &'static str> {
        loop {
            if let Some(p) = self.take()? {
                return Ok(p);
            }
            let free = self.buf.get_mut(self.have..).unwrap_or_default();
            match socket.read(free).await {
                Ok(0) | Err(_) => return Err("connection closed"),
                Ok(n) => self.have += n,
            }
        }
    }
}

/// Why the broker refused the CONNECT, in the words of Wattson's answers:
/// only a bad login needs the meter's owner; the others pass.
fn refusal(code: mqttrs::ConnectReturnCode) -> Option<&'static str> {
    use mqttrs::ConnectReturnCode as C;
    match code {
        C::Accepted => None,
        C::BadUsernamePassword => {
            Some("the broker refused the login: check DEVICE_ID and DEVICE_SECRET")
        }
        C::NotAuthorized => Some("the broker refused the login: this account may not publish"),
        C::RefusedIdentifierRejected => Some("the broker rejected the client id"),
        C::ServerUnavailable => Some(
            "the server is unavailable for now (it cannot store readings, or logins are throttled); readings stay queued",
        ),
        C::RefusedProtocolVersion => Some("the broker does not speak MQTT 3.1.1"),
    }
}

async fn send(
    socket: &mut TcpSocket<'_>,
    p: &mqttrs::Packet<'_>,
    buf: &mut [u8],
) -> Result<(), &'static str> {
    use embedded_io_async::Write;
    let n = mqttrs::encode_slice(p, buf).map_err(|_| "encoding failed")?;
    socket
        .write_all(buf.get(..n).unwrap_or_default())
        .await
        .map_err(|_| "write failed")
}

/// One MQTT session: CONNECT, then publish and collect PUBACKs until the
/// connection fails.
async fn session(
    socket: &mut TcpSocket<'_>,
    uplink: &mut MeterUplink,
    topic: &str,
    payload: &mut [u8],
    packet: &mut [u8],
) -> Result<(), &'static str> {
    let connect = mqttrs::Packet::Connect(mqttrs::Connect {
        protocol: mqttrs::Protocol::MQTT311,
        keep_alive: 30,
        client_id: DEVICE_ID,
        clean_session: true,
        last_will: None,
        username: Some(DEVICE_ID),
        password: Some(DEVICE_SECRET.as_bytes()),
    });
    send(socket, &connect, packet).await?;
    let mut rx = Rx {
        buf: [0; 256],
        have: 0,
    };
    match with_timeout(Duration::from_secs(10), rx.next(socket)).await {
        Ok(Ok(Incoming::ConnAck { refused: None })) => {}
        Ok(Ok(Incoming::ConnAck { refused: Some(why) })) => return Err(why),
        Ok(Ok(_)) => return Err("expected CONNACK"),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no CONNACK within 10 s"),
    }
    uplink.connected();
    println!("MQTT: connected as {DEVICE_ID}");
    let mut pid = mqttrs::Pid::new();
    let mut last_sent = Instant::now();
    loop {
        // Publish what may go out now.
        take_readings(uplink);
        loop {
            let next = uplink.next_message(SCHEMA, payload).ok().flatten();
            let Some((len, count)) = next else { break };
            let publish = mqttrs::Packet::Publish(mqttrs::Publish {
                dup: false,
                qospid: mqttrs::QosPid::AtLeastOnce(pid),
                retain: false,
                topic_name: topic,
                payload: payload.get(..len).unwrap_or_default(),
            });
            send(socket, &publish, packet).await?;
            pid = pid + 1;
            uplink.published(count);
            last_sent = Instant::now();
        }
        if Instant::now() - last_sent > Duration::from_secs(15) {
            send(socket, &mqttrs::Packet::Pingreq, packet).await?;
            last_sent = Instant::now();
        }
        // Wait a little for acknowledgements; new readings arrive once a second.
        if let Ok(r) = with_timeout(Duration::from_millis(250), rx.next(socket)).await
            && let Incoming::PubAck = r?
        {
            uplink.puback(|_| {});
        }
        if uplink.state() != LinkState::Up {
            return Err("uplink down");
        }
    }
}
