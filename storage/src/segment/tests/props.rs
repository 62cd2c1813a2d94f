//! Random columns of every type round-trip exactly (floats bit for bit).

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use proptest::collection::vec;
use proptest::prelude::*;

use super::{MONTH, assert_round_trip, meta};
use crate::model::ChannelType;
use crate::segment::WriteOptions;

#[derive(Debug, Clone)]
enum Col {
    F(Vec<Option<f64>>),
    I(Vec<Option<i64>>),
    B(Vec<Option<bool>>),
    S(Vec<Option<String>>),
}

impl Col {
    fn into_array(self) -> (ChannelType, ArrayRef) {
        match self {
            Col::F(v) => (ChannelType::F64, Arc::new(Float64Array::from(v))),
            Col::I(v) => (ChannelType::I64, Arc::new(Int64Array::from(v))),
            Col::B(v) => (ChannelType::Bool, Arc::new(BooleanArray::from(v))),
            Col::S(v) => (ChannelType::Str, Arc::new(StringArray::from(v))),
        }
    }
}

/// Meter-style values `k / 10^d`, which should take the scaled path.
fn decimal() -> impl Strategy<Value = f64> {
    (-10_000_000i64..10_000_000, 0i32..10).prop_map(|(k, d)| k as f64 / 10f64.powi(d))
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        decimal(),
        Just(-0.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
    ]
}

/// `n` cells of `value`, each null with probability `p`.
fn cells<T: std::fmt::Debug>(
    p: f64,
    n: usize,
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<Option<T>>> {
    vec((0.0..1.0f64, value), n)
        .prop_map(move |v| v.into_iter().map(|(r, x)| (r >= p).then_some(x)).collect())
}

/// A column of `n` values with a random share of nulls (sometimes all or none).
fn column(n: usize) -> impl Strategy<Value = Col> {
    let nulls = prop_oneof![Just(1.0), Just(0.0), 0.0..1.0f64];
    nulls.prop_flat_map(move |p: f64| {
        prop_oneof![
            cells(p, n, decimal()).prop_map(Col::F),
            cells(p, n, any_float()).prop_map(Col::F),
            cells(p, n, any::<i64>()).prop_map(Col::I),
            cells(p, n, -3i64..3).prop_map(Col::I),
            cells(p, n, any::<bool>()).prop_map(Col::B),
            cells(p, n, prop_oneof!["[ab]{0,2}", ".{0,12}"]).prop_map(Col::S),
        ]
    })
}

fn times(n: usize) -> impl Strategy<Value = Vec<i64>> {
    let delta = prop_oneof![Just(1_000_000_000i64), 1i64..10, 1i64..3_000_000_000];
    (0i64..1_000_000_000_000, vec(delta, n)).prop_map(|(start, deltas)| {
        let mut t = MONTH.start_ns() + start;
        deltas
            .into_iter()
            .map(|d| {
                t += d;
                t
            })
            .collect()
    })
}

fn case() -> impl Strategy<Value = (Vec<i64>, Vec<Col>, usize, i32)> {
    (0usize..150).prop_flat_map(|n| (times(n), vec(column(n), 0..5), 1usize..60, 1i32..8))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_columns_round_trip((times, cols, block_rows, zstd_level) in case()) {
        let (types, arrays): (Vec<ChannelType>, Vec<ArrayRef>) =
            cols.into_iter().map(Col::into_array).unzip();
        let names: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
        let columns: Vec<(&str, ChannelType)> =
            names.iter().map(String::as_str).zip(types).collect();
        let opts = WriteOptions { block_rows, zstd_level };
        assert_round_trip(&meta(&columns), &times, &arrays, &opts);
    }
}

/// The definition of a float column's bounds: `total_cmp` order over the
/// non-null, non-NaN values; NaN bounds when there are none.
fn reference_bounds(values: &[Option<f64>]) -> (u64, u64) {
    let mut kept = values.iter().flatten().filter(|v| !v.is_nan());
    let Some(&first) = kept.next() else {
        return (f64::NAN.to_bits(), f64::NAN.to_bits());
    };
    let (lo, hi) = kept.fold((first, first), |(lo, hi), &v| {
        (
            if v.total_cmp(&lo).is_lt() { v } else { lo },
            if v.total_cmp(&hi).is_gt() { v } else { hi },
        )
    });
    (lo.to_bits(), hi.to_bits())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn float_bounds_follow_total_order(values in (0.0..1.0f64).prop_flat_map(|p| cells(p, 40, any_float()))) {
        let array = Float64Array::from(values.clone());
        let stats = crate::segment::write::stats_of(&array, ChannelType::F64).unwrap();
        let got = match stats {
            crate::segment::Stats::F64 { min, max } => (min.to_bits(), max.to_bits()),
            crate::segment::Stats::AllNull => (f64::NAN.to_bits(), f64::NAN.to_bits()),
            other => panic!("float column gave {other:?}"),
        };
        let want = reference_bounds(&values);
        // NaN bounds mean "no bounds": any NaN bit pattern will do.
        if f64::from_bits(want.0).is_nan() {
            prop_assert!(f64::from_bits(got.0).is_nan() && f64::from_bits(got.1).is_nan());
        } else {
            prop_assert_eq!(got, want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The scaled-decimal test rounds without libm's `round` yet accepts
    /// exactly what the definition `round(v * 10^d)` accepts.
    #[test]
    fn scaled_decimals_match_their_definition(v in any_float(), d in 0usize..10) {
        let p = 10f64.powi(d as i32);
        let k = (v * p).round();
        let want = (!k.is_nan() && k.abs() < 9_007_199_254_740_992.0)
            .then_some(k as i64)
            .filter(|&k| (k as f64 / p).to_bits() == v.to_bits());
        prop_assert_eq!(crate::segment::encoding::scaled(v, d), want);
    }
}
