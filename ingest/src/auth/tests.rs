//! Unit tests for the user store. Real argon2 default parameters are used
//! in one test only (three hashes: slow in debug builds); the rest use
//! `AuthPolicy::cheap_hashing`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::file::{self, Contents, Device};
use super::*;
use crate::Error;

const GOOD: &str = "correct horse battery";

fn policy() -> AuthPolicy {
    AuthPolicy::default().cheap_hashing()
}

fn cheap(dir: &Path) -> UserStore {
    UserStore::open_with(dir, policy()).unwrap()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn roles_allow_and_parse() {
    use Role::*;
    assert!(Admin.allows(Analyst) && Admin.allows(Viewer) && Admin.allows(Admin));
    assert!(Analyst.allows(Viewer) && !Analyst.allows(Admin));
    assert!(Viewer.allows(Viewer) && !Viewer.allows(Analyst));
    // A person never publishes as a meter; a meter never reads.
    for person in [Viewer, Analyst, Admin] {
        assert!(!person.allows(Device));
        assert!(!Device.allows(person));
    }
    assert!(Device.allows(Device));
    for r in Role::ALL {
        assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
    }
    let err = "root".parse::<Role>().unwrap_err().to_string();
    assert!(err.contains("device, viewer, analyst, admin"), "{err}");
}

#[test]
fn round_trip_through_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    assert!(store.list().is_empty());
    assert!(!store.has_admin());
    store.add_user("alice", Role::Admin, GOOD).unwrap();
    store
        .add_user("bob@example.org", Role::Viewer, GOOD)
        .unwrap();
    let secret = store.add_device("viconsl").unwrap();
    let listed = store.list();
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.name.as_str(), e.kind, e.role))
            .collect::<Vec<_>>(),
        [
            ("alice", EntryKind::User, Role::Admin),
            ("bob@example.org", EntryKind::User, Role::Viewer),
            ("viconsl", EntryKind::Device, Role::Device),
        ]
    );

    let reopened = cheap(dir.path());
    assert_eq!(reopened.list(), listed);
    assert!(reopened.has_admin());
    assert_eq!(reopened.verify("viconsl", &secret, None), Ok(Role::Device));

    reopened
        .set_password("bob@example.org", "a different passphrase")
        .unwrap();
    let third = cheap(dir.path());
    assert_eq!(
        third.verify("bob@example.org", "a different passphrase", None),
        Ok(Role::Viewer)
    );
    assert_eq!(
        third.verify("bob@example.org", GOOD, None),
        Err(AuthError::Denied)
    );

    assert_eq!(third.remove("bob@example.org").unwrap(), EntryKind::User);
    assert_eq!(third.remove("viconsl").unwrap(), EntryKind::Device);
    assert!(matches!(
        third.remove("viconsl"),
        Err(Error::UnknownName(_))
    ));
    assert!(matches!(
        third.set_password("nobody", GOOD),
        Err(Error::UnknownName(_))
    ));
    let names: Vec<_> = cheap(dir.path())
        .list()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["alice"]);
}

#[test]
fn file_is_0600_after_create_and_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    store.add_device("m1").unwrap();
    assert_eq!(mode_of(store.path()), 0o600);
    store.add_device("m2").unwrap();
    store.remove("m1").unwrap();
    assert_eq!(mode_of(store.path()), 0o600);
    // No temp file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn group_readable_file_is_refused_with_chmod_hint() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    store.add_device("m1").unwrap();
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = UserStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::UserFilePermissions { mode: 0o644, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("chmod 600") && msg.contains("users.json"),
        "{msg}"
    );
}

