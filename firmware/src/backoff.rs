//! Reconnect delays: exponential backoff with jitter.
//!
//! After the k-th failed attempt in a row the delay is drawn uniformly from
//! the upper half of `min(max, base · 2^k)` ("equal jitter"): it grows
//! fast enough to spare a struggling broker, never waits longer than `max`,
//! and the random half keeps a fleet that lost the broker at the same moment
//! from reconnecting in lock step.

/// Backoff state of one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u32,
    max_ms: u32,
    attempt: u32,
    /// xorshift32 state: cheap, deterministic for a given seed (the simulator
    /// promises reproducible runs), and jitter needs no better randomness.
    rng: u32,
}

impl Backoff {
    /// `seed` should differ between devices (a board uses its MAC address).
    pub fn new(base_ms: u32, max_ms: u32, seed: u32) -> Self {
        Backoff {
            base_ms: base_ms.max(1),
            max_ms: max_ms.max(base_ms.max(1)),
            attempt: 0,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay_ms(&mut self) -> u32 {
        let ceiling = 1u32
            .checked_shl(self.attempt)
            .and_then(|f| self.base_ms.checked_mul(f))
            .unwrap_or(self.max_ms)
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1).min(31);
        let half = ceiling / 2;
        half + self.random() % (ceiling - half + 1)
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// A connection succeeded: start from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn random(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests;
