// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use std::string::String;
use std::vec::Vec;

use wattson_ingest::payload::{Decoder, TopicMatch};
use wattson_storage::Value;

use super::*;
use crate::reading::{Channel, Reading};

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
];
/// 2022-07-19T15:24:21Z, the seed's time.
const TS: i64 = 1_658_244_261_000;

fn text(buf: &[u8], n: usize) -> &str {
    std::str::from_utf8(&buf[..n]).unwrap()
}

fn decode(payload: &[u8]) -> Vec<wattson_storage::Reading> {
    let m = TopicMatch {
        device: "viconsl".into(),
        table: Some("power_consumption".into()),
        channel: None,
    };
    Decoder::default()
        .decode(&m, payload, (TS + 60_000) * 1_000_000)
        .unwrap()
}

fn values(r: &wattson_storage::Reading) -> Vec<(String, f64)> {
    r.values
        .iter()
        .map(|(k, v)| match v {
            Value::F64(x) => (k.to_string(), *x),
            other => std::panic!("{k}: {other:?}"),
        })
        .collect()
}

#[test]
fn one_reading_is_the_seed_shaped_object() {
    let r = Reading::new(Some(TS), 7, &[214.94, 0.3889, 83.6]).unwrap();
    let mut buf = [0u8; 128];
    let n = encode_reading(SCHEMA, &r, &mut buf).unwrap();
    assert_eq!(
        text(&buf, n),
        r#"{"ts":1658244261000,"seq":7,"pa_v":214.9,"wd_a":0.39,"wd_p":83.6}"#
    );
}

#[test]
fn round_trips_through_ingest() {
    let r = Reading::new(Some(TS), 41, &[231.26, 9.5, -12.0]).unwrap();
    let mut buf = [0u8; 128];
    let n = encode_reading(SCHEMA, &r, &mut buf).unwrap();
    let got = decode(&buf[..n]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].time, TS * 1_000_000);
    assert_eq!(&*got[0].device, "viconsl");
    assert_eq!(
        values(&got[0]),
        [
            ("seq".into(), 41.0),
            ("pa_v".into(), 231.3),
            ("wd_a".into(), 9.5),
            ("wd_p".into(), -12.0)
        ]
    );
}

#[test]
fn batch_round_trips_in_order_and_without_clock() {
    let rs: Vec<Reading> = (0..5)
        .map(|k| {
            Reading::new(
                Some(TS + k * 1000),
                k as u32,
                &[230.0 + k as f32, 1.0, 230.0],
            )
            .unwrap()
        })
        .collect();
    let mut buf = [0u8; 1024];
    let (n, count) = encode_batch(SCHEMA, &rs, 10, &mut buf).unwrap();
    assert_eq!(count, 5);
    let got = decode(&buf[..n]);
    assert_eq!(got.len(), 5);
    for (k, r) in got.iter().enumerate() {
        assert_eq!(r.time, (TS + k as i64 * 1000) * 1_000_000);
        assert_eq!(values(r)[1], ("pa_v".into(), 230.0 + k as f64));
    }
    // Unsynchronised clock: no ts, and ingest uses its receive time.
    let r = Reading::new(None, 1, &[230.0]).unwrap();
    let n = encode_reading(SCHEMA, &r, &mut buf).unwrap();
    assert_eq!(text(&buf, n), r#"{"seq":1,"pa_v":230.0}"#);
    assert_eq!(decode(&buf[..n])[0].time, (TS + 60_000) * 1_000_000);
}

#[test]
fn batch_stops_where_the_buffer_ends() {
    let rs: Vec<Reading> = (0..50)
        .map(|k| Reading::new(Some(TS + k * 1000), k as u32, &[230.0, 1.0, 230.0]).unwrap())
        .collect();
    let one = {
        let mut b = [0u8; 128];
        encode_reading(SCHEMA, &rs[0], &mut b).unwrap()
    };
    for size in [one + 2, one * 3 + 5, 300, 1000] {
        let mut buf = std::vec![0u8; size];
        let (n, count) = encode_batch(SCHEMA, &rs, 50, &mut buf).unwrap();
        assert!(n <= size);
        assert_eq!(decode(&buf[..n]).len(), count, "buffer of {size}");
    }
    let mut tiny = [0u8; 20];
    assert_eq!(
        encode_batch(SCHEMA, &rs, 50, &mut tiny),
        Err(Error::BufferFull)
    );
    assert_eq!(
        encode_reading(SCHEMA, &rs[0], &mut tiny),
        Err(Error::BufferFull)
    );
}

#[test]
fn absent_and_non_finite_values_are_left_out() {
    let r = Reading::new(Some(TS), 3, &[f32::NAN, f32::INFINITY, -0.0]).unwrap();
    let mut buf = [0u8; 128];
    let n = encode_reading(SCHEMA, &r, &mut buf).unwrap();
    assert_eq!(text(&buf, n), r#"{"ts":1658244261000,"seq":3,"wd_p":0.0}"#);
    decode(&buf[..n]);
}

#[test]
fn more_values_than_the_schema_is_an_error() {
    let r = Reading::new(Some(TS), 3, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut buf = [0u8; 128];
    assert_eq!(
        encode_reading(SCHEMA, &r, &mut buf),
        Err(Error::TooManyChannels { max: 3 })
    );
    assert!(Reading::new(None, 0, &[0.0; crate::reading::MAX_CHANNELS + 1]).is_err());
}
