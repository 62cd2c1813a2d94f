//! Meter payloads and topics: from an MQTT publish to store readings.
//!
//! What this module owns:
//! - [`TopicMap`]: configurable topic patterns (`meters/{device}/{table}` by
//!   default) that map a topic to a [`TopicMatch`] (device, table, and a
//!   channel for bare values), and [`device_may_publish`], the ACL rule that
//!   a device publishes only under `meters/{its id}/`.
//! - [`Decoder`]: turns one message into `Vec<Reading>`. Formats: a JSON
//!   object, a JSON array of objects, InfluxDB line protocol, or a bare
//!   number when the topic names the channel.
//! - [`PayloadError`]: why a message was refused, with a machine-readable
//!   kind and a text naming the key, line or column;
//!   [`PayloadError::to_device_message`] is what the broker publishes on
//!   [`error_topic`].
//! - [`IngestCounters`]: accepted and rejected messages per device.
//!
//! What it promises:
//! - A message decodes whole or not at all: any fault rejects every reading
//!   in it.
//! - No input bytes make it panic, allocate without bound (size, readings
//!   and cached names are capped), or recurse (nesting is refused at the
//!   first level).
//! - Within one message a channel has one type. Conflicts with a table's
//!   existing schema are the store's to find on append
//!   (`Error::TypeConflict`).
//! - Timestamps are in the store's range and within the configured clock
//!   skew of `now`; a missing timestamp means `now`.
//!
//! Formats in detail:
//! - JSON: `ts` is an RFC 3339 string with any offset, or integer epoch
//!   milliseconds, or absent/null for the server's time. Every other key is
//!   a channel: a number is f64 (always, so that `230` and `230.0` agree),
//!   `true`/`false` bool, a string (up to `MAX_STRING_BYTES`) string, null
//!   means absent. Objects and arrays as values, duplicate keys and the keys
//!   `device` and `table` (they come from the topic) are refused.
//! - Line protocol: anything not starting with `{` or `[`; see the `line`
//!   module. It is the way to send i64 channels (`12i`).
//! - Bare value: if the topic pattern names a channel, a payload like
//!   `231.4` (or `true`/`false`) is one reading at `now`.
//!
//! Cost: the hot path allocates per reading the reading's table and device
//! strings and its value vector, plus string values; channel names are
//! interned (`Arc<str>`, usually found by one compare at the same key
//! position as last time), keys without escapes are never copied, and no
//! JSON tree is built. Measured by the ignored `decode_cost` test (this
//! crate at opt-level 3, dependencies unoptimised, dropping the readings
//! included): about 1 µs per 17-channel reading, JSON or line protocol,
//! i.e. some 60 ns per value.

mod batch;
mod counters;
mod error;
mod json;
mod line;
mod time;
mod topic;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wattson_storage::{Reading, Value};

use batch::{Batch, NameCache};
pub use counters::{DeviceCounters, IngestCounters};
pub use error::PayloadError;
pub use topic::{
    DEFAULT_PATTERN, TopicMap, TopicMatch, TopicPattern, device_may_publish, error_topic,
};

/// Limits a message must respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest payload in bytes; checked before any parsing.
    pub max_payload_bytes: usize,
    /// Most readings in one message (a JSON array or lines of line
    /// protocol).
    pub max_readings_per_message: usize,
    /// How far a timestamp may be ahead of the server's clock. Meters with
    /// a wrong clock would otherwise write into the future, where their
    /// rows shadow real ones.
    pub max_clock_skew: Duration,
    /// How far a timestamp may lie behind the server's clock. Late data is
    /// normal (a meter catching up after an outage); this only guards
    /// garbage such as seconds sent as milliseconds.
    pub max_age: Duration,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_payload_bytes: 256 * 1024,
            max_readings_per_message: 10_000,
            max_clock_skew: Duration::from_secs(86_400),
            max_age: Duration::from_secs(3653 * 86_400),
        }
    }
}

