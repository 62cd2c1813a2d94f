//! What a query's filters say about time and devices, for pruning.
//!
//! [`Region::of`] reads a filter expression and returns a region that
//! contains every row the filter can accept: a half-open time range and,
//! when the filter names them, a set of devices. It is conservative: any
//! expression it does not understand accepts everything. `AND` intersects
//! regions and `OR` takes their hull, so the scan may read more than the
//! filter keeps but never less. DataFusion still applies the filter to the
//! rows (the pushdown is `Inexact`).

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

/// Rows with `start <= time < end`, of these devices (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: i64,
    pub end: i64,
    pub devices: Option<BTreeSet<String>>,
}

/// Which columns carry the time and the device in the table being scanned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Columns<'a> {
    pub time: &'a str,
    /// `None` for tables of a single device.
    pub device: Option<&'a str>,
}

impl Region {
    pub fn all() -> Self {
        Region {
            start: i64::MIN,
            end: i64::MAX,
            devices: None,
        }
    }

    pub fn is_all(&self) -> bool {
        *self == Region::all()
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end || self.devices.as_ref().is_some_and(BTreeSet::is_empty)
    }

    fn time(start: i64, end: i64) -> Self {
        Region {
            start,
            end,
            devices: None,
        }
    }

    fn devices(devices: BTreeSet<String>) -> Self {
        Region {
            devices: Some(devices),
            ..Region::all()
        }
    }

    pub fn intersect(&self, other: &Region) -> Region {
        Region {
            start: self.start.max(other.start),
            end: self.end.min(other.end),
            devices: match (&self.devices, &other.devices) {
                (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
                (Some(a), None) | (None, Some(a)) => Some(a.clone()),
                (None, None) => None,
            },
        }
    }

    fn hull(&self, other: &Region) -> Region {
        if self.is_empty() {
            return other.clone();
        }
        if other.is_empty() {
            return self.clone();
        }
        Region {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
            devices: match (&self.devices, &other.devices) {
                (Some(a), Some(b)) => Some(a.union(b).cloned().collect()),
                _ => None,
            },
        }
    }

    /// The region of rows that `filter` may accept.
    pub(crate) fn of(filter: &Expr, cols: Columns<'_>) -> Region {
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And => Region::of(left, cols).intersect(&Region::of(right, cols)),
                Operator::Or => Region::of(left, cols).hull(&Region::of(right, cols)),
                _ => comparison(left, *op, right, cols).unwrap_or_else(Region::all),
            },
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_column(expr, cols.time) => match (timestamp_ns(low), timestamp_ns(high)) {
                (Some(lo), Some(hi)) => Region::time(lo, hi.saturating_add(1)),
                _ => Region::all(),
            },
            Expr::InList(list) if !list.negated => match cols.device {
                Some(device) if is_column(&list.expr, device) => list
                    .list
                    .iter()
                    .map(string)
                    .collect::<Option<BTreeSet<_>>>()
                    .map_or_else(Region::all, Region::devices),
                _ => Region::all(),
            },
            _ => Region::all(),
        }
    }
}

