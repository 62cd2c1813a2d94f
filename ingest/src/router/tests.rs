//! Real TCP on 127.0.0.1, real rumqttc clients, a real user store.
//! argon2 with default parameters is slow in debug builds, so the tests
//! keep people's logins few.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::time::timeout;

use super::*;
use crate::auth::{AuthPolicy, Role, UserStore};
use crate::live::LivePublisher;

const PERSON: &str = "alice";
const GOOD: &str = "correct horse battery";
/// Long enough for an argon2 verification in a debug build on 2 cores.
const LOGIN: Duration = Duration::from_secs(30);

struct Fixture {
    broker: LiveBroker,
    verifier: Verifier,
    device_secret: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn port(&self) -> u16 {
        self.broker.listen_addr().port()
    }
}

/// rumqttd cannot report the port it bound, so pick a free one first.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

fn fixture() -> Fixture {
    fixture_with(AuthPolicy::default())
}

fn fixture_with(policy: AuthPolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(UserStore::open_with(dir.path(), policy).unwrap());
    store.add_user(PERSON, Role::Viewer, GOOD).unwrap();
    let device_secret = store.add_device("m1").unwrap();
    let verifier = Verifier::with_limits(store, 2, 16).unwrap();
    let settings = RouterSettings {
        listen: free_addr(),
        ..RouterSettings::default()
    };
    let broker = LiveBroker::start(settings, verifier.clone()).unwrap();
    Fixture {
        broker,
        verifier,
        device_secret,
        _dir: dir,
    }
}

/// Connects and waits for the CONNACK; `Err` describes what happened
/// instead (rumqttd refuses by closing the socket).
async fn connect(
    port: u16,
    client_id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), String> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    if let Some((user, pass)) = creds {
        opts.set_credentials(user, pass);
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    match timeout(LOGIN, events.poll()).await {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(ack))))
            if ack.code == ConnectReturnCode::Success =>
        {
            Ok((client, events))
        }
        other => Err(format!("{other:?}")),
    }
}

/// Subscribes and polls until the SUBACK, so the router knows the filter
/// before anything is published.
async fn subscribe(client: &AsyncClient, events: &mut EventLoop, filter: &str) {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Incoming::SubAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .unwrap();
}

