//! A bounded cache of decoded column chunks, shared by every scan of a store.
//!
//! Decoding (zstd, then the delta and decimal transforms) is most of what a
//! scan of sealed data costs, for timestamps and channels alike, and ML
//! clients and the dashboard read the same months again and again. Segments
//! are immutable and every opened segment gets an id no other one ever has,
//! so a cached chunk can never be stale. When compaction or retention
//! deletes a segment, its chunks are dropped at once rather than left to age
//! out, so they do not crowd out live data. Least recently used chunks are
//! evicted first; memory is counted with Arrow's own estimate of each array.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array, ArrayRef};
use parking_lot::Mutex;

/// A chunk: (segment id, block, column).
type Key = (u64, u32, u32);

/// The column index under which a block's timestamps are kept (as an
/// `Int64Array`); channel indexes never come near it.
pub(crate) const TIME_CHUNK: usize = u32::MAX as usize;

static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(1);

/// An id for a newly opened segment, never handed out twice in a process.
pub(crate) fn next_segment_id() -> u64 {
    NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Hit and miss counters, and what the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: usize,
    pub capacity: usize,
}

#[derive(Debug)]
pub(crate) struct BlockCache {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Debug, Default)]
struct Lru {
    /// Ordered by key, so one segment's chunks are one range.
    entries: BTreeMap<Key, (ArrayRef, usize, u64)>,
    /// Last use tick to key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl BlockCache {
    /// A cache of at most `capacity` bytes; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            inner: Mutex::new(Lru::default()),
        }
    }

    pub(crate) fn get(&self, segment: u64, block: usize, column: usize) -> Option<ArrayRef> {
        if self.capacity == 0 {
            return None;
        }
        let key = key(segment, block, column)?;
        let mut lru = self.inner.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let Some((array, _, used)) = lru.entries.get_mut(&key) else {
            lru.misses += 1;
            return None;
        };
        let (array, old) = (array.clone(), std::mem::replace(used, tick));
        lru.order.remove(&old);
        lru.order.insert(tick, key);
        lru.hits += 1;
        Some(array)
    }

    /// Keeps `array`, evicting the least recently used chunks to make room.
    /// A chunk larger than a quarter of the cache is not kept: one huge
    /// column would flush everything else.
    pub(crate) fn insert(&self, segment: u64, block: usize, column: usize, array: &ArrayRef) {
        let size = array.get_array_memory_size();
        let Some(key) = key(segment, block, column) else {
            return;
        };
        let mut lru = self.inner.lock();
        if size > self.capacity / 4 {
            if let Some((_, old_size, old_tick)) = lru.entries.remove(&key) {
                lru.order.remove(&old_tick);
                lru.bytes -= old_size;
            }
            return;
        }
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((_, old_size, old_tick)) = lru.entries.insert(key, (array.clone(), size, tick))
        {
            lru.order.remove(&old_tick);
            lru.bytes -= old_size;
        }
        lru.order.insert(tick, key);
        lru.bytes += size;
        while lru.bytes > self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some((_, evicted, _)) = lru.entries.remove(&oldest) {
                lru.bytes -= evicted;
            }
        }
    }

    /// Drops every chunk of `segment`: its file is gone.
    pub(crate) fn forget(&self, segment: u64) {
        let mut lru = self.inner.lock();
        let keys: Vec<Key> = lru
            .entries
            .range((segment, 0, 0)..=(segment, u32::MAX, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some((_, size, tick)) = lru.entries.remove(&k) {
                lru.order.remove(&tick);
                lru.bytes -= size;
            }
        }
    }

    pub(crate) fn stats(&self) -> BlockCacheStats {
        let lru = self.inner.lock();
        BlockCacheStats {
            hits: lru.hits,
            misses: lru.misses,
            bytes: lru.bytes,
            capacity: self.capacity,
        }
    }
}

fn key(segment: u64, block: usize, column: usize) -> Option<Key> {
    Some((
        segment,
        u32::try_from(block).ok()?,
        u32::try_from(column).ok()?,
    ))
}