#[test]
fn device_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    let secret = store.add_device("viconsl").unwrap();
    let other = store.add_device("meter-2").unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(secret, other);
    // Only the keyed hash is on disk.
    let on_disk = std::fs::read_to_string(store.path()).unwrap();
    assert!(!on_disk.contains(&secret));

    assert_eq!(store.verify("viconsl", &secret, None), Ok(Role::Device));
    assert_eq!(
        store.verify("viconsl", &other, None),
        Err(AuthError::Denied)
    );
    assert_eq!(store.verify("viconsl", "", None), Err(AuthError::Denied));
    assert_eq!(store.verify("ghost", &secret, None), Err(AuthError::Denied));
    assert!(matches!(
        store.add_device("bad/id"),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn add_devices_is_one_write_and_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    store.add_device("taken").unwrap();
    let err = store.add_devices(&["a1", "taken", "a2"]).unwrap_err();
    assert!(
        matches!(err, Error::NameTaken(ref n) if n == "taken"),
        "{err}"
    );
    let err = store.add_devices(&["b1", "B1"]).unwrap_err();
    assert!(matches!(err, Error::NameTaken(_)), "{err}");
    assert_eq!(store.verify("a1", "x", None), Err(AuthError::Denied));
    assert_eq!(store.list().len(), 1, "nothing of a refused batch is added");

    let secrets = store.add_devices(&["m1", "m2", "m3"]).unwrap();
    assert_eq!(secrets.len(), 3);
    for (id, secret) in ["m1", "m2", "m3"].iter().zip(&secrets) {
        assert_eq!(store.verify(id, secret, None), Ok(Role::Device));
    }
    assert_ne!(secrets[0], secrets[1]);
}

#[test]
fn real_argon2_default_params() {
    // The only test with production parameters: one hash, two verifies.
    let dir = tempfile::tempdir().unwrap();
    let store = UserStore::open(dir.path()).unwrap();
    store.add_user("alice", Role::Analyst, GOOD).unwrap();
    let on_disk = std::fs::read_to_string(store.path()).unwrap();
    assert!(
        on_disk.contains("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{on_disk}"
    );
    assert!(!on_disk.contains(GOOD));
    assert!(
        store
            .dummy_hash()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    assert_eq!(store.verify("alice", GOOD, None), Ok(Role::Analyst));
    assert_eq!(
        store.verify("alice", "wrong password!", None),
        Err(AuthError::Denied)
    );
}

#[test]
fn people_and_devices_share_one_namespace_and_keep_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    store.add_user("alice", Role::Admin, GOOD).unwrap();
    let secret = store.add_device("meter1").unwrap();
    assert!(matches!(
        store.add_device("alice"),
        Err(Error::NameTaken(_))
    ));
    assert!(matches!(
        store.add_device("Alice"),
        Err(Error::NameTaken(_))
    ));
    assert!(matches!(
        store.add_user("meter1", Role::Viewer, GOOD),
        Err(Error::NameTaken(_))
    ));
    assert!(matches!(
        store.add_user("x", Role::Device, GOOD),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        store.set_password("meter1", GOOD),
        Err(Error::InvalidInput(_))
    ));

    // The MQTT layer asks for Role::Device: only the meter gets it.
    let admin = store.verify("alice", GOOD, None).unwrap();
    assert!(!admin.allows(Role::Device));
    let meter = store.verify("meter1", &secret, None).unwrap();
    assert!(meter.allows(Role::Device) && !meter.allows(Role::Viewer));
    // A device secret is not a password for another account, nor the reverse.
    assert_eq!(store.verify("alice", &secret, None), Err(AuthError::Denied));
    assert_eq!(store.verify("meter1", GOOD, None), Err(AuthError::Denied));
}

#[test]
fn names_and_passwords_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
        assert!(
            matches!(
                store.add_user(bad, Role::Viewer, GOOD),
                Err(Error::InvalidInput(_))
            ),
            "{bad:?}"
        );
    }
    let short = store
        .add_user("carol", Role::Viewer, "elevenchars")
        .unwrap_err();
    assert!(matches!(short, Error::WeakPassword(_)) && short.to_string().contains("12"));
    let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
    assert!(matches!(
        store.add_user("carol", Role::Viewer, &long),
        Err(Error::WeakPassword(_))
    ));
    // Overlong input at login is denied without hashing.
    store.add_user("carol", Role::Viewer, GOOD).unwrap();
    assert_eq!(store.verify("carol", &long, None), Err(AuthError::Denied));
    assert_eq!(store.verify("nobody", &long, None), Err(AuthError::Denied));
    assert_eq!(store.stats().dummy_verifications, 0);
}

