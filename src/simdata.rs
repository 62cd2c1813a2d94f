//! Simulated meters: realistic readings in the seed system's 17-channel shape.
//!
//! Owns the model of a household meter used by `wattson simulate`,
//! `wattson bench storage`, the criterion benches and tests. A meter has
//! three phase voltages and seven appliance circuits (washer `wd`, fridge
//! `rf`, air conditioners `ac01`/`ac02`, heaters `rh01`/`rh02`, motor `mo`),
//! each reporting current (`_a`, A) and power (`_p`, W):
//!
//! - Voltages wander slowly around a per-meter nominal value between 214 V
//!   (like the seed) and 232 V, sag a little under load and carry small
//!   sensor noise.
//! - Appliances switch on and off with their own run and pause lengths (the
//!   fridge compressor cycles every half hour, the washer heats first and
//!   then tumbles). People are home more in the evening and at weekends
//!   ([`occupancy`]): the washer, heaters and the pump start more often then.
//!   The air conditioners follow a thermostat: the room warms towards a
//!   daily outdoor temperature curve (20 °C at 3:00, 34 °C at 15:00) and
//!   the unit cools it back to 24 °C while someone is home, 28 °C otherwise.
//!   While on, the load varies smoothly, motors draw an inrush current at
//!   switch-on, and every value carries a little noise. Off is exactly `0.0`,
//!   except for the washer, whose electronics draw 1.2 W of standby.
//! - Current is power divided by the reported voltage of the circuit's phase.
//!   Voltage and power have one decimal, current two, as in the seed.
//!
//! Everything is deterministic: the same device id, seed and timestamps give
//! the same readings.

// SmallRng (xoshiro): the generator feeds benchmarks, so it must cost far less
// than the store it measures; it needs no cryptographic strength.
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wattson_storage::model::{Reading, Value};

#[cfg(test)]
mod tests;

/// The seed system's table.
pub const SEED_TABLE: &str = "power_consumption";

/// The seed system's channels, in the order of its CSV header (after `dt`).
pub const SEED_CHANNELS: [&str; 17] = [
    "pa_v", "pb_v", "pc_v", "wd_a", "wd_p", "rf_a", "rf_p", "ac01_a", "ac01_p", "rh01_a", "rh01_p",
    "mo_a", "mo_p", "ac02_a", "ac02_p", "rh02_a", "rh02_p",
];

const NS_PER_S: i64 = 1_000_000_000;
/// Longest gap between two readings the model steps through; longer gaps
/// (a meter that was offline) are treated as this long.
const MAX_STEP_S: f64 = 86_400.0;
/// Volts lost per watt drawn on a phase (line resistance).
const SAG_V_PER_W: f64 = 0.0008;

/// How one kind of appliance behaves.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Typical power while running, W. Each meter's appliance is within 10 %.
    rated_w: f64,
    /// Shortest and longest run, s.
    on_s: (f64, f64),
    /// Shortest and longest pause between runs, s.
    off_s: (f64, f64),
    /// The phase (0 = a, 1 = b, 2 = c) the circuit hangs on; its current is
    /// computed from that phase's voltage.
    phase: usize,
    /// Power at switch-on as a multiple of the running power, decaying with
    /// time constant `inrush_s` (motors and compressors).
    inrush: f64,
    inrush_s: f64,
    /// Relative size and time constant of the slow load variation while on.
    wander: f64,
    wander_tau_s: f64,
    /// A heating stage at the start of each run: (length s, power W). Washers
    /// heat the water first and then tumble at low power.
    heat: Option<(f64, f64)>,
    /// How the appliance decides to run.
    control: Control,
    /// Power drawn while off, W (electronics on standby).
    standby_w: f64,
}

/// What switches an appliance on and off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Control {
    /// Random run and pause lengths from the profile (a compressor's own
    /// cycle).
    Cycle,
    /// Like `Cycle`, but pauses shorten while people are home: someone
    /// starts the washer or a heater.
    Occupancy,
    /// A thermostat cooling a room (air conditioners).
    Thermostat,
}

const MIN: f64 = 60.0;
const HOUR: f64 = 3600.0;