/// The default size: an eighth of the machine's memory, at most 1 GiB (a
/// month of one 1 Hz meter with 18 channels decodes to about 420 MB), and
/// 256 MiB where the memory size cannot be read.
pub fn default_block_cache_bytes() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map(|kib| kib.saturating_mul(1024))
    });
    match total {
        Some(bytes) => (bytes / 8).min(1 << 30),
        None => 256 << 20,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Float64Array;
    use proptest::prelude::*;

    use super::*;

    fn array(rows: usize, v: f64) -> ArrayRef {
        Arc::new(Float64Array::from(vec![v; rows]))
    }

    #[test]
    fn hits_return_what_was_inserted_and_counts_add_up() {
        let c = BlockCache::new(1 << 20);
        assert!(c.get(1, 0, 0).is_none());
        let a = array(100, 1.5);
        c.insert(1, 0, 0, &a);
        let got = c.get(1, 0, 0).expect("cached");
        assert_eq!(&got, &a);
        assert!(c.get(2, 0, 0).is_none(), "another segment's chunk");
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
        assert_eq!(s.bytes, a.get_array_memory_size());
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing() {
        let c = BlockCache::new(0);
        c.insert(1, 0, 0, &array(10, 1.0));
        assert!(c.get(1, 0, 0).is_none());
        assert_eq!(c.stats().bytes, 0);
    }

    #[test]
    fn the_least_recently_used_chunk_goes_first() {
        let one = array(1000, 0.0).get_array_memory_size();
        let c = BlockCache::new(one * 4);
        for col in 0..3 {
            c.insert(7, 0, col, &array(1000, col as f64));
        }
        // Touch column 0, so column 1 is now the oldest.
        assert!(c.get(7, 0, 0).is_some());
        c.insert(7, 0, 3, &array(1000, 3.0));
        c.insert(7, 0, 4, &array(1000, 4.0));
        assert!(c.get(7, 0, 1).is_none(), "evicted");
        assert!(c.get(7, 0, 0).is_some(), "recently used, kept");
        assert!(c.get(7, 0, 4).is_some());
        assert!(c.stats().bytes <= one * 4);
    }

    #[test]
    fn forgetting_a_segment_drops_its_chunks_and_nothing_else() {
        let c = BlockCache::new(1 << 20);
        for seg in [6, 7, 8] {
            for block in 0..3 {
                c.insert(seg, block, 0, &array(100, seg as f64));
                c.insert(seg, block, 1, &array(100, seg as f64));
            }
        }
        let per_segment = c.stats().bytes / 3;
        c.forget(7);
        assert_eq!(c.stats().bytes, 2 * per_segment);
        assert!((0..3).all(|b| c.get(7, b, 0).is_none() && c.get(7, b, 1).is_none()));
        assert!((0..3).all(|b| c.get(6, b, 1).is_some() && c.get(8, b, 0).is_some()));
        // Eviction order survives: the forgotten ticks are gone from it too.
        c.forget(6);
        c.forget(8);
        assert_eq!(c.stats().bytes, 0);
        c.insert(9, 0, 0, &array(100, 9.0));
        assert!(c.get(9, 0, 0).is_some());
    }

    #[test]
    fn segment_ids_are_never_reused() {
        let a = next_segment_id();
        let b = next_segment_id();
        assert!(b > a);
    }

    proptest! {
        /// Against a model that remembers everything: a hit always returns
        /// the last array inserted under that key, and the cache never
        /// holds more than its capacity.
        #[test]
        fn never_wrong_never_over_capacity(
            ops in proptest::collection::vec((any::<bool>(), 0u64..4, 0usize..3, 0usize..3, 1usize..400), 1..200),
            capacity in 0usize..20_000,
        ) {
            let c = BlockCache::new(capacity);
            let mut model: std::collections::HashMap<(u64, usize, usize), ArrayRef> = Default::default();
            for (k, (insert, seg, block, col, rows)) in ops.into_iter().enumerate() {
                if insert {
                    let a = array(rows, k as f64);
                    c.insert(seg, block, col, &a);
                    model.insert((seg, block, col), a);
                } else if let Some(got) = c.get(seg, block, col) {
                    prop_assert_eq!(Some(&got), model.get(&(seg, block, col)));
                }
                prop_assert!(c.stats().bytes <= capacity);
            }
        }
    }
}
