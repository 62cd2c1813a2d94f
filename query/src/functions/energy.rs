//! Time-weighted aggregates: `energy_kwh(power_w, time [, max_gap])`,
//! `twa(value, time [, max_gap])`, `energy_coverage(time [, window])` and
//! `counter_delta(counter, time)`.
//!
//! Each group's readings are integrated with the trapezoid rule between
//! consecutive readings. A gap longer than `max_gap` (an `INTERVAL`; the
//! engine's default otherwise) contributes nothing: no energy, no time in
//! the average, no coverage. A meter that was off is not assumed to have
//! drawn its last power all along.
//!
//! The accumulator keeps runs of readings, not readings: a run is a
//! stretch without a long gap, summarised by its first and last reading
//! and its integral, so memory does not grow with the data. This needs
//! each input stream to deliver a group's readings in time order, which
//! Wattson's scans do (every partition is one device's month, sorted by
//! time) and which the engine keeps by not repartitioning scans round
//! robin. Runs from different partitions are joined in time order when
//! states merge: a device's months join seamlessly. Runs that overlap in
//! time come from different series (several devices in one group) and are
//! integrated separately and summed, so `energy_kwh` over a group of
//! devices is their total energy.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType,
};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

const NANOS_PER_SECOND: f64 = 1e9;
const JOULES_PER_KWH: f64 = 3.6e6;
/// Runs kept before sorting and joining them; only input that is not in
/// time order gets here.
const COMPACT_AT: usize = 1024;

/// Which aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    EnergyKwh,
    EnergyCoverage,
    Twa,
    CounterDelta,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::EnergyKwh => "energy_kwh",
            Kind::EnergyCoverage => "energy_coverage",
            Kind::Twa => "twa",
            Kind::CounterDelta => "counter_delta",
        }
    }

    /// Position of the time argument.
    fn time_arg(self) -> usize {
        match self {
            Kind::EnergyCoverage => 0,
            _ => 1,
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Kind::EnergyKwh => "energy_kwh(power_w, time [, max_gap INTERVAL])",
            Kind::EnergyCoverage => "energy_coverage(time [, window INTERVAL])",
            Kind::Twa => "twa(value, time [, max_gap INTERVAL])",
            Kind::CounterDelta => "counter_delta(counter, time)",
        }
    }

    fn max_args(self) -> usize {
        match self {
            Kind::CounterDelta => 2,
            Kind::EnergyCoverage => 2,
            _ => 3,
        }
    }
}

/// One of the time-weighted aggregates, with the engine's default gap limit.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimeWeighted {
    kind: Kind,
    max_gap_ns: i64,
    signature: Signature,
}

impl TimeWeighted {
    pub fn new(kind: Kind, max_gap_ns: i64) -> Self {
        TimeWeighted {
            kind,
            max_gap_ns,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// All four, ready to register.
    pub fn all(max_gap_ns: i64) -> Vec<AggregateUDF> {
        [
            Kind::EnergyKwh,
            Kind::EnergyCoverage,
            Kind::Twa,
            Kind::CounterDelta,
        ]
        .into_iter()
        .map(|k| AggregateUDF::from(TimeWeighted::new(k, max_gap_ns)))
        .collect()
    }

    fn usage_error(&self, what: String) -> DataFusionError {
        DataFusionError::Plan(format!("{what}; usage: {}", self.kind.usage()))
    }
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

impl AggregateUDFImpl for TimeWeighted {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let min = self.kind.time_arg() + 1;
        if arg_types.len() < min || arg_types.len() > self.kind.max_args() {
            return Err(self.usage_error(format!(
                "{} takes {min} to {} arguments, got {}",
                self.kind.name(),
                self.kind.max_args(),
                arg_types.len()
            )));
        }
        arg_types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                if i == self.kind.time_arg() {
                    match ty {
                        DataType::Timestamp(_, tz) => {
                            Ok(DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()))
                        }
                        other => Err(self.usage_error(format!(
                            "{}: the time argument must be a timestamp, got {other}",
                            self.kind.name()
                        ))),
                    }
                } else if i > self.kind.time_arg() {
                    match ty {
                        DataType::Interval(_) => Ok(ty.clone()),
                        other => Err(self.usage_error(format!(
                            "{}: argument {} must be an INTERVAL such as INTERVAL '5 minutes', got {other}",
                            self.kind.name(),
                            i + 1
                        ))),
                    }
                } else if ty.is_numeric() || ty.is_null() {
                    Ok(DataType::Float64)
                } else {
                    Err(self.usage_error(format!(
                        "{}: the value argument must be numeric, got {ty}",
                        self.kind.name()
                    )))
                }
            })
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let extra = args.exprs.get(self.kind.time_arg() + 1);
        let interval = match extra {
            None => None,
            Some(expr) => {
                let literal = expr.downcast_ref::<Literal>().ok_or_else(|| {
                    self.usage_error(format!(
                        "{}: the INTERVAL argument must be a constant",
                        self.kind.name()
                    ))
                })?;
                Some(interval_ns(literal.value()).ok_or_else(|| {
                    self.usage_error(format!(
                        "{}: the INTERVAL must be positive and in days, hours, minutes or seconds (months vary in length)",
                        self.kind.name()
                    ))
                })?)
            }
        };
        let (max_gap, window) = match self.kind {
            Kind::EnergyCoverage => (self.max_gap_ns, interval),
            Kind::CounterDelta => (i64::MAX, None),
            _ => (interval.unwrap_or(self.max_gap_ns), None),
        };
        Ok(Box::new(Runs {
            kind: self.kind,
            max_gap,
            window,
            runs: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "times"),
                list_of(DataType::Int64),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "values"),
                list_of(DataType::Float64),
                true,
            )),
        ])
    }
}

