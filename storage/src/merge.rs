//! Ordering and last-write-wins deduplication of rows from several sources.

use arrow_array::{ArrayRef, UInt32Array};

use crate::error::{Error, Result};

/// The row order that sorts by time and keeps, for each time, only the row
/// with the highest sequence number (the last write). `None` when the rows
/// are already strictly ascending in time, so callers can skip the copy.
pub(crate) fn dedup_order(times: &[i64], seqs: &[u64]) -> Option<Vec<u32>> {
    if times.windows(2).all(|w| w[0] < w[1]) {
        return None;
    }
    let mut idx: Vec<u32> = (0..times.len() as u32).collect();
    // Stable sort: for equal (time, seq) the later position wins, which is
    // the order rows arrived in.
    idx.sort_by_key(|&i| (times[i as usize], seqs[i as usize]));
    let mut out: Vec<u32> = Vec::with_capacity(idx.len());
    for i in idx {
        match out.last_mut() {
            Some(last) if times[*last as usize] == times[i as usize] => *last = i,
            _ => out.push(i),
        }
    }
    Some(out)
}

/// Applies a row order to a column.
pub(crate) fn take(array: &ArrayRef, order: &[u32]) -> Result<ArrayRef> {
    let indices = UInt32Array::from(order.to_vec());
    arrow_select::take::take(array.as_ref(), &indices, None)
        .map_err(|e| Error::Internal(format!("reordering a column failed: {e}")))
}

pub(crate) fn take_values<T: Copy>(values: &[T], order: &[u32]) -> Vec<T> {
    order.iter().map(|&i| values[i as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_write_wins_and_sorted() {
        assert_eq!(dedup_order(&[1, 2, 3], &[1, 1, 1]), None);
        let order = dedup_order(&[3, 1, 3, 2, 1], &[1, 1, 2, 1, 5]).unwrap();
        assert_eq!(order, vec![4, 3, 2]);
        // Same seq: the later row wins.
        assert_eq!(dedup_order(&[5, 5], &[7, 7]).unwrap(), vec![1]);
    }
}
