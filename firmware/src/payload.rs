//! JSON payloads as Wattson's ingest decodes them, written into a fixed
//! buffer.
//!
//! One reading is an object: `{"ts":1658244261000,"seq":7,"pa_v":214.9,…}`;
//! a batch is an array of such objects. `ts` is integer epoch milliseconds
//! (ingest's cheapest form) and is left out while the clock is not
//! synchronised, so ingest stamps the reading with its receive time. `seq`
//! travels as an ordinary channel. Absent values (`NaN`) are left out, as are
//! infinities, which JSON cannot carry.

use core::fmt::Write;

use crate::reading::{Reading, Schema};
use crate::{Error, Result};

/// A `core::fmt::Write` over a byte slice that fails instead of growing.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes one reading as a JSON object at the start of `buf` and returns its
/// length. Fails with [`Error::BufferFull`] if it does not fit, and with
/// [`Error::TooManyChannels`] if the reading has more values than `schema`.
pub fn encode_reading(schema: Schema<'_>, r: &Reading, buf: &mut [u8]) -> Result<usize> {
    let mut w = SliceWriter { buf, len: 0 };
    write_reading(&mut w, schema, r)?;
    Ok(w.len)
}

/// Writes as many readings as fit (at most `max`) as one JSON array, oldest
/// first, and returns `(bytes, readings)`. At least one reading must fit.
pub fn encode_batch<'r>(
    schema: Schema<'_>,
    readings: impl IntoIterator<Item = &'r Reading>,
    max: usize,
    buf: &mut [u8],
) -> Result<(usize, usize)> {
    let mut w = SliceWriter { buf, len: 0 };
    w.write_str("[").map_err(|_| Error::BufferFull)?;
    let mut count = 0;
    for r in readings.into_iter().take(max) {
        let mark = w.len;
        let fits = (count == 0 || w.write_str(",").is_ok())
            && write_reading(&mut w, schema, r).is_ok()
            // Room for the closing bracket must remain.
            && w.len < w.buf.len();
        if !fits {
            w.len = mark;
            break;
        }
        count += 1;
    }
    if count == 0 {
        return Err(Error::BufferFull);
    }
    w.write_str("]").map_err(|_| Error::BufferFull)?;
    Ok((w.len, count))
}

fn write_reading(w: &mut SliceWriter<'_>, schema: Schema<'_>, r: &Reading) -> Result<()> {
    if r.values().len() > schema.len() {
        return Err(Error::TooManyChannels { max: schema.len() });
    }
    let full = |_| Error::BufferFull;
    w.write_char('{').map_err(full)?;
    if let Some(ts) = r.ts_ms {
        write!(w, "\"ts\":{ts},").map_err(full)?;
    }
    write!(w, "\"seq\":{}", r.seq).map_err(full)?;
    for (ch, v) in schema.iter().zip(r.values()) {
        if !v.is_finite() {
            continue;
        }
        // Names come from the meter's own configuration, never from input,
        // and are plain identifiers: no escaping needed (checked in tests of
        // the schemas we ship).
        let decimals = usize::from(ch.decimals.min(6));
        // `-0.0` prints as `-0`, which is valid JSON but looks odd in data.
        let v = if *v == 0.0 { 0.0 } else { *v };
        write!(w, ",\"{}\":{:.*}", ch.name, decimals, v).map_err(full)?;
    }
    w.write_char('}').map_err(full)?;
    Ok(())
}

#[cfg(test)]
mod tests;
