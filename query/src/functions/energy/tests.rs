//! The run-based accumulator against a direct trapezoid integration, with
//! the input split into partial states at random points.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, TimestampNanosecondArray};
use proptest::prelude::*;

use super::*;

fn acc(kind: Kind, max_gap: i64) -> Runs {
    Runs {
        kind,
        max_gap,
        window: None,
        runs: Vec::new(),
    }
}

/// Trapezoids between consecutive readings no more than `max_gap` apart.
fn reference_area(points: &[(i64, f64)], max_gap: i64) -> f64 {
    points
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 <= max_gap)
        .map(|w| (w[0].1 + w[1].1) / 2.0 * (w[1].0 - w[0].0) as f64 / 1e9)
        .sum()
}

fn feed(acc: &mut Runs, points: &[(i64, f64)]) {
    let values: ArrayRef = Arc::new(Float64Array::from_iter_values(points.iter().map(|p| p.1)));
    let times: ArrayRef = Arc::new(TimestampNanosecondArray::from_iter_values(
        points.iter().map(|p| p.0),
    ));
    acc.update_batch(&[values, times]).unwrap();
}

fn as_f64(v: ScalarValue) -> f64 {
    match v {
        ScalarValue::Float64(Some(v)) => v,
        other => panic!("{other:?}"),
    }
}

/// Strictly increasing times with gaps of 1 s to 20 min, values 0..5 kW.
fn series() -> impl Strategy<Value = Vec<(i64, f64)>> {
    prop::collection::vec((1i64..1200, 0.0f64..5000.0), 1..200).prop_map(|steps| {
        let mut t = 1_600_000_000_000_000_000i64;
        steps
            .into_iter()
            .map(|(gap, v)| {
                t += gap * 1_000_000_000;
                (t, v)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn energy_matches_the_reference_however_the_input_is_split(
        points in series(),
        cuts in prop::collection::vec(0usize..200, 0..6),
    ) {
        let max_gap = 300_000_000_000;
        let expected = reference_area(&points, max_gap) / JOULES_PER_KWH;
        // Partial accumulators over consecutive chunks, merged in a
        // shuffled order as a final aggregation would.
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (points.len() + 1)).collect();
        bounds.extend([0, points.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let mut states = Vec::new();
        for w in bounds.windows(2) {
            let mut partial = acc(Kind::EnergyKwh, max_gap);
            feed(&mut partial, &points[w[0]..w[1]]);
            states.push(partial.state().unwrap());
        }
        states.reverse();
        let mut total = acc(Kind::EnergyKwh, max_gap);
        for state in states {
            let arrays: Vec<ArrayRef> = state.iter().map(|s| s.to_array().unwrap()).collect();
            total.merge_batch(&arrays).unwrap();
        }
        let got = as_f64(total.evaluate().unwrap());
        prop_assert!((got - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{got} vs {expected}");
    }

    #[test]
    fn counter_delta_counts_increases_and_resets(values in prop::collection::vec(0u32..1000, 1..100)) {
        let points: Vec<(i64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * 1_000_000_000, f64::from(*v)))
            .collect();
        let expected: f64 = points
            .windows(2)
            .map(|w| if w[1].1 >= w[0].1 { w[1].1 - w[0].1 } else { w[1].1 })
            .sum();
        let mut a = acc(Kind::CounterDelta, i64::MAX);
        feed(&mut a, &points);
        prop_assert_eq!(as_f64(a.evaluate().unwrap()), expected);
    }
}

#[test]
fn sine_power_integrates_to_the_analytic_energy() {
    // p(t) = 1000 + 500 sin(2πt/3600) W over one hour, sampled at 1 Hz:
    // the integral is 1000 W·h = 1 kWh exactly.
    let points: Vec<(i64, f64)> = (0..=3600)
        .map(|s| {
            let p = 1000.0 + 500.0 * (2.0 * std::f64::consts::PI * f64::from(s) / 3600.0).sin();
            (i64::from(s) * 1_000_000_000, p)
        })
        .collect();
    let mut a = acc(Kind::EnergyKwh, 300_000_000_000);
    feed(&mut a, &points);
    let kwh = as_f64(a.evaluate().unwrap());
    assert!((kwh - 1.0).abs() < 1e-6, "{kwh}");
}

#[test]
fn overlapping_series_are_summed_not_interleaved() {
    let max_gap = 300_000_000_000;
    let a: Vec<(i64, f64)> = (0..=60).map(|m| (m * 60_000_000_000, 1000.0)).collect();
    let b: Vec<(i64, f64)> = (0..=60).map(|m| (m * 60_000_000_000 + 1, 500.0)).collect();
    let mut left = acc(Kind::EnergyKwh, max_gap);
    feed(&mut left, &a);
    let mut right = acc(Kind::EnergyKwh, max_gap);
    feed(&mut right, &b);
    let mut total = acc(Kind::EnergyKwh, max_gap);
    for mut part in [left, right] {
        let arrays: Vec<ArrayRef> = part
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        total.merge_batch(&arrays).unwrap();
    }
    let kwh = as_f64(total.evaluate().unwrap());
    assert!((kwh - 1.5).abs() < 1e-9, "{kwh}");
}
