//! The WAL payload: one appended batch of readings, encoded compactly.
//!
//! Layout (all varints are LEB128, signed ones zigzag):
//! `version u8 (=1) | names: count, then (len, utf8)* | readings: count, then
//! (table name#, device name#, time, value count, (channel name#, type tag u8, value)*)*`.
//! Names (tables, devices, channels) are stored once per payload and referred
//! to by index, because a batch repeats the same few names on every reading.
//! Values: f64 as 8 bytes little-endian, i64 as a signed varint, bool as one
//! byte (0 or 1), strings as (len, utf8).

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::model::{ChannelType, Reading, Value, same_name};
use crate::varint::{Reader, put_bytes, put_i64, put_u64};

const VERSION: u8 = 1;

pub(crate) fn encode(readings: &[Reading]) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    // Names are short and trusted here: FxHash is several times faster than
    // SipHash on them, and this runs for every value appended.
    let mut index: FxHashMap<&str, u64> = FxHashMap::default();
    // Readings of one producer share their name `Arc`s, so a pointer match
    // with the previous reading's name at the same position skips the hash
    // lookup. The batch is borrowed throughout, so no pointer can be reused.
    let mut last: Vec<(*const str, u64)> = Vec::new();
    let mut body = Vec::with_capacity(readings.len() * 64);
    put_u64(&mut body, readings.len() as u64);
    // Consecutive readings mostly share table and device (usually the same
    // `Arc`): compare with the previous reading's before hashing.
    let mut last_keys: [Option<(&Arc<str>, u64)>; 2] = [None, None];
    for r in readings {
        for (slot, s) in last_keys.iter_mut().zip([&r.table, &r.device]) {
            let id = match slot {
                Some((prev, id)) if same_name(prev, s) => *id,
                _ => {
                    let id = *index.entry(&**s).or_insert_with(|| {
                        names.push(&**s);
                        names.len() as u64 - 1
                    });
                    *slot = Some((s, id));
                    id
                }
            };
            put_u64(&mut body, id);
        }
        put_i64(&mut body, r.time);
        put_u64(&mut body, r.values.len() as u64);
        for (i, (name, value)) in r.values.iter().enumerate() {
            let ptr = Arc::as_ptr(name);
            let id = match last.get(i) {
                Some(&(p, id)) if std::ptr::eq(p, ptr) => id,
                _ => {
                    let id = *index.entry(name).or_insert_with(|| {
                        names.push(name);
                        names.len() as u64 - 1
                    });
                    match last.get_mut(i) {
                        Some(slot) => *slot = (ptr, id),
                        None => last.push((ptr, id)),
                    }
                    id
                }
            };
            put_u64(&mut body, id);
            body.push(value.channel_type().tag());
            match value {
                Value::F64(v) => body.extend_from_slice(&v.to_le_bytes()),
                Value::I64(v) => put_i64(&mut body, *v),
                Value::Bool(v) => body.push(u8::from(*v)),
                Value::Str(v) => put_bytes(&mut body, v.as_bytes()),
            }
        }
    }
    let mut out = Vec::with_capacity(body.len() + names.len() * 8 + 8);
    out.push(VERSION);
    put_u64(&mut out, names.len() as u64);
    for n in &names {
        put_bytes(&mut out, n.as_bytes());
    }
    out.extend_from_slice(&body);
    out
}

/// Most elements a decoder reserves room for before it has read them.
const PREALLOC_CAP: usize = 1024;

/// Decodes a payload. `None` means the bytes are not a valid payload; the WAL
/// checksum already passed, so that indicates a bug or a foreign file.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<Reading>> {
    let mut r = Reader::new(bytes);
    if r.u8()? != VERSION {
        return None;
    }
    // Counts are bounded by the bytes left, but an element in memory is
    // larger than its encoding (a value 48 bytes against 2 or more): the
    // reservations are capped so that crafted counts cannot reserve far more
    // than the payload's size, and vectors grow past the cap as they fill.
    let n_names = r.len()?;
    let mut names: Vec<Arc<str>> = Vec::with_capacity(n_names.min(PREALLOC_CAP));
    for _ in 0..n_names {
        names.push(r.str()?.into());
    }
    // Readings share their names, as they did when they were appended.
    let name = |id: u64| names.get(usize::try_from(id).ok()?).cloned();
    let n_readings = r.len()?;
    let mut out = Vec::with_capacity(n_readings.min(PREALLOC_CAP));
    for _ in 0..n_readings {
        let table = name(r.u64()?)?;
        let device = name(r.u64()?)?;
        let time = r.i64()?;
        let n_values = r.len()?;
        let mut values = Vec::with_capacity(n_values.min(PREALLOC_CAP));
        for _ in 0..n_values {
            let channel = name(r.u64()?)?;
            let value = match ChannelType::from_tag(r.u8()?)? {
                ChannelType::F64 => Value::F64(r.f64()?),
                ChannelType::I64 => Value::I64(r.i64()?),
                ChannelType::Bool => match r.u8()? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => return None,
                },
                ChannelType::Str => Value::Str(r.str()?.to_owned()),
            };
            values.push((channel, value));
        }
        out.push(Reading {
            table,
            device,
            time,
            values,
        });
    }
    r.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_map(Value::F64),
            any::<i64>().prop_map(Value::I64),
            any::<bool>().prop_map(Value::Bool),
            ".{0,8}".prop_map(Value::Str),
        ]
    }

    fn reading() -> impl Strategy<Value = Reading> {
        (
            "[a-c]",
            "[x-z]{1,2}",
            any::<i64>(),
            proptest::collection::vec(("[a-d]{1,3}", value()), 0..5),
        )
            .prop_map(|(table, device, time, values)| Reading {
                table: table.into(),
                device: device.into(),
                time,
                values: values.into_iter().map(|(n, v)| (n.into(), v)).collect(),
            })
    }

    fn same(a: &[Reading], b: &[Reading]) -> bool {
        // Compare floats by bits so NaN round-trips count as equal.
        format!("{a:?}") == format!("{b:?}")
            && a.iter().zip(b).all(|(x, y)| {
                x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(p, q)| match (&p.1, &q.1) {
                        (Value::F64(u), Value::F64(v)) => u.to_bits() == v.to_bits(),
                        _ => p == q,
                    })
            })
    }

    proptest! {
        #[test]
        fn payload_round_trips(batch in proptest::collection::vec(reading(), 0..20)) {
            let bytes = encode(&batch);
            let back = decode(&bytes).expect("decodes");
            prop_assert!(same(&batch, &back));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
