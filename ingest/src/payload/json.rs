//! Flat JSON readings: `{"ts": ..., "pa_v": 214.9, ...}` or an array of
//! them.
//!
//! A small hand-written parser rather than serde_json: readings are flat, so
//! there is no tree to build; keys stay borrowed from the payload until
//! interned; numbers go through `str::parse::<f64>`, which rounds correctly
//! (serde_json's default float parsing may be off by one ulp); and errors
//! can name the key and byte offset. It accepts exactly RFC 8259 JSON.

use std::borrow::Cow;
use std::sync::Arc;

use wattson_storage::Value;
use wattson_storage::model::MAX_STRING_BYTES;

use super::batch::Batch;
use super::error::{PayloadError, clip};
use super::time::parse_rfc3339;

/// Decodes a JSON object or array of objects into `batch`. Nesting is
/// refused at the first `{` or `[` inside a reading, so depth is bounded
/// and there is no recursion to overflow.
pub(super) fn decode(batch: &mut Batch<'_>, text: &str) -> Result<(), PayloadError> {
    let table = batch.m.table.clone().ok_or(PayloadError::NoTable)?;
    let mut p = Parser {
        s: text,
        b: text.as_bytes(),
        i: 0,
    };
    p.ws();
    match p.peek() {
        Some(b'{') => p.object(batch, &table)?,
        Some(b'[') => {
            p.i += 1;
            p.ws();
            if p.peek() == Some(b']') {
                return Err(PayloadError::Empty {
                    reason: "the array holds no readings".into(),
                });
            }
            loop {
                p.ws();
                if p.peek() != Some(b'{') {
                    return Err(p.err("each array element must be a reading object"));
                }
                batch.check_room()?;
                p.object(batch, &table)?;
                p.ws();
                match p.peek() {
                    Some(b',') => p.i += 1,
                    Some(b']') => {
                        p.i += 1;
                        break;
                    }
                    _ => return Err(p.err("expected `,` or `]` after a reading")),
                }
            }
        }
        _ => return Err(p.err("expected `{` or `[`")),
    }
    p.ws();
    if p.i != p.b.len() {
        return Err(p.err("unexpected characters after the JSON value"));
    }
    Ok(())
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

/// A scanned JSON number: its text, and whether it has neither fraction
/// nor exponent.
struct Number<'a> {
    text: &'a str,
    integer: bool,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn err(&self, reason: &str) -> PayloadError {
        PayloadError::InvalidJson {
            offset: self.i,
            reason: reason.to_owned(),
        }
    }

    /// An error at the byte just consumed.
    fn back_err(&mut self, reason: &str) -> PayloadError {
        self.i = self.i.saturating_sub(1);
        self.err(reason)
    }

    fn expect(&mut self, c: u8, reason: &str) -> Result<(), PayloadError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(reason))
        }
    }

    /// One reading object; the cursor is on its `{`.
    fn object(&mut self, batch: &mut Batch<'_>, table: &str) -> Result<(), PayloadError> {
        self.i += 1;
        let mut values = batch.values_vec();
        let mut nulls: Vec<Arc<str>> = Vec::new();
        let mut ts: Option<i64> = None;
        let mut seen_ts = false;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                self.expect(b'"', "expected a key in double quotes")?;
                let key = self.string()?;
                self.ws();
                self.expect(b':', "expected `:` after the key")?;
                self.ws();
                if key == "ts" {
                    if seen_ts {
                        return Err(PayloadError::DuplicateKey { key: "ts".into() });
                    }
                    seen_ts = true;
                    ts = self.timestamp()?;
                } else {
                    let name = batch.names.intern(values.len() + nulls.len(), &key)?;
                    match self.value(&name)? {
                        Some(v) => values.push((name, v)),
                        None => nulls.push(name),
                    }
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.err("expected `,` or `}` after a value")),
                }
            }
        }
        batch.push(table, ts, values, &nulls)
    }

    /// A channel value; `None` for null (the channel is absent).
    fn value(&mut self, key: &str) -> Result<Option<Value>, PayloadError> {
        Ok(Some(match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let s = self.string()?;
                if s.len() > MAX_STRING_BYTES {
                    return Err(PayloadError::StringTooLong {
                        key: clip(key),
                        bytes: s.len(),
                        limit: MAX_STRING_BYTES,
                    });
                }
                Value::Str(s.into_owned())
            }
            Some(b't') => {
                self.literal("true")?;
                Value::Bool(true)
            }
            Some(b'f') => {
                self.literal("false")?;
                Value::Bool(false)
            }
            Some(b'n') => {
                self.literal("null")?;
                return Ok(None);
            }
            Some(b'{' | b'[') => return Err(PayloadError::Nested { key: clip(key) }),
            Some(b'-' | b'0'..=b'9') => {
                let n = self.number()?;
                Value::F64(parse_f64(key, n.text)?)
            }
            _ => return Err(self.err("expected a value")),
        }))
    }

    /// `ts`: an RFC 3339 string, integer epoch milliseconds, or null (use
    /// the server's time).
    fn timestamp(&mut self) -> Result<Option<i64>, PayloadError> {
        let bad = |value: &str, reason: &str| PayloadError::BadTimestamp {
            value: clip(value),
            reason: reason.to_owned(),
        };
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let s = self.string()?;
                parse_rfc3339(&s).map(Some).map_err(|r| bad(&s, r))
            }
            Some(b'-' | b'0'..=b'9') => {
                let n = self.number()?;
                if !n.integer {
                    return Err(bad(n.text, "epoch milliseconds must be an integer"));
                }
                n.text
                    .parse::<i64>()
                    .ok()
                    .and_then(|ms| ms.checked_mul(1_000_000))
                    .map(Some)
                    .ok_or_else(|| bad(n.text, "out of range"))
            }
            Some(b'n') => {
                self.literal("null")?;
                Ok(None)
            }
            _ => Err(bad(
                self.s
                    .get(self.i..)
                    .unwrap_or("")
                    .split([',', '}'])
                    .next()
                    .unwrap_or(""),
                "expected an RFC 3339 string or integer epoch milliseconds",
            )),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), PayloadError> {
        if self
            .b
            .get(self.i..)
            .is_some_and(|r| r.starts_with(word.as_bytes()))
        {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    /// Scans a number per RFC 8259:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<Number<'a>, PayloadError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("expected a digit")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("expected a digit after `.`"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("expected a digit in the exponent"));
            }
            self.digits();
        }
        let text = self.s.get(start..self.i).unwrap_or("");
        Ok(Number { text, integer })
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    /// A string body; the cursor is just past the opening quote. Borrowed
    /// unless it holds escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, PayloadError> {
        let start = self.i;
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    let s = self.s.get(start..self.i).unwrap_or("");
                    self.i += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(self.err("control character in a string")),
                Some(_) => self.i += 1,
            }
        }
        // Slow path: copy what we have and decode escapes.
        let mut out = String::from(self.s.get(start..self.i).unwrap_or(""));
        loop {
            let run = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(self.s.get(run..self.i).unwrap_or(""));
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => self.i += 1,
                Some(_) => return Err(self.err("control character in a string")),
            }
            let c = match self.bump() {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => self.unicode_escape()?,
                Some(_) => return Err(self.back_err("invalid escape")),
                None => return Err(self.err("unterminated string")),
            };
            out.push(c);
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair as two escapes.
    fn unicode_escape(&mut self) -> Result<char, PayloadError> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if !self.b.get(self.i..).is_some_and(|r| r.starts_with(b"\\u")) {
                return Err(self.err("lone surrogate in \\u escape"));
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.err("invalid surrogate pair in \\u escape"));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| self.err("lone surrogate in \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, PayloadError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("expected four hex digits after \\u")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }
}

