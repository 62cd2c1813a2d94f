//! The connection logic of a meter, without I/O: when to (re)connect, what
//! to publish next, what an acknowledgement or a lost connection means for
//! the buffered readings.
//!
//! The caller owns the socket and the MQTT client and tells the uplink what
//! happened ([`Uplink::connected`], [`Uplink::connection_lost`],
//! [`Uplink::puback`]); the uplink says what to do ([`Uplink::should_connect`],
//! [`Uplink::next_message`]). The board's embassy task and the simulator's
//! tokio task both drive it, which is how the simulator exercises exactly
//! the logic a board runs.
//!
//! Live readings go out one per message as a JSON object; after a reconnect
//! the backlog goes oldest first as JSON arrays of up to `batch_max`.
//!
//! Readings taken before the clock was known ([`Reading::unstamped`]) wait
//! in the outbox until [`Uplink::stamp`] gives them their UTC time: sent
//! without one, ingest would stamp them with its receive time, and a resend
//! after a lost PUBACK would be stored a second time. A board that has given
//! up on its time server lets them go with [`Uplink::send_unstamped`].

use crate::Result;
use crate::backoff::Backoff;
use crate::outbox::Outbox;
use crate::payload;
use crate::reading::{Reading, Schema};

/// Settings of an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Most readings in one message.
    pub batch_max: usize,
    /// First reconnect delay, ms; doubles per failure up to `backoff_max_ms`.
    pub backoff_base_ms: u32,
    pub backoff_max_ms: u32,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            batch_max: 60,
            backoff_base_ms: 500,
            backoff_max_ms: 60_000,
        }
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; the next attempt is due at this local time (ms).
    Down {
        retry_at_ms: u64,
    },
    /// An attempt is under way.
    Connecting,
    Up,
}

/// Counters a meter reports (the simulator prints them at the end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkStats {
    pub readings_acked: u64,
    pub messages_acked: u64,
    pub messages_sent: u64,
    /// Readings that went out again after a lost connection.
    pub readings_resent: u64,
    pub connects: u64,
    pub connection_losses: u64,
}

/// A meter's uplink with an outbox of `N` readings and at most `M` messages
/// in flight.
#[derive(Debug, Clone)]
pub struct Uplink<const N: usize, const M: usize> {
    outbox: Outbox<N, M>,
    backoff: Backoff,
    state: LinkState,
    cfg: UplinkConfig,
    stats: UplinkStats,
    /// Readings that were in flight when the connection was last lost: the
    /// next ones sent are resends.
    resend_left: usize,
    /// Whether unstamped readings may go out without a time.
    send_unstamped: bool,
}

impl<const N: usize, const M: usize> Uplink<N, M> {
    /// `seed` makes the reconnect jitter differ between devices.
    pub fn new(cfg: UplinkConfig, seed: u32) -> Self {
        Uplink {
            outbox: Outbox::new(),
            backoff: Backoff::new(cfg.backoff_base_ms, cfg.backoff_max_ms, seed),
            state: LinkState::Down { retry_at_ms: 0 },
            cfg,
            stats: UplinkStats::default(),
            resend_left: 0,
            send_unstamped: false,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn stats(&self) -> UplinkStats {
        self.stats
    }

    pub fn outbox(&self) -> &Outbox<N, M> {
        &self.outbox
    }

    /// Buffers a new reading; returns the reading dropped to make room, if
    /// the outbox was full.
    pub fn push(&mut self, r: Reading) -> Option<Reading> {
        self.outbox.push(r)
    }

    /// Gives waiting unstamped readings their UTC time where `utc` (a
    /// `ClockSync::utc_ms`) knows it; returns how many it stamped.
    pub fn stamp(&mut self, utc: impl Fn(u64) -> Option<i64>) -> usize {
        self.outbox.stamp(utc)
    }

    /// Lets unstamped readings go without a time (true), or holds them until
    /// [`Uplink::stamp`] (false, the default).
    pub fn send_unstamped(&mut self, yes: bool) {
        self.send_unstamped = yes;
    }

    /// Whether a connection attempt is due at local time `now_ms`; if so the
    /// state becomes `Connecting`.
    pub fn should_connect(&mut self, now_ms: u64) -> bool {
        match self.state {
            LinkState::Down { retry_at_ms } if now_ms >= retry_at_ms => {
                self.state = LinkState::Connecting;
                true
            }
            _ => false,
        }
    }

    /// The broker accepted the connection (CONNACK).
    pub fn connected(&mut self) {
        self.state = LinkState::Up;
        self.backoff.reset();
        self.stats.connects += 1;
    }

    /// The attempt failed or the connection dropped at `now_ms`. Whatever
    /// was in flight is unsent again. Returns the delay before the next
    /// attempt, ms.
    pub fn connection_lost(&mut self, now_ms: u64) -> u32 {
        if self.state == LinkState::Up {
            self.stats.connection_losses += 1;
        }
        self.resend_left = self.outbox.len() - self.outbox.unsent();
        self.outbox.disconnected();
        let delay = self.backoff.next_delay_ms();
        self.state = LinkState::Down {
            retry_at_ms: now_ms.saturating_add(u64::from(delay)),
        };
        delay
    }

    /// Encodes the next message into `buf` if one may be published now and
    /// returns `(bytes, readings)`. Call [`Uplink::published`] with the
    /// reading count once the publish was handed to the transport.
    pub fn next_message(
        &self,
        schema: Schema<'_>,
        buf: &mut [u8],
    ) -> Result<Option<(usize, usize)>> {
        if self.state != LinkState::Up || !self.outbox.can_send() {
            return Ok(None);
        }
        let hold = !self.send_unstamped;
        if hold && self.outbox.next_is_unstamped() {
            return Ok(None);
        }
        if self.outbox.unsent() == 1 {
            let mut one = self.outbox.next_batch(1);
            return match one.next() {
                Some(r) => Ok(Some((payload::encode_reading(schema, r, buf)?, 1))),
                None => Ok(None),
            };
        }
        let batch = self
            .outbox
            .next_batch(self.cfg.batch_max.max(1))
            .take_while(|r| !(hold && r.is_unstamped()));
        payload::encode_batch(schema, batch, self.cfg.batch_max.max(1), buf).map(Some)
    }

    /// The message of `readings` readings from [`Uplink::next_message`] was
    /// published (QoS 1).
    pub fn published(&mut self, readings: usize) {
        if self.outbox.sent(readings) {
            self.stats.messages_sent += 1;
            let resent = readings.min(self.resend_left);
            self.resend_left -= resent;
            self.stats.readings_resent += resent as u64;
        }
    }

    /// The oldest message in flight was acknowledged; `on_acked` sees each of
    /// its readings, which are now stored on the server.
    pub fn puback(&mut self, on_acked: impl FnMut(&Reading)) -> usize {
        if self.outbox.messages_in_flight() == 0 {
            // Nothing of ours was in flight: a stray PUBACK changes nothing.
            return 0;
        }
        let n = self.outbox.ack(on_acked);
        self.stats.messages_acked += 1;
        self.stats.readings_acked += n as u64;
        n
    }
}

#[cfg(test)]
mod tests;
