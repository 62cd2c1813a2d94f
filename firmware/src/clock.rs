//! UTC on a board without a real-time clock: an SNTP-style offset between
//! the board's monotonic milliseconds and UTC, with drift correction.
//!
//! Each exchange with a time server gives four stamps (RFC 4330): `t1` the
//! local send time, `t2` and `t3` the server's receive and send times (UTC),
//! `t4` the local receive time. The offset is `((t2 - t1) + (t3 - t4)) / 2`
//! and the round-trip delay `(t4 - t1) - (t3 - t2)`; the offset is accurate
//! to half the delay when the paths are symmetric.
//!
//! A crystal runs some tens of ppm off, about 2-4 s a day, so between
//! exchanges the offset is extrapolated with the drift rate seen across
//! exchanges (smoothed, and clamped to ±500 ppm so one bad sample cannot
//! run away). An exchange with a round trip over [`MAX_DELAY_MS`] is
//! ignored: its offset could be off by seconds.

/// Exchanges slower than this are discarded.
pub const MAX_DELAY_MS: i64 = 2_000;
/// The largest drift believed, in parts per million.
const MAX_DRIFT_PPM: f64 = 500.0;

/// The board's idea of UTC.
#[derive(Debug, Clone, Default)]
pub struct ClockSync {
    /// Local time and offset of the last accepted exchange.
    last: Option<(u64, i64)>,
    /// Drift of the local clock, as offset change per local millisecond.
    drift: f64,
    /// Accepted exchanges, to weigh the first drift estimates fully.
    samples: u32,
}

impl ClockSync {
    pub const fn new() -> Self {
        ClockSync {
            last: None,
            drift: 0.0,
            samples: 0,
        }
    }

    /// Feeds one exchange. Returns the measured offset in ms, or `None` if
    /// the exchange was discarded (too slow, or times going backwards).
    pub fn update(
        &mut self,
        t1_local: u64,
        t2_utc_ms: i64,
        t3_utc_ms: i64,
        t4_local: u64,
    ) -> Option<i64> {
        let (t1, t4) = (i64::try_from(t1_local).ok()?, i64::try_from(t4_local).ok()?);
        // Checked: the stamps come from the network.
        let delay = (t4 - t1).checked_sub(t3_utc_ms.checked_sub(t2_utc_ms)?)?;
        if t4 < t1 || !(0..=MAX_DELAY_MS).contains(&delay) {
            return None;
        }
        let offset = t2_utc_ms
            .checked_sub(t1)?
            .checked_add(t3_utc_ms.checked_sub(t4)?)?
            / 2;
        let mid = t1_local + (t4_local - t1_local) / 2;
        if let Some((at, prev)) = self.last
            && mid > at
        {
            let rate = (offset as f64 - prev as f64) / (mid - at) as f64;
            let limit = MAX_DRIFT_PPM / 1e6;
            let rate = rate.clamp(-limit, limit);
            // The first estimate is taken whole; later ones are averaged in,
            // so network jitter in one exchange moves the rate little.
            self.drift = if self.samples < 2 {
                rate
            } else {
                self.drift + (rate - self.drift) / 4.0
            };
        }
        self.last = Some((mid, offset));
        self.samples = self.samples.saturating_add(1);
        Some(offset)
    }

    /// Whether at least one exchange succeeded.
    pub fn is_synced(&self) -> bool {
        self.last.is_some()
    }

    /// UTC in ms at local time `local_ms`, or `None` before the first sync
    /// (or when it would not fit in an `i64`).
    pub fn utc_ms(&self, local_ms: u64) -> Option<i64> {
        let (at, offset) = self.last?;
        let local = i64::try_from(local_ms).ok()?;
        let since = local_ms as f64 - at as f64;
        local
            .checked_add(offset)?
            .checked_add(libm::round(self.drift * since) as i64)
    }

    /// The estimated drift in parts per million.
    pub fn drift_ppm(&self) -> f64 {
        self.drift * 1e6
    }
}

/// SNTP packets (RFC 4330): a 48-byte client request and the server's
/// transmit and receive stamps in its reply.
pub mod sntp {
    use crate::{Error, Result};

    /// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
    const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;
    pub const PACKET_LEN: usize = 48;

    /// A client request (version 4, mode 3) whose transmit stamp carries
    /// `local_ms`, which a correct server echoes as the originate stamp, so
    /// replies can be matched to requests.
    pub fn request(local_ms: u64) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = (4 << 3) | 3;
        p[40..48].copy_from_slice(&local_ms.to_be_bytes());
        p
    }

    fn stamp_ms(b: &[u8]) -> Result<i64> {
        let word = |r: core::ops::Range<usize>| -> Result<i64> {
            let bytes: [u8; 4] =
                b.get(r)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(Error::BadSntpPacket {
                        reason: "too short",
                    })?;
            Ok(i64::from(u32::from_be_bytes(bytes)))
        };
        let (secs, frac) = (word(0..4)?, word(4..8)?);
        if secs == 0 {
            return Err(Error::BadSntpPacket {
                reason: "zero timestamp",
            });
        }
        // Era 0 ends in 2036; stamps below 1970 belong to era 1.
        let secs = if secs < NTP_UNIX_OFFSET_S {
            secs + (1i64 << 32)
        } else {
            secs
        };
        Ok((secs - NTP_UNIX_OFFSET_S) * 1000 + ((frac * 1000) >> 32))
    }

    /// The server's receive and transmit times (UTC ms) from a reply to the
    /// request sent at `local_ms`.
    pub fn parse_reply(reply: &[u8], local_ms: u64) -> Result<(i64, i64)> {
        let head = *reply.first().ok_or(Error::BadSntpPacket {
            reason: "too short",
        })?;
        if reply.len() < PACKET_LEN {
            return Err(Error::BadSntpPacket {
                reason: "too short",
            });
        }
        if head & 0x07 != 4 {
            return Err(Error::BadSntpPacket {
                reason: "not a server reply",
            });
        }
        if head >> 6 == 3 || reply.get(1) == Some(&0) {
            return Err(Error::BadSntpPacket {
                reason: "server unsynchronised or kiss-o'-death",
            });
        }
        if reply.get(24..32) != Some(&local_ms.to_be_bytes()[..]) {
            return Err(Error::BadSntpPacket {
                reason: "reply to another request",
            });
        }
        let rx = stamp_ms(reply.get(32..40).unwrap_or_default())?;
        let tx = stamp_ms(reply.get(40..48).unwrap_or_default())?;
        Ok((rx, tx))
    }

    /// Writes `utc_ms` as an NTP timestamp (for tests and the simulator's
    /// fake time server).
    pub fn write_stamp(out: &mut [u8], utc_ms: i64) {
        let ntp_ms = utc_ms + NTP_UNIX_OFFSET_S * 1000;
        let secs = (ntp_ms.div_euclid(1000) as u64 & 0xffff_ffff) as u32;
        let frac = (((ntp_ms.rem_euclid(1000) as u64) << 32) / 1000) as u32 + 1;
        if let Some(d) = out.get_mut(0..4) {
            d.copy_from_slice(&secs.to_be_bytes());
        }
        if let Some(d) = out.get_mut(4..8) {
            d.copy_from_slice(&frac.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
