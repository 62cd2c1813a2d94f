//! A reading: one timestamped sample of a meter's channels.
//!
//! Names are kept out of the reading: a [`Schema`] names the channels once,
//! and a reading holds only values in schema order. That keeps a reading at
//! about 120 bytes, so a board can buffer hundreds of them in its outbox.

use crate::{Error, Result};

/// Most channels one reading can hold: three phase voltages plus current
/// and power of ten circuits, with room to spare.
pub const MAX_CHANNELS: usize = 24;

/// One channel of a meter: its name as sent (`pa_v`, `wd_a`, …) and how many
/// decimals its values carry on the wire (the seed sends volts and watts with
/// one, amperes with two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel<'a> {
    pub name: &'a str,
    pub decimals: u8,
}

/// The channels of a meter, in the order of a reading's values.
pub type Schema<'a> = &'a [Channel<'a>];

const fn ch(name: &'static str, decimals: u8) -> Channel<'static> {
    Channel { name, decimals }
}

/// The seed system's meter: three phase voltages, then current and power of
/// the washer, fridge, two air conditioners, two heaters and a motor.
pub const SEED_SCHEMA: [Channel<'static>; 17] = [
    ch("pa_v", 1),
    ch("pb_v", 1),
    ch("pc_v", 1),
    ch("wd_a", 2),
    ch("wd_p", 1),
    ch("rf_a", 2),
    ch("rf_p", 1),
    ch("ac01_a", 2),
    ch("ac01_p", 1),
    ch("rh01_a", 2),
    ch("rh01_p", 1),
    ch("mo_a", 2),
    ch("mo_p", 1),
    ch("ac02_a", 2),
    ch("ac02_p", 1),
    ch("rh02_a", 2),
    ch("rh02_p", 1),
];

/// One reading of a meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Device time in milliseconds since the Unix epoch, or `None` while the
    /// clock is not synchronised: ingest then uses its receive time.
    pub ts_ms: Option<i64>,
    /// Counts readings since the meter started. It goes on the wire as
    /// `seq`, so gaps (dropped readings) and resends are visible in the data.
    pub seq: u32,
    /// The board's monotonic time of a reading taken before the clock was
    /// synchronised, so that [`Reading::stamp`] can still give it its UTC
    /// time. Without a `ts`, ingest would store a resent reading under a
    /// new receive time, that is, twice.
    local_ms: Option<u64>,
    len: u8,
    values: [f32; MAX_CHANNELS],
}

impl Reading {
    /// A reading of `values` in schema order. `NaN` marks a value that is
    /// absent (a sensor that failed); it is left out of the payload.
    pub fn new(ts_ms: Option<i64>, seq: u32, values: &[f32]) -> Result<Self> {
        let mut out = [f32::NAN; MAX_CHANNELS];
        let dst = out
            .get_mut(..values.len())
            .ok_or(Error::TooManyChannels { max: MAX_CHANNELS })?;
        dst.copy_from_slice(values);
        Ok(Reading {
            ts_ms,
            seq,
            local_ms: None,
            // MAX_CHANNELS < 256, checked by the slice above.
            len: values.len() as u8,
            values: out,
        })
    }

    /// A reading taken at the board's monotonic time `local_ms` before its
    /// clock was synchronised; [`Reading::stamp`] gives it its UTC time later.
    pub fn unstamped(local_ms: u64, seq: u32, values: &[f32]) -> Result<Self> {
        let mut r = Reading::new(None, seq, values)?;
        r.local_ms = Some(local_ms);
        Ok(r)
    }

    /// Whether the reading still waits for its UTC time.
    pub fn is_unstamped(&self) -> bool {
        self.ts_ms.is_none() && self.local_ms.is_some()
    }

    /// Sets the UTC time of an unstamped reading from its local time, if
    /// `utc` knows it (a `ClockSync::utc_ms`). Returns whether it did.
    pub fn stamp(&mut self, utc: impl Fn(u64) -> Option<i64>) -> bool {
        match (self.ts_ms, self.local_ms) {
            (None, Some(local)) => {
                self.ts_ms = utc(local);
                self.ts_ms.is_some()
            }
            _ => false,
        }
    }

    /// The values, in schema order.
    pub fn values(&self) -> &[f32] {
        self.values.get(..usize::from(self.len)).unwrap_or_default()
    }
}
