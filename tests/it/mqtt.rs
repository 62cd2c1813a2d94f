//! Meters against the real `wattson serve`, over real sockets: MQTT over
//! TLS with a private CA, Debian's `mosquitto_pub`, a reconnect storm of
//! 1,000 devices, the limits of `wattson.toml`, and malformed packets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use wattson_ingest::auth::UserStore;

use crate::serve::{
    exported_rows, serve_on_free_ports, setup, spawn_listening, start, start_with, stop, wattson,
};

const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn options(id: &str, secret: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(id, secret);
    o.set_keep_alive(Duration::from_secs(60));
    o
}

/// A JSON reading `i` of a fixed day in July 2022.
fn reading(i: u64) -> String {
    format!(
        r#"{{"ts":{},"pa_v":{i}.5}}"#,
        1_658_244_261_000u64 + i * 1000
    )
}

/// Polls until CONNACK, or the connection error.
async fn connack(ev: &mut EventLoop) -> Result<(), ConnectionError> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Incoming::ConnAck(_)) = ev.poll().await? {
                return Ok(());
            }
        }
    })
    .await
    .expect("no CONNACK and no error within 20 s")
}

/// Publishes readings `from..to` with QoS 1 and waits for every PUBACK.
async fn publish_acked(client: &AsyncClient, ev: &mut EventLoop, from: u64, to: u64) {
    for i in from..to {
        client
            .publish("meters/m1/power", QoS::AtLeastOnce, false, reading(i))
            .await
            .unwrap();
    }
    acks(ev, to - from).await;
}

/// Polls until `n` PUBACKs arrived.
async fn acks(ev: &mut EventLoop, n: u64) {
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(WAIT, ev.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection failed after {acked} PUBACKs: {e}"),
            Err(_) => panic!("timed out after {acked} PUBACKs"),
        }
    }
}

// ---- TLS ----

/// A private CA, a server certificate it signed for 127.0.0.1 and
/// localhost, and the files `wattson serve` and clients read.
pub(crate) struct TestPki {
    pub(crate) ca_der: CertificateDer<'static>,
    pub(crate) ca_pem: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

pub(crate) fn test_pki(dir: &Path) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Wattson test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let pki = TestPki {
        ca_der: ca.der().clone(),
        ca_pem: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca_pem, ca.pem()).unwrap();
    std::fs::write(&pki.cert, leaf.pem()).unwrap();
    std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    pki
}

fn tls_options(
    id: &str,
    secret: &str,
    port: u16,
    trusted: &CertificateDer<'static>,
) -> MqttOptions {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut o = options(id, secret, port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ));
    o
}

