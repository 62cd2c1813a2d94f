//! M4 downsampling (Jugel et al., VLDB 2014): per pixel column, the first,
//! last, smallest and largest point. A line chart drawn from them is
//! pixel-identical to one drawn from every point, and the points arrive in
//! any order, so a query's batches feed it as they stream, holding only
//! four points per column.

/// One pixel column's four points: `(time, value)`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    first: (i64, f64),
    last: (i64, f64),
    min: (i64, f64),
    max: (i64, f64),
}

/// An M4 reducer over `[from, to)` at `width` columns.
#[derive(Debug, Clone)]
pub struct M4 {
    from: i64,
    span: i128,
    buckets: Vec<Option<Bucket>>,
    seen: u64,
}

impl M4 {
    /// `width` is clamped to at least 1; an empty or inverted range counts
    /// as one unit long.
    pub fn new(from: i64, to: i64, width: usize) -> Self {
        M4 {
            from,
            span: (i128::from(to) - i128::from(from)).max(1),
            buckets: vec![None; width.max(1)],
            seen: 0,
        }
    }

    /// Adds one point; points outside the range and NaN values are ignored.
    pub fn push(&mut self, t: i64, v: f64) {
        let offset = i128::from(t) - i128::from(self.from);
        if v.is_nan() || offset < 0 || offset >= self.span {
            return;
        }
        let width = self.buckets.len() as i128;
        // offset < span, so the index is below width.
        let i = (offset * width / self.span) as usize;
        self.seen += 1;
        let p = (t, v);
        match &mut self.buckets[i] {
            slot @ None => {
                *slot = Some(Bucket {
                    first: p,
                    last: p,
                    min: p,
                    max: p,
                })
            }
            Some(b) => {
                if t < b.first.0 {
                    b.first = p;
                }
                if t >= b.last.0 {
                    b.last = p;
                }
                if v < b.min.1 {
                    b.min = p;
                }
                if v > b.max.1 {
                    b.max = p;
                }
            }
        }
    }

    /// Points pushed inside the range.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The kept points in time order, at most four per column.
    pub fn finish(self) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        for b in self.buckets.into_iter().flatten() {
            let mut four = [b.first, b.min, b.max, b.last];
            four.sort_by_key(|p| p.0);
            for p in four {
                if out.last() != Some(&p) {
                    out.push(p);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_extremes_and_ends_of_each_column() {
        let mut m = M4::new(0, 100, 2);
        for (t, v) in [
            (10, 5.0),
            (0, 1.0),
            (20, -3.0),
            (49, 2.0),
            (50, 7.0),
            (99, 0.0),
        ] {
            m.push(t, v);
        }
        m.push(100, 1e9); // outside [from, to)
        m.push(30, f64::NAN);
        assert_eq!(m.seen(), 6);
        assert_eq!(
            m.finish(),
            vec![
                (0, 1.0),
                (10, 5.0),
                (20, -3.0),
                (49, 2.0),
                (50, 7.0),
                (99, 0.0)
            ]
        );
    }

    proptest! {
        /// Against a direct computation: per column, the output holds the
        /// first and last point by time and the min and max value, is sorted
        /// by time, uses only input points, and has at most 4 per column.
        #[test]
        fn matches_a_direct_m4(
            points in proptest::collection::vec((0i64..10_000, -1e6f64..1e6), 0..500),
            width in 1usize..64,
        ) {
            let mut m = M4::new(0, 10_000, width);
            for &(t, v) in &points {
                m.push(t, v);
            }
            let out = m.finish();
            prop_assert!(out.len() <= 4 * width);
            prop_assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
            for p in &out {
                prop_assert!(points.contains(p));
            }
            let col = |t: i64| (i128::from(t) * width as i128 / 10_000) as usize;
            for c in 0..width {
                let input: Vec<_> = points.iter().filter(|p| col(p.0) == c).collect();
                let kept: Vec<_> = out.iter().filter(|p| col(p.0) == c).collect();
                if input.is_empty() {
                    prop_assert!(kept.is_empty());
                    continue;
                }
                let min = input.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                let max = input.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
                let first = input.iter().map(|p| p.0).min().unwrap();
                let last = input.iter().map(|p| p.0).max().unwrap();
                prop_assert!(kept.iter().any(|p| p.1 == min));
                prop_assert!(kept.iter().any(|p| p.1 == max));
                prop_assert!(kept.iter().any(|p| p.0 == first));
                prop_assert!(kept.iter().any(|p| p.0 == last));
            }
        }
    }
}
