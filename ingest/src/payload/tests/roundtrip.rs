//! Readings rendered as JSON (or line protocol) decode back to the same
//! readings, floats bit for bit.

use std::fmt::Write;
use std::sync::Arc;

use proptest::prelude::*;
use wattson_storage::{ChannelType, Reading, Value};

use super::{NOW, meters};
use crate::payload::Decoder;
use crate::payload::time::format_rfc3339;

/// Renders readings as a JSON array with RFC 3339 timestamps; `style`
/// picks how floats are printed (plain, Debug, exponent).
fn to_json(readings: &[Reading], style: u8) -> String {
    let mut out = String::from("[");
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write!(out, r#"{{"ts":"{}""#, format_rfc3339(r.time)).unwrap();
        for (name, v) in &r.values {
            write!(out, r#","{name}":"#).unwrap();
            match v {
                Value::F64(f) => match style % 3 {
                    0 => write!(out, "{f}"),
                    1 => write!(out, "{f:?}"),
                    _ => write!(out, "{f:e}"),
                }
                .unwrap(),
                Value::Bool(b) => write!(out, "{b}").unwrap(),
                Value::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
                Value::I64(_) => unreachable!("JSON has no i64 channels"),
            }
        }
        out.push('}');
    }
    out.push(']');
    out
}

/// Renders readings as line protocol with nanosecond timestamps.
fn to_line_protocol(readings: &[Reading]) -> String {
    let mut out = String::new();
    for r in readings {
        write!(out, "{} ", r.table).unwrap();
        for (i, (name, v)) in r.values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match v {
                Value::F64(f) => write!(out, "{name}={f:?}"),
                Value::I64(n) => write!(out, "{name}={n}i"),
                Value::Bool(b) => write!(out, "{name}={b}"),
                Value::Str(s) => write!(
                    out,
                    "{name}=\"{}\"",
                    s.replace('\\', "\\\\").replace('"', "\\\"")
                ),
            }
            .unwrap();
        }
        writeln!(out, " {}", r.time).unwrap();
    }
    out
}

const NAMES: [&str; 6] = ["pa_v", "pb_v", "relay", "status", "wh", "_x9"];

/// Random readings whose channels keep one type across the message.
fn readings(types: &'static [ChannelType]) -> impl Strategy<Value = Vec<Reading>> {
    let schema = proptest::collection::vec(proptest::sample::select(types), NAMES.len());
    schema.prop_flat_map(|schema| {
        let reading = (
            NOW - 86_400_000_000_000..NOW + 3_600_000_000_000,
            proptest::sample::subsequence(NAMES.to_vec(), 1..=NAMES.len()),
            proptest::collection::vec(
                (
                    any::<f64>().prop_filter("finite", |f| f.is_finite()),
                    any::<i64>(),
                    any::<bool>(),
                    "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}]{0,4}",
                ),
                NAMES.len(),
            ),
        )
            .prop_map(move |(time, names, raw)| Reading {
                table: "power_consumption".into(),
                device: "viconsl".into(),
                time,
                values: names
                    .iter()
                    .map(|n| {
                        let i = NAMES.iter().position(|x| x == n).unwrap();
                        let (f, int, b, s) = raw[i].clone();
                        let v = match schema[i] {
                            ChannelType::F64 => Value::F64(f),
                            ChannelType::I64 => Value::I64(int),
                            ChannelType::Bool => Value::Bool(b),
                            ChannelType::Str => Value::Str(s),
                        };
                        (Arc::from(*n), v)
                    })
                    .collect(),
            });
        proptest::collection::vec(reading, 1..6)
    })
}

/// Compares floats by bits, so `-0.0` and `0.0` differ and nothing is
/// "close enough".
fn same(a: &[Reading], b: &[Reading]) -> bool {
    let bits = |r: &Reading| {
        r.values
            .iter()
            .map(|(n, v)| match v {
                Value::F64(f) => (n.to_string(), format!("f{:x}", f.to_bits())),
                v => (n.to_string(), format!("{v:?}")),
            })
            .collect::<Vec<_>>()
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (&x.table, &x.device, x.time) == (&y.table, &y.device, y.time) && bits(x) == bits(y)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trip(
        rs in readings(&[ChannelType::F64, ChannelType::Bool, ChannelType::Str]),
        style in any::<u8>(),
    ) {
        let json = to_json(&rs, style);
        let back = Decoder::default().decode(&meters("power_consumption"), json.as_bytes(), NOW);
        prop_assert!(back.as_ref().is_ok_and(|b| same(&rs, b)), "{json}\n{back:?}");
    }

    #[test]
    fn line_protocol_round_trip(
        rs in readings(&[ChannelType::F64, ChannelType::I64, ChannelType::Bool, ChannelType::Str]),
    ) {
        // Line protocol strings cannot hold a newline.
        prop_assume!(rs.iter().flat_map(|r| &r.values).all(|(_, v)| !matches!(v, Value::Str(s) if s.contains(['\n', '\r']))));
        let lp = to_line_protocol(&rs);
        let back = Decoder::default().decode(&meters("power_consumption"), lp.as_bytes(), NOW);
        prop_assert!(back.as_ref().is_ok_and(|b| same(&rs, b)), "{lp}\n{back:?}");
    }
}
