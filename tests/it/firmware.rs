//! The firmware core's blocking meter (`hal::Meter`: sampler, clock,
//! transport, measurement, outbox, uplink) against a real `wattson serve`,
//! over a plain TCP MQTT 3.1.1 transport framed by the core's
//! `mqtt::frame_len`: every reading measured before, during and after a
//! server outage is stored exactly once.

use std::f64::consts::PI;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rumqttc::{Connect, ConnectReturnCode, Packet, Publish, QoS};
use wattson_firmware::hal::{Clock, Meter, Sampler, Transport};
use wattson_firmware::measure::{Calibration, Circuit, MeterConfig};
use wattson_firmware::mqtt::frame_len;
use wattson_firmware::reading::SEED_SCHEMA;
use wattson_firmware::uplink::{Uplink, UplinkConfig};

use crate::serve::{export_csv, free_port, setup, start_at};

const RATE: f64 = 2000.0;
const CAL_V: Calibration = Calibration::new(0.25, 2048.0);
const CAL_I: Calibration = Calibration::new(0.01, 2048.0);

/// 230 V on three phases, 4 A in phase with phase a on one circuit.
struct Sine;
impl Sampler for Sine {
    type Error = ();
    fn sample(&mut self, window: &mut [u16]) -> Result<(), ()> {
        for (k, frame) in window.chunks_mut(4).enumerate() {
            let w = 2.0 * PI * 50.0 * k as f64 / RATE;
            let v = |ph: f64| (325.27 * (w - ph).sin() / 0.25 + 2048.0).round() as u16;
            let i = (5.657 * w.sin() / 0.01 + 2048.0).round() as u16;
            frame.copy_from_slice(&[v(0.0), v(2.094), v(4.189), i]);
        }
        Ok(())
    }
}

struct Monotonic(Instant);
impl Clock for Monotonic {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// MQTT 3.1.1 over a blocking socket: what a board with a blocking network
/// stack would implement.
struct Tcp {
    port: u16,
    id: String,
    secret: String,
    stream: Option<TcpStream>,
    rx: Vec<u8>,
    pkid: u16,
}

impl Tcp {
    fn write(&mut self, p: Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        p.write(&mut buf, 1 << 20)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let stream = self.stream.as_mut().ok_or(ErrorKind::NotConnected)?;
        stream.write_all(&buf)
    }

    /// The whole packets received so far.
    fn packets(&mut self) -> std::io::Result<Vec<Packet>> {
        let stream = self.stream.as_mut().ok_or(ErrorKind::NotConnected)?;
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let mut out = Vec::new();
        while let Some(n) =
            frame_len(&self.rx, 1 << 20).map_err(|e| std::io::Error::other(e.to_string()))?
        {
            let mut one = BytesMut::from(&self.rx[..n]);
            self.rx.drain(..n);
            out.push(
                Packet::read(&mut one, 1 << 20)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?,
            );
        }
        Ok(out)
    }
}

impl Transport for Tcp {
    type Error = std::io::Error;

    fn connect(&mut self) -> std::io::Result<()> {
        self.stream = None;
        self.rx.clear();
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        self.stream = Some(stream);
        let mut connect = Connect::new(self.id.clone());
        connect.keep_alive = 30;
        connect.set_login(self.id.clone(), self.secret.clone());
        self.write(Packet::Connect(connect))?;
        // Blocking until the CONNACK, then non-blocking for PUBACKs.
        let mut head = [0u8; 4];
        self.stream.as_mut().unwrap().read_exact(&mut head)?;
        let mut b = BytesMut::from(&head[..]);
        match Packet::read(&mut b, 64) {
            Ok(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => {}
            other => return Err(std::io::Error::other(format!("refused: {other:?}"))),
        }
        self.stream.as_mut().unwrap().set_nonblocking(true)?;
        Ok(())
    }

    fn publish(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.pkid = self.pkid % u16::MAX + 1;
        let mut p = Publish::new(
            format!("meters/{}/power", self.id),
            QoS::AtLeastOnce,
            payload,
        );
        p.pkid = self.pkid;
        self.write(Packet::Publish(p))
    }

    fn take_acks(&mut self) -> std::io::Result<usize> {
        let packets = self.packets().inspect_err(|_| self.stream = None)?;
        Ok(packets
            .iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .count())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn blocking_meter_stores_every_reading_once_across_a_server_outage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let port = free_port();
    let (mut server, _) = start_at(&data, port);

    let circuits = [Circuit {
        phase: 0,
        cal: CAL_I,
    }];
    let config = MeterConfig {
        sample_rate_hz: RATE as f32,
        phases: &[CAL_V; 3],
        circuits: &circuits,
    };
    let transport = Tcp {
        port,
        id: "m1".into(),
        secret,
        stream: None,
        rx: Vec::new(),
        pkid: 0,
    };
    let uplink: Uplink<256, 4> = Uplink::new(
        UplinkConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            ..UplinkConfig::default()
        },
        11,
    );
    let clock = Monotonic(Instant::now());
    let schema = &SEED_SCHEMA[..5];
    let mut meter = Meter::new(Sine, clock, transport, config, schema, uplink);
    // The board's SNTP exchange, against the host clock.
    let t1 = meter.clock.now_ms();
    meter.sync.update(t1, now_ms(), now_ms(), t1);

    let mut window = vec![0u16; 400 * 4];
    let mut buf = vec![0u8; 16 * 1024];
    let mut measured = 0;
    let step = |meter: &mut Meter<'_, _, _, _, 256, 4>, window: &mut [u16], buf: &mut [u8]| {
        let r = meter.step(window, buf);
        std::thread::sleep(Duration::from_millis(100));
        r
    };
    // Ten readings with the server up, ten with it dead (SIGKILL), ten after
    // it came back; then let the outbox drain.
    for phase in 0..3 {
        if phase == 1 {
            server.kill().unwrap();
            server.wait().unwrap();
        }
        if phase == 2 {
            server = start_at(&data, port).0;
        }
        for _ in 0..10 {
            measured += usize::from(step(&mut meter, &mut window, &mut buf).measured);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !meter.uplink.outbox().is_empty() && Instant::now() < deadline {
        // An empty window measures nothing; the step only moves the link.
        let r = meter.step(&mut window[..0], &mut buf);
        assert!(!r.measured);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop the server before any assertion, so a failure leaves no process.
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    assert_eq!(measured, 30);
    assert!(
        meter.uplink.outbox().is_empty(),
        "{:?}",
        meter.uplink.stats()
    );
    let stats = meter.uplink.stats();
    assert_eq!(stats.readings_acked, 30, "{stats:?}");
    assert!(stats.connects >= 2, "{stats:?}");
    // 4 A at 230 V for 30 windows 100 ms apart: energy was integrated.
    assert!(meter.energy[0].wh() > 0.0);

    let csv = export_csv(&data, "power");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let seq_col = header.iter().position(|h| *h == "seq").unwrap();
    let p_col = header.iter().position(|h| *h == "wd_p").unwrap();
    let mut seqs: Vec<u32> = Vec::new();
    for l in lines {
        let cells: Vec<&str> = l.split(',').collect();
        seqs.push(cells[seq_col].parse::<f64>().unwrap() as u32);
        let p: f64 = cells[p_col].parse().unwrap();
        assert!((p - 920.0).abs() < 5.0, "wd_p {p}");
    }
    seqs.sort();
    assert_eq!(seqs, (0..30).collect::<Vec<u32>>());
}
