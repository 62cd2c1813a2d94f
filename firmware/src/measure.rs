//! From raw ADC samples to volts, amperes, watts and watt-hours.
//!
//! A window holds frames of interleaved samples, one per ADC channel: the
//! phase voltages first (one to three), then one current per appliance circuit
//! ([`MeterConfig`] says which phase each circuit hangs on). For each
//! channel a [`Calibration`] turns counts into volts or amperes:
//! `(raw - offset) * ratio`.
//!
//! The measurement runs over a whole number of line cycles, from the first
//! to the last upward zero crossing of the voltage, so that removing the
//! mean (what is left of the bias after `offset`, and any drift of it) does
//! not bias the RMS of a sine, and harmonics average out exactly. Crossings
//! use hysteresis (a tenth of the peak) against noise, and linear
//! interpolation between samples for the frequency.
//!
//! Phase correction: a current transformer or Hall sensor and its filter
//! delay the current a little against the voltage. `phase_deg` on the
//! current channel's calibration says by how much (at the measured line
//! frequency); the voltage is read that much later, by linear interpolation
//! between samples, before it is multiplied by the current.

use crate::reading::MAX_CHANNELS;
use crate::{Error, Result};

/// Fewest samples a window must hold: two line cycles at a low sample rate.
pub const MIN_SAMPLES: usize = 16;

/// How counts of one ADC channel become volts or amperes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Volts or amperes per count.
    pub ratio: f32,
    /// The count that means zero (the bias point, about half the ADC range).
    pub offset: f32,
    /// Delay of this sensor against the voltage, in degrees at the line
    /// frequency (current channels only; ignored on voltage channels).
    pub phase_deg: f32,
}

impl Calibration {
    pub const fn new(ratio: f32, offset: f32) -> Self {
        Calibration {
            ratio,
            offset,
            phase_deg: 0.0,
        }
    }

    fn apply(&self, raw: u16) -> f32 {
        (f32::from(raw) - self.offset) * self.ratio
    }
}

/// One channel of an interleaved window.
#[derive(Debug, Clone, Copy)]
struct Channel<'a> {
    window: &'a [u16],
    stride: usize,
    index: usize,
    cal: Calibration,
}

impl Channel<'_> {
    fn len(&self) -> usize {
        self.window.len().checked_div(self.stride).unwrap_or(0)
    }

    /// Sample `n` in calibrated units (0 outside the window, which the
    /// callers' bounds never reach).
    fn at(&self, n: usize) -> f32 {
        n.checked_mul(self.stride)
            .and_then(|k| k.checked_add(self.index))
            .and_then(|k| self.window.get(k))
            .map_or(0.0, |&raw| self.cal.apply(raw))
    }

    /// The value at fractional sample position `t`, interpolated linearly
    /// and clamped to the window.
    fn interp(&self, t: f32) -> f32 {
        let last = self.len().saturating_sub(1);
        let t = t.clamp(0.0, last as f32);
        let k = t as usize;
        let frac = t - k as f32;
        let a = self.at(k);
        if frac == 0.0 {
            return a;
        }
        a + (self.at((k + 1).min(last)) - a) * frac
    }
}

/// What the voltage of one phase did in a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cycles {
    /// The sample range measured over: a whole number of cycles when
    /// `frequency_hz` is known, else the whole window.
    pub start: usize,
    pub end: usize,
    /// Line frequency from the upward zero crossings; `None` with fewer than
    /// two crossings (no voltage, or a window shorter than a cycle).
    pub frequency_hz: Option<f32>,
}

/// The measurement of one circuit (or of a phase voltage alone, with zero
/// current) over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub vrms: f32,
    pub irms: f32,
    /// Real power, the mean of v·i, W. Negative when power flows back.
    pub real_w: f32,
    /// Vrms · Irms, VA.
    pub apparent_va: f32,
    /// real / apparent, in -1..=1; 0 when there is no current.
    pub power_factor: f32,
    pub frequency_hz: Option<f32>,
}

