// The crate is no_std; its tests run on the host with std.
use super::*;
use std::prelude::rust_2024::*;

#[test]
fn delays_grow_within_bounds_and_reset() {
    let mut b = Backoff::new(500, 60_000, 42);
    let mut prev_ceiling = 0;
    for k in 0..20u32 {
        let d = b.next_delay_ms();
        let ceiling = (500u64 << k.min(20)).min(60_000) as u32;
        assert!(d >= ceiling / 2 && d <= ceiling, "attempt {k}: {d}");
        assert!(ceiling >= prev_ceiling);
        prev_ceiling = ceiling;
    }
    b.reset();
    assert!(b.next_delay_ms() <= 500);
}

#[test]
fn jitter_differs_between_devices_and_repeats_per_seed() {
    let seq = |seed| {
        let mut b = Backoff::new(1000, 60_000, seed);
        [0; 8].map(|_| b.next_delay_ms())
    };
    assert_eq!(seq(7), seq(7));
    assert_ne!(seq(7), seq(8));
}
