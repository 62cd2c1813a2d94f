//! What a board provides, and a blocking meter loop built on it.
//!
//! A board implements [`Sampler`] (fills a window of interleaved ADC frames
//! at a fixed rate), [`Clock`] (monotonic milliseconds since boot) and
//! [`Transport`] (an MQTT connection that publishes QoS 1 to the meter's
//! topic and reports PUBACKs). [`Meter`] ties them to the measurement, the
//! clock sync and the [`Uplink`]: each [`Meter::step`] measures one window,
//! buffers the reading and moves the connection along.
//!
//! The ESP32-C3 image and the simulator's waveform mode implement
//! [`Sampler`] (the ADC, and a synthetic analogue front end). Both are
//! async, so instead of the blocking [`Transport`] and [`Meter`] they drive
//! [`Uplink`] from their own tasks (embassy-net and rumqttc sockets); the
//! blocking pair serves boards with a blocking network stack, and the tests.

use crate::clock::ClockSync;
use crate::measure::{Energy, MeterConfig};
use crate::reading::{MAX_CHANNELS, Reading, Schema};
use crate::uplink::{LinkState, Uplink};

/// Fills windows of raw ADC samples.
pub trait Sampler {
    type Error: core::fmt::Debug;
    /// Fills `window` with consecutive frames, one sample per channel per
    /// frame, at the board's sample rate.
    fn sample(&mut self, window: &mut [u16]) -> Result<(), Self::Error>;
}

/// A monotonic clock.
pub trait Clock {
    /// Milliseconds since an arbitrary start; never goes backwards.
    fn now_ms(&self) -> u64;
}

/// An MQTT 3.1.1 connection to the broker.
pub trait Transport {
    type Error: core::fmt::Debug;
    /// Connects and logs in; Ok once the CONNACK accepted.
    fn connect(&mut self) -> Result<(), Self::Error>;
    /// Publishes `payload` with QoS 1 on the meter's topic.
    fn publish(&mut self, payload: &[u8]) -> Result<(), Self::Error>;
    /// How many PUBACKs arrived since the last call (without blocking).
    fn take_acks(&mut self) -> Result<usize, Self::Error>;
}

/// What one [`Meter::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    pub measured: bool,
    pub published: usize,
    pub acked: usize,
    pub link: LinkState,
}

/// A blocking meter: sampler, clock and transport plus the core's logic.
#[derive(Debug)]
pub struct Meter<'a, S, C, T, const N: usize, const M: usize> {
    pub sampler: S,
    pub clock: C,
    pub transport: T,
    pub config: MeterConfig<'a>,
    pub schema: Schema<'a>,
    pub uplink: Uplink<N, M>,
    pub sync: ClockSync,
    /// Energy per circuit, Wh, integrated over the windows measured.
    pub energy: [Energy; MAX_CHANNELS],
    seq: u32,
    last_ms: Option<u64>,
}

impl<'a, S: Sampler, C: Clock, T: Transport, const N: usize, const M: usize>
    Meter<'a, S, C, T, N, M>
{
    pub fn new(
        sampler: S,
        clock: C,
        transport: T,
        config: MeterConfig<'a>,
        schema: Schema<'a>,
        uplink: Uplink<N, M>,
    ) -> Self {
        Meter {
            sampler,
            clock,
            transport,
            config,
            schema,
            uplink,
            sync: ClockSync::new(),
            energy: [Energy::default(); MAX_CHANNELS],
            seq: 0,
            last_ms: None,
        }
    }

    /// Measures one window into `window` (which must hold whole frames),
    /// buffers the reading, and moves the connection along, publishing from
    /// `buf`.
    pub fn step(&mut self, window: &mut [u16], buf: &mut [u8]) -> StepReport {
        let mut report = StepReport {
            measured: false,
            published: 0,
            acked: 0,
            link: self.uplink.state(),
        };
        let now = self.clock.now_ms();
        if self.sampler.sample(window).is_ok()
            && let Ok(m) = self.config.measure(window)
        {
            let dt = self.last_ms.map_or(0, |l| now.saturating_sub(l));
            self.last_ms = Some(now);
            for (e, c) in self.energy.iter_mut().zip(m.circuits()) {
                e.add(c.real_w, u32::try_from(dt).unwrap_or(u32::MAX));
            }
            let mut all = [0.0; MAX_CHANNELS];
            let n = m.values(&mut all);
            let values = all.get(..n).unwrap_or_default();
            let reading = match self.sync.utc_ms(now) {
                Some(ts) => Reading::new(Some(ts), self.seq, values),
                None => Reading::unstamped(now, self.seq, values),
            };
            if let Ok(r) = reading {
                self.seq = self.seq.wrapping_add(1);
                self.uplink.push(r);
                report.measured = true;
            }
        }
        let sync = &self.sync;
        self.uplink.stamp(|local| sync.utc_ms(local));
        if self.uplink.should_connect(now) {
            match self.transport.connect() {
                Ok(()) => self.uplink.connected(),
                Err(_) => {
                    self.uplink.connection_lost(now);
                }
            }
        }
        if self.uplink.state() == LinkState::Up {
            match self.transport.take_acks() {
                Ok(n) => {
                    for _ in 0..n {
                        report.acked += self.uplink.puback(|_| {});
                    }
                }
                Err(_) => {
                    self.uplink.connection_lost(now);
                }
            }
        }
        while let Ok(Some((len, count))) = self.uplink.next_message(self.schema, buf) {
            let sent = buf.get(..len).map(|p| self.transport.publish(p));
            match sent {
                Some(Ok(())) => {
                    self.uplink.published(count);
                    report.published += count;
                }
                _ => {
                    self.uplink.connection_lost(now);
                    break;
                }
            }
        }
        report.link = self.uplink.state();
        report
    }
}

#[cfg(test)]
mod tests;
