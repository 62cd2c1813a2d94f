//! Backpressure with stalled storage, and every configurable limit of the
//! listener enforced: connections, connect timeout, packet size, inflight.

use std::io;
use std::path::{Path, PathBuf};

use parking_lot::Condvar;
use wattson_storage::io::{DirLock, Mapped, RealFs, Vfs, WriteFile};

use super::*;

/// Closed or open; `fdatasync` waits while it is closed.
#[derive(Debug, Default)]
struct Gate {
    stalled: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set_stalled(&self, stalled: bool) {
        *self.stalled.lock() = stalled;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut stalled = self.stalled.lock();
        while *stalled {
            self.opened.wait(&mut stalled);
        }
    }
}

/// The real file system, except that `sync_data` blocks while the gate is
/// closed: a disk that stopped answering, as a stuck NFS mount or a dying
/// SSD does. Writes still land; nothing is durable until the gate opens.
#[derive(Debug)]
struct StallFs {
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct StallFile {
    inner: Box<dyn WriteFile>,
    gate: Arc<Gate>,
}

impl WriteFile for StallFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl StallFs {
    fn wrap(&self, f: Box<dyn WriteFile>) -> Box<dyn WriteFile> {
        Box::new(StallFile {
            inner: f,
            gate: self.gate.clone(),
        })
    }
}

impl Vfs for StallFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        RealFs.list_dir(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        RealFs.is_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        RealFs.exists(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        RealFs.create(path).map(|f| self.wrap(f))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        RealFs.open_append(path).map(|f| self.wrap(f))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read(path)
    }
    fn map(&self, path: &Path) -> io::Result<Mapped> {
        RealFs.map(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        RealFs.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> io::Result<DirLock> {
        RealFs.lock(path)
    }
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        RealFs.available_bytes(path)
    }
}

/// Polls the event loop for `within`, counting PUBACKs; panics if the
/// connection fails.
async fn pubacks_during(ev: &mut EventLoop, within: Duration) -> usize {
    let mut acks = 0;
    let _ = tokio::time::timeout(within, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => panic!("connection failed while storage stalled: {e}"),
            }
        }
    })
    .await;
    acks
}

/// The backpressure promise: a stalled disk means no PUBACKs (and
/// the socket is no longer read past `max_inflight`), not loss; when the
/// disk answers again the backlog drains and everything is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_storage_withholds_pubacks_then_drains_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let opts = StoreOptions {
        vfs: Arc::new(StallFs { gate: gate.clone() }),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("data"), opts).unwrap();
    const INFLIGHT: usize = 5;
    let config = MqttConfig {
        max_inflight: INFLIGHT,
        ..MqttConfig::default()
    };
    let env = Env::with_config(dir, store, config).await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    publish_n(&client, "meters/m1/power", 1).await;
    pubacks(&mut ev, 1).await;

    gate.set_stalled(true);
    const N: usize = 30;
    let c = client.clone();
    tokio::spawn(async move {
        for i in 1..=N {
            c.publish("meters/m1/power", QoS::AtLeastOnce, false, reading(i))
                .await
                .unwrap();
        }
    });
    // The client keeps pinging and writing; the server answers nothing.
    let early = pubacks_during(&mut ev, Duration::from_millis(1500)).await;
    assert_eq!(early, 0, "a PUBACK while the disk was stalled");
    // On a loaded machine the server may still be reading up to its limit.
    let s = env.stats_when(|s| s.messages_qos1 > INFLIGHT as u64).await;
    assert_eq!(s.pubacks_sent, 1);
    assert_eq!(
        s.messages_qos1,
        1 + INFLIGHT as u64,
        "the socket is not read beyond max_inflight unacknowledged messages"
    );
    assert_eq!(s.append_failures, 0);

    gate.set_stalled(false);
    pubacks(&mut ev, N).await;
    let want: Vec<f64> = (0..=N).map(|i| i as f64 + 0.5).collect();
    assert_eq!(env.stored("m1"), want, "every message stored exactly once");
    let s = env.stats();
    assert_eq!(s.pubacks_sent, 1 + N as u64);
    assert_eq!(s.lost_acknowledged, 0);
    env.server.shutdown().await;
}

async fn env_with(config: MqttConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("data"), StoreOptions::default()).unwrap();
    Env::with_config(dir, store, config).await
}