/// A TLS-only configuration (`plaintext = false`) for `pki`.
fn tls_config(dir: &Path, pki: &TestPki, key: &Path) -> PathBuf {
    let path = dir.join("wattson.toml");
    let text = format!(
        "[mqtt]\nplaintext = false\n\n[mqtt.tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        pki.cert.display().to_string(),
        key.display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn meters_publish_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let pki = test_pki(dir.path());
    let config = tls_config(dir.path(), &pki, &pki.key);
    let config = config.to_str().unwrap();
    let (server, port) = start_with(&data, &["--config", config], "tls_listen");

    runtime().block_on(async {
        let (client, mut ev) = AsyncClient::new(tls_options("m1", &secret, port, &pki.ca_der), 10);
        connack(&mut ev).await.unwrap();
        publish_acked(&client, &mut ev, 0, 5).await;

        // A client that does not trust the server's CA never logs in.
        let other = tempfile::tempdir().unwrap();
        let other_ca = test_pki(other.path()).ca_der;
        let (_c, mut ev) = AsyncClient::new(tls_options("m1", &secret, port, &other_ca), 10);
        let err = connack(&mut ev).await.unwrap_err();
        assert!(
            matches!(err, ConnectionError::Tls(_)),
            "expected a TLS error, got {err:?}"
        );
    });

    // Plain MQTT on the TLS port gets no CONNACK.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])
        .unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] != 0x20,
        "plain MQTT must not be answered with CONNACK on the TLS port"
    );

    // Debian's mosquitto_pub over TLS, checking the certificate against the CA.
    let mut expected = 5;
    if let Some(pub_bin) = crate::debian::mosquitto_pub() {
        let out = Command::new(pub_bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("--cafile")
            .arg(&pki.ca_pem)
            .args(["-i", "m1", "-u", "m1", "-P", &secret, "-q", "1"])
            .args(["-t", "meters/m1/power", "-m", &reading(5)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        expected += 1;
    }
    stop(server);
    let rows = exported_rows(&data);
    assert_eq!(rows.len(), expected, "{rows:?}");
    assert_eq!(rows[0], "2022-07-19T15:24:21Z,m1,0.5");
}

#[test]
fn serve_names_a_missing_or_mismatched_tls_file_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    let pki = test_pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    let stranger = test_pki(other.path());
    let cases = [
        (stranger.key.clone(), "does not belong to the certificate"),
        (dir.path().join("missing.key"), "missing.key"),
    ];
    for (key, want) in cases {
        let config = tls_config(dir.path(), &pki, &key);
        let out = wattson(&data)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--subscribers-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
}

// ---- mosquitto_pub ----

#[test]
fn mosquitto_pub_qos1_is_stored_and_a_wrong_password_refused() {
    let Some(pub_bin) = crate::debian::mosquitto_pub() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let (server, port) = start(&data);
    let port = port.to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "-i", "m1", "-u", "m1"];

    // Three readings as three QoS 1 messages, one per stdin line (`-l`).
    let mut child = Command::new(pub_bin)
        .args(base)
        .args(["-P", &secret, "-q", "1", "-t", "meters/m1/power", "-l"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = (0..3).map(|i| reading(i) + "\n").collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let wrong = Command::new(pub_bin)
        .args(base)
        .args(["-P", "not the secret", "-q", "1", "-t", "meters/m1/power"])
        .args(["-m", &reading(9)])
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong password must be refused");
    let err = String::from_utf8_lossy(&wrong.stderr).to_lowercase();
    assert!(
        err.contains("bad user name or password"),
        "mosquitto_pub said: {err}"
    );

    stop(server);
    let rows = exported_rows(&data);
    assert_eq!(
        rows,
        [
            "2022-07-19T15:24:21Z,m1,0.5",
            "2022-07-19T15:24:22Z,m1,1.5",
            "2022-07-19T15:24:23Z,m1,2.5"
        ]
    );
}

// ---- reconnect storm ----

/// 1,000 meters with their own credentials connect at once (a building
/// coming back after a power cut, or the server restarting). Issue bound:
/// all connected within 30 s on 2 cores; this runs the debug build.
#[test]
fn reconnect_storm_of_1000_devices_all_get_connack() {
    const DEVICES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("storm{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let secrets = UserStore::open(&data).unwrap().add_devices(&refs).unwrap();
    // Each connection is a file descriptor here as in the server.
    wattson_ingest::mqtt::raise_open_file_limit().unwrap();
    let (server, port) = start(&data);

    let rt = runtime();
    // Wave 1: everyone connects at once. Wave 2: everyone drops and
    // reconnects at once, as after a network outage.
    for wave in 1..=2 {
        let (took, retries) = rt.block_on(storm(port, &ids, &secrets));
        eprintln!(
            "reconnect storm wave {wave}: {DEVICES} devices connected in {:.2} s ({retries} retries, debug build)",
            took.as_secs_f64()
        );
        assert!(took < Duration::from_secs(30), "wave {wave} took {took:?}");
    }
    stop(server);
}

/// Connects every device at once, holds all connections until the last
/// CONNACK, then drops them. Returns the time to the last CONNACK.
async fn storm(port: u16, ids: &[String], secrets: &[String]) -> (Duration, u32) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, secret) in ids.iter().zip(secrets) {
        let opts = options(id, secret, port);
        tasks.push(tokio::spawn(async move {
            let (client, mut ev) = AsyncClient::new(opts, 10);
            let mut retries = 0u32;
            // A refused or reset connection is retried, as a meter does.
            while let Err(e) = connack(&mut ev).await {
                retries += 1;
                assert!(retries < 50, "no CONNACK after 50 attempts: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (client, ev, retries)
        }));
    }
    let mut held = Vec::new();
    let mut retries = 0;
    for t in tasks {
        let (client, ev, r) = t.await.unwrap();
        retries += r;
        held.push((client, ev));
    }
    (started.elapsed(), retries)
}

// ---- limits from wattson.toml ----

/// A raw MQTT 3.1.1 CONNECT of device `id`.
fn connect_packet(id: &str, secret: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 60];
    for field in [id, id, secret] {
        body.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
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

/// True when the server closes the socket within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Waits until `wattson_mqtt_{name}` on the metrics listener reads `want`.
fn wait_for_mqtt_metric(metrics: u16, name: &str, want: u64) {
    let line = format!("wattson_mqtt_{name} ");
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        let page = crate::dashboard::http(metrics, "GET", "/metrics", &[], b"").text();
        last = page
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if last == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("wattson_mqtt_{name} stayed {last:?}, expected {want}");
}

/// A logged-in raw connection of device `id` (CONNACK read).
fn raw_login(port: u16, id: &str, secret: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&connect_packet(id, secret)).unwrap();
    let mut connack = [0u8; 4];
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    s
}

#[test]
fn limits_in_wattson_toml_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let raw_secret = UserStore::open(&data).unwrap().add_device("m2").unwrap();
    let config = dir.path().join("wattson.toml");
    std::fs::write(
        &config,
        "[mqtt]\nmax_connections = 3\nconnect_timeout_s = 3\nmax_packet_kib = 2\nmax_inflight = 10\n\n\
         [ingest]\nmax_payload_kib = 1\n",
    )
    .unwrap();
    let mut cmd = serve_on_free_ports(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let (server, ports) = spawn_listening(
        &mut cmd,
        &[
            ("meters listening", "listen"),
            ("metrics listening", "metrics_listen"),
        ],
    );
    let (port, metrics) = (ports[0], ports[1]);

    let rt = runtime();
    let (client, mut ev) = AsyncClient::new(options("m1", &secret, port), 10);
    rt.block_on(async {
        connack(&mut ev).await.unwrap();
        // 1.5 KiB: under max_packet_kib, over max_payload_kib. Acknowledged
        // (a resend would fail the same way) and refused whole.
        let big = format!(
            r#"{{"ts":1658244261000,"pa_v":1.5,"note":"{}"}}"#,
            "x".repeat(1500)
        );
        client
            .publish("meters/m1/power", QoS::AtLeastOnce, false, big)
            .await
            .unwrap();
        acks(&mut ev, 1).await;
        publish_acked(&client, &mut ev, 1, 2).await;
    });

    // A packet over max_packet_kib closes that connection only.
    let mut oversized = raw_login(port, "m2", &raw_secret);
    // PUBLISH, QoS 0, remaining length 3,000.
    oversized.write_all(&[0x30, 0xB8, 0x17, 0, 15]).unwrap();
    oversized.write_all(b"meters/m2/power").unwrap();
    assert!(closed_within(&mut oversized, WAIT), "oversized packet");

    // m1 plus two silent sockets fill max_connections = 3: the fourth is
    // closed at once, the silent ones after connect_timeout_s. The server's
    // own count says when a slot is taken or given back: the client sees a
    // close a moment before the server's task lets go of its slot, and a
    // loaded machine may accept a socket late.
    wait_for_mqtt_metric(metrics, "connections_open", 1);
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_for_mqtt_metric(metrics, "connections_open", 3);
    let mut fourth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(
        closed_within(&mut fourth, WAIT),
        "connection 4 of 3 must be closed"
    );
    // Refused for the limit, not closed later by the connect timeout.
    wait_for_mqtt_metric(metrics, "connections_refused_limit_total", 1);
    assert!(closed_within(&mut silent, WAIT), "silent socket");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(12),
        "a socket without CONNECT was closed after {waited:?}, connect_timeout_s is 3"
    );

    // The logged-in meter was never disturbed.
    rt.block_on(publish_acked(&client, &mut ev, 2, 3));
    drop((client, ev));
    stop(server);
    let rows = exported_rows(&data);
    assert_eq!(
        rows,
        ["2022-07-19T15:24:22Z,m1,1.5", "2022-07-19T15:24:23Z,m1,2.5"],
        "the oversized payload is not stored"
    );
}

// ---- malformed packets ----

#[test]
fn malformed_packets_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let raw_secret = UserStore::open(&data).unwrap().add_device("m2").unwrap();
    // A short connect timeout: the HTTP request below waits for it.
    let config = dir.path().join("wattson.toml");
    std::fs::write(&config, "[mqtt]\nconnect_timeout_s = 2\n").unwrap();
    let (mut server, port) = start_with(&data, &["--config", config.to_str().unwrap()], "listen");
    let rt = runtime();
    let (client, mut ev) = AsyncClient::new(options("m1", &secret, port), 10);
    rt.block_on(async {
        connack(&mut ev).await.unwrap();
        publish_acked(&client, &mut ev, 0, 1).await;
    });

    // Not MQTT at all: 'G' reads as a PUBACK announcing 32 bytes, so this
    // waits for the connect timeout; in parallel with the rest.
    let http = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: wattson\r\n\r\n")
            .unwrap();
        assert!(closed_within(&mut s, WAIT), "HTTP request");
    });
    let junk: [&[u8]; 3] = [
        // A remaining length of five bytes (at most four are allowed).
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        // A PUBLISH before CONNECT.
        &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'b', b'x'],
        // A CONNECT announcing 256 MiB.
        &[0x10, 0xFF, 0xFF, 0xFF, 0x7F],
    ];
    for round in 0..30 {
        for bytes in junk {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = s.write_all(bytes);
            assert!(closed_within(&mut s, WAIT), "round {round}: {bytes:?}");
        }
    }
    http.join().unwrap();
    // A topic that is not UTF-8, after a valid login.
    let mut s = raw_login(port, "m2", &raw_secret);
    s.write_all(&[0x30, 0x04, 0x00, 0x01, 0xFF, b'1']).unwrap();
    assert!(closed_within(&mut s, WAIT), "non-UTF-8 topic");

    assert!(server.try_wait().unwrap().is_none(), "the server is alive");
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", server.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    eprintln!(
        "server RSS after 92 malformed connections: {} MiB",
        rss_kib / 1024
    );
    assert!(rss_kib < 512 * 1024, "server RSS {rss_kib} KiB");

    rt.block_on(publish_acked(&client, &mut ev, 1, 3));
    drop((client, ev));
    stop(server);
    assert_eq!(exported_rows(&data).len(), 3);
}