/// The next PUBLISH as (topic, payload).
async fn next_publish(events: &mut EventLoop) -> (String, Vec<u8>) {
    timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Incoming::Publish(p)) = events.poll().await.unwrap() {
                return (p.topic, p.payload.to_vec());
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_reading_reaches_a_person_subscribed_with_a_wildcard() {
    let f = fixture();
    let (client, mut events) = connect(f.port(), "ha", Some((PERSON, GOOD))).await.unwrap();
    subscribe(&client, &mut events, "meters/+/power").await;

    let live = f.broker.handle();
    let payload = br#"{"ts":1700000000000,"p":2.5}"#;
    assert!(live.publish("meters/m1/energy", b"not subscribed"));
    assert!(live.publish("meters/m1/power", payload));

    let (topic, got) = next_publish(&mut events).await;
    assert_eq!(topic, "meters/m1/power");
    assert_eq!(got, payload);
    // Counted once the router took it, which may be just after delivery.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.broker.stats().published < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = f.broker.stats();
    assert_eq!(stats.published, 2);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.logins_accepted, 1);
    assert!(stats.listening);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_people_with_valid_passwords_and_free_client_ids_connect() {
    let f = fixture();
    let port = f.port();

    let anonymous = connect(port, "anon", None).await;
    assert!(anonymous.is_err(), "anonymous connected");
    let wrong = connect(port, "ha", Some((PERSON, "wrong password here"))).await;
    assert!(wrong.is_err(), "wrong password connected");
    let device = connect(port, "m1", Some(("m1", f.device_secret.as_str()))).await;
    assert!(device.is_err(), "device credentials connected");
    // Refused before any hashing, even with a valid password.
    let reserved = connect(port, "wattson-fwd", Some((PERSON, GOOD))).await;
    assert!(reserved.is_err(), "reserved client id connected");

    let stats = f.broker.stats();
    // Anonymous is refused by rumqttd before the handler runs.
    assert_eq!((stats.logins_accepted, stats.logins_refused), (0, 3));

    let (client, mut events) = connect(port, "node-red", Some((PERSON, GOOD)))
        .await
        .unwrap();
    assert_eq!(f.broker.stats().logins_accepted, 1);

    // The internal link survived the attempt to take its client id.
    subscribe(&client, &mut events, "meters/#").await;
    assert!(f.broker.handle().publish("meters/m1/power", b"1"));
    assert_eq!(next_publish(&mut events).await.1, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_subscriber_logins_are_throttled_per_name() {
    // rumqttd does not tell the auth hook who is connecting, so logins on
    // this port are throttled per account name.
    let f = fixture_with(AuthPolicy {
        addr_burst: 2,
        addr_refill: Duration::from_secs(3600),
        ..AuthPolicy::default()
    });
    let port = f.port();
    // Wrong meter secrets: failures that cost no argon2 work.
    for client in ["guess-1", "guess-2"] {
        let wrong = connect(port, client, Some(("m1", "not the secret"))).await;
        assert!(wrong.is_err(), "a wrong secret connected");
    }
    let store = f.verifier.store();
    assert_eq!(store.stats().throttled, 0);
    // That name is now throttled, whatever the password...
    let right = connect(port, "guess-3", Some(("m1", f.device_secret.as_str()))).await;
    assert!(right.is_err());
    assert_eq!(store.stats().throttled, 1);
    // ...while other people still log in on the same port.
    let (_client, _events) = connect(port, "ha", Some((PERSON, GOOD))).await.unwrap();
    assert_eq!(store.stats().throttled, 1);
    assert_eq!(f.broker.stats().logins_accepted, 1);
}

#[test]
fn reserved_and_empty_client_ids_are_recognised() {
    for id in ["", "wattson-fwd", "wattson-", "WATTSON-x"] {
        assert!(auth::reserved_client_id(id), "{id:?}");
    }
    for id in ["wattson", "ha", "my-wattson-fwd", "é"] {
        assert!(!auth::reserved_client_id(id), "{id:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_and_oversized_payloads_are_counted_not_forwarded() {
    let f = fixture();
    let live = f.broker.handle();
    assert!(!live.publish("", b"x"));
    assert!(!live.publish("meters/+/power", b"x"));
    assert!(!live.publish("meters/#", b"x"));
    let big = vec![0u8; RouterSettings::default().max_payload_size + 1];
    assert!(!live.publish("meters/m1/power", &big));
    let stats = f.broker.stats();
    assert_eq!((stats.invalid, stats.published, stats.dropped), (4, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_twice_on_one_port_fails_clearly() {
    let f = fixture();
    let settings = RouterSettings {
        listen: f.broker.listen_addr(),
        ..RouterSettings::default()
    };
    let err = LiveBroker::start(settings, f.verifier.clone()).unwrap_err();
    assert!(matches!(err, Error::LiveListen { addr, .. } if addr == f.broker.listen_addr()));
    let msg = err.to_string();
    assert!(msg.contains(&f.broker.listen_addr().to_string()), "{msg}");
    // The first broker is unaffected.
    assert!(f.broker.stats().listening);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_port_and_refuses_publishes() {
    let mut f = fixture();
    let addr = f.broker.listen_addr();
    let live = f.broker.handle();
    f.broker.shutdown();
    f.broker.shutdown();
    assert!(!f.broker.stats().listening);
    assert!(!live.publish("meters/m1/power", b"late"));
    assert_eq!(f.broker.stats().dropped, 1);
    // The port is free again: a new broker can take it.
    let settings = RouterSettings {
        listen: addr,
        ..RouterSettings::default()
    };
    let again = LiveBroker::start(settings, f.verifier.clone()).unwrap();
    assert!(again.stats().listening);
}

/// Polls `events` in a task, counting PUBLISHes; the count is shared.
fn count_publishes(
    mut events: EventLoop,
) -> (
    Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&count);
    let task = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Incoming::Publish(_)) = event {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    (count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishes_reach_a_reader_and_a_slow_subscriber_does_not_stall_the_router() {
    use std::sync::atomic::Ordering::Relaxed;
    const N: u64 = 5_000;
    let f = fixture();
    let port = f.port();
    let live = f.broker.handle();

    let (fast, mut fast_events) = connect(port, "fast", Some((PERSON, GOOD))).await.unwrap();
    subscribe(&fast, &mut fast_events, "meters/#").await;
    // The slow one subscribes, then is not read at all during the flood:
    // its socket buffers fill, the router hits its outgoing limit for it
    // and unschedules it.
    let (slow, mut slow_events) = connect(port, "slow", Some((PERSON, GOOD))).await.unwrap();
    subscribe(&slow, &mut slow_events, "meters/#").await;

    let (fast_count, fast_task) = count_publishes(fast_events);
    let payload = [b'x'; 200];
    let mut accepted = 0;
    for i in 0..N {
        if live.publish(&format!("meters/m{}/power", i % 10), &payload) {
            accepted += 1;
        }
    }
    // Every message is either handed to the router or counted as dropped.
    timeout(Duration::from_secs(30), async {
        loop {
            let s = live.stats();
            if s.published + s.dropped == N {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let stats = f.broker.stats();
    assert_eq!(stats.published, accepted);
    assert!(stats.published > 0);

    // 5,000 x 200 bytes fit in the router's segments: the fast reader
    // gets every message that was handed to the router.
    timeout(Duration::from_secs(30), async {
        while fast_count.load(Relaxed) < stats.published {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "fast got {} of {}",
            fast_count.load(Relaxed),
            stats.published
        )
    });

    // Now the slow one reads: it gets messages again, and after the flood
    // the router still delivers a fresh one to both.
    let (slow_count, slow_task) = count_publishes(slow_events);
    timeout(Duration::from_secs(30), async {
        while slow_count.load(Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let before = (fast_count.load(Relaxed), slow_count.load(Relaxed));
    timeout(Duration::from_secs(30), async {
        loop {
            assert!(live.publish("meters/m1/final", b"after"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fast_count.load(Relaxed) > before.0 && slow_count.load(Relaxed) > before.1 {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no delivery after the flood: {before:?}"));
    eprintln!(
        "published {} dropped {} fast {} slow {}",
        stats.published,
        stats.dropped,
        fast_count.load(Relaxed),
        slow_count.load(Relaxed)
    );
    fast_task.abort();
    slow_task.abort();
    drop((fast, slow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(UserStore::open(dir.path()).unwrap());
    let verifier = Verifier::with_limits(store, 1, 4).unwrap();
    let settings = RouterSettings {
        listen: free_addr(),
        queue_messages: 4,
        ..RouterSettings::default()
    };
    let broker = LiveBroker::start(settings, verifier).unwrap();
    let live = broker.handle();
    let payload = [b'y'; 1000];
    let started = std::time::Instant::now();
    let accepted = (0..20_000)
        .filter(|_| live.publish("meters/m1/power", &payload))
        .count() as u64;
    // Never blocks: 20,000 calls are a matter of milliseconds.
    assert!(started.elapsed() < Duration::from_secs(10));
    timeout(Duration::from_secs(30), async {
        while live.stats().published < accepted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let stats = live.stats();
    assert_eq!(stats.published + stats.dropped, 20_000);
}
