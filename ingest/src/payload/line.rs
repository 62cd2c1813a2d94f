//! InfluxDB line protocol:
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//!
//! Wattson's model has no tags, so the mapping is deliberately narrow:
//! - The measurement is the table. If the topic names a table, the
//!   measurement must equal it; otherwise the first line's measurement is
//!   the table and every line of the message must name the same one (a
//!   message writes one table, whole or not at all).
//! - A `device` tag must equal the topic's device. Any other tag is refused:
//!   dropping it silently could merge two series (`phase=a` and `phase=b`)
//!   into one key, where the last write would win.
//! - Field values: `1.5` (f64), `12i` (i64), `12u` (i64 if it fits),
//!   `t`/`true`/`f`/`false` in the usual spellings (bool), `"text"` (string,
//!   `\"` and `\\` escaped).
//! - The timestamp is integer nanoseconds (the protocol's default
//!   precision); without one the server's time is used.
//! - Escapes: `\,` and `\ ` in measurements; `\,`, `\=` and `\ ` in tag
//!   and field keys and tag values. Any other backslash is literal.
//! - Blank lines and lines starting with `#` are skipped; `\r\n` is fine.

use std::borrow::Cow;

use wattson_storage::Value;
use wattson_storage::model::{MAX_NAME_BYTES, MAX_STRING_BYTES, validate_table_name};

use super::batch::Batch;
use super::error::{PayloadError, clip};

pub(super) fn decode(batch: &mut Batch<'_>, text: &str) -> Result<(), PayloadError> {
    let mut table: Option<String> = batch.m.table.clone();
    let topic_table = table.is_some();
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        let body = line.get(indent..).unwrap_or("");
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        batch.check_room()?;
        let mut p = Line {
            s: line,
            b: line.as_bytes(),
            i: indent,
            line: n + 1,
        };
        p.parse(batch, &mut table, topic_table)?;
    }
    if batch.readings.is_empty() {
        return Err(PayloadError::Empty {
            reason: "the payload holds no lines of line protocol".into(),
        });
    }
    Ok(())
}

/// Where a token ends.
#[derive(Clone, Copy)]
enum Stop {
    /// Measurement: unescaped `,` or space.
    Measurement,
    /// Tag or field key: unescaped `=`, `,` or space (the latter two are
    /// errors, reported by the caller).
    Key,
    /// Tag value: unescaped `,` or space.
    TagValue,
}

struct Line<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    line: usize,
}

