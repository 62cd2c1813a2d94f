//! The data model shared by every crate: readings, channel types, months.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Longest string value a channel may hold, in bytes. Channels carry status
/// codes and labels, not documents.
pub const MAX_STRING_BYTES: usize = 1024;
/// Longest table, device or channel name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Most channels one table may have: every reading's row carries a slot for
/// each, and segment files index columns with 16 bits.
pub const MAX_CHANNELS: usize = 4096;
/// Readings must fall in 1900-01-01T00:00:00Z ..= 2199-12-31T23:59:59.999999999Z:
/// every month boundary in that range fits in i64 nanoseconds, and no meter
/// reading is outside it.
pub const MIN_TIME_NS: i64 = -2_208_988_800_000_000_000;
pub const MAX_TIME_NS: i64 = 7_258_118_400_000_000_000 - 1;
/// Column names every table has before its channels.
pub const TIME_COLUMN: &str = "time";
pub const DEVICE_COLUMN: &str = "device";

/// The type a channel keeps from its first reading on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelType {
    F64,
    I64,
    Bool,
    Str,
}

impl ChannelType {
    /// Stable one-byte tag used in the WAL and segment files.
    pub fn tag(self) -> u8 {
        match self {
            ChannelType::F64 => 1,
            ChannelType::I64 => 2,
            ChannelType::Bool => 3,
            ChannelType::Str => 4,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => ChannelType::F64,
            2 => ChannelType::I64,
            3 => ChannelType::Bool,
            4 => ChannelType::Str,
            _ => return None,
        })
    }

    /// The Arrow type this channel is read as.
    pub fn arrow_type(self) -> arrow_schema::DataType {
        match self {
            ChannelType::F64 => arrow_schema::DataType::Float64,
            ChannelType::I64 => arrow_schema::DataType::Int64,
            ChannelType::Bool => arrow_schema::DataType::Boolean,
            ChannelType::Str => arrow_schema::DataType::Utf8,
        }
    }
}

impl fmt::Display for ChannelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelType::F64 => "f64",
            ChannelType::I64 => "i64",
            ChannelType::Bool => "bool",
            ChannelType::Str => "string",
        })
    }
}

/// One channel value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(String),
}

impl Value {
    pub fn channel_type(&self) -> ChannelType {
        match self {
            Value::F64(_) => ChannelType::F64,
            Value::I64(_) => ChannelType::I64,
            Value::Bool(_) => ChannelType::Bool,
            Value::Str(_) => ChannelType::Str,
        }
    }
}

/// One reading of one device: a timestamp and named channel values.
///
/// `(table, device, time)` identifies it; writing the same key again replaces
/// the earlier values (last write wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Shared like the channel names: the readings of one message or one
    /// producer point at one string, so a batch neither allocates per
    /// reading nor compares names byte by byte where the pointer matches.
    pub table: Arc<str>,
    pub device: Arc<str>,
    /// Nanoseconds since the Unix epoch, UTC.
    pub time: i64,
    /// Channel name and value pairs. A channel may appear at most once.
    /// Names are shared (`Arc<str>`): a producer builds them once and every
    /// reading clones a pointer, not a string.
    pub values: Vec<(Arc<str>, Value)>,
}

/// Whether two shared names are equal, by pointer before bytes: readings of
/// one producer share their `Arc`s, so the byte comparison is the rare case.
pub(crate) fn same_name(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// `range` widened to cover `[lo, hi]`: the earliest and latest time of a
/// file or buffer, kept as blocks or rows are added.
pub(crate) fn widen(range: Option<(i64, i64)>, lo: i64, hi: i64) -> (i64, i64) {
    range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi)))
}

/// A calendar month in UTC, the unit of partitioning and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

impl Month {
    /// The month that contains `time_ns`.
    pub fn of(time_ns: i64) -> Month {
        let days = time_ns.div_euclid(NANOS_PER_DAY);
        let (year, month, _) = civil_from_days(days);
        Month { year, month }
    }

