// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use std::vec::Vec;

use super::*;
use crate::reading::Channel;

const SCHEMA: &[Channel<'static>] = &[Channel {
    name: "pa_v",
    decimals: 1,
}];

fn reading(seq: u32) -> Reading {
    Reading::new(
        Some(1_700_000_000_000 + i64::from(seq) * 1000),
        seq,
        &[230.0],
    )
    .unwrap()
}

#[test]
fn live_readings_go_one_by_one_and_the_backlog_in_batches() {
    let cfg = UplinkConfig {
        batch_max: 4,
        ..UplinkConfig::default()
    };
    let mut up: Uplink<64, 2> = Uplink::new(cfg, 1);
    let mut buf = [0u8; 1024];
    assert!(up.should_connect(0));
    up.connected();
    up.push(reading(0));
    let (n, count) = up.next_message(SCHEMA, &mut buf).unwrap().unwrap();
    assert_eq!(count, 1);
    assert!(buf[..n].starts_with(b"{"));
    up.published(count);
    // Connection lost before the PUBACK; ten more readings meanwhile.
    let delay = up.connection_lost(1000);
    assert!((250..=500).contains(&delay));
    for s in 1..=10 {
        up.push(reading(s));
    }
    assert!(up.next_message(SCHEMA, &mut buf).unwrap().is_none());
    assert!(!up.should_connect(1000));
    assert!(up.should_connect(1000 + u64::from(delay)));
    up.connected();
    let mut acked = Vec::new();
    let mut sent = Vec::new();
    while let Some((n, count)) = up.next_message(SCHEMA, &mut buf).unwrap() {
        assert!(buf[..n].starts_with(b"["));
        sent.push(count);
        up.published(count);
        if up.outbox().messages_in_flight() == 2 {
            up.puback(|r| acked.push(r.seq));
        }
    }
    while up.outbox().messages_in_flight() > 0 {
        up.puback(|r| acked.push(r.seq));
    }
    assert_eq!(sent, [4, 4, 3]);
    assert_eq!(acked, (0..=10).collect::<Vec<_>>());
    let s = up.stats();
    assert_eq!(
        (
            s.readings_acked,
            s.readings_resent,
            s.connects,
            s.connection_losses
        ),
        (11, 1, 2, 1)
    );
}

#[test]
fn failed_attempts_back_off_until_one_succeeds() {
    let mut up: Uplink<4, 1> = Uplink::new(UplinkConfig::default(), 9);
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..10 {
        assert!(up.should_connect(now));
        let d = up.connection_lost(now);
        delays.push(d);
        now += u64::from(d);
    }
    assert!(delays.last().unwrap() >= &30_000 && delays.last().unwrap() <= &60_000);
    assert!(up.should_connect(now));
    up.connected();
    assert_eq!(up.stats().connection_losses, 0);
    up.connection_lost(now);
    assert!(up.connection_lost(now) <= 1000);
}

#[test]
fn unstamped_readings_wait_for_the_clock_unless_released() {
    let mut up: Uplink<16, 2> = Uplink::new(UplinkConfig::default(), 5);
    let mut buf = [0u8; 1024];
    assert!(up.should_connect(0));
    up.connected();
    up.push(Reading::unstamped(100, 0, &[230.0]).unwrap());
    up.push(Reading::unstamped(1100, 1, &[230.0]).unwrap());
    assert!(up.next_message(SCHEMA, &mut buf).unwrap().is_none());
    assert_eq!(up.stamp(|l| Some(1_700_000_000_000 + l as i64)), 2);
    let (n, count) = up.next_message(SCHEMA, &mut buf).unwrap().unwrap();
    assert_eq!(count, 2);
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with(r#"[{"ts":1700000000100,"seq":0"#)
    );
    up.published(count);
    // A stamped reading goes; an unstamped one behind it waits.
    up.push(reading(2));
    up.push(Reading::unstamped(3100, 3, &[230.0]).unwrap());
    let (_, count) = up.next_message(SCHEMA, &mut buf).unwrap().unwrap();
    assert_eq!(count, 1);
    up.published(count);
    assert!(up.next_message(SCHEMA, &mut buf).unwrap().is_none());
    // A board that gave up on its time server lets it go without `ts`
    // (once a message slot is free again).
    assert_eq!(up.puback(|_| {}), 2);
    up.send_unstamped(true);
    let (n, _) = up.next_message(SCHEMA, &mut buf).unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        r#"{"seq":3,"pa_v":230.0}"#
    );
}
