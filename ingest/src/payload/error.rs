//! Why a message was rejected, in a form both people and devices can read.

use wattson_storage::ChannelType;

use super::time::format_rfc3339;

/// Longest piece of device-supplied text echoed back in an error. A device
/// that sends a 200 KiB key must not get a 200 KiB error message (and log
/// line) back: rejections must never amplify.
const ECHO_LIMIT: usize = 64;

/// A payload the decoder refused. The whole message is rejected: nothing of
/// it is stored.
///
/// Every variant has a stable snake_case [`kind`](Self::kind) for machines
/// and a `Display` text for people that names the key, line or column at
/// fault. Text copied from the payload is clipped to a few dozen bytes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// Not well-formed JSON (or not UTF-8).
    #[error("invalid JSON at byte {offset}: {reason}")]
    InvalidJson { offset: usize, reason: String },

    /// A value that should be a number is not one, or is out of range.
    #[error("`{key}` is not a usable number: {reason}")]
    NotANumber { key: String, reason: String },

    /// A channel holds an object or an array.
    #[error(
        "`{key}` holds an object or array; a channel value is a number, boolean, string or null"
    )]
    Nested { key: String },

    /// The message exceeds the configured size limit.
    #[error("message is {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },

    /// The message holds more readings than one message may.
    #[error("message holds more than {limit} readings")]
    TooManyReadings { limit: usize },

    /// A timestamp that cannot be read or is outside years 1900 to 2199.
    #[error("timestamp `{value}`: {reason}")]
    BadTimestamp { value: String, reason: String },

    /// A timestamp too far ahead of the server's clock, or older than the
    /// configured limit. `ts` and `now` are nanoseconds since the epoch.
    #[error("{}", skew_text(*ts, *now, *limit_secs))]
    ClockSkew { ts: i64, now: i64, limit_secs: u64 },

    /// A key that cannot be a channel name (or is reserved).
    #[error("`{name}` cannot be a channel: {reason}")]
    BadChannelName { name: String, reason: String },

    /// The same key twice in one reading.
    #[error("`{key}` appears twice in one reading")]
    DuplicateKey { key: String },

    /// The same channel with two types within one message.
    #[error("`{key}` is {first} in one reading of this message and {second} in another")]
    TypeConflict {
        key: String,
        first: ChannelType,
        second: ChannelType,
    },

    /// A string value longer than the store keeps.
    #[error("`{key}` is a {bytes}-byte string; the limit is {limit} bytes")]
    StringTooLong {
        key: String,
        bytes: usize,
        limit: usize,
    },

    /// A malformed line of InfluxDB line protocol. `line` and `column` are
    /// 1-based; the column counts bytes.
    #[error("line protocol, line {line} column {column}: {reason}")]
    LineProtocol {
        line: usize,
        column: usize,
        reason: String,
    },

    /// The topic names no table and the payload cannot name one (only line
    /// protocol's measurement can).
    #[error(
        "the topic names no table; send line protocol (its measurement is the table) or use a topic with a table"
    )]
    NoTable,

    /// Nothing to store: an empty payload, an empty array, or a reading
    /// without channels.
    #[error("{reason}")]
    Empty { reason: String },
}

fn skew_text(ts: i64, now: i64, limit_secs: u64) -> String {
    let dir = if ts > now { "ahead of" } else { "behind" };
    format!(
        "timestamp {} is {dir} server time {} by more than {limit_secs} s",
        format_rfc3339(ts),
        format_rfc3339(now)
    )
}

impl PayloadError {
    /// Stable machine-readable kind, e.g. `not_a_number`.
    pub fn kind(&self) -> &'static str {
        match self {
            PayloadError::InvalidJson { .. } => "invalid_json",
            PayloadError::NotANumber { .. } => "not_a_number",
            PayloadError::Nested { .. } => "nested",
            PayloadError::TooLarge { .. } => "too_large",
            PayloadError::TooManyReadings { .. } => "too_many_readings",
            PayloadError::BadTimestamp { .. } => "bad_timestamp",
            PayloadError::ClockSkew { .. } => "clock_skew",
            PayloadError::BadChannelName { .. } => "bad_channel_name",
            PayloadError::DuplicateKey { .. } => "duplicate_key",
            PayloadError::TypeConflict { .. } => "type_conflict",
            PayloadError::StringTooLong { .. } => "string_too_long",
            PayloadError::LineProtocol { .. } => "line_protocol",
            PayloadError::NoTable => "no_table",
            PayloadError::Empty { .. } => "empty",
        }
    }

    /// The key at fault, if the error concerns one.
    pub fn key(&self) -> Option<&str> {
        match self {
            PayloadError::NotANumber { key, .. }
            | PayloadError::Nested { key }
            | PayloadError::DuplicateKey { key }
            | PayloadError::TypeConflict { key, .. }
            | PayloadError::StringTooLong { key, .. } => Some(key),
            PayloadError::BadChannelName { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Short JSON for `meters/{device}/errors`, e.g.
    /// `{"error":"not_a_number","key":"pa_v","reason":"..."}`. Carries
    /// `line` and `column` for line protocol errors.
    pub fn to_device_message(&self) -> String {
        // Written by hand to keep `error` first for people reading a
        // device's console; serde_json escapes the strings.
        let json = |s: &str| serde_json::Value::from(s).to_string();
        let mut out = format!("{{\"error\":{}", json(self.kind()));
        if let Some(key) = self.key() {
            out.push_str(&format!(",\"key\":{}", json(key)));
        }
        if let PayloadError::LineProtocol { line, column, .. } = self {
            out.push_str(&format!(",\"line\":{line},\"column\":{column}"));
        }
        out.push_str(&format!(",\"reason\":{}}}", json(&self.to_string())));
        out
    }
}

/// Copies device-supplied text into an error, clipped to [`ECHO_LIMIT`]
/// bytes at a character boundary.
pub(super) fn clip(s: &str) -> String {
    if s.len() <= ECHO_LIMIT {
        return s.to_owned();
    }
    let mut end = ECHO_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