/// True when the server closes `s` within `within` (EOF or reset).
async fn is_closed(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 16];
    matches!(
        tokio::time::timeout(within, s.read(&mut sink)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_beyond_max_connections_is_closed_at_once() {
    let env = env_with(MqttConfig {
        max_connections: 2,
        ..MqttConfig::default()
    })
    .await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    // Connection 3: closed at accept, long before the connect timeout.
    let mut third = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    assert!(is_closed(&mut third, Duration::from_secs(5)).await);
    assert_eq!(env.stats().connections_refused_limit, 1);
    // The connected meter is not disturbed.
    publish_n(&client, "meters/m1/power", 2).await;
    pubacks(&mut ev, 2).await;
    // A slot freed is a slot usable again.
    let _ = idle.shutdown().await;
    drop(idle);
    let deadline = std::time::Instant::now() + WAIT;
    while env.stats().connections_open > 1 {
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    assert!(!is_closed(&mut again, Duration::from_millis(300)).await);
    assert_eq!(env.stats().lost_acknowledged, 0);
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_sends_connect_is_dropped_after_the_timeout() {
    let env = env_with(MqttConfig {
        connect_timeout: Duration::from_millis(500),
        ..MqttConfig::default()
    })
    .await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    // The server's clock starts at accept, which may come before
    // `connect` returns here.
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    assert!(is_closed(&mut silent, WAIT).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    let open = env.stats_when(|s| s.connections_open == 1).await;
    assert_eq!(open.connections_open, 1);
    // Half a CONNECT is as good as none.
    let mut partial = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    partial.write_all(&[0x10, 0x20, 0x00]).await.unwrap();
    assert!(is_closed(&mut partial, WAIT).await);
    // The meter that did connect is still served.
    publish_n(&client, "meters/m1/power", 1).await;
    pubacks(&mut ev, 1).await;
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_closes_only_its_connection() {
    let env = env_with(MqttConfig {
        max_packet_bytes: 1024,
        ..MqttConfig::default()
    })
    .await;
    let secret = env.device("m1");
    let other = env.device("m2");
    let (client, mut ev) = env.client("m2", Some(("m2", &other)));
    connect(&mut ev).await.unwrap();

    let mut s = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(&connect_bytes("m1", &secret, 30))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // A QoS 0 PUBLISH announcing 2,000 bytes: refused from its header,
    // before the body is buffered.
    s.write_all(&[0x30, 0xD0, 0x0F, 0x00, 0x0F]).await.unwrap();
    s.write_all(b"meters/m1/power").await.unwrap();
    let _ = s.write_all(&[b'1'; 512]).await;
    assert!(is_closed(&mut s, WAIT).await);
    assert!(env.stats().protocol_errors >= 1);
    assert!(env.stored("m1").is_empty());

    publish_n(&client, "meters/m2/power", 3).await;
    pubacks(&mut ev, 3).await;
    assert_eq!(env.stored("m2").len(), 3);
    let s = env.stats();
    assert_eq!((s.connection_panics, s.lost_acknowledged), (0, 0));
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_socket_is_dropped_after_the_timeout_and_counted() {
    let certs = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = TlsSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert: certs.path().join("cert.pem"),
        key: certs.path().join("key.pem"),
    };
    std::fs::write(&tls.cert, pair.cert.pem()).unwrap();
    std::fs::write(&tls.key, pair.signing_key.serialize_pem()).unwrap();
    let env = env_with(MqttConfig {
        tls: Some(tls),
        connect_timeout: Duration::from_millis(300),
        ..MqttConfig::default()
    })
    .await;
    let tls_addr = env.server.tls_addr().unwrap();
    let mut silent = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    assert!(is_closed(&mut silent, WAIT).await);
    // Plain MQTT on the TLS port is a failed handshake, not a login.
    let mut plain = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let secret = env.device("m1");
    plain
        .write_all(&connect_bytes("m1", &secret, 30))
        .await
        .unwrap();
    let mut reply = [0u8; 64];
    let n = tokio::time::timeout(WAIT, plain.read(&mut reply))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(n == 0 || reply[0] != 0x20, "no CONNACK on the TLS port");
    let deadline = std::time::Instant::now() + WAIT;
    while env.stats().connections_open > 0 || env.stats().tls_handshake_failures < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", env.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.stats().connects_ok, 0);
    env.server.shutdown().await;
}
