//! End-to-end tests of the device listener: real TCP on 127.0.0.1, the real
//! rumqttc client, a real store and user file in a temporary directory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::{Array, Float64Array};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Incoming, QoS, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wattson_storage::io::{FaultFs, FaultPlan};
use wattson_storage::{ScanRequest, Store, StoreOptions};

use super::*;
use crate::auth::{AuthPolicy, Role, UserStore};
use crate::live::LivePublisher;

mod limits;

const WAIT: Duration = Duration::from_secs(20);

/// Records what the listener offers to live subscribers.
#[derive(Debug, Default)]
struct TestLive(Mutex<Vec<(String, String)>>);

impl LivePublisher for TestLive {
    fn publish(&self, topic: &str, payload: &[u8]) -> bool {
        let text = String::from_utf8_lossy(payload).into_owned();
        self.0.lock().push((topic.to_owned(), text));
        true
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    users: Arc<UserStore>,
    live: Arc<TestLive>,
    server: MqttServer,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data"), StoreOptions::default()).unwrap();
        Env::with_store(dir, store).await
    }

    async fn with_store(dir: tempfile::TempDir, store: Store) -> Env {
        Env::with_config(dir, store, MqttConfig::default()).await
    }

    async fn with_config(dir: tempfile::TempDir, store: Store, config: MqttConfig) -> Env {
        let users = Arc::new(
            UserStore::open_with(dir.path(), AuthPolicy::default().cheap_hashing()).unwrap(),
        );
        let store = Arc::new(store);
        let live = Arc::new(TestLive::default());
        let deps = MqttDeps {
            store: store.clone(),
            verifier: Verifier::with_limits(users.clone(), 1, 64).unwrap(),
            topics: Arc::new(TopicMap::default()),
            decoder: Decoder::default(),
            counters: Arc::new(IngestCounters::new()),
            live: live.clone(),
            clock: Arc::new(wattson_storage::clock::SystemClock),
        };
        let config = MqttConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..config
        };
        let server = MqttServer::start(config, deps).await.unwrap();
        Env {
            _dir: dir,
            store,
            users,
            live,
            server,
        }
    }

    fn device(&self, id: &str) -> String {
        self.users.add_device(id).unwrap()
    }

    fn client(&self, id: &str, login: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(id, "127.0.0.1", self.addr().port());
        o.set_keep_alive(Duration::from_secs(30));
        if let Some((user, pass)) = login {
            o.set_credentials(user, pass);
        }
        AsyncClient::new(o, 100)
    }

    /// The plain listener's address.
    fn addr(&self) -> SocketAddr {
        self.server.local_addr().unwrap()
    }

    fn stats(&self) -> MqttStatsSnapshot {
        self.server.stats().snapshot()
    }

    /// The stats once `done` holds of them. Counters move just after what a
    /// client sees (a CONNACK, a close), so a test polls rather than reading
    /// them once.
    async fn stats_when(&self, done: impl Fn(&MqttStatsSnapshot) -> bool) -> MqttStatsSnapshot {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.stats();
            if done(&s) || tokio::time::Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stored(&self, device: &str) -> Vec<f64> {
        stored(&self.store, device)
    }
}

/// Values of `pa_v` of `device` in table `power`, in time order.
fn stored(store: &Store, device: &str) -> Vec<f64> {
    if store.table("power").is_none() {
        return Vec::new();
    }
    let req = ScanRequest::table("power").devices([device]);
    let mut out = Vec::new();
    for batch in store.scan(&req).unwrap() {
        let batch = batch.unwrap();
        let col = batch.column_by_name("pa_v").unwrap();
        let col = col.as_any().downcast_ref::<Float64Array>().unwrap();
        out.extend((0..col.len()).map(|i| col.value(i)));
    }
    out
}

/// Polls until CONNACK (Ok) or a connection error.
async fn connect(ev: &mut EventLoop) -> Result<(), ConnectionError> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Incoming::ConnAck(_)) = ev.poll().await? {
                return Ok(());
            }
        }
    })
    .await
    .unwrap()
}

/// Polls until `n` PUBACKs arrived; panics on a connection error.
async fn pubacks(ev: &mut EventLoop, n: usize) {
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(WAIT, ev.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => seen += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error after {seen} of {n} PUBACKs: {e}"),
            Err(_) => panic!("timed out after {seen} of {n} PUBACKs"),
        }
    }
}