/// A positive interval without months, in ns.
fn interval_ns(v: &ScalarValue) -> Option<i64> {
    let ns = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => i64::from(i.days)
            .checked_mul(86_400_000_000_000)?
            .checked_add(i.nanoseconds)?,
        ScalarValue::IntervalDayTime(Some(i)) => i64::from(i.days)
            .checked_mul(86_400_000)?
            .checked_add(i64::from(i.milliseconds))?
            .checked_mul(1_000_000)?,
        _ => return None,
    };
    (ns > 0).then_some(ns)
}

/// A stretch of readings with no gap longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    t0: i64,
    v0: f64,
    t1: i64,
    v1: f64,
    /// The integral in value·seconds, or for counters the increase.
    area: f64,
    sum: f64,
    n: i64,
}

impl Run {
    fn point(t: i64, v: f64) -> Run {
        Run {
            t0: t,
            v0: v,
            t1: t,
            v1: v,
            area: 0.0,
            sum: v,
            n: 1,
        }
    }
}

#[derive(Debug)]
struct Runs {
    kind: Kind,
    max_gap: i64,
    window: Option<i64>,
    /// In arrival order until [`Runs::normalize`] sorts them.
    runs: Vec<Run>,
}

impl Runs {
    /// What the stretch from (t0, v0) to (t1, v1) adds.
    fn step(&self, t0: i64, v0: f64, t1: i64, v1: f64) -> f64 {
        match self.kind {
            // A counter that went down was reset to zero and counted up to v1.
            Kind::CounterDelta => {
                if v1 >= v0 {
                    v1 - v0
                } else {
                    v1
                }
            }
            _ => (v0 + v1) / 2.0 * ((t1 - t0) as f64 / NANOS_PER_SECOND),
        }
    }

    /// Whether `next` continues `run` without a long gap.
    fn joins(&self, run: &Run, next: &Run) -> bool {
        next.t0 > run.t1 && next.t0 - run.t1 <= self.max_gap
    }

    fn join(&self, run: &mut Run, next: &Run) {
        run.area += self.step(run.t1, run.v1, next.t0, next.v0) + next.area;
        run.t1 = next.t1;
        run.v1 = next.v1;
        run.sum += next.sum;
        run.n += next.n;
    }

    fn push_run(&mut self, next: Run) {
        // Otherwise a new run: after a long gap, or out of order (a second
        // series in the group).
        if let Some(last) = self.runs.last()
            && self.joins(last, &next)
        {
            let mut joined = *last;
            self.join(&mut joined, &next);
            if let Some(slot) = self.runs.last_mut() {
                *slot = joined;
            }
            return;
        }
        self.runs.push(next);
        if self.runs.len() >= COMPACT_AT {
            self.normalize();
        }
    }

