//! Waveform mode: the load model's true voltages and powers become the ADC
//! samples a board would see, and the firmware's measurement code turns
//! them back into a reading.
//!
//! Per window (200 ms at 4 kHz, ten 50 Hz cycles): three phase voltages 120°
//! apart; per circuit a current with the appliance's power factor (motors
//! and compressors lag, heaters do not) and a third and fifth harmonic for
//! the electronic and motor loads; each channel on a 12-bit ADC with a bias
//! off its calibrated offset by a few counts, and a count of noise.

use std::f64::consts::PI;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wattson_firmware::hal::Sampler;
use wattson_firmware::measure::{Calibration, Circuit, MeterConfig};
use wattson_firmware::reading::MAX_CHANNELS;
use wattson_storage::Value;

use crate::simdata::{MeterSim, SEED_TABLE};

const RATE_HZ: f64 = 4000.0;
const FRAMES: usize = 800;
const CHANNELS: usize = 10;
/// 400 V peak over 2000 counts; 40 A peak over 2000 counts (a 20 A Hall
/// sensor with headroom for inrush).
const CAL_V: Calibration = Calibration::new(0.2, 2048.0);
const CAL_I: Calibration = Calibration::new(0.02, 2048.0);
/// Phase of each circuit (`wd`, `rf`, `ac01`, `rh01`, `mo`, `ac02`, `rh02`),
/// as in the load model.
const PHASE_OF: [usize; 7] = [0, 1, 2, 0, 1, 1, 2];
/// Power factor and (3rd, 5th) harmonic share of each circuit's current.
const LOAD: [(f64, f64, f64); 7] = [
    (0.95, 0.08, 0.03), // washer: motor and electronics
    (0.85, 0.10, 0.04), // fridge compressor
    (0.92, 0.06, 0.03), // air conditioner (inverter)
    (1.0, 0.0, 0.0),    // heater: resistive
    (0.80, 0.05, 0.02), // motor
    (0.92, 0.06, 0.03),
    (1.0, 0.0, 0.0),
];

const CIRCUITS: [Circuit; 7] = {
    let mut c = [Circuit {
        phase: 0,
        cal: CAL_I,
    }; 7];
    let mut k = 0;
    while k < 7 {
        c[k].phase = PHASE_OF[k];
        k += 1;
    }
    c
};

/// The analogue front end of a simulated board: the firmware's
/// [`Sampler`], filling windows with what the ADC would read for the loads
/// in `truth`.
#[derive(Debug)]
struct Frontend {
    /// The load model's values for this window, in seed order.
    truth: Vec<f64>,
    rng: SmallRng,
    /// Bias error per channel, counts: the measurement must remove it.
    bias: [f64; CHANNELS],
}

impl Sampler for Frontend {
    type Error = std::convert::Infallible;

    fn sample(&mut self, window: &mut [u16]) -> Result<(), Self::Error> {
        let truth = &self.truth;
        let volts = [0, 1, 2].map(|k| truth.get(k).copied().unwrap_or(230.0));
        // Line frequency wanders a little around 50 Hz.
        let f = 50.0 + self.rng.random_range(-0.05..0.05);
        let start = self.rng.random_range(0.0..2.0 * PI);
        for (n, frame) in window.chunks_exact_mut(CHANNELS).enumerate() {
            let t = n as f64 / RATE_HZ;
            let w = 2.0 * PI * f * t + start;
            let mut x = [0.0f64; CHANNELS];
            for (p, v) in volts.iter().enumerate() {
                x[p] = v * 2f64.sqrt() * (w - p as f64 * 2.0 * PI / 3.0).sin()
                    / f64::from(CAL_V.ratio);
            }
            for (c, &(pf, h3, h5)) in LOAD.iter().enumerate() {
                let phase = PHASE_OF[c];
                let power = truth.get(4 + 2 * c).copied().unwrap_or(0.0);
                let v = volts[phase].max(1.0);
                // Only the fundamental carries power (the voltage is a pure
                // sine), so its amplitude follows from P = V·I1·PF.
                let i1 = power / (v * pf) * 2f64.sqrt();
                let wp = w - phase as f64 * 2.0 * PI / 3.0;
                let lag = pf.acos();
                let i = i1 * (wp - lag).sin()
                    + i1 * h3 * (3.0 * wp - 0.4).sin()
                    + i1 * h5 * (5.0 * wp + 1.1).sin();
                x[3 + c] = i / f64::from(CAL_I.ratio);
            }
            for (k, (slot, x)) in frame.iter_mut().zip(x).enumerate() {
                let noise = self.rng.random_range(-1.0..1.0);
                let counts = x + 2048.0 + self.bias[k] + noise;
                *slot = counts.round().clamp(0.0, 4095.0) as u16;
            }
        }
        Ok(())
    }
}

/// A meter in waveform mode.
#[derive(Debug)]
pub(super) struct WaveMeter {
    sim: MeterSim,
    frontend: Frontend,
    window: Vec<u16>,
}

impl WaveMeter {
    pub(super) fn new(device: &str, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5741_5645);
        let bias = std::array::from_fn(|_| rng.random_range(-20.0..20.0));
        WaveMeter {
            sim: MeterSim::new(device, seed),
            frontend: Frontend {
                truth: Vec::new(),
                rng,
                bias,
            },
            window: vec![0; FRAMES * CHANNELS],
        }
    }

    /// The measured reading's 17 values at model time `model_ns`.
    pub(super) fn values(&mut self, model_ns: i64) -> Vec<f32> {
        self.frontend.truth = self
            .sim
            .reading(SEED_TABLE, model_ns)
            .values
            .iter()
            .map(|(_, v)| match v {
                Value::F64(x) => *x,
                _ => 0.0,
            })
            .collect();
        let Ok(()) = self.frontend.sample(&mut self.window);
        let cfg = MeterConfig {
            sample_rate_hz: RATE_HZ as f32,
            phases: &[CAL_V; 3],
            circuits: &CIRCUITS,
        };
        match cfg.measure(&self.window) {
            Ok(m) => {
                let mut out = [0.0f32; MAX_CHANNELS];
                let n = m.values(&mut out);
                // A circuit whose appliance is off reads a few mA of noise;
                // a board would report that, and so do we.
                out.get(..n).unwrap_or_default().to_vec()
            }
            Err(_) => self.frontend.truth.iter().map(|&x| x as f32).collect(),
        }
    }
}