/// Polls until the connection fails; returns how many PUBACKs came first.
async fn until_closed(ev: &mut EventLoop, within: Duration) -> Option<usize> {
    let mut acks = 0;
    let closed = tokio::time::timeout(within, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    closed.ok().map(|()| acks)
}

fn reading(i: usize) -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as usize;
    // Distinct, increasing timestamps in the recent past.
    let ts = now_ms - 3_600_000 + i * 1000;
    format!(r#"{{"ts":{ts},"pa_v":{i}.5}}"#)
}

async fn publish_n(client: &AsyncClient, topic: &str, n: usize) {
    for i in 0..n {
        client
            .publish(topic, QoS::AtLeastOnce, false, reading(i))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_readings_are_acknowledged_and_stored() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    const N: usize = 50;
    let c = client.clone();
    let publisher = tokio::spawn(async move { publish_n(&c, "meters/m1/power", N).await });
    pubacks(&mut ev, N).await;
    publisher.await.unwrap();
    let want: Vec<f64> = (0..N).map(|i| i as f64 + 0.5).collect();
    assert_eq!(env.stored("m1"), want);
    let s = env.stats();
    assert_eq!(s.messages_qos1, N as u64);
    assert_eq!(s.readings_stored, N as u64);
    assert_eq!(s.pubacks_sent, N as u64);
    assert_eq!(s.lost_acknowledged, 0);
    assert_eq!(s.puback_latency.iter().sum::<u64>(), N as u64);
    // Accepted messages are offered to live subscribers, as received.
    // The PUBACK goes out before the message is offered to the live hub.
    let deadline = std::time::Instant::now() + WAIT;
    while env.live.0.lock().len() < N && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live = env.live.0.lock().clone();
    assert_eq!(live.len(), N);
    assert!(live.iter().all(|(t, _)| t == "meters/m1/power"));
    env.server.shutdown().await;
}

/// Client id, credentials, the refusal expected.
type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, ConnectReturnCode);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_devices_with_valid_credentials_and_matching_client_id_connect() {
    let env = Env::new().await;
    let secret = env.device("m1");
    env.users
        .add_user("alice", Role::Admin, "alice's long password")
        .unwrap();
    let cases: [Case<'_>; 5] = [
        ("m1", None, ConnectReturnCode::NotAuthorized),
        (
            "m1",
            Some(("m1", "wrong secret here")),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "nobody",
            Some(("nobody", &secret)),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "other",
            Some(("m1", &secret)),
            ConnectReturnCode::BadClientId,
        ),
        (
            "alice",
            Some(("alice", "alice's long password")),
            ConnectReturnCode::NotAuthorized,
        ),
    ];
    for (id, login, code) in cases {
        let (_c, mut ev) = env.client(id, login);
        match connect(&mut ev).await {
            Err(ConnectionError::ConnectionRefused(got)) => assert_eq!(got, code, "{id} {login:?}"),
            other => panic!("{id} {login:?}: expected refusal {code:?}, got {other:?}"),
        }
    }
    let (_c, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    let s = env.stats_when(|s| s.connects_ok == 1).await;
    assert_eq!((s.connects_denied, s.connects_ok), (5, 1));
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_outside_own_topics_closes_the_connection() {
    let env = Env::new().await;
    let secret = env.device("a1");
    env.device("b1");
    let (client, mut ev) = env.client("a1", Some(("a1", &secret)));
    connect(&mut ev).await.unwrap();
    client
        .publish("meters/b1/power", QoS::AtLeastOnce, false, reading(0))
        .await
        .unwrap();
    assert_eq!(until_closed(&mut ev, WAIT).await, Some(0));
    assert_eq!(env.stats().acl_denied, 1);
    assert!(env.stored("b1").is_empty() && env.stored("a1").is_empty());

    // Its own topic still works on a new connection.
    let (client, mut ev) = env.client("a1", Some(("a1", &secret)));
    connect(&mut ev).await.unwrap();
    publish_n(&client, "meters/a1/power", 1).await;
    pubacks(&mut ev, 1).await;
    assert_eq!(env.stored("a1").len(), 1);
    assert_eq!(env.stats().lost_acknowledged, 0);
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_payload_is_acknowledged_refused_and_reported() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    client
        .publish(
            "meters/m1/power",
            QoS::AtLeastOnce,
            false,
            "{\"pa_v\": oops}",
        )
        .await
        .unwrap();
    pubacks(&mut ev, 1).await;
    assert!(env.stored("m1").is_empty());
    let s = env.stats();
    assert_eq!(
        (s.payload_rejected, s.readings_stored, s.pubacks_sent),
        (1, 0, 1)
    );
    let live = env.live.0.lock().clone();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].0, "meters/m1/errors");
    assert!(live[0].1.contains("\"error\""), "{live:?}");
    env.server.shutdown().await;
}

/// A server whose store lives on an in-memory disk that tests can fail,
/// with device m1 connected and one reading of it stored and acknowledged.
async fn on_fault_fs(
    clock: Arc<dyn wattson_storage::clock::Clock>,
) -> (Env, Arc<FaultFs>, String, AsyncClient, EventLoop) {
    let fs = Arc::new(FaultFs::new());
    let opts = StoreOptions {
        vfs: fs.clone(),
        clock,
        ..StoreOptions::default()
    };
    let store = Store::open(Path::new("/faulty"), opts).unwrap();
    let env = Env::with_store(tempfile::tempdir().unwrap(), store).await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    publish_n(&client, "meters/m1/power", 1).await;
    pubacks(&mut ev, 1).await;
    (env, fs, secret, client, ev)
}

/// Publishes a QoS 1 reading that the server must neither acknowledge nor
/// store: it closes the connection instead.
async fn published_then_closed(client: &AsyncClient, ev: &mut EventLoop, topic: &'static str) {
    let c = client.clone();
    tokio::spawn(async move {
        let _ = c.publish(topic, QoS::AtLeastOnce, false, reading(1)).await;
    });
    assert_eq!(
        until_closed(ev, WAIT).await,
        Some(0),
        "no PUBACK, then close"
    );
}

/// A fresh login of device `id` is refused with `code`.
async fn login_refused(env: &Env, id: &str, secret: &str, code: ConnectReturnCode) {
    let (_c, mut ev) = env.client(id, Some((id, secret)));
    match connect(&mut ev).await {
        Err(ConnectionError::ConnectionRefused(got)) => assert_eq!(got, code, "{id}"),
        other => panic!("{id}: expected refusal {code:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_then_devices_are_turned_away() {
    let (env, fs, secret, client, mut ev) =
        on_fault_fs(Arc::new(wattson_storage::clock::SystemClock)).await;
    let quiet_secret = env.device("m2");
    let (quiet, mut quiet_ev) = env.client("m2", Some(("m2", &quiet_secret)));
    connect(&mut quiet_ev).await.unwrap();

    fs.set_plan(FaultPlan::default().fail_sync_after(0));
    published_then_closed(&client, &mut ev, "meters/m1/power").await;
    let s = env.stats();
    assert_eq!((s.pubacks_sent, s.append_failures), (1, 1));
    assert_eq!(s.lost_acknowledged, 0);

    // The log is poisoned for good: a QoS 0 sender, which hears of no
    // failed append, has its connection closed at its next message...
    let q = quiet.clone();
    tokio::spawn(async move {
        let _ = q
            .publish("meters/m2/power", QoS::AtMostOnce, false, reading(2))
            .await;
    });
    assert_eq!(until_closed(&mut quiet_ev, WAIT).await, Some(0));
    assert_eq!(env.stats().append_failures, 2);
    // ...and reconnecting devices are told to come back later.
    for (id, secret) in [("m1", &secret), ("m2", &quiet_secret)] {
        login_refused(&env, id, secret, ConnectReturnCode::ServiceUnavailable).await;
    }
    assert!(env.stored("m2").is_empty());
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_turns_devices_away_until_space_is_freed() {
    let clock = wattson_storage::clock::ManualClock::new(1_658_244_261_000_000_000);
    let (env, fs, secret, client, mut ev) = on_fault_fs(Arc::new(clock.clone())).await;

    fs.set_available(Some(4096));
    clock.advance(1_000_000_000);
    published_then_closed(&client, &mut ev, "meters/m1/power").await;
    login_refused(&env, "m1", &secret, ConnectReturnCode::ServiceUnavailable).await;
    assert_eq!(env.stored("m1").len(), 1);

    // Space freed: the same device comes back and its resend is stored.
    fs.set_available(None);
    clock.advance(1_000_000_000);
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    client
        .publish("meters/m1/power", QoS::AtLeastOnce, false, reading(1))
        .await
        .unwrap();
    pubacks(&mut ev, 1).await;
    assert_eq!(env.stored("m1").len(), 2);
    assert_eq!(env.stats().lost_acknowledged, 0);
    env.server.shutdown().await;
}

/// Writes `bytes` on a fresh socket and expects the server to close it.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut sink = [0u8; 64];
    let read = tokio::time::timeout(WAIT, s.read(&mut sink)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "{bytes:?}: expected close, got {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_close_only_their_connection() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    let addr = env.addr();
    // Garbage: a remaining length longer than four bytes.
    closed_after(addr, &[0xFF; 16]).await;
    // A PUBLISH before CONNECT.
    closed_after(addr, &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'b', b'x']).await;
    // A CONNECT announcing 256 MiB.
    closed_after(addr, &[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    // The well-behaved client was not disturbed.
    publish_n(&client, "meters/m1/power", 3).await;
    pubacks(&mut ev, 3).await;
    assert_eq!(env.stored("m1").len(), 3);
    assert!(env.stats().protocol_errors >= 3);
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_publish_concurrently_and_all_is_stored_once() {
    let env = Env::new().await;
    const DEVICES: usize = 50;
    const EACH: usize = 20;
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let id = format!("d{d}");
        let secret = env.device(&id);
        let (client, mut ev) = env.client(&id, Some((&id, &secret)));
        tasks.push(tokio::spawn(async move {
            connect(&mut ev).await.unwrap();
            let c = client.clone();
            let topic = format!("meters/{id}/power");
            let publisher = tokio::spawn(async move { publish_n(&c, &topic, EACH).await });
            pubacks(&mut ev, EACH).await;
            publisher.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let want: Vec<f64> = (0..EACH).map(|i| i as f64 + 0.5).collect();
    for d in 0..DEVICES {
        assert_eq!(env.stored(&format!("d{d}")), want, "device d{d}");
    }
    let s = env.stats();
    assert_eq!(s.pubacks_sent, (DEVICES * EACH) as u64);
    assert_eq!(s.readings_stored, (DEVICES * EACH) as u64);
    assert_eq!(s.lost_acknowledged, 0);
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_a_device_takes_over() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let (_old, mut old_ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut old_ev).await.unwrap();
    let (new, mut new_ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut new_ev).await.unwrap();
    assert_eq!(until_closed(&mut old_ev, WAIT).await, Some(0));
    publish_n(&new, "meters/m1/power", 1).await;
    pubacks(&mut new_ev, 1).await;
    assert_eq!(env.stats().takeovers, 1);
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_and_qos2_closes() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    client
        .subscribe("meters/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Incoming::SubAck(a)) = ev.poll().await.unwrap() {
                return a.return_codes;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(codes, vec![SubscribeReasonCode::Failure]);
    client
        .publish("meters/m1/power", QoS::ExactlyOnce, false, reading(0))
        .await
        .unwrap();
    assert_eq!(until_closed(&mut ev, WAIT).await, Some(0));
    assert!(env.stored("m1").is_empty());
    env.server.shutdown().await;
}

/// A raw CONNECT of device `id` with `keep_alive` seconds.
fn connect_bytes(id: &str, secret: &str, keep_alive: u16) -> Vec<u8> {
    use rumqttd::protocol::{Connect, Login, Packet, Protocol, v4::V4};
    let connect = Connect {
        keep_alive,
        client_id: id.into(),
        clean_session: true,
    };
    let login = Login {
        username: id.into(),
        password: secret.into(),
    };
    let mut out = bytes::BytesMut::new();
    V4.write(
        Packet::Connect(connect, None, None, None, Some(login)),
        &mut out,
    )
    .unwrap();
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_and_pings_answered() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let mut s = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(&connect_bytes("m1", &secret, 1)).await.unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // The idle clock restarts when the server reads the PINGREQ, so time
    // from before it is sent.
    let started = std::time::Instant::now();
    s.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
    // Then silence: closed after 1.5 s, not long after.
    let mut sink = [0u8; 8];
    let read = tokio::time::timeout(WAIT, s.read(&mut sink)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_inflight_window_still_acknowledges_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("data"), StoreOptions::default()).unwrap();
    let config = MqttConfig {
        max_inflight: 2,
        append_queue: 1,
        append_threads: 1,
        ..MqttConfig::default()
    };
    let env = Env::with_config(dir, store, config).await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    let c = client.clone();
    let publisher = tokio::spawn(async move { publish_n(&c, "meters/m1/power", 40).await });
    pubacks(&mut ev, 40).await;
    publisher.await.unwrap();
    assert_eq!(env.stored("m1").len(), 40);
    assert_eq!(env.stats().lost_acknowledged, 0);
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_and_stops_accepting() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    publish_n(&client, "meters/m1/power", 5).await;
    pubacks(&mut ev, 5).await;
    let addr = env.addr();
    let stats = env.server.stats().clone();
    tokio::time::timeout(WAIT, env.server.shutdown())
        .await
        .unwrap();
    assert_eq!(stats.snapshot().connections_open, 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(stored(&env.store, "m1").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_after_connect_never_panic() {
    use rand::{Rng, SeedableRng};
    let env = Env::new().await;
    let secret = env.device("m1");
    let addr = env.addr();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&connect_bytes("m1", &secret, 30))
            .await
            .unwrap();
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.unwrap();
        let len = rng.random_range(1..300);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half the rounds start with a plausible PUBLISH header.
        if round % 2 == 0 {
            junk[0] = 0x30 | (junk[0] & 0x0F);
        }
        // The server may close while we write; that is fine.
        let _ = s.write_all(&junk).await;
        drop(s);
    }
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    publish_n(&client, "meters/m1/power", 2).await;
    pubacks(&mut ev, 2).await;
    let s = env.stats();
    assert_eq!((s.connection_panics, s.lost_acknowledged), (0, 0));
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_before_connect_never_panic() {
    use rand::{Rng, SeedableRng};
    let env = Env::new().await;
    let secret = env.device("m1");
    let addr = env.addr();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let good = connect_bytes("m1", &secret, 30);
    for round in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let junk: Vec<u8> = match round % 3 {
            // Noise.
            0 => (0..rng.random_range(1..300))
                .map(|_| rng.random())
                .collect(),
            // A CONNECT header over noise.
            1 => {
                let mut j: Vec<u8> = (0..rng.random_range(2..300))
                    .map(|_| rng.random())
                    .collect();
                j[0] = 0x10;
                j
            }
            // The real CONNECT cut short, then noise that does not complete
            // it (a completed one would be a failed login, and enough of
            // those throttle this address): the reader meets every field
            // boundary.
            _ => {
                let cut = rng.random_range(1..good.len());
                let mut j = good[..cut].to_vec();
                let noise = rng.random_range(0..good.len() - cut);
                j.extend((0..noise).map(|_| rng.random::<u8>()));
                j
            }
        };
        // The server may close while we write; that is fine.
        let _ = s.write_all(&junk).await;
        drop(s);
    }
    let (client, mut ev) = env.client("m1", Some(("m1", &secret)));
    connect(&mut ev).await.unwrap();
    publish_n(&client, "meters/m1/power", 2).await;
    pubacks(&mut ev, 2).await;
    let s = env.stats();
    assert_eq!((s.connection_panics, s.lost_acknowledged), (0, 0));
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_is_not_utf8_closes_the_connection() {
    let env = Env::new().await;
    let secret = env.device("m1");
    let mut s = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(&connect_bytes("m1", &secret, 30))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // QoS 0 PUBLISH, topic = [0xFF], payload "1".
    s.write_all(&[0x30, 0x04, 0x00, 0x01, 0xFF, b'1'])
        .await
        .unwrap();
    let mut sink = [0u8; 8];
    let read = tokio::time::timeout(WAIT, s.read(&mut sink)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    assert_eq!(env.stats().protocol_errors, 1);
    env.server.shutdown().await;
}