#[test]
fn no_admin_and_last_admin() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    let msg = store.require_admin().unwrap_err().to_string();
    assert!(
        msg.contains("wattson user add") && msg.contains("--role admin"),
        "{msg}"
    );
    store.add_user("root", Role::Admin, GOOD).unwrap();
    store.require_admin().unwrap();
    assert!(matches!(store.remove("root"), Err(Error::LastAdmin(_))));
    store.add_user("root2", Role::Admin, GOOD).unwrap();
    store.remove("root").unwrap();
    store.require_admin().unwrap();
}

#[test]
fn unknown_names_verify_the_dummy_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    store.add_user("alice", Role::Viewer, GOOD).unwrap();
    assert_eq!(store.verify("mallory", GOOD, None), Err(AuthError::Denied));
    assert_eq!(store.stats().dummy_verifications, 1);
    // A wrong password for a real person runs the real hash instead.
    assert_eq!(
        store.verify("alice", "not the password", None),
        Err(AuthError::Denied)
    );
    assert_eq!(store.stats().dummy_verifications, 1);
    // Same error text for both: nothing tells them apart.
    assert_eq!(
        AuthError::Denied.to_string(),
        store.verify("mallory", "x", None).unwrap_err().to_string()
    );
    assert_eq!(store.stats().denied, 3);
}

#[test]
fn lockout_after_100_failures_then_expiry() {
    let clock = Arc::new(ManualClock::new());
    let dir = tempfile::tempdir().unwrap();
    let policy = AuthPolicy {
        clock: clock.clone(),
        ..policy()
    };
    let store = UserStore::open_with(dir.path(), policy).unwrap();
    store.add_user("alice", Role::Viewer, GOOD).unwrap();
    // A success resets the streak.
    for _ in 0..99 {
        assert_eq!(store.verify("alice", "wrong", None), Err(AuthError::Denied));
    }
    assert_eq!(store.verify("alice", GOOD, None), Ok(Role::Viewer));
    for _ in 0..100 {
        assert_eq!(store.verify("alice", "wrong", None), Err(AuthError::Denied));
    }
    // Locked: even the right password is refused, without checking it.
    match store.verify("alice", GOOD, None) {
        Err(AuthError::LockedOut { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(15 * 60));
        }
        other => panic!("expected a lockout, got {other:?}"),
    }
    clock.advance(Duration::from_secs(15 * 60 - 1));
    assert!(matches!(
        store.verify("alice", GOOD, None),
        Err(AuthError::LockedOut { .. })
    ));
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.verify("alice", GOOD, None), Ok(Role::Viewer));
    assert!(store.stats().locked_out >= 2);
}

#[test]
fn meters_are_never_locked_out_by_failed_logins() {
    let dir = tempfile::tempdir().unwrap();
    let store = UserStore::open_with(dir.path(), policy()).unwrap();
    let secret = store.add_device("meter1").unwrap();
    for _ in 0..150 {
        assert_eq!(
            store.verify("meter1", "wrong", None),
            Err(AuthError::Denied)
        );
    }
    assert_eq!(store.verify("meter1", &secret, None), Ok(Role::Device));
    assert_eq!(store.stats().locked_out, 0);
}

#[test]
fn unknown_names_lock_out_like_real_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = UserStore::open_with(
        dir.path(),
        AuthPolicy {
            max_failures: 3,
            ..policy()
        },
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(store.verify("ghost", "guess", None), Err(AuthError::Denied));
    }
    assert!(matches!(
        store.verify("ghost", "guess", None),
        Err(AuthError::LockedOut { .. })
    ));
    assert_eq!(store.stats().dummy_verifications, 3);
}

