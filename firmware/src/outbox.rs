//! Store and forward: readings wait here until the broker acknowledged the
//! message that carried them.
//!
//! The outbox is a ring of `N` readings, oldest first. Its front part is in
//! flight (published, waiting for the PUBACK), the rest waits to be sent.
//! Messages in flight are remembered in order, with how many readings each
//! carried, at most `M` of them.
//!
//! - [`Outbox::push`] adds a reading. When the ring is full the oldest
//!   reading is dropped and counted ([`Outbox::dropped`]), even if it is in
//!   flight: a meter must keep measuring, and new data is worth more than
//!   old. (An in-flight reading dropped this way may still arrive; it is
//!   then simply not reported as acknowledged.)
//! - [`Outbox::next_batch`] hands out the oldest unsent readings;
//!   [`Outbox::sent`] records that they went out in one message.
//! - [`Outbox::ack`] takes the oldest message in flight off: MQTT 3.1.1
//!   (§4.6) has the server acknowledge QoS 1 messages in the order it
//!   received them, which is the order we sent them.
//! - [`Outbox::disconnected`] returns everything in flight to the unsent
//!   part: without a PUBACK nothing is known to be stored, so after the
//!   reconnect it goes again, oldest first. Resending is safe because the
//!   server keys readings by (table, device, time).

use crate::reading::Reading;

/// A ring of `N` readings with at most `M` messages in flight.
#[derive(Debug, Clone)]
pub struct Outbox<const N: usize, const M: usize> {
    ring: [Option<Reading>; N],
    /// Index of the oldest reading.
    head: usize,
    len: usize,
    /// Readings from the head that are in flight.
    in_flight: usize,
    /// Readings per message in flight, oldest first, as a ring of `M`.
    messages: [usize; M],
    msg_head: usize,
    msg_len: usize,
    dropped: u64,
}

impl<const N: usize, const M: usize> Default for Outbox<N, M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const M: usize> Outbox<N, M> {
    pub const fn new() -> Self {
        Outbox {
            ring: [None; N],
            head: 0,
            len: 0,
            in_flight: 0,
            messages: [0; M],
            msg_head: 0,
            msg_len: 0,
            dropped: 0,
        }
    }

    /// Readings held, in flight or not.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Readings waiting to be sent.
    pub fn unsent(&self) -> usize {
        self.len - self.in_flight
    }

    /// Messages published and not yet acknowledged.
    pub fn messages_in_flight(&self) -> usize {
        self.msg_len
    }

    /// Whether another message may be published now.
    pub fn can_send(&self) -> bool {
        self.msg_len < M && self.unsent() > 0
    }

    /// Readings dropped because the ring was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn slot(&self, k: usize) -> usize {
        // N > 0 whenever len > 0; checked_rem keeps N == 0 from panicking.
        (self.head + k).checked_rem(N).unwrap_or(0)
    }

    fn get(&self, k: usize) -> Option<&Reading> {
        self.ring.get(self.slot(k)).and_then(Option::as_ref)
    }

    /// Adds a reading; if the ring was full, drops the oldest and returns it.
    pub fn push(&mut self, r: Reading) -> Option<Reading> {
        if N == 0 {
            self.dropped += 1;
            return Some(r);
        }
        let evicted = if self.len == N {
            self.pop_front()
        } else {
            None
        };
        if evicted.is_some() {
            self.dropped += 1;
        }
        let slot = self.slot(self.len);
        if let Some(s) = self.ring.get_mut(slot) {
            *s = Some(r);
            self.len += 1;
        }
        evicted
    }

    /// Removes the oldest reading, keeping the in-flight accounting right:
    /// it belonged to the oldest message in flight, if any.
    fn pop_front(&mut self) -> Option<Reading> {
        if self.len == 0 {
            return None;
        }
        let r = self.ring.get_mut(self.head).and_then(Option::take);
        self.head = (self.head + 1).checked_rem(N).unwrap_or(0);
        self.len -= 1;
        if self.in_flight > 0 {
            self.in_flight -= 1;
            // The oldest message with readings left loses one; messages
            // whose readings are all gone stay until their PUBACK.
            for k in 0..self.msg_len {
                let i = (self.msg_head + k).checked_rem(M).unwrap_or(0);
                if let Some(c) = self.messages.get_mut(i)
                    && *c > 0
                {
                    *c -= 1;
                    break;
                }
            }
        }
        r
    }

    /// The oldest unsent readings, at most `max`, oldest first. Nothing is
    /// marked sent until [`Outbox::sent`].
    pub fn next_batch(&self, max: usize) -> impl Iterator<Item = &Reading> + '_ {
        (self.in_flight..self.len)
            .take(max)
            .filter_map(move |k| self.get(k))
    }

    /// Records that the first `count` unsent readings went out in one
    /// message. Returns false (and records nothing) if `M` messages are
    /// already in flight or `count` is more than is unsent.
    pub fn sent(&mut self, count: usize) -> bool {
        if self.msg_len == M || count == 0 || count > self.unsent() {
            return false;
        }
        let i = (self.msg_head + self.msg_len).checked_rem(M).unwrap_or(0);
        if let Some(slot) = self.messages.get_mut(i) {
            *slot = count;
            self.msg_len += 1;
            self.in_flight += count;
            true
        } else {
            false
        }
    }

    /// The oldest message in flight was acknowledged: its readings leave
    /// the outbox, and `on_acked` sees each of them. Returns how many
    /// readings that was (0 if nothing was in flight, or its readings were
    /// all dropped meanwhile).
    pub fn ack(&mut self, mut on_acked: impl FnMut(&Reading)) -> usize {
        if self.msg_len == 0 {
            return 0;
        }
        let count = self.messages.get(self.msg_head).copied().unwrap_or(0);
        self.msg_head = (self.msg_head + 1).checked_rem(M).unwrap_or(0);
        self.msg_len -= 1;
        let mut done = 0;
        for _ in 0..count {
            // pop_front would charge the reading to the message just
            // removed; take it off the ring directly instead.
            if self.len == 0 || self.in_flight == 0 {
                break;
            }
            if let Some(r) = self.ring.get_mut(self.head).and_then(Option::take) {
                on_acked(&r);
            }
            self.head = (self.head + 1).checked_rem(N).unwrap_or(0);
            self.len -= 1;
            self.in_flight -= 1;
            done += 1;
        }
        done
    }

    /// Gives every unstamped reading not yet sent its UTC time, where `utc`
    /// knows it (see [`Reading::unstamped`]). Returns how many it stamped.
    pub fn stamp(&mut self, utc: impl Fn(u64) -> Option<i64>) -> usize {
        let mut stamped = 0;
        for k in self.in_flight..self.len {
            let slot = self.slot(k);
            if let Some(Some(r)) = self.ring.get_mut(slot)
                && r.stamp(&utc)
            {
                stamped += 1;
            }
        }
        stamped
    }

    /// Whether the oldest unsent reading still waits for its UTC time.
    pub fn next_is_unstamped(&self) -> bool {
        self.get(self.in_flight).is_some_and(Reading::is_unstamped)
    }

    /// The connection is gone: nothing in flight will be acknowledged, so
    /// all of it becomes unsent again, to go first after the reconnect.
    pub fn disconnected(&mut self) {
        self.in_flight = 0;
        self.msg_len = 0;
        self.msg_head = 0;
    }
}

#[cfg(test)]
mod tests;