/// Finds the whole cycles of a voltage channel.
fn cycles(v: Channel<'_>, sample_rate_hz: f32) -> Cycles {
    let n = v.len();
    let mut mean = 0.0f32;
    for k in 0..n {
        mean += v.at(k);
    }
    mean /= n.max(1) as f32;
    let mut peak = 0.0f32;
    for k in 0..n {
        peak = peak.max((v.at(k) - mean).abs());
    }
    let hysteresis = 0.1 * peak;
    // Positions (fractional sample index) and sample index after the first
    // and the last upward crossing.
    let mut first: Option<(f32, usize)> = None;
    let mut last: Option<(f32, usize)> = None;
    let mut crossings = 0u32;
    let mut armed = false;
    let mut prev = v.at(0) - mean;
    for k in 1..n {
        let x = v.at(k) - mean;
        if x < -hysteresis {
            armed = true;
        }
        if armed && prev < 0.0 && x >= 0.0 {
            // Linear interpolation of where the signal crossed zero.
            let t = (k - 1) as f32 + prev / (prev - x);
            if first.is_none() {
                first = Some((t, k));
            }
            last = Some((t, k));
            crossings += 1;
            armed = false;
        }
        prev = x;
    }
    match (first, last) {
        (Some((t0, k0)), Some((t1, k1))) if crossings >= 2 && t1 > t0 => Cycles {
            start: k0,
            end: k1,
            frequency_hz: Some((crossings - 1) as f32 * sample_rate_hz / (t1 - t0)),
        },
        _ => Cycles {
            start: 0,
            end: n,
            frequency_hz: None,
        },
    }
}

fn measure_span(
    v: Channel<'_>,
    i: Option<Channel<'_>>,
    span: Cycles,
    sample_rate_hz: f32,
) -> Measurement {
    let count = span.end.saturating_sub(span.start).max(1) as f32;
    let (mut mv, mut mi) = (0.0f32, 0.0f32);
    for k in span.start..span.end {
        mv += v.at(k);
        mi += i.map_or(0.0, |i| i.at(k));
    }
    mv /= count;
    mi /= count;
    // Voltage delay to apply, in samples, from the current sensor's phase
    // error at the measured (or, without crossings, a nominal 50 Hz) frequency.
    let shift = i.map_or(0.0, |i| {
        let f = span.frequency_hz.unwrap_or(50.0);
        i.cal.phase_deg / 360.0 * sample_rate_hz / f
    });
    let (mut sv, mut si, mut sp) = (0.0f32, 0.0f32, 0.0f32);
    for k in span.start..span.end {
        let x = v.at(k) - mv;
        sv += x * x;
        if let Some(i) = i {
            let y = i.at(k) - mi;
            si += y * y;
            let xv = if shift == 0.0 {
                x
            } else {
                v.interp(k as f32 - shift) - mv
            };
            sp += xv * y;
        }
    }
    let vrms = libm::sqrtf(sv / count);
    let irms = libm::sqrtf(si / count);
    let real_w = sp / count;
    let apparent_va = vrms * irms;
    let power_factor = if apparent_va > 0.0 {
        (real_w / apparent_va).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    Measurement {
        vrms,
        irms,
        real_w,
        apparent_va,
        power_factor,
        frequency_hz: span.frequency_hz,
    }
}

/// Measures one circuit from two sample slices of equal length.
pub fn measure_pair(
    v: &[u16],
    cal_v: Calibration,
    i: &[u16],
    cal_i: Calibration,
    sample_rate_hz: f32,
) -> Result<Measurement> {
    if v.len() < MIN_SAMPLES || i.len() < v.len() {
        return Err(Error::WindowTooShort {
            samples: v.len().min(i.len()),
            min: MIN_SAMPLES,
        });
    }
    let v = Channel {
        window: v,
        stride: 1,
        index: 0,
        cal: cal_v,
    };
    let i = Channel {
        window: i,
        stride: 1,
        index: 0,
        cal: cal_i,
    };
    let span = cycles(v, sample_rate_hz);
    Ok(measure_span(v, Some(i), span, sample_rate_hz))
}

/// One appliance circuit: which phase it hangs on and how its current
/// sensor is calibrated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circuit {
    /// 0, 1 or 2 for phase a, b or c.
    pub phase: usize,
    pub cal: Calibration,
}

/// A meter's measuring front end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterConfig<'a> {
    pub sample_rate_hz: f32,
    /// One to three phase voltages (a single-phase board has one).
    pub phases: &'a [Calibration],
    pub circuits: &'a [Circuit],
}

