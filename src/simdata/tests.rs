use super::*;

const START: i64 = 1_658_244_261_000_000_000; // 2022-07-19T15:24:21Z

fn f64s(r: &Reading) -> Vec<f64> {
    r.values
        .iter()
        .map(|(_, v)| match v {
            Value::F64(x) => *x,
            other => panic!("not f64: {other:?}"),
        })
        .collect()
}

fn is_rounded(x: f64, scale: f64) -> bool {
    ((x * scale).round() / scale - x).abs() < 1e-9
}

#[test]
fn readings_have_the_seed_shape() {
    let mut sim = MeterSim::new("viconsl", 7);
    let r = sim.reading(SEED_TABLE, START);
    assert_eq!(&*r.table, "power_consumption");
    assert_eq!(&*r.device, "viconsl");
    assert_eq!(r.time, START);
    let names: Vec<&str> = r.values.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, SEED_CHANNELS);
    for name in SEED_CHANNELS {
        wattson_storage::model::validate_channel_name(name).unwrap();
    }
}

#[test]
fn same_seed_same_readings_other_device_other_readings() {
    let a: Vec<Reading> = (0..100)
        .map({
            let mut s = MeterSim::new("m1", 42);
            move |i| s.reading("t", START + i * NS_PER_S)
        })
        .collect();
    let b: Vec<Reading> = (0..100)
        .map({
            let mut s = MeterSim::new("m1", 42);
            move |i| s.reading("t", START + i * NS_PER_S)
        })
        .collect();
    assert_eq!(a, b);
    let mut other = MeterSim::new("m2", 42);
    assert_ne!(f64s(&a[0]), f64s(&other.reading("t", START)));
}

#[test]
fn values_are_physical_and_rounded() {
    let mut sim = MeterSim::new("meter-0001", 1);
    // Two simulated days, one reading per second.
    let mut on_seconds = [0u32; 7];
    let mut switches = [0u32; 7];
    let mut prev_on = [None::<bool>; 7];
    let mut ac_power = Vec::new();
    for i in 0..2 * 86_400 {
        let v = f64s(&sim.reading(SEED_TABLE, START + i * NS_PER_S));
        for volts in &v[0..3] {
            assert!((195.0..250.0).contains(volts), "voltage {volts}");
            assert!(is_rounded(*volts, 10.0));
        }
        for k in 0..7 {
            let (amps, watts) = (v[3 + 2 * k], v[4 + 2 * k]);
            assert!(is_rounded(amps, 100.0), "current {amps}");
            assert!(is_rounded(watts, 10.0), "power {watts}");
            // The washer's standby is not a run.
            let on = watts > PROFILES[k].standby_w;
            if on {
                on_seconds[k] += 1;
                let volts = v[PROFILES[k].phase];
                assert!((amps - watts / volts).abs() <= 0.005 + 1e-9);
                if k == 2 && i % 60 == 0 {
                    ac_power.push(watts);
                }
            } else {
                assert_eq!(watts, round_to(PROFILES[k].standby_w, 10.0));
                if watts == 0.0 {
                    assert_eq!(amps, 0.0);
                }
            }
            if prev_on[k].is_some_and(|p| p != on) {
                switches[k] += 1;
            }
            prev_on[k] = Some(on);
        }
    }
    // The fridge cycles many times a day and is neither always on nor off.
    assert!(switches[1] > 40, "fridge switches {}", switches[1]);
    assert!(on_seconds[1] > 30_000 && on_seconds[1] < 140_000);
    // Every appliance switched at least once in two days.
    for (k, s) in switches.iter().enumerate() {
        assert!(*s >= 1, "appliance {k} never switched");
    }
    // The air conditioner runs near 2200 W, once past its inrush.
    let mean = ac_power.iter().sum::<f64>() / ac_power.len() as f64;
    assert!((1900.0..2500.0).contains(&mean), "ac01 mean {mean}");
}

#[test]
fn load_varies_smoothly_while_on() {
    let mut sim = MeterSim::new("meter-0002", 3);
    let mut prev: Option<f64> = None;
    let mut max_jump: f64 = 0.0;
    for i in 0..86_400 {
        let v = f64s(&sim.reading(SEED_TABLE, START + i * NS_PER_S));
        let rh = v[10]; // rh01_p: no inrush, so jumps only at switching
        match (prev, rh > 0.0) {
            (Some(p), true) if p > 0.0 => max_jump = max_jump.max((rh - p).abs() / p),
            _ => {}
        }
        prev = Some(rh);
    }
    assert!(max_jump < 0.05, "heater power jumped by {max_jump}");
}

#[test]
fn fleet_is_in_time_order_with_all_devices_per_second() {
    let readings: Vec<Reading> = fleet(SEED_TABLE, 3, START, 4, 9).collect();
    assert_eq!(readings.len(), 12);
    assert_eq!(
        fleet(SEED_TABLE, 3, START, 4, 9).size_hint(),
        (12, Some(12))
    );
    for (i, r) in readings.iter().enumerate() {
        assert_eq!(r.time, START + (i / 3) as i64 * NS_PER_S);
        assert_eq!(&*r.device, device_id(i % 3 + 1));
        assert_eq!(r.values.len(), 17);
    }
    assert_eq!(&*readings[0].device, "meter-0001");
    // A fleet meter behaves like the same meter simulated alone.
    let mut alone = MeterSim::new("meter-0002", 9);
    for s in 0..4 {
        assert_eq!(
            readings[s * 3 + 1],
            alone.reading(SEED_TABLE, START + s as i64 * NS_PER_S)
        );
    }
    assert_eq!(fleet(SEED_TABLE, 0, START, 4, 9).count(), 0);
    assert_eq!(fleet(SEED_TABLE, 2, START, 0, 9).count(), 0);
}

#[test]
fn gaps_and_repeats_do_not_break_the_model() {
    let mut sim = MeterSim::new("m", 5);
    sim.reading("t", START);
    sim.reading("t", START); // same second again
    sim.reading("t", START - NS_PER_S); // out of order
    sim.reading("t", START + 30 * 86_400 * NS_PER_S); // a month offline
    let r = sim.reading("t", i64::MAX);
    assert_eq!(r.values.len(), 17);
}

#[test]
fn air_conditioners_follow_the_afternoon_heat_and_people_follow_the_week() {
    // 2022-07-04 is a Monday; 2022-07-09 a Saturday.
    let monday = 1_656_892_800 * NS_PER_S;
    let hour = 3600 * NS_PER_S;
    assert_eq!(occupancy(monday + 3 * hour), 0.1);
    assert_eq!(occupancy(monday + 11 * hour), 0.2);
    assert_eq!(occupancy(monday + 19 * hour), 1.0);
    assert_eq!(occupancy(monday + 5 * 24 * hour + 11 * hour), 0.9);
    // Over a week of ten meters, the air conditioners draw far more in the
    // afternoon (13:00-18:00) than before dawn (2:00-7:00).
    let (mut afternoon, mut night) = (0.0, 0.0);
    for m in 0..10 {
        let mut sim = MeterSim::new(&format!("m{m}"), 3);
        for s in (0..7 * 86_400).step_by(10) {
            let t = monday + s * NS_PER_S;
            let v = f64s(&sim.reading(SEED_TABLE, t));
            let h = (s % 86_400) / 3600;
            let ac = v[8] + v[14];
            if (13..18).contains(&h) {
                afternoon += ac;
            } else if (2..7).contains(&h) {
                night += ac;
            }
        }
    }
    assert!(
        afternoon > 2.0 * night,
        "afternoon {afternoon} vs night {night}"
    );
}
