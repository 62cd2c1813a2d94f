// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use super::*;

#[test]
fn whole_packets_and_partial_ones() {
    // PUBACK of packet id 7: 0x40, remaining 2, id.
    let puback = [0x40, 0x02, 0x00, 0x07];
    assert_eq!(frame_len(&puback, 256), Ok(Some(4)));
    for cut in 0..4 {
        assert_eq!(frame_len(&puback[..cut], 256), Ok(None), "cut at {cut}");
    }
    // Two packets back to back: only the first counts.
    let two = [0x40, 0x02, 0x00, 0x07, 0xd0, 0x00];
    assert_eq!(frame_len(&two, 256), Ok(Some(4)));
    assert_eq!(frame_len(&two[4..], 256), Ok(Some(2)));
}

#[test]
fn multi_byte_lengths() {
    // 321 = 0b10_1000001: 0xc1 0x02.
    let mut p = vec![0x30, 0xc1, 0x02];
    p.resize(3 + 321, 0);
    assert_eq!(frame_len(&p, 1024), Ok(Some(324)));
    assert_eq!(frame_len(&p[..323], 1024), Ok(None));
    assert_eq!(
        frame_len(&p, 100),
        Err(Error::PacketTooLarge { len: 324, max: 100 })
    );
}

#[test]
fn malformed_lengths_are_errors() {
    let bad = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(frame_len(&bad, usize::MAX).is_err());
    // Four continuation bytes seen so far: still an error, not a wait.
    assert!(frame_len(&bad[..5], usize::MAX).is_err());
    assert_eq!(frame_len(&bad[..4], usize::MAX), Ok(None));
}

proptest::proptest! {
    // Bytes from the broker: a length that fits what was read and `max`,
    // more bytes wanted, or an error; never a panic.
    #[test]
    fn any_bytes_frame_or_fail(
        buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
        max in 0usize..1_000,
    ) {
        match frame_len(&buf, max) {
            Ok(Some(len)) => {
                proptest::prop_assert!(2 <= len && len <= buf.len() && len <= max);
            }
            // More wanted: the length field is unfinished, or the packet
            // (at most `max` bytes) is longer than what arrived.
            Ok(None) => proptest::prop_assert!(buf.len() < 5 || buf.len() < max),
            Err(_) => {}
        }
    }
}