/// Profiles of the appliance circuits, in channel order (`wd`, `rf`, `ac01`,
/// `rh01`, `mo`, `ac02`, `rh02`).
const PROFILES: [Profile; 7] = [
    // wd: washing machine. Tumbling ~85 W (the seed shows 83.6 W), heating ~2 kW.
    Profile {
        rated_w: 85.0,
        on_s: (45.0 * MIN, 2.0 * HOUR),
        off_s: (3.0 * HOUR, 20.0 * HOUR),
        phase: 0,
        inrush: 1.0,
        inrush_s: 1.0,
        wander: 0.25,
        wander_tau_s: 20.0,
        heat: Some((15.0 * MIN, 2000.0)),
        control: Control::Occupancy,
        standby_w: 1.2,
    },
    // rf: fridge compressor cycling.
    Profile {
        rated_w: 110.0,
        on_s: (8.0 * MIN, 20.0 * MIN),
        off_s: (15.0 * MIN, 40.0 * MIN),
        phase: 1,
        inrush: 4.0,
        inrush_s: 1.5,
        wander: 0.04,
        wander_tau_s: 300.0,
        heat: None,
        control: Control::Cycle,
        standby_w: 0.0,
    },
    // ac01: air conditioner, long runs at ~2200 W (seed: 2207.8 W).
    Profile {
        rated_w: 2200.0,
        on_s: (40.0 * MIN, 4.0 * HOUR),
        off_s: (30.0 * MIN, 6.0 * HOUR),
        phase: 2,
        inrush: 1.6,
        inrush_s: 4.0,
        wander: 0.03,
        wander_tau_s: 120.0,
        heat: None,
        control: Control::Thermostat,
        standby_w: 0.0,
    },
    // rh01: resistive heater.
    Profile {
        rated_w: 1500.0,
        on_s: (10.0 * MIN, HOUR),
        off_s: (30.0 * MIN, 5.0 * HOUR),
        phase: 0,
        inrush: 1.0,
        inrush_s: 1.0,
        wander: 0.01,
        wander_tau_s: 600.0,
        heat: None,
        control: Control::Occupancy,
        standby_w: 0.0,
    },
    // mo: motor (pump), short runs with a strong inrush.
    Profile {
        rated_w: 750.0,
        on_s: (2.0 * MIN, 30.0 * MIN),
        off_s: (20.0 * MIN, 4.0 * HOUR),
        phase: 1,
        inrush: 5.0,
        inrush_s: 1.0,
        wander: 0.05,
        wander_tau_s: 30.0,
        heat: None,
        control: Control::Occupancy,
        standby_w: 0.0,
    },
    // ac02: second air conditioner.
    Profile {
        rated_w: 2200.0,
        on_s: (40.0 * MIN, 4.0 * HOUR),
        off_s: (1.0 * HOUR, 8.0 * HOUR),
        phase: 1,
        inrush: 1.6,
        inrush_s: 4.0,
        wander: 0.03,
        wander_tau_s: 120.0,
        heat: None,
        control: Control::Thermostat,
        standby_w: 0.0,
    },
    // rh02: second heater.
    Profile {
        rated_w: 2000.0,
        on_s: (10.0 * MIN, HOUR),
        off_s: (1.0 * HOUR, 8.0 * HOUR),
        phase: 2,
        inrush: 1.0,
        inrush_s: 1.0,
        wander: 0.01,
        wander_tau_s: 600.0,
        heat: None,
        control: Control::Occupancy,
        standby_w: 0.0,
    },
];

/// A mean-reverting random walk (Ornstein-Uhlenbeck process): smooth
/// variation around `mean` with stationary standard deviation `sigma`.
#[derive(Debug, Clone)]
struct Wander {
    mean: f64,
    sigma: f64,
    tau_s: f64,
    x: f64,
    /// Decay and noise factors for a 1 s step, the common case, so that the
    /// exponentials are computed once.
    decay_1s: f64,
    noise_1s: f64,
}

impl Wander {
    fn new(mean: f64, sigma: f64, tau_s: f64, rng: &mut SmallRng) -> Self {
        let decay_1s = (-1.0 / tau_s).exp();
        Wander {
            mean,
            sigma,
            tau_s,
            x: mean + sigma * normal(rng),
            decay_1s,
            noise_1s: sigma * (1.0 - decay_1s * decay_1s).sqrt(),
        }
    }