#[test]
fn per_address_throttle_comes_before_hashing() {
    let clock = Arc::new(ManualClock::new());
    let dir = tempfile::tempdir().unwrap();
    let policy = AuthPolicy {
        addr_burst: 5,
        addr_refill: Duration::from_secs(2),
        clock: clock.clone(),
        ..policy()
    };
    let store = UserStore::open_with(dir.path(), policy).unwrap();
    let secret = store.add_device("meter1").unwrap();
    let attacker = ip("203.0.113.7");
    for _ in 0..5 {
        assert_eq!(
            store.verify("ghost", "guess", attacker),
            Err(AuthError::Denied)
        );
    }
    assert_eq!(store.stats().dummy_verifications, 5);
    assert_eq!(
        store.verify("ghost", "guess", attacker),
        Err(AuthError::Throttled)
    );
    // Refused before any hashing, whatever the name.
    assert_eq!(store.stats().dummy_verifications, 5);
    assert_eq!(
        store.verify("meter1", &secret, attacker),
        Err(AuthError::Throttled)
    );
    // Other addresses are not affected.
    assert_eq!(
        store.verify("meter1", &secret, ip("198.51.100.1")),
        Ok(Role::Device)
    );
    // Successes do not drain a bucket: many meters behind one NAT address.
    for _ in 0..50 {
        assert_eq!(
            store.verify("meter1", &secret, ip("192.0.2.1")),
            Ok(Role::Device)
        );
    }
    // The bucket refills over time.
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.verify("meter1", &secret, attacker), Ok(Role::Device));
    // IPv6 counts per /64.
    for i in 0..5 {
        let a = ip(&format!("2001:db8:1:2::{i}"));
        assert_eq!(store.verify("ghost", "guess", a), Err(AuthError::Denied));
    }
    assert_eq!(
        store.verify("ghost", "guess", ip("2001:db8:1:2:ffff::1")),
        Err(AuthError::Throttled)
    );
    assert_eq!(
        store.verify("meter1", &secret, ip("2001:db8:1:3::1")),
        Ok(Role::Device)
    );
}

#[test]
fn thousand_device_reconnect_storm_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(USER_FILE_NAME);
    // Written directly: 1,000 `add_device` calls would be 1,000 fsyncs.
    let key = [7u8; 32];
    let mut devices = BTreeMap::new();
    let mut secrets = Vec::new();
    for i in 0..1000 {
        let secret = format!("{i:064x}");
        let secret_hash = *blake3::keyed_hash(&key, secret.as_bytes()).as_bytes();
        devices.insert(
            format!("meter{i}"),
            Device {
                secret_hash,
                created: 0,
            },
        );
        secrets.push(secret);
    }
    let contents = Contents {
        device_key: key,
        users: BTreeMap::new(),
        devices,
    };
    file::save(&path, &contents).unwrap();
    let store = UserStore::open(dir.path()).unwrap();
    let started = Instant::now();
    // All behind one NAT address, as a building's meters might be.
    for (i, secret) in secrets.iter().enumerate() {
        let got = store.verify(&format!("meter{i}"), secret, ip("10.0.0.1"));
        assert_eq!(got, Ok(Role::Device));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "1,000 device logins took {took:?}"
    );
    assert_eq!(store.stats().succeeded, 1000);
}

