//! MQTT 3.1.1 framing (§2.2): where one packet ends in a byte stream.
//!
//! A board reads the broker's bytes in whatever pieces TCP delivers; this
//! says when a whole packet (fixed header, remaining length, body) has
//! arrived, so a packet codec only ever sees whole packets and a read cut
//! short by a timeout loses nothing.

use crate::{Error, Result};

/// The largest remaining length MQTT allows (four length bytes).
pub const MAX_REMAINING: usize = 268_435_455;

/// The length of the first packet in `buf`, header included: `Ok(None)`
/// while more bytes are needed, an error if the length field is malformed
/// (more than four bytes) or the packet would exceed `max` bytes.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>> {
    let mut remaining = 0usize;
    for (k, &b) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            let total = 1 + (k + 1) + remaining;
            if total > max {
                return Err(Error::PacketTooLarge { len: total, max });
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    if buf.len() >= 5 {
        return Err(Error::PacketTooLarge {
            len: MAX_REMAINING + 1,
            max,
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
