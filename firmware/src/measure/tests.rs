// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use std::f64::consts::PI;
use std::vec::Vec;

use super::*;

const RATE: f32 = 4000.0;
/// Volts and amperes per count, bias at mid-range of a 12-bit ADC.
const CAL_V: Calibration = Calibration::new(0.25, 2048.0);
const CAL_I: Calibration = Calibration::new(0.02, 2048.0);

/// A 12-bit ADC sample of `x` (in volts or amperes) under `cal`, with the
/// DC bias `dc` counts off the calibrated offset.
fn adc(x: f64, cal: Calibration, dc: f64) -> u16 {
    (x / f64::from(cal.ratio) + f64::from(cal.offset) + dc)
        .round()
        .clamp(0.0, 4095.0) as u16
}

/// `n` samples of `sum_k amp_k sin(2π k f t + phase_k)`.
fn wave(n: usize, f: f64, parts: &[(u32, f64, f64)], cal: Calibration, dc: f64) -> Vec<u16> {
    (0..n)
        .map(|s| {
            let t = s as f64 / f64::from(RATE);
            let x: f64 = parts
                .iter()
                .map(|&(k, amp, ph)| amp * (2.0 * PI * f64::from(k) * f * t + ph).sin())
                .sum();
            adc(x, cal, dc)
        })
        .collect()
}

fn close(got: f32, want: f64, rel: f64, what: &str) {
    let err = (f64::from(got) - want).abs() / want.abs().max(1e-9);
    assert!(
        err <= rel,
        "{what}: got {got}, want {want} ({:.3} %)",
        err * 100.0
    );
}

#[test]
fn sines_with_known_amplitude_and_phase() {
    // 230 V, 8 A, at 50 and 60 Hz, with the current lagging by 0 to 60
    // degrees; windows that are not a whole number of cycles.
    for (f, n) in [(50.0, 1013), (60.0, 977), (49.8, 2000)] {
        for lag_deg in [0.0f64, 25.0, 60.0] {
            let (vp, ip) = (230.0 * 2f64.sqrt(), 8.0 * 2f64.sqrt());
            let lag = lag_deg.to_radians();
            let v = wave(n, f, &[(1, vp, 0.0)], CAL_V, 0.0);
            let i = wave(n, f, &[(1, ip, -lag)], CAL_I, 0.0);
            let m = measure_pair(&v, CAL_V, &i, CAL_I, RATE).unwrap();
            let what = |q| std::format!("{q} at {f} Hz, lag {lag_deg}");
            close(m.vrms, 230.0, 0.005, &what("Vrms"));
            close(m.irms, 8.0, 0.005, &what("Irms"));
            close(m.real_w, 230.0 * 8.0 * lag.cos(), 0.005, &what("P"));
            close(m.apparent_va, 230.0 * 8.0, 0.005, &what("S"));
            close(m.power_factor, lag.cos(), 0.005, &what("PF"));
            close(m.frequency_hz.unwrap(), f, 0.002, &what("f"));
        }
    }
}

#[test]
fn harmonics_and_dc_offset() {
    // A rectifier-like current: fundamental plus 3rd and 5th harmonics; a
    // voltage with a 3rd harmonic; both with a bias far off the calibrated
    // offset. RMS adds in quadrature; only same-order harmonics carry power.
    let f = 50.0;
    let (v1, v3) = (325.0, 15.0);
    let (i1, i3, i5) = (10.0, 5.0, 2.0);
    let v = wave(1600, f, &[(1, v1, 0.0), (3, v3, 0.3)], CAL_V, 57.0);
    let i = wave(
        1600,
        f,
        &[(1, i1, -0.2), (3, i3, 0.3 - 0.5), (5, i5, 1.0)],
        CAL_I,
        -120.0,
    );
    let m = measure_pair(&v, CAL_V, &i, CAL_I, RATE).unwrap();
    let vrms = ((v1 * v1 + v3 * v3) / 2.0).sqrt();
    let irms = ((i1 * i1 + i3 * i3 + i5 * i5) / 2.0).sqrt();
    let p = v1 * i1 / 2.0 * 0.2f64.cos() + v3 * i3 / 2.0 * 0.5f64.cos();
    close(m.vrms, vrms, 0.005, "Vrms");
    close(m.irms, irms, 0.005, "Irms");
    close(m.real_w, p, 0.005, "P");
    close(m.power_factor, p / (vrms * irms), 0.005, "PF");
    close(m.frequency_hz.unwrap(), f, 0.002, "f");
}

#[test]
fn phase_correction_removes_a_sensor_delay() {
    // Resistive load, but the current sensor reads 4 degrees late.
    let f = 50.0;
    let v = wave(2000, f, &[(1, 325.0, 0.0)], CAL_V, 0.0);
    let i = wave(2000, f, &[(1, 10.0, -4f64.to_radians())], CAL_I, 0.0);
    let raw = measure_pair(&v, CAL_V, &i, CAL_I, RATE).unwrap();
    assert!(raw.power_factor < 0.998, "{raw:?}");
    let cal = Calibration {
        phase_deg: 4.0,
        ..CAL_I
    };
    let fixed = measure_pair(&v, CAL_V, &i, cal, RATE).unwrap();
    close(fixed.power_factor, 1.0, 0.005, "PF corrected");
    close(fixed.real_w, 325.0 * 10.0 / 2.0, 0.005, "P corrected");
}

