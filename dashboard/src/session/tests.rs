#![allow(clippy::unwrap_used)]

use super::*;

fn users() -> (tempfile::TempDir, UserStore) {
    let dir = tempfile::tempdir().unwrap();
    let users = UserStore::open(dir.path()).unwrap();
    users
        .add_user("ann", Role::Viewer, "a long enough password")
        .unwrap();
    (dir, users)
}

#[test]
fn ids_are_fresh_long_and_random() {
    let (_d, users) = users();
    let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
    let now = Instant::now();
    let a = s.create(&users, "ann", now).unwrap();
    let b = s.create(&users, "ann", now).unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(a.csrf, a.id);
    assert_eq!(a.id.len(), 64);
    assert!(a.id.bytes().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn idle_and_absolute_timeouts_end_sessions() {
    let (_d, users) = users();
    let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(150));
    let t0 = Instant::now();
    let a = s.create(&users, "ann", t0).unwrap();
    assert!(
        s.get(&users, &a.id, t0 + Duration::from_secs(50), true)
            .is_some()
    );
    assert!(
        s.get(&users, &a.id, t0 + Duration::from_secs(100), true)
            .is_some()
    );
    // Active all along, but past the absolute limit.
    assert!(
        s.get(&users, &a.id, t0 + Duration::from_secs(151), true)
            .is_none()
    );

    let b = s.create(&users, "ann", t0).unwrap();
    // A check that does not touch does not extend the idle window.
    assert!(
        s.get(&users, &b.id, t0 + Duration::from_secs(50), false)
            .is_some()
    );
    assert!(
        s.get(&users, &b.id, t0 + Duration::from_secs(61), true)
            .is_none()
    );
}

#[test]
fn logout_and_password_change_end_sessions() {
    let (_d, users) = users();
    let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
    let now = Instant::now();
    let a = s.create(&users, "ann", now).unwrap();
    let b = s.create(&users, "ann", now).unwrap();
    s.end(&a.id);
    assert!(s.get(&users, &a.id, now, true).is_none());
    assert!(s.get(&users, &b.id, now, true).is_some());
    users.set_password("ann", "another long password").unwrap();
    assert!(s.get(&users, &b.id, now, true).is_none());
    assert!(s.is_empty());
}

#[test]
fn a_full_table_refuses_as_busy_until_sessions_expire() {
    let (_d, users) = users();
    let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
    let t0 = Instant::now();
    for _ in 0..MAX_SESSIONS {
        s.create(&users, "ann", t0).unwrap();
    }
    let err = s.create(&users, "ann", t0).unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    let response = axum::response::IntoResponse::into_response(err);
    assert_eq!(
        response.status(),
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(response.headers()["retry-after"], "60");
    // Once the idle ones expire, there is room again.
    assert!(
        s.create(&users, "ann", t0 + Duration::from_secs(61))
            .is_ok()
    );
}
