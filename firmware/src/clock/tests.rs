// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use super::sntp;
use super::*;

#[test]
fn offset_from_a_symmetric_exchange() {
    let mut c = ClockSync::new();
    assert_eq!(c.utc_ms(5), None);
    // Local clock started at UTC 1_700_000_000_000; 40 ms each way, server
    // takes 2 ms.
    let base = 1_700_000_000_000i64;
    let got = c
        .update(10_000, base + 10_040, base + 10_042, 10_082)
        .unwrap();
    assert_eq!(got, base);
    assert_eq!(c.utc_ms(20_000), Some(base + 20_000));
}

#[test]
fn slow_exchanges_are_ignored() {
    let mut c = ClockSync::new();
    assert_eq!(c.update(0, 1_000, 1_001, 5_000), None);
    assert!(!c.is_synced());
}

#[test]
fn drift_is_corrected_between_exchanges() {
    // The local crystal runs 50 ppm slow: UTC = base + local * (1 + 50e-6).
    let base = 1_700_000_000_000i64;
    let utc = |local: u64| base + (local as f64 * (1.0 + 50e-6)).round() as i64;
    let mut c = ClockSync::new();
    for k in 0..6u64 {
        let t1 = k * 3_600_000;
        let t4 = t1 + 30;
        c.update(t1, utc(t1 + 15), utc(t1 + 15), t4);
    }
    assert!((c.drift_ppm() - 50.0).abs() < 2.0, "{}", c.drift_ppm());
    // Six hours after the last exchange the estimate is within 100 ms, where
    // an offset without drift correction would be a second off.
    let later = 5 * 3_600_000 + 6 * 3_600_000;
    let err = c.utc_ms(later).unwrap() - utc(later);
    assert!(err.abs() < 100, "{err} ms off");
}

#[test]
fn sntp_request_and_reply() {
    let req = sntp::request(123_456);
    assert_eq!(req[0], 0x23);
    let mut reply = [0u8; sntp::PACKET_LEN];
    reply[0] = 0x24; // version 4, server
    reply[1] = 2; // stratum
    reply[24..32].copy_from_slice(&req[40..48]);
    sntp::write_stamp(&mut reply[32..40], 1_658_244_261_123);
    sntp::write_stamp(&mut reply[40..48], 1_658_244_261_125);
    assert_eq!(
        sntp::parse_reply(&reply, 123_456),
        Ok((1_658_244_261_123, 1_658_244_261_125))
    );
    assert!(sntp::parse_reply(&reply, 999).is_err());
    assert!(sntp::parse_reply(&reply[..40], 123_456).is_err());
    reply[1] = 0;
    assert!(sntp::parse_reply(&reply, 123_456).is_err());
    assert!(sntp::parse_reply(&[], 0).is_err());
}

proptest::proptest! {
    // A reply comes from the network: any bytes give an answer, not a panic.
    #[test]
    fn any_reply_bytes_parse_or_fail(
        reply in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        local in proptest::prelude::any::<u64>(),
    ) {
        let _ = sntp::parse_reply(&reply, local);
    }

    // A well-formed reply to our request with any stamps: parsed, and the
    // clock update survives whatever times it carries.
    #[test]
    fn replies_with_any_stamps_update_the_clock_or_are_ignored(
        rx in proptest::prelude::any::<[u8; 8]>(),
        tx in proptest::prelude::any::<[u8; 8]>(),
        sent in proptest::prelude::any::<u64>(),
        received in proptest::prelude::any::<u64>(),
    ) {
        let mut reply = [0u8; sntp::PACKET_LEN];
        reply[0] = (4 << 3) | 4;
        reply[1] = 1;
        reply[24..32].copy_from_slice(&sent.to_be_bytes());
        reply[32..40].copy_from_slice(&rx);
        reply[40..48].copy_from_slice(&tx);
        if let Ok((server_rx, server_tx)) = sntp::parse_reply(&reply, sent) {
            let mut clock = ClockSync::new();
            let _ = clock.update(sent, server_rx, server_tx, received);
            let _ = clock.update(received, server_rx, server_tx, received.saturating_add(5));
            let _ = clock.utc_ms(received);
        }
    }
}