impl<'a> Line<'a> {
    fn err(&self, reason: impl Into<String>) -> PayloadError {
        PayloadError::LineProtocol {
            line: self.line,
            column: self.i + 1,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn parse(
        &mut self,
        batch: &mut Batch<'_>,
        table: &mut Option<String>,
        topic_table: bool,
    ) -> Result<(), PayloadError> {
        let start = self.i;
        let measurement = self.token(Stop::Measurement);
        if measurement.is_empty() {
            self.i = start;
            return Err(self.err("expected a measurement"));
        }
        match table {
            Some(t) if *t == *measurement => {}
            Some(t) if topic_table => {
                self.i = start;
                return Err(self.err(format!(
                    "measurement `{}` does not match the topic's table `{t}`",
                    clip(&measurement)
                )));
            }
            Some(t) => {
                self.i = start;
                return Err(self.err(format!(
                    "measurement `{}` differs from `{t}` earlier in this message; one message writes one table",
                    clip(&measurement)
                )));
            }
            None => {
                if measurement.len() > MAX_NAME_BYTES {
                    self.i = start;
                    return Err(
                        self.err(format!("measurement is longer than {MAX_NAME_BYTES} bytes"))
                    );
                }
                if let Err(e) = validate_table_name(&measurement) {
                    self.i = start;
                    return Err(self.err(e.to_string()));
                }
                *table = Some(measurement.into_owned());
            }
        }
        while self.peek() == Some(b',') {
            self.i += 1;
            self.tag(batch)?;
        }
        self.spaces(true)?;
        let mut values = batch.values_vec();
        loop {
            let key_at = self.i;
            let key = self.token(Stop::Key);
            if self.peek() != Some(b'=') || key.is_empty() {
                return Err(self.err("expected field=value"));
            }
            self.i += 1;
            let name = batch.names.intern(values.len(), &key).map_err(|e| {
                self.i = key_at;
                self.err(e.to_string())
            })?;
            let value = self.field_value(&key)?;
            values.push((name, value));
            match self.peek() {
                Some(b',') => self.i += 1,
                _ => break,
            }
        }
        let time = self.timestamp()?;
        let table = table.as_deref().unwrap_or("");
        batch.push(table, time, values, &[])
    }

    /// `key=value` after a `,` in the tag set.
    fn tag(&mut self, batch: &Batch<'_>) -> Result<(), PayloadError> {
        let at = self.i;
        let key = self.token(Stop::Key);
        if self.peek() != Some(b'=') || key.is_empty() {
            return Err(self.err("expected tag=value"));
        }
        self.i += 1;
        let value = self.token(Stop::TagValue);
        if value.is_empty() {
            return Err(self.err("empty tag value"));
        }
        if key != "device" {
            self.i = at;
            return Err(self.err(format!(
                "tag `{}` is not supported: Wattson keys readings by table, device and time only; send it as a field",
                clip(&key)
            )));
        }
        if *value != *batch.m.device {
            self.i = at;
            return Err(self.err(format!(
                "tag device=`{}` does not match the topic's device `{}`",
                clip(&value),
                batch.m.device
            )));
        }
        Ok(())
    }

    /// Reads up to an unescaped stop byte, removing escapes.
    fn token(&mut self, stop: Stop) -> Cow<'a, str> {
        let start = self.i;
        let mut owned: Option<String> = None;
        let mut run = start;
        while let Some(c) = self.peek() {
            let is_stop = match stop {
                Stop::Measurement | Stop::TagValue => c == b',' || c == b' ',
                Stop::Key => c == b'=' || c == b',' || c == b' ',
            };
            if is_stop {
                break;
            }
            if c == b'\\' {
                let next = self.b.get(self.i + 1).copied();
                let escapable = match stop {
                    Stop::Measurement => matches!(next, Some(b',' | b' ')),
                    Stop::Key | Stop::TagValue => matches!(next, Some(b',' | b'=' | b' ')),
                };
                if escapable {
                    let out = owned.get_or_insert_with(String::new);
                    out.push_str(self.s.get(run..self.i).unwrap_or(""));
                    self.i += 1;
                    run = self.i;
                }
            }
            self.i += 1;
        }
        match owned {
            None => Cow::Borrowed(self.s.get(start..self.i).unwrap_or("")),
            Some(mut out) => {
                out.push_str(self.s.get(run..self.i).unwrap_or(""));
                Cow::Owned(out)
            }
        }
    }

    /// Skips spaces; with `required`, at least one must be there.
    fn spaces(&mut self, required: bool) -> Result<(), PayloadError> {
        let start = self.i;
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
        if required && (self.i == start || self.peek().is_none()) {
            return Err(self.err("expected a space, then fields"));
        }
        Ok(())
    }

    fn field_value(&mut self, key: &str) -> Result<Value, PayloadError> {
        if self.peek() == Some(b'"') {
            return self.string_value(key);
        }
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b',' || c == b' ' {
                break;
            }
            self.i += 1;
        }
        let text = self.s.get(start..self.i).unwrap_or("");
        let bad = |this: &mut Self, reason: &str| -> Result<Value, PayloadError> {
            this.i = start;
            Err(this.err(format!("field `{}`: {reason}", clip(key))))
        };
        let v = match text {
            "" => return bad(self, "missing value"),
            "t" | "T" | "true" | "True" | "TRUE" => Value::Bool(true),
            "f" | "F" | "false" | "False" | "FALSE" => Value::Bool(false),
            _ if text.ends_with('i') => match parse_int(&text[..text.len() - 1]) {
                Some(v) => Value::I64(v),
                None => return bad(self, "invalid or out-of-range integer"),
            },
            _ if text.ends_with('u') => {
                let digits = &text[..text.len() - 1];
                match digits.bytes().all(|b| b.is_ascii_digit()) {
                    true => match digits
                        .parse::<u64>()
                        .ok()
                        .and_then(|u| i64::try_from(u).ok())
                    {
                        Some(v) => Value::I64(v),
                        None => return bad(self, "unsigned integer does not fit in i64"),
                    },
                    false => return bad(self, "invalid unsigned integer"),
                }
            }
            _ => {
                let ok_chars = text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
                match text.parse::<f64>() {
                    Ok(v) if ok_chars && v.is_finite() => Value::F64(v),
                    _ => {
                        return bad(
                            self,
                            "not a number (floats like 1.5, integers like 12i, booleans t/f, strings in quotes)",
                        );
                    }
                }
            }
        };
        Ok(v)
    }

    /// A quoted string field; the cursor is on the opening quote.
    fn string_value(&mut self, key: &str) -> Result<Value, PayloadError> {
        let open = self.i;
        self.i += 1;
        let mut out = String::new();
        let mut run = self.i;
        loop {
            match self.peek() {
                None => {
                    self.i = open;
                    return Err(self.err(format!("field `{}`: unterminated string", clip(key))));
                }
                Some(b'"') => break,
                Some(b'\\') if matches!(self.b.get(self.i + 1), Some(b'"' | b'\\')) => {
                    out.push_str(self.s.get(run..self.i).unwrap_or(""));
                    self.i += 1;
                    run = self.i;
                    self.i += 1;
                }
                Some(_) => self.i += 1,
            }
        }
        out.push_str(self.s.get(run..self.i).unwrap_or(""));
        self.i += 1;
        if out.len() > MAX_STRING_BYTES {
            return Err(PayloadError::StringTooLong {
                key: clip(key),
                bytes: out.len(),
                limit: MAX_STRING_BYTES,
            });
        }
        Ok(Value::Str(out))
    }

    /// The optional timestamp in nanoseconds, then the end of the line.
    fn timestamp(&mut self) -> Result<Option<i64>, PayloadError> {
        match self.peek() {
            None => return Ok(None),
            Some(b' ') => self.spaces(false)?,
            Some(_) => {
                return Err(self.err("expected `,`, a space or the end of the line after a field"));
            }
        }
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b' ' {
                break;
            }
            self.i += 1;
        }
        let text = self.s.get(start..self.i).unwrap_or("");
        let ts = if text.is_empty() {
            None
        } else {
            match parse_int(text) {
                Some(v) => Some(v),
                None => {
                    self.i = start;
                    return Err(self.err("the timestamp must be integer nanoseconds"));
                }
            }
        };
        self.spaces(false)?;
        if self.peek().is_some() {
            return Err(self.err("unexpected text after the timestamp"));
        }
        Ok(ts)
    }
}

/// `-?[0-9]+` as i64; `None` if malformed or out of range.
fn parse_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