/// Powers of ten that are exact in f64 (all up to 10^22 are).
const EXACT_POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Meter readings are short decimals (`214.9`, `-0.031`): at most 15
/// digits and no exponent. Then the digits form an integer below 2^53 and
/// the divisor a power of ten, both exact in f64, so one IEEE division
/// gives the correctly rounded value, bit for bit what `str::parse` gives
/// (Clinger's fast path), without scanning the text a second time. Anything
/// else returns `None` for the general parser.
fn short_decimal(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let (negative, body) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if body.is_empty() || body.len() > 16 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    let mut fraction: Option<usize> = None;
    for &c in body {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
                if let Some(f) = fraction.as_mut() {
                    *f += 1;
                }
            }
            b'.' if fraction.is_none() => fraction = Some(0),
            _ => return None,
        }
    }
    if digits == 0 || digits > 15 {
        return None;
    }
    let value = mantissa as f64 / *EXACT_POW10.get(fraction.unwrap_or(0))?;
    Some(if negative { -value } else { value })
}

/// JSON numbers become f64. Integers too: a channel's type must not depend
/// on whether a meter happened to print `230` or `230.0`. Integer channels
/// (i64) are sent with line protocol's `12i`.
pub(super) fn parse_f64(key: &str, text: &str) -> Result<f64, PayloadError> {
    if let Some(v) = short_decimal(text) {
        return Ok(v);
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(PayloadError::NotANumber {
            key: clip(key),
            reason: format!("`{}` is out of the f64 range", clip(text)),
        }),
    }
}
