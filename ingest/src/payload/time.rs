//! RFC 3339 timestamps, parsed by hand: one fixed layout does not need a
//! date library, and the parser must never panic on device input.

use wattson_storage::model::{civil_from_days, days_from_civil};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into nanoseconds since
/// the epoch, UTC.
///
/// Accepts `T`, `t` or a space between date and time and `Z` or `z` (RFC
/// 3339 allows all of them). Digits beyond nanoseconds are dropped. Leap
/// seconds (`:60`) are refused: meters do not send them and the store has
/// no slot for them. An offset is required: a local time without one is
/// ambiguous.
pub(super) fn parse_rfc3339(s: &str) -> Result<i64, &'static str> {
    const SHAPE: &str =
        "expected RFC 3339 like 2022-07-19T15:24:21Z, or integer epoch milliseconds";
    let b = s.as_bytes();
    let mut p = Cursor { b, i: 0 };
    let year = p.digits(4).ok_or(SHAPE)?;
    p.byte(b'-').ok_or(SHAPE)?;
    let month = p.digits(2).ok_or(SHAPE)?;
    p.byte(b'-').ok_or(SHAPE)?;
    let day = p.digits(2).ok_or(SHAPE)?;
    match p.next() {
        Some(b'T' | b't' | b' ') => {}
        _ => return Err(SHAPE),
    }
    let hour = p.digits(2).ok_or(SHAPE)?;
    p.byte(b':').ok_or(SHAPE)?;
    let minute = p.digits(2).ok_or(SHAPE)?;
    p.byte(b':').ok_or(SHAPE)?;
    let second = p.digits(2).ok_or(SHAPE)?;
    let mut nanos: i64 = 0;
    if p.peek() == Some(b'.') {
        p.i += 1;
        let mut n = 0;
        while let Some(d @ b'0'..=b'9') = p.peek() {
            if n < 9 {
                nanos = nanos * 10 + i64::from(d - b'0');
            }
            n += 1;
            p.i += 1;
        }
        if n == 0 {
            return Err("a `.` must be followed by fraction digits");
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match p.next() {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let oh = p.digits(2).ok_or(SHAPE)?;
            p.byte(b':').ok_or(SHAPE)?;
            let om = p.digits(2).ok_or(SHAPE)?;
            if oh > 23 || om > 59 {
                return Err("offset out of range");
            }
            let o = oh * 3600 + om * 60;
            if sign == b'-' { -o } else { o }
        }
        None => return Err("missing offset: add Z or ±hh:mm"),
        Some(_) => return Err(SHAPE),
    };
    if p.i != b.len() {
        return Err("unexpected characters after the offset");
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("no such time of day (leap seconds are not accepted)");
    }
    // Years have 4 digits, so every intermediate fits in i64; only the final
    // nanosecond scaling can overflow (beyond year 2262).
    let days = days_from_civil(year as i32, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(NANOS_PER_SEC)
        .and_then(|n| n.checked_add(nanos))
        .ok_or("outside the supported range (years 1900 to 2199)")
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn byte(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn digits(&mut self, n: usize) -> Option<i64> {
        let mut v = 0;
        for _ in 0..n {
            match self.next()? {
                d @ b'0'..=b'9' => v = v * 10 + i64::from(d - b'0'),
                _ => return None,
            }
        }
        Some(v)
    }
}

/// Renders nanoseconds since the epoch as RFC 3339 UTC with nine fraction
/// digits, e.g. `2022-07-19T15:24:21.000000000Z`. Used in error texts and
/// by tests that render payloads.
pub(crate) fn format_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let frac = ns.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}