/// One window's results for a whole meter, in channel order: `pa_v`,
/// `pb_v`, `pc_v`, then `_a` and `_p` of each circuit, which is the seed's
/// layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterMeasurement {
    phases: [Measurement; 3],
    nphases: usize,
    len: usize,
    circuits: [Option<Measurement>; (MAX_CHANNELS - 3) / 2],
}

impl MeterMeasurement {
    pub fn phases(&self) -> impl Iterator<Item = &Measurement> {
        self.phases.iter().take(self.nphases)
    }

    pub fn circuits(&self) -> impl Iterator<Item = &Measurement> {
        self.circuits.iter().take(self.len).flatten()
    }

    /// Writes the reading's values (`pa_v, pb_v, pc_v, c1_a, c1_p, …`) into
    /// `out` and returns how many there are.
    pub fn values(&self, out: &mut [f32; MAX_CHANNELS]) -> usize {
        let mut n = 0;
        let mut put = |x: f32| {
            if let Some(slot) = out.get_mut(n) {
                *slot = x;
                n += 1;
            }
        };
        for p in self.phases() {
            put(p.vrms);
        }
        for c in self.circuits() {
            put(c.irms);
            put(c.real_w);
        }
        n
    }
}

impl MeterConfig<'_> {
    /// Channels per frame: the voltages, then one current per circuit.
    pub fn channels(&self) -> usize {
        self.phases.len() + self.circuits.len()
    }

    /// Measures a window of interleaved frames.
    pub fn measure(&self, window: &[u16]) -> Result<MeterMeasurement> {
        let stride = self.channels();
        let nphases = self.phases.len();
        if self.circuits.len() > (MAX_CHANNELS - 3) / 2 || !(1..=3).contains(&nphases) {
            return Err(Error::TooManyChannels { max: MAX_CHANNELS });
        }
        let frames = window.len() / stride;
        if frames < MIN_SAMPLES {
            return Err(Error::WindowTooShort {
                samples: frames,
                min: MIN_SAMPLES,
            });
        }
        let ch = |index: usize, cal: Calibration| Channel {
            window,
            stride,
            index,
            cal,
        };
        let mut spans = [Cycles {
            start: 0,
            end: frames,
            frequency_hz: None,
        }; 3];
        let mut phases = [Measurement {
            vrms: 0.0,
            irms: 0.0,
            real_w: 0.0,
            apparent_va: 0.0,
            power_factor: 0.0,
            frequency_hz: None,
        }; 3];
        for (k, ((span, out), cal)) in spans
            .iter_mut()
            .zip(phases.iter_mut())
            .zip(self.phases)
            .enumerate()
        {
            let v = ch(k, *cal);
            *span = cycles(v, self.sample_rate_hz);
            *out = measure_span(v, None, *span, self.sample_rate_hz);
        }
        let mut circuits = [None; (MAX_CHANNELS - 3) / 2];
        for (k, (c, out)) in self.circuits.iter().zip(circuits.iter_mut()).enumerate() {
            let phase = c.phase.min(nphases - 1);
            let v = ch(
                phase,
                self.phases
                    .get(phase)
                    .copied()
                    .unwrap_or(Calibration::new(0.0, 0.0)),
            );
            let span = spans.get(phase).copied().unwrap_or(Cycles {
                start: 0,
                end: frames,
                frequency_hz: None,
            });
            *out = Some(measure_span(
                v,
                Some(ch(nphases + k, c.cal)),
                span,
                self.sample_rate_hz,
            ));
        }
        Ok(MeterMeasurement {
            phases,
            nphases,
            len: self.circuits.len(),
            circuits,
        })
    }
}

/// Energy in watt-hours, integrated from power readings.
///
/// f64 because a meter adds a few watt-seconds every second for years: an
/// f32 total of 10 MWh would no longer change when 1 Ws is added.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Energy {
    wh: f64,
}

impl Energy {
    /// Adds `power_w` held for `dt_ms` milliseconds.
    pub fn add(&mut self, power_w: f32, dt_ms: u32) {
        self.wh += f64::from(power_w) * f64::from(dt_ms) / 3_600_000.0;
    }

    pub fn wh(&self) -> f64 {
        self.wh
    }
}

#[cfg(test)]
mod tests;