#[test]
fn changes_by_another_process_are_seen_without_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let server = cheap(dir.path());
    let cli = cheap(dir.path());
    let secret = cli.add_device("meter1").unwrap();
    assert_eq!(server.verify("meter1", &secret, None), Ok(Role::Device));
    cli.add_user("alice", Role::Admin, GOOD).unwrap();
    assert!(server.has_admin());
    // The server's own change must not drop the CLI's (writers re-read).
    server.add_device("meter2").unwrap();
    assert_eq!(cli.list().len(), 3);
    cli.remove("meter1").unwrap();
    assert_eq!(
        server.verify("meter1", &secret, None),
        Err(AuthError::Denied)
    );
    // A file made unreadable-safe later keeps the last good copy serving.
    std::fs::set_permissions(server.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        server.reload_if_changed(),
        Err(Error::UserFilePermissions { .. })
    ));
    assert!(server.has_admin());
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: enough to show the future wakes its task.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[test]
fn bounded_verifier_serves_concurrent_logins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(cheap(dir.path()));
    store.add_user("alice", Role::Admin, GOOD).unwrap();
    store.add_user("bob", Role::Viewer, GOOD).unwrap();
    let secret = store.add_device("meter1").unwrap();
    let verifier = Verifier::with_limits(Arc::clone(&store), 2, 64).unwrap();

    // Many futures in flight at once, then awaited.
    let futures: Vec<_> = (0..20)
        .map(|i| match i % 4 {
            0 => (verifier.verify_async("alice", GOOD, None), Ok(Role::Admin)),
            1 => (verifier.verify_async("bob", GOOD, None), Ok(Role::Viewer)),
            2 => (
                verifier.verify_async("bob", "wrong password", None),
                Err(AuthError::Denied),
            ),
            _ => (
                verifier.verify_async("meter1", &secret, None),
                Ok(Role::Device),
            ),
        })
        .collect();
    for (fut, want) in futures {
        assert_eq!(block_on(fut), want);
    }

    // And from several threads at once.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let v = verifier.clone();
            s.spawn(move || {
                for _ in 0..3 {
                    assert_eq!(v.verify_blocking("alice", GOOD, None), Ok(Role::Admin));
                }
            });
        }
    });

    verifier.shutdown();
    assert_eq!(
        verifier.verify_blocking("alice", GOOD, None),
        Err(AuthError::Unavailable)
    );
    // Device secrets never needed the pool.
    assert_eq!(
        verifier.verify_blocking("meter1", &secret, None),
        Ok(Role::Device)
    );
}

fn expect_corrupt(bytes: &[u8]) -> String {
    let path = Path::new("/data/users.json");
    match file::parse(path, bytes) {
        Err(e @ Error::UserFileCorrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/data/users.json"), "{msg}");
            msg
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn corrupt_truncated_and_wrong_version_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = cheap(dir.path());
    store.add_user("alice", Role::Admin, GOOD).unwrap();
    store.add_device("meter1").unwrap();
    let good = std::fs::read(store.path()).unwrap();
    file::parse(store.path(), &good).unwrap();

    expect_corrupt(&good[..good.len() / 2]);
    expect_corrupt(b"");
    expect_corrupt(b"[]");
    let text = String::from_utf8(good).unwrap();
    let msg = expect_corrupt(text.replace("\"version\": 1", "\"version\": 2").as_bytes());
    assert!(
        msg.contains("version 2") && msg.contains("reads version 1"),
        "{msg}"
    );
    expect_corrupt(text.replace("\"version\": 1,", "").as_bytes());
    expect_corrupt(text.replace("$argon2id$", "$argon2i$").as_bytes());
    expect_corrupt(
        text.replace("\"role\": \"admin\"", "\"role\": \"device\"")
            .as_bytes(),
    );
    expect_corrupt(text.replace("\"meter1\"", "\"alice\"").as_bytes());
    expect_corrupt(text.replace("\"meter1\"", "\"ALICE\"").as_bytes());
    expect_corrupt(
        text.replace("\"created\"", "\"extra\": 1, \"created\"")
            .as_bytes(),
    );

    // Through `open`, too: the error names the file.
    std::fs::write(store.path(), &text.as_bytes()[..10]).unwrap();
    let err = UserStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("users.json") && err.contains("corrupt"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn loader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = file::parse(Path::new("/x/users.json"), &bytes);
    }

    #[test]
    fn loader_never_panics_on_damaged_valid_files(cut in 0usize..2000, flip in 0usize..2000, byte in any::<u8>()) {
        let text = format!(
            r#"{{"version":1,"device_key":"{}","users":[{{"name":"a","role":"admin","created":18446744073709551615,"hash":"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"}}],"devices":[{{"id":"m","created":0,"secret_hash":"{}"}}]}}"#,
            "ab".repeat(32),
            "cd".repeat(32)
        );
        let mut bytes = text.into_bytes();
        if let Some(b) = bytes.get_mut(flip) {
            *b = byte;
        }
        bytes.truncate(cut);
        let _ = file::parse(Path::new("/x/users.json"), &bytes);
    }
}