// ---- no password in the log ----

/// Every kind of login, right and wrong, on both MQTT ports of a server
/// logging at `trace`: no password or secret may appear in its log.
#[test]
fn no_password_or_secret_ever_reaches_the_log() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let admin_password = "a long admin password";
    let wrong = [
        "wrong-device-secret-4711",
        "wrong-admin-password-0815",
        "ghost-password-1234567",
    ];
    let subscribers_port = crate::serve::free_port();
    let mut server = wattson(&data)
        .env("WATTSON_LOG", "trace")
        .args([
            "serve",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--subscribers-listen",
        ])
        .arg(format!("127.0.0.1:{subscribers_port}"))
        .args(["--flight-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u16>();
    let stderr = server.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("meters listening")
                && let Some(addr) = line.split(" listen=").nth(1)
            {
                let _ = tx.send(addr.trim().rsplit(':').next().unwrap().parse().unwrap());
            }
            log.push(line);
        }
        log
    });
    let port = rx.recv_timeout(WAIT).expect("serve never listened");

    runtime().block_on(async {
        let attempts: [(&str, &str, u16, bool); 6] = [
            ("m1", wrong[0], port, false),
            ("ghost", wrong[2], port, false),
            ("admin", admin_password, port, false),
            ("m1", &secret, port, true),
            ("admin", wrong[1], subscribers_port, false),
            ("admin", admin_password, subscribers_port, true),
        ];
        for (user, password, port, ok) in attempts {
            let mut o = options(user, password, port);
            if port == subscribers_port {
                o = MqttOptions::new("admin-dashboard", "127.0.0.1", port);
                o.set_credentials(user, password);
            }
            let (client, mut ev) = AsyncClient::new(o, 10);
            let got = tokio::time::timeout(WAIT, async {
                loop {
                    match ev.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => return true,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await
            .unwrap();
            assert_eq!(got, ok, "{user} on port {port}");
            if ok && user == "m1" {
                publish_acked(&client, &mut ev, 0, 1).await;
            }
        }
    });
    stop(server);
    let log = reader.join().unwrap().join("\n");
    assert!(
        log.contains("MQTT login refused"),
        "the refusals are logged"
    );
    for needle in [secret.as_str(), admin_password].into_iter().chain(wrong) {
        assert!(
            !log.contains(needle),
            "a password or secret is in the server's log: {needle}"
        );
    }
}
