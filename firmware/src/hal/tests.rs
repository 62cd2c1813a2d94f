// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use std::cell::Cell;
use std::f64::consts::PI;
use std::rc::Rc;
use std::vec::Vec;

use super::*;
use crate::measure::{Calibration, Circuit};
use crate::reading::Channel;
use crate::uplink::UplinkConfig;

const RATE: f32 = 2000.0;
const CAL_V: Calibration = Calibration::new(0.25, 2048.0);
const CAL_I: Calibration = Calibration::new(0.01, 2048.0);

/// 230 V on all phases and 4 A in phase on one circuit, 200 ms windows.
struct Synth;
impl Sampler for Synth {
    type Error = ();
    fn sample(&mut self, window: &mut [u16]) -> Result<(), ()> {
        for (k, frame) in window.chunks_mut(4).enumerate() {
            let t = k as f64 / f64::from(RATE);
            let s = (2.0 * PI * 50.0 * t).sin();
            let v = (230.0 * 2f64.sqrt() * s / 0.25 + 2048.0) as u16;
            let i = (4.0 * 2f64.sqrt() * s / 0.01 + 2048.0) as u16;
            frame.copy_from_slice(&[v, v, v, i]);
        }
        Ok(())
    }
}

struct Tick(Rc<Cell<u64>>);
impl Clock for Tick {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

/// A broker that is down while `up` is false and acknowledges everything.
#[derive(Default)]
struct Broker {
    up: Rc<Cell<bool>>,
    published: Vec<Vec<u8>>,
    unacked: usize,
}
impl Transport for Broker {
    type Error = &'static str;
    fn connect(&mut self) -> Result<(), Self::Error> {
        if self.up.get() {
            Ok(())
        } else {
            Err("refused")
        }
    }
    fn publish(&mut self, payload: &[u8]) -> Result<(), Self::Error> {
        if !self.up.get() {
            return Err("gone");
        }
        self.published.push(payload.to_vec());
        self.unacked += 1;
        Ok(())
    }
    fn take_acks(&mut self) -> Result<usize, Self::Error> {
        if !self.up.get() {
            return Err("gone");
        }
        Ok(core::mem::take(&mut self.unacked))
    }
}

#[test]
fn a_blocking_meter_measures_buffers_and_catches_up() {
    const SCHEMA: &[Channel<'static>] = crate::reading::SEED_SCHEMA.split_at(5).0;
    let circuits = [Circuit {
        phase: 0,
        cal: CAL_I,
    }];
    let cfg = MeterConfig {
        sample_rate_hz: RATE,
        phases: &[CAL_V; 3],
        circuits: &circuits,
    };
    let time = Rc::new(Cell::new(0));
    let up = Rc::new(Cell::new(false));
    let broker = Broker {
        up: up.clone(),
        ..Broker::default()
    };
    let uplink: Uplink<32, 2> = Uplink::new(UplinkConfig::default(), 3);
    let mut meter = Meter::new(Synth, Tick(time.clone()), broker, cfg, SCHEMA, uplink);
    let mut window = [0u16; 400 * 4];
    let mut buf = [0u8; 4096];
    // Five seconds with the broker down, then five with it up, but no
    // clock yet: the readings wait for their time.
    for s in 0..10u64 {
        time.set(s * 1000);
        up.set(s >= 5);
        let r = meter.step(&mut window, &mut buf);
        assert!(r.measured);
        assert_eq!(r.published, 0);
    }
    // The SNTP answer arrives: board time 0 was UTC 1_700_000_000_000.
    meter
        .sync
        .update(10_000, 1_700_000_010_000, 1_700_000_010_000, 10_000);
    time.set(10_000);
    meter.step(&mut window, &mut buf);
    time.set(11_000);
    meter.step(&mut window, &mut buf);
    // Acks are taken before publishing, so the last reading is still in flight.
    assert_eq!(meter.uplink.stats().readings_acked, 11);
    assert_eq!(meter.uplink.outbox().len(), 1);
    let first = std::str::from_utf8(&meter.transport.published[0]).unwrap();
    assert!(
        first.starts_with(
            r#"[{"ts":1700000000000,"seq":0,"pa_v":230.0,"pb_v":230.0,"pc_v":230.0,"wd_a":4.00,"wd_p":91"#
        ),
        "{first}"
    );
    assert!(first.contains(r#"{"ts":1700000009000,"seq":9,"#), "{first}");
    // 920 W for 11 s of windows.
    let wh = meter.energy[0].wh();
    assert!((wh - 920.0 * 11.0 / 3600.0).abs() < 0.02, "{wh}");
}