    /// Sorts runs by start and joins those that follow each other closely.
    fn normalize(&mut self) {
        self.runs.sort_by_key(|r| (r.t0, r.t1));
        let mut out: Vec<Run> = Vec::with_capacity(self.runs.len());
        for next in std::mem::take(&mut self.runs) {
            // Join onto the latest-ending run it follows, so runs of one
            // series chain up even when another series overlaps them.
            let target = out
                .iter_mut()
                .rev()
                .take(8)
                .filter(|r| next.t0 > r.t1 && next.t0 - r.t1 <= self.max_gap)
                .max_by_key(|r| r.t1);
            match target {
                Some(run) => {
                    let mut joined = *run;
                    self.join(&mut joined, &next);
                    *run = joined;
                }
                None => out.push(next),
            }
        }
        self.runs = out;
    }

    fn covered_ns(&self) -> i64 {
        // Union of the runs' spans: overlapping series count once.
        let mut spans: Vec<(i64, i64)> = self.runs.iter().map(|r| (r.t0, r.t1)).collect();
        spans.sort_unstable();
        let mut total = 0i64;
        let mut current: Option<(i64, i64)> = None;
        for (a, b) in spans {
            current = match current {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    total = total.saturating_add(cb - ca);
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((a, b)) = current {
            total = total.saturating_add(b - a);
        }
        total
    }
}

impl Accumulator for Runs {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let time_idx = self.kind.time_arg();
        let times = values[time_idx].as_primitive::<TimestampNanosecondType>();
        let vals = (time_idx == 1).then(|| values[0].as_primitive::<Float64Type>());
        for i in 0..times.len() {
            if times.is_null(i) {
                continue;
            }
            let v = match vals {
                Some(vals) if vals.is_null(i) => continue,
                Some(vals) => vals.value(i),
                None => 0.0,
            };
            if !v.is_finite() {
                continue;
            }
            self.push_run(Run::point(times.value(i), v));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        self.normalize();
        if self.runs.is_empty() {
            return Ok(ScalarValue::Float64(None));
        }
        let area: f64 = self.runs.iter().map(|r| r.area).sum();
        let value = match self.kind {
            Kind::EnergyKwh => Some(area / JOULES_PER_KWH),
            Kind::CounterDelta => Some(area),
            Kind::Twa => {
                let seconds: f64 = self
                    .runs
                    .iter()
                    .map(|r| (r.t1 - r.t0) as f64 / NANOS_PER_SECOND)
                    .sum();
                if seconds > 0.0 {
                    Some(area / seconds)
                } else {
                    // No two readings close enough to weight: the plain mean.
                    let n: i64 = self.runs.iter().map(|r| r.n).sum();
                    let sum: f64 = self.runs.iter().map(|r| r.sum).sum();
                    Some(sum / n as f64)
                }
            }
            Kind::EnergyCoverage => {
                let first = self.runs.iter().map(|r| r.t0).min().unwrap_or(0);
                let last = self.runs.iter().map(|r| r.t1).max().unwrap_or(0);
                let window = self.window.unwrap_or(last.saturating_sub(first));
                (window > 0).then(|| (self.covered_ns() as f64 / window as f64).min(1.0))
            }
        };
        Ok(ScalarValue::Float64(value))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.runs.capacity() * std::mem::size_of::<Run>()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.normalize();
        let mut times = Vec::with_capacity(self.runs.len() * 3);
        let mut values = Vec::with_capacity(self.runs.len() * 4);
        for r in &self.runs {
            times.extend([r.t0, r.t1, r.n].map(|v| ScalarValue::Int64(Some(v))));
            values.extend([r.v0, r.v1, r.area, r.sum].map(|v| ScalarValue::Float64(Some(v))));
        }
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&times, &DataType::Int64)),
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let times = states[0].as_list::<i32>();
        let values = states[1].as_list::<i32>();
        for row in 0..times.len() {
            if times.is_null(row) || values.is_null(row) {
                continue;
            }
            let t = times.value(row);
            let t: &Int64Array = t.as_primitive::<Int64Type>();
            let v = values.value(row);
            let v = v.as_primitive::<Float64Type>();
            if !t.len().is_multiple_of(3) || v.len() != t.len() / 3 * 4 {
                return Err(DataFusionError::Internal(format!(
                    "{}: malformed partial state",
                    self.kind.name()
                )));
            }
            for k in 0..t.len() / 3 {
                self.runs.push(Run {
                    t0: t.value(3 * k),
                    t1: t.value(3 * k + 1),
                    n: t.value(3 * k + 2),
                    v0: v.value(4 * k),
                    v1: v.value(4 * k + 1),
                    area: v.value(4 * k + 2),
                    sum: v.value(4 * k + 3),
                });
            }
        }
        self.normalize();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