/// `column op literal` or `literal op column` on the time or device column.
fn comparison(left: &Expr, op: Operator, right: &Expr, cols: Columns<'_>) -> Option<Region> {
    let (column, op, literal) = if matches!(unalias(left), Expr::Column(_)) {
        (left, op, right)
    } else {
        (right, op.swap()?, left)
    };
    if is_column(column, cols.time) {
        let v = timestamp_ns(literal)?;
        let (start, end) = match op {
            Operator::Eq => (v, v.saturating_add(1)),
            Operator::Gt => (v.saturating_add(1), i64::MAX),
            Operator::GtEq => (v, i64::MAX),
            Operator::Lt => (i64::MIN, v),
            Operator::LtEq => (i64::MIN, v.saturating_add(1)),
            _ => return None,
        };
        return Some(Region::time(start, end));
    }
    match cols.device {
        Some(device) if is_column(column, device) && op == Operator::Eq => {
            Some(Region::devices(BTreeSet::from([string(literal)?])))
        }
        _ => None,
    }
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

fn is_column(e: &Expr, name: &str) -> bool {
    matches!(unalias(e), Expr::Column(c) if c.name == name)
}

fn string(e: &Expr) -> Option<String> {
    match unalias(e) {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    }
}

/// A timestamp literal in nanoseconds, whatever its unit. By the time
/// filters reach a scan, DataFusion has folded `'2022-07-01'` and casts of
/// it into such literals.
pub(crate) fn timestamp_ns(e: &Expr) -> Option<i64> {
    let value = match unalias(e) {
        Expr::Literal(value, _) => value,
        // Before type coercion (gap filling reads the plan then), a time
        // literal is still a string or a cast of one. Only a cast to a
        // timestamp keeps the string's time: a cast to DATE drops it, so a
        // bound read through one would prune rows the filter keeps.
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(_, _)) => {
            return timestamp_ns(&c.expr);
        }
        _ => return None,
    };
    match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s).ok()
        }
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(v.saturating_mul(1_000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(v.saturating_mul(1_000_000)),
        ScalarValue::TimestampSecond(Some(v), _) => Some(v.saturating_mul(1_000_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    const COLS: Columns<'static> = Columns {
        time: "time",
        device: Some("device"),
    };

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn comparisons_give_half_open_ranges() {
        assert_eq!(
            Region::of(&col("time").gt_eq(ts(10)), COLS),
            Region::time(10, i64::MAX)
        );
        assert_eq!(
            Region::of(&col("time").gt(ts(10)), COLS),
            Region::time(11, i64::MAX)
        );
        assert_eq!(
            Region::of(&col("time").lt(ts(10)), COLS),
            Region::time(i64::MIN, 10)
        );
        assert_eq!(
            Region::of(&col("time").lt_eq(ts(10)), COLS),
            Region::time(i64::MIN, 11)
        );
        assert_eq!(
            Region::of(&ts(10).lt(col("time")), COLS),
            Region::time(11, i64::MAX)
        );
        assert_eq!(
            Region::of(&col("time").eq(ts(10)), COLS),
            Region::time(10, 11)
        );
        assert_eq!(
            Region::of(&col("time").between(ts(10), ts(20)), COLS),
            Region::time(10, 21)
        );
    }

    #[test]
    fn and_intersects_or_takes_the_hull() {
        let a = col("time").gt_eq(ts(10)).and(col("device").eq(lit("a")));
        let b = col("time").lt(ts(50)).and(col("device").eq(lit("b")));
        let both = Region::of(&a.clone().and(b.clone()), COLS);
        assert_eq!(both.start, 10);
        assert_eq!(both.end, 50);
        assert!(both.is_empty(), "no device is both a and b");
        let either = Region::of(&a.or(b), COLS);
        assert_eq!(either.start, i64::MIN);
        assert_eq!(either.end, i64::MAX);
        assert_eq!(
            either.devices,
            Some(BTreeSet::from(["a".to_owned(), "b".to_owned()]))
        );
    }

    #[test]
    fn unknown_expressions_accept_everything() {
        assert!(Region::of(&col("wd_p").gt(lit(5.0)), COLS).is_all());
        assert!(Region::of(&col("device").not_eq(lit("a")), COLS).is_all());
        assert!(Region::of(&col("device").in_list(vec![lit("a")], true), COLS).is_all());
        let mixed = col("time").gt(ts(10)).or(col("wd_p").gt(lit(5.0)));
        assert!(Region::of(&mixed, COLS).is_all());
        let single = Columns {
            time: "dt",
            device: None,
        };
        assert!(Region::of(&col("device").eq(lit("a")), single).is_all());
        assert_eq!(
            Region::of(&col("dt").lt(ts(5)), single),
            Region::time(i64::MIN, 5)
        );
    }

    #[test]
    fn in_lists_name_devices() {
        let r = Region::of(
            &col("device").in_list(vec![lit("a"), lit("b")], false),
            COLS,
        );
        assert_eq!(
            r.devices,
            Some(BTreeSet::from(["a".to_owned(), "b".to_owned()]))
        );
    }
}