    fn step(&mut self, dt_s: f64, rng: &mut SmallRng) -> f64 {
        if dt_s > 0.0 {
            let (decay, noise) = if dt_s == 1.0 {
                (self.decay_1s, self.noise_1s)
            } else {
                let d = (-dt_s / self.tau_s).exp();
                (d, self.sigma * (1.0 - d * d).sqrt())
            };
            self.x = self.mean + (self.x - self.mean) * decay + noise * normal(rng);
        }
        self.x
    }
}

/// An approximately standard normal sample (sum of two uniforms, scaled to
/// unit variance): cheap, bounded, and good enough for sensor noise.
fn normal(rng: &mut SmallRng) -> f64 {
    let u: f64 = rng.random::<f64>() + rng.random::<f64>() - 1.0;
    u * 6f64.sqrt()
}

fn round_to(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

/// One appliance circuit of one meter.
#[derive(Debug, Clone)]
struct Appliance {
    profile: Profile,
    /// This meter's appliance's running power, W.
    rated_w: f64,
    on: bool,
    /// Seconds until the next switch.
    left_s: f64,
    /// Seconds since the last switch-on (meaningful while on).
    run_s: f64,
    /// Slow load variation while on, a multiplier around 1.
    load: Wander,
    /// Room temperature, °C (thermostat-controlled appliances only).
    room_c: f64,
    /// Thermostat setpoint while someone is home, °C; 4 °C more otherwise.
    setpoint_c: f64,
}

/// What the household is doing at one moment of model time.
#[derive(Debug, Clone, Copy)]
struct Env {
    /// 0 (nobody home or asleep) to 1 (everybody home and awake).
    occupancy: f64,
    outdoor_c: f64,
}

impl Env {
    fn at(time_ns: i64) -> Env {
        let secs = time_ns.div_euclid(NS_PER_S);
        let hour = secs.rem_euclid(86_400) as f64 / HOUR;
        Env {
            occupancy: occupancy(time_ns),
            outdoor_c: 27.0 + 7.0 * (2.0 * std::f64::consts::PI * (hour - 9.0) / 24.0).sin(),
        }
    }
}

/// How many people are home and awake, 0 to 1, by hour and weekday (UTC
/// stands in for local time): weekday mornings and evenings, most of the
/// weekend day, little at night.
pub fn occupancy(time_ns: i64) -> f64 {
    let secs = time_ns.div_euclid(NS_PER_S);
    let day = secs.div_euclid(86_400);
    // 1970-01-01 was a Thursday; 0 is Monday.
    let weekday = (day + 3).rem_euclid(7);
    let hour = secs.rem_euclid(86_400) / 3600;
    match (weekday >= 5, hour) {
        (_, 0..=5) => 0.1,
        (false, 6..=7) => 0.8,
        (false, 8..=16) => 0.2,
        (false, 17..=22) => 1.0,
        (true, 6..=7) => 0.3,
        (true, 8..=22) => 0.9,
        _ => 0.4,
    }
}

/// Cooling of a running air conditioner and the time constant of the
/// room's warming towards the outdoor temperature.
const COOLING_C_PER_S: f64 = 5.0 / HOUR;
const ROOM_TAU_S: f64 = 3.0 * HOUR;

impl Appliance {
    fn new(profile: Profile, rng: &mut SmallRng) -> Self {
        let rated_w = profile.rated_w * rng.random_range(0.9..1.1);
        let mean_on = (profile.on_s.0 + profile.on_s.1) / 2.0;
        let mean_off = (profile.off_s.0 + profile.off_s.1) / 2.0;
        // Start in the steady state: on with the duty cycle's probability,
        // somewhere in the middle of the current run or pause.
        let on = rng.random_bool(mean_on / (mean_on + mean_off));
        let (lo, hi) = if on { profile.on_s } else { profile.off_s };
        let length = rng.random_range(lo..=hi);
        let elapsed = length * rng.random::<f64>();
        Appliance {
            profile,
            rated_w,
            on,
            left_s: length - elapsed,
            // A run already going at the start is past its heating stage.
            run_s: if on { elapsed + 24.0 * HOUR } else { 0.0 },
            load: Wander::new(1.0, profile.wander, profile.wander_tau_s, rng),
            room_c: rng.random_range(23.0..28.0),
            setpoint_c: rng.random_range(23.0..25.0),
        }
    }

    /// Advances by `dt_s` seconds and returns the true power drawn, W.
    fn step(&mut self, dt_s: f64, env: Env, rng: &mut SmallRng) -> f64 {
        self.run_s += dt_s;
        if self.profile.control == Control::Thermostat {
            self.thermostat(dt_s, env);
        } else {
            self.left_s -= dt_s;
            while self.left_s <= 0.0 {
                self.on = !self.on;
                let (lo, hi) = if self.on {
                    self.profile.on_s
                } else {
                    self.profile.off_s
                };
                if self.on {
                    self.run_s = -self.left_s;
                }
                let mut length = rng.random_range(lo..=hi);
                if !self.on && self.profile.control == Control::Occupancy {
                    // People at home start things sooner.
                    length /= 0.4 + 1.2 * env.occupancy;
                }
                self.left_s += length;
            }
        }
        let load = self.load.step(dt_s, rng);
        if !self.on {
            return self.profile.standby_w;
        }
        let base = match self.profile.heat {
            Some((heat_s, heat_w)) if self.run_s < heat_s => heat_w,
            _ => self.rated_w,
        };
        let inrush = if self.profile.inrush > 1.0 && self.run_s < 10.0 * self.profile.inrush_s {
            1.0 + (self.profile.inrush - 1.0) * (-self.run_s / self.profile.inrush_s).exp()
        } else {
            1.0
        };
        let noise = 1.0 + 0.003 * normal(rng);
        // A running appliance never reads as off.
        (base * load.max(0.2) * inrush * noise).max(0.1)
    }

    /// Moves the room temperature on by `dt_s` and switches on above the
    /// setpoint's band, off below it. Long gaps are stepped a minute at a
    /// time so the room cannot overshoot.
    fn thermostat(&mut self, dt_s: f64, env: Env) {
        let setpoint = if env.occupancy >= 0.5 {
            self.setpoint_c
        } else {
            self.setpoint_c + 4.0
        };
        let mut left = dt_s;
        while left > 0.0 {
            let dt = left.min(60.0);
            left -= dt;
            self.room_c += dt * (env.outdoor_c - self.room_c) / ROOM_TAU_S;
            if self.on {
                self.room_c -= dt * COOLING_C_PER_S;
            }
            if self.on && self.room_c < setpoint - 0.5 {
                self.on = false;
            } else if !self.on && self.room_c > setpoint + 0.5 {
                self.on = true;
                self.run_s = 0.0;
            }
        }
    }
}

/// One simulated meter with the seed's channels.
#[derive(Debug, Clone)]
pub struct MeterSim {
    device: Arc<str>,
    rng: SmallRng,
    /// The channel names, built once and cloned into each reading.
    names: [Arc<str>; 17],
    /// Per-phase voltage drift around the meter's nominal voltage.
    phases: [Wander; 3],
    appliances: [Appliance; 7],
    /// Time of the previous reading, to advance the model by the gap.
    last_ns: Option<i64>,
}

impl MeterSim {
    /// A meter named `device`. The device id is mixed into the seed, so a
    /// fleet sharing one seed still has meters that differ.
    pub fn new(device: &str, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(splitmix64(seed ^ fnv1a(device.as_bytes())));
        let nominal = rng.random_range(214.0..232.0);
        let phases = [0, 1, 2].map(|_| {
            let mean = nominal + rng.random_range(-1.5..1.5);
            Wander::new(mean, 2.0, 1800.0, &mut rng)
        });
        let appliances = PROFILES.map(|p| Appliance::new(p, &mut rng));
        MeterSim {
            device: Arc::from(device),
            rng,
            names: SEED_CHANNELS.map(Arc::from),
            phases,
            appliances,
            last_ns: None,
        }
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The reading at `time_ns`, with all 17 channels. Calls are expected in
    /// time order, usually one second apart; the model advances by the gap
    /// since the previous call (not at all for a repeated or earlier time).
    pub fn reading(&mut self, table: &str, time_ns: i64) -> Reading {
        Reading {
            table: Arc::from(table),
            device: self.device.clone(),
            time: time_ns,
            values: self.values(time_ns),
        }
    }

    /// The channel values at `time_ns`, in [`SEED_CHANNELS`] order.
    fn values(&mut self, time_ns: i64) -> Vec<(Arc<str>, Value)> {
        let dt_s = match self.last_ns {
            None => 1.0,
            Some(last) => {
                (time_ns.saturating_sub(last) as f64 / NS_PER_S as f64).clamp(0.0, MAX_STEP_S)
            }
        };
        self.last_ns = Some(time_ns);

        let mut power = [0.0f64; 7];
        let mut phase_load = [0.0f64; 3];
        let env = Env::at(time_ns);
        for (p, a) in power.iter_mut().zip(self.appliances.iter_mut()) {
            *p = round_to(a.step(dt_s, env, &mut self.rng), 10.0);
            phase_load[a.profile.phase] += *p;
        }
        let mut volts = [0.0f64; 3];
        for ((v, ph), load) in volts.iter_mut().zip(self.phases.iter_mut()).zip(phase_load) {
            let drift = ph.step(dt_s, &mut self.rng);
            let sensor = 0.1 * normal(&mut self.rng);
            *v = round_to(drift - SAG_V_PER_W * load + sensor, 10.0);
        }

        let mut values = Vec::with_capacity(SEED_CHANNELS.len());
        let mut names = self.names.iter().cloned();
        for v in volts {
            if let Some(name) = names.next() {
                values.push((name, Value::F64(v)));
            }
        }
        for (p, a) in power.into_iter().zip(&self.appliances) {
            let v = volts[a.profile.phase];
            let amps = if p == 0.0 || v <= 0.0 {
                0.0
            } else {
                round_to(p / v, 100.0)
            };
            if let Some(name) = names.next() {
                values.push((name, Value::F64(amps)));
            }
            if let Some(name) = names.next() {
                values.push((name, Value::F64(p)));
            }
        }
        values
    }
}

/// Readings of `devices` meters (ids `meter-0001`, `meter-0002`, ...), one per
/// second from `start_ns` for `seconds`, in time order (all devices for one
/// second, then the next second).
pub fn fleet(
    table: &str,
    devices: usize,
    start_ns: i64,
    seconds: u64,
    seed: u64,
) -> impl Iterator<Item = Reading> + use<> {
    let sims: Vec<MeterSim> = (1..=devices)
        .map(|i| MeterSim::new(&device_id(i), seed))
        .collect();
    Fleet {
        table: Arc::from(table),
        sims,
        start_ns,
        seconds,
        second: 0,
        next_device: 0,
    }
}

/// The id of the `i`-th (1-based) meter of a [`fleet`].
pub fn device_id(i: usize) -> String {
    format!("meter-{i:04}")
}

#[derive(Debug)]
struct Fleet {
    table: Arc<str>,
    sims: Vec<MeterSim>,
    start_ns: i64,
    seconds: u64,
    /// The second being produced, counted from `start_ns`.
    second: u64,
    /// Index into `sims` of the next reading within this second.
    next_device: usize,
}

impl Iterator for Fleet {
    type Item = Reading;

    fn next(&mut self) -> Option<Reading> {
        if self.second >= self.seconds || self.sims.is_empty() {
            return None;
        }
        let offset = i64::try_from(self.second)
            .unwrap_or(i64::MAX)
            .saturating_mul(NS_PER_S);
        let time = self.start_ns.saturating_add(offset);
        let sim = self.sims.get_mut(self.next_device)?;
        let reading = Reading {
            table: self.table.clone(),
            device: sim.device.clone(),
            time,
            values: sim.values(time),
        };
        self.next_device += 1;
        if self.next_device == self.sims.len() {
            self.next_device = 0;
            self.second += 1;
        }
        Some(reading)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.seconds.saturating_sub(self.second) as u128 * self.sims.len() as u128)
            .saturating_sub(self.next_device as u128);
        let exact = usize::try_from(left).ok();
        (exact.unwrap_or(usize::MAX), exact)
    }
}

/// FNV-1a, to mix the device id into the seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 finaliser, so that nearby seeds give unrelated streams.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