    /// First nanosecond of the month.
    pub fn start_ns(self) -> i64 {
        days_from_civil(self.year, self.month, 1).saturating_mul(NANOS_PER_DAY)
    }

    /// First nanosecond of the next month (exclusive end).
    pub fn end_ns(self) -> i64 {
        self.next().start_ns()
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Parses the `yyyy-mm` form used in directory names.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let year = y.parse().ok()?;
        let month = m.parse().ok()?;
        (1..=12).contains(&month).then_some(Month { year, month })
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y.clamp(i32::MIN as i64, i32::MAX as i64) as i32, m, d)
}

/// (year, month, day) to days since 1970-01-01. Howard Hinnant's `days_from_civil`.
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks that a reading's time is in the supported range.
pub fn validate_time(table: &str, time_ns: i64) -> Result<()> {
    if (MIN_TIME_NS..=MAX_TIME_NS).contains(&time_ns) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "table `{table}`: time {time_ns} ns is outside the supported range (years 1900 to 2199)"
        )))
    }
}

/// Table names become SQL identifiers and directory names:
/// a lowercase letter, then lowercase letters, digits and `_`.
pub fn validate_table_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "table name `{name}` must be 1 to {MAX_NAME_BYTES} characters: a lowercase letter, then lowercase letters, digits or `_`"
        )))
    }
}

/// Device ids become directory names and parts of SQL table names:
/// ASCII letters, digits, `_` and `-`, starting with a letter or digit.
pub fn validate_device_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "device id `{name}` must be 1 to {MAX_NAME_BYTES} characters: ASCII letters, digits, `_` or `-`, starting with a letter or digit"
        )))
    }
}

/// Channel names become SQL column names.
pub fn validate_channel_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && (name.as_bytes()[0].is_ascii_alphabetic() || name.as_bytes()[0] == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(Error::InvalidInput(format!(
            "channel name `{name}` must be 1 to {MAX_NAME_BYTES} characters: ASCII letters, digits or `_`, not starting with a digit"
        )));
    }
    if matches!(name, TIME_COLUMN | DEVICE_COLUMN | "dt" | "ts") {
        return Err(Error::InvalidInput(format!(
            "channel name `{name}` is reserved (time, device, dt and ts are not channels)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_boundaries_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 19_192, 19_203, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let m = Month::of(1_658_244_261_000_000_000); // 2022-07-19T15:24:21Z
        assert_eq!(
            m,
            Month {
                year: 2022,
                month: 7
            }
        );
        assert_eq!(m.to_string(), "2022-07");
        assert_eq!(Month::parse("2022-07"), Some(m));
        assert_eq!(Month::of(m.start_ns()), m);
        assert_eq!(Month::of(m.end_ns() - 1), m);
        assert_eq!(Month::of(m.end_ns()), m.next());
        assert_eq!(
            Month::of(-1),
            Month {
                year: 1969,
                month: 12
            }
        );
        assert_eq!(Month::of(MIN_TIME_NS).start_ns(), MIN_TIME_NS);
        assert_eq!(Month::of(MIN_TIME_NS).to_string(), "1900-01");
        assert_eq!(Month::of(MAX_TIME_NS).end_ns(), MAX_TIME_NS + 1);
        assert_eq!(Month::of(MAX_TIME_NS).to_string(), "2199-12");
        assert!(validate_time("t", MAX_TIME_NS + 1).is_err());
        assert!(validate_time("t", i64::MIN).is_err());
        assert!(validate_time("t", 0).is_ok());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_table_name("power_consumption").is_ok());
        assert!(validate_table_name("Power").is_err());
        assert!(validate_table_name("../x").is_err());
        assert!(validate_device_name("viconsl").is_ok());
        assert!(validate_device_name("meter-01").is_ok());
        assert!(validate_device_name("-x").is_err());
        assert!(validate_device_name("a/b").is_err());
        assert!(validate_channel_name("pa_v").is_ok());
        assert!(validate_channel_name("time").is_err());
        assert!(validate_channel_name("1x").is_err());
    }
}
