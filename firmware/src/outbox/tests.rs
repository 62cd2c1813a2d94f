// The crate is no_std; its tests run on the host with std.
use std::prelude::rust_2024::*;

use std::collections::VecDeque;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

fn reading(seq: u32) -> Reading {
    Reading::new(Some(i64::from(seq) * 1000), seq, &[230.0]).unwrap()
}

/// The reference: each reading carries the id of the message it went out
/// in (if any); an ack removes the readings of the oldest message id.
#[derive(Default)]
struct Model {
    readings: VecDeque<(u32, Option<u64>)>,
    messages: VecDeque<u64>,
    next_msg: u64,
    dropped: u64,
}

impl Model {
    fn push(&mut self, seq: u32, cap: usize) {
        if self.readings.len() == cap {
            self.readings.pop_front();
            self.dropped += 1;
        }
        self.readings.push_back((seq, None));
    }
    fn unsent(&self) -> Vec<u32> {
        self.readings
            .iter()
            .filter(|r| r.1.is_none())
            .map(|r| r.0)
            .collect()
    }
    fn send(&mut self, max: usize, max_msgs: usize) -> Option<Vec<u32>> {
        if self.messages.len() == max_msgs || self.unsent().is_empty() {
            return None;
        }
        let id = self.next_msg;
        self.next_msg += 1;
        let mut out = Vec::new();
        for r in self.readings.iter_mut().filter(|r| r.1.is_none()).take(max) {
            r.1 = Some(id);
            out.push(r.0);
        }
        self.messages.push_back(id);
        Some(out)
    }
    fn ack(&mut self) -> Vec<u32> {
        let Some(id) = self.messages.pop_front() else {
            return Vec::new();
        };
        let acked = self
            .readings
            .iter()
            .filter(|r| r.1 == Some(id))
            .map(|r| r.0)
            .collect();
        self.readings.retain(|r| r.1 != Some(id));
        acked
    }
    fn disconnect(&mut self) {
        self.messages.clear();
        for r in &mut self.readings {
            r.1 = None;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    Send(u8),
    Ack,
    Disconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4).prop_map(Op::Push),
        3 => (1u8..6).prop_map(Op::Send),
        3 => Just(Op::Ack),
        1 => Just(Op::Disconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn outbox_matches_the_reference(ops in proptest::collection::vec(op(), 0..200)) {
        const N: usize = 8;
        const M: usize = 3;
        let mut ob: Outbox<N, M> = Outbox::new();
        let mut model = Model::default();
        let mut seq = 0u32;
        let mut acked_all = Vec::new();
        for op in ops {
            match op {
                Op::Push(k) => for _ in 0..k {
                    ob.push(reading(seq));
                    model.push(seq, N);
                    seq += 1;
                },
                Op::Send(max) => {
                    let max = usize::from(max);
                    let batch: Vec<u32> = ob.next_batch(max).map(|r| r.seq).collect();
                    let ok = ob.can_send() && ob.sent(batch.len());
                    let want = model.send(max, M);
                    prop_assert_eq!(ok.then_some(batch), want);
                }
                Op::Ack => {
                    let mut got = Vec::new();
                    let n = ob.ack(|r| got.push(r.seq));
                    prop_assert_eq!(n, got.len());
                    let want = model.ack();
                    prop_assert_eq!(&got, &want);
                    acked_all.extend(got);
                }
                Op::Disconnect => {
                    ob.disconnected();
                    model.disconnect();
                }
            }
            prop_assert_eq!(ob.len(), model.readings.len());
            prop_assert_eq!(ob.unsent(), model.unsent().len());
            prop_assert_eq!(ob.dropped(), model.dropped);
            prop_assert_eq!(ob.messages_in_flight(), model.messages.len());
            let held: Vec<u32> = ob.next_batch(N).map(|r| r.seq).collect();
            prop_assert_eq!(held, model.unsent());
        }
        // Acknowledged readings come oldest first, each once.
        prop_assert!(acked_all.windows(2).all(|w| w[0] < w[1]));
        // Every reading is acknowledged, dropped or still held.
        prop_assert_eq!(acked_all.len() as u64 + ob.dropped() + ob.len() as u64, u64::from(seq));
    }
}

#[test]
fn backlog_goes_oldest_first_after_a_reconnect() {
    let mut ob: Outbox<100, 4> = Outbox::new();
    for s in 0..10 {
        ob.push(reading(s));
    }
    assert!(ob.sent(3));
    assert!(ob.sent(3));
    ob.disconnected();
    let again: Vec<u32> = ob.next_batch(5).map(|r| r.seq).collect();
    assert_eq!(again, [0, 1, 2, 3, 4]);
}

#[test]
fn a_full_outbox_drops_the_oldest_and_counts() {
    let mut ob: Outbox<4, 2> = Outbox::new();
    for s in 0..4 {
        assert!(ob.push(reading(s)).is_none());
    }
    assert_eq!(ob.push(reading(4)).map(|r| r.seq), Some(0));
    assert_eq!(ob.dropped(), 1);
    let held: Vec<u32> = ob.next_batch(10).map(|r| r.seq).collect();
    assert_eq!(held, [1, 2, 3, 4]);
    // A message whose readings were all dropped is still acknowledged.
    assert!(ob.sent(1));
    ob.push(reading(5));
    assert_eq!(ob.ack(|_| std::panic!("nothing left to acknowledge")), 0);
    assert_eq!(ob.messages_in_flight(), 0);
}

#[test]
fn unstamped_readings_get_their_time_once_the_clock_is_known() {
    let mut ob: Outbox<8, 2> = Outbox::new();
    for s in 0..3 {
        ob.push(Reading::unstamped(1000 * u64::from(s), s, &[230.0]).unwrap());
    }
    assert!(ob.next_is_unstamped());
    // Not yet synchronised: nothing changes.
    assert_eq!(ob.stamp(|_| None), 0);
    assert!(ob.next_is_unstamped());
    let utc = |local: u64| Some(1_700_000_000_000 + local as i64);
    assert_eq!(ob.stamp(utc), 3);
    assert!(!ob.next_is_unstamped());
    let ts: Vec<Option<i64>> = ob.next_batch(8).map(|r| r.ts_ms).collect();
    assert_eq!(
        ts,
        [
            Some(1_700_000_000_000),
            Some(1_700_000_001_000),
            Some(1_700_000_002_000)
        ]
    );
    // Stamped readings stay as they are.
    assert_eq!(ob.stamp(|_| Some(0)), 0);
    // A reading made without a local time is sent as it is (ingest stamps
    // it), never held.
    ob.push(reading(9));
    let mut plain = Reading::new(None, 10, &[1.0]).unwrap();
    assert!(!plain.is_unstamped());
    assert!(!plain.stamp(utc));
}