#[test]
fn noise_does_not_add_zero_crossings() {
    // ±3 counts of noise around each crossing would double-count without
    // hysteresis.
    let mut v = wave(2000, 50.0, &[(1, 325.0, 0.0)], CAL_V, 0.0);
    for (k, s) in v.iter_mut().enumerate() {
        *s = (i32::from(*s) + [(-3), 2, 0, 3, -2][k % 5]) as u16;
    }
    let i = wave(2000, 50.0, &[(1, 1.0, 0.0)], CAL_I, 0.0);
    let m = measure_pair(&v, CAL_V, &i, CAL_I, RATE).unwrap();
    close(m.frequency_hz.unwrap(), 50.0, 0.002, "f");
}

#[test]
fn no_current_and_no_voltage() {
    let v = wave(800, 50.0, &[(1, 325.0, 0.0)], CAL_V, 0.0);
    let i = std::vec![2048u16; 800];
    let m = measure_pair(&v, CAL_V, &i, CAL_I, RATE).unwrap();
    assert_eq!((m.irms, m.real_w, m.power_factor), (0.0, 0.0, 0.0));
    let dead = std::vec![2048u16; 800];
    let m = measure_pair(&dead, CAL_V, &i, CAL_I, RATE).unwrap();
    assert_eq!(m.vrms, 0.0);
    assert_eq!(m.frequency_hz, None);
    assert!(matches!(
        measure_pair(&dead[..10], CAL_V, &i, CAL_I, RATE),
        Err(Error::WindowTooShort { .. })
    ));
}

#[test]
fn meter_window_gives_the_seed_layout() {
    // Three phases 120 degrees apart; circuit 1 on phase b at PF 0.8,
    // circuit 2 on phase c, resistive.
    let n = 1200;
    let f = 50.0;
    let phases = [0.0, -2.0 * PI / 3.0, 2.0 * PI / 3.0];
    let vs: Vec<Vec<u16>> = [230.0, 228.0, 233.0]
        .iter()
        .zip(phases)
        .map(|(&vr, ph)| wave(n, f, &[(1, vr * 2f64.sqrt(), ph)], CAL_V, 0.0))
        .collect();
    let i1 = wave(
        n,
        f,
        &[(1, 5.0 * 2f64.sqrt(), phases[1] - 0.8f64.acos())],
        CAL_I,
        0.0,
    );
    let i2 = wave(n, f, &[(1, 3.0 * 2f64.sqrt(), phases[2])], CAL_I, 0.0);
    let mut window = Vec::new();
    for k in 0..n {
        window.extend([vs[0][k], vs[1][k], vs[2][k], i1[k], i2[k]]);
    }
    let circuits = [
        Circuit {
            phase: 1,
            cal: CAL_I,
        },
        Circuit {
            phase: 2,
            cal: CAL_I,
        },
    ];
    let cfg = MeterConfig {
        sample_rate_hz: RATE,
        phases: &[CAL_V; 3],
        circuits: &circuits,
    };
    let m = cfg.measure(&window).unwrap();
    let mut out = [0.0; MAX_CHANNELS];
    assert_eq!(m.values(&mut out), 7);
    let want = [
        230.0,
        228.0,
        233.0,
        5.0,
        228.0 * 5.0 * 0.8,
        3.0,
        233.0 * 3.0,
    ];
    for (k, (&got, want)) in out.iter().zip(want).enumerate() {
        close(got, want, 0.005, &std::format!("value {k}"));
    }
}

#[test]
fn energy_matches_the_analytic_integral() {
    // A load of P(t) = 1000 + 500 sin(2π t / 3600) W measured once a second
    // for 2 hours: ∫ = 2000 Wh exactly (whole periods of the sine).
    let mut e = Energy::default();
    for s in 0..7200 {
        let t = f64::from(s) + 0.5;
        let p = 1000.0 + 500.0 * (2.0 * PI * t / 3600.0).sin();
        e.add(p as f32, 1000);
    }
    assert!((e.wh() - 2000.0).abs() < 0.01, "{}", e.wh());
    // Measured from real windows: a 2 kW resistive load for an hour of
    // 1 s windows is 2 kWh.
    let v = wave(400, 50.0, &[(1, 325.27, 0.0)], CAL_V, 0.0);
    let i = wave(400, 50.0, &[(1, 8.696 * 2f64.sqrt(), 0.0)], CAL_I, 0.0);
    let m = measure_pair(&v, CAL_V, &i, CAL_I, RATE).unwrap();
    let mut e = Energy::default();
    for _ in 0..3600 {
        e.add(m.real_w, 1000);
    }
    let want = 325.27 / 2f64.sqrt() * 8.696;
    assert!((e.wh() - want).abs() / want < 0.005, "{} vs {want}", e.wh());
}
