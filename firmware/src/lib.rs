//! Wattson's meter firmware core: everything a meter does between the ADC
//! and the MQTT socket, with no `std` and no allocator, so the same code
//! runs on an ESP32-C3 (`firmware/esp32c3/`) and inside `wattson simulate`.
//!
//! The pieces and how they fit:
//! - [`measure`]: a window of raw ADC samples of one voltage and one current
//!   channel becomes Vrms, Irms, real power (mean of v·i), apparent power,
//!   power factor and line frequency (from zero crossings), after the
//!   calibration of [`measure::Calibration`] (ratio, offset, phase
//!   correction). [`measure::Energy`] integrates power into Wh.
//! - [`reading`]: a [`reading::Reading`] is one sample of a meter's channels
//!   (`pa_v`, `wd_a`, `wd_p`, …) with a device timestamp and a sequence
//!   number; [`reading::Schema`] names the channels once for all readings.
//! - [`payload`]: encodes a reading, or a batch, as the JSON that Wattson's
//!   ingest decodes, into a caller's fixed buffer.
//! - [`outbox`]: the store-and-forward ring buffer. Readings stay until the
//!   QoS 1 PUBACK of the message that carried them; after a reconnect the
//!   backlog goes out oldest first, in batches; when full, the oldest reading
//!   is dropped and counted.
//! - [`backoff`]: reconnect delays, exponential with jitter.
//! - [`clock`]: an SNTP-style offset and drift estimate, so a board without
//!   a real-time clock stamps readings with UTC; [`clock::sntp`] builds and
//!   parses the 48-byte SNTP packets.
//! - [`uplink`]: the connection state machine that ties the outbox, the
//!   backoff and the encoder together, without doing I/O itself (sans-IO):
//!   the board's async loop and the simulator's tokio task both drive it.
//! - [`mqtt`]: MQTT 3.1.1 framing, so a board hands its packet codec only
//!   whole packets.
//! - [`hal`]: the traits a board implements (ADC sampler, monotonic clock,
//!   MQTT transport) and [`hal::run_step`], one turn of a blocking meter
//!   loop built on them.
//!
//! Promises: no panics on any input (no indexing that can fail, no unwrap),
//! no heap, every buffer bounded by a const generic or the caller's slice.
//! CI builds this crate for `riscv32imc-unknown-none-elf` to prove it stays
//! `no_std`.
#![no_std]

// Tests run on the host and may use std (Vec, proptest); the library never does.
#[cfg(test)]
extern crate std;

pub mod backoff;
pub mod clock;
pub mod hal;
pub mod measure;
pub mod mqtt;
pub mod outbox;
pub mod payload;
pub mod reading;
pub mod uplink;

#[cfg(test)]
mod no_std_check;

/// Why an operation of the firmware core failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The output buffer is too small for even one reading.
    #[error("the output buffer cannot hold one reading")]
    BufferFull,
    /// A reading has more values than [`reading::MAX_CHANNELS`], or than
    /// its schema names.
    #[error("more channel values than the schema names (at most {max})")]
    TooManyChannels { max: usize },
    /// A window of samples is too short to measure anything.
    #[error("a window of {samples} samples is too short to measure (need {min})")]
    WindowTooShort { samples: usize, min: usize },
    /// An MQTT packet longer than the buffer meant for it, or with a
    /// malformed length field.
    #[error("an MQTT packet of {len} bytes does not fit in {max}")]
    PacketTooLarge { len: usize, max: usize },
    /// An SNTP answer that is not a valid server reply.
    #[error("not a valid SNTP server reply: {reason}")]
    BadSntpPacket { reason: &'static str },
}

pub type Result<T, E = Error> = core::result::Result<T, E>;