/// Decodes messages into readings.
///
/// Holds a small cache of interned channel names. `Clone` shares the
/// options but starts a fresh cache, so give each connection its own clone
/// and decoders never contend; sharing one (it is `Sync`) also works, at
/// the cost of one uncontended-in-the-common-case lock per message.
#[derive(Debug)]
pub struct Decoder {
    opts: Arc<DecodeOptions>,
    names: Mutex<NameCache>,
}

impl Clone for Decoder {
    fn clone(&self) -> Self {
        Decoder {
            opts: self.opts.clone(),
            names: Mutex::new(NameCache::default()),
        }
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DecodeOptions::default())
    }
}

impl Decoder {
    pub fn new(opts: DecodeOptions) -> Self {
        Decoder {
            opts: Arc::new(opts),
            names: Mutex::new(NameCache::default()),
        }
    }

    pub fn options(&self) -> &DecodeOptions {
        &self.opts
    }

    /// Decodes one message published on a topic that resolved to `m`.
    /// `now_ns` is the server's receive time (nanoseconds since the epoch):
    /// the time of readings without one, and the reference for the skew
    /// limits. Returns at least one reading, or why the whole message is
    /// refused.
    pub fn decode(
        &self,
        m: &TopicMatch,
        payload: &[u8],
        now_ns: i64,
    ) -> Result<Vec<Reading>, PayloadError> {
        if payload.len() > self.opts.max_payload_bytes {
            return Err(PayloadError::TooLarge {
                bytes: payload.len(),
                limit: self.opts.max_payload_bytes,
            });
        }
        let first = payload.iter().copied().find(|b| !b.is_ascii_whitespace());
        let Some(first) = first else {
            return Err(PayloadError::Empty {
                reason: "the payload is empty".into(),
            });
        };
        let text = std::str::from_utf8(payload).map_err(|e| not_utf8(first, payload, e))?;
        let mut names = self.names.lock();
        names.start_message();
        let mut batch = Batch::new(m, &self.opts, now_ns, &mut names);
        match (first, &m.channel) {
            (b'{' | b'[', _) => json::decode(&mut batch, text)?,
            (_, Some(channel)) => bare_value(&mut batch, channel, text.trim())?,
            _ => line::decode(&mut batch, text)?,
        }
        Ok(batch.readings)
    }
}

/// A bare value on a topic that names its channel: one reading at now.
fn bare_value(batch: &mut Batch<'_>, channel: &Arc<str>, text: &str) -> Result<(), PayloadError> {
    let table = batch.m.table.clone().ok_or(PayloadError::NoTable)?;
    let value = match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ if is_json_number(text) => Value::F64(json::parse_f64(channel, text)?),
        _ => {
            return Err(PayloadError::NotANumber {
                key: channel.to_string(),
                reason: format!(
                    "this topic takes a bare number, like 231.4; got `{}`",
                    error::clip(text)
                ),
            });
        }
    };
    batch.push(&table, None, vec![(channel.clone(), value)], &[])
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the whole text.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn not_utf8(first: u8, payload: &[u8], e: std::str::Utf8Error) -> PayloadError {
    let offset = e.valid_up_to();
    if matches!(first, b'{' | b'[') {
        return PayloadError::InvalidJson {
            offset,
            reason: "not UTF-8".into(),
        };
    }
    let before = payload.get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    PayloadError::LineProtocol {
        line,
        column: offset - line_start + 1,
        reason: "not UTF-8".into(),
    }
}

/// Handles a rejected message the way the issue asks: logs the reason with
/// device and topic (a warning when the kind of fault changes, debug while
/// a device repeats it, so one broken meter cannot flood the log), counts
/// it, and returns the topic and message to publish back to the device.
pub fn reject(
    counters: &IngestCounters,
    device: &str,
    topic: &str,
    err: &PayloadError,
) -> (String, String) {
    if counters.record_rejected(device, err) {
        tracing::warn!(device, topic, kind = err.kind(), "payload rejected: {err}");
    } else {
        tracing::debug!(device, topic, kind = err.kind(), "payload rejected: {err}");
    }
    (error_topic(device), err.to_device_message())
}
