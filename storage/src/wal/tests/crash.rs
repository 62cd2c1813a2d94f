//! Power loss at every operation of a workload, checked with sled's oracle:
//! acknowledged means replayed exactly once, never appended means absent, in
//! flight means either.

use std::collections::BTreeMap;

use super::*;
use crate::io::FaultPlan;

/// What the workload learned before the crash.
#[derive(Debug, Default)]
struct Journal {
    /// Every payload handed to `append`, acknowledged or not.
    attempted: Vec<Vec<u8>>,
    /// seq -> payload for every `Ok` append.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Records up to this seq may be gone: a trim of them was started.
    trimmed: u64,
}

fn small_files() -> WalOptions {
    WalOptions {
        segment_bytes: 120,
        ..opts()
    }
}

fn append(o: &Opened, j: &mut Journal, payload: Vec<u8>) -> Result<()> {
    j.attempted.push(payload.clone());
    let seq = o.wal.append(payload.clone(), 0)?;
    j.acked.insert(seq, payload);
    Ok(())
}

/// Two sessions: appends across size rotations, a `rotate_with` and a trim,
/// then a reopen (recovery under crash too) and more appends.
fn workload(fs: &FaultFs, j: &mut Journal) -> Result<()> {
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), small_files(), 1)?;
    let mut frozen = 0;
    for i in 0..16 {
        append(&o, j, format!("first-{i}").into_bytes())?;
        if i == 6 {
            frozen = o.wal.rotate_with(|s| s)?;
        }
        if i == 11 {
            j.trimmed = frozen;
            o.wal.trim(frozen)?;
        }
    }
    o.wal.close()?;
    drop(o);
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), small_files(), 1)?;
    for i in 0..6 {
        append(&o, j, format!("second-{i}").into_bytes())?;
    }
    o.wal.close()
}

/// Opens the disk left after a crash and checks the oracle.
fn check_recovered(disk: &FaultFs, j: &Journal, what: &str) {
    let o = open_with(Arc::new(disk.clone()), &wal_dir(), small_files(), 1)
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    for e in &o.events {
        assert!(
            matches!(e, RecoveryEvent::TornTail { .. }),
            "{what}: a crash can only tear the tail: {e:?}"
        );
    }
    let mut seen = BTreeMap::new();
    for (seq, p) in &o.replayed {
        assert!(j.attempted.contains(p), "{what}: never appended: {p:?}");
        assert!(
            seen.insert(p.clone(), *seq).is_none(),
            "{what}: replayed twice: {p:?}"
        );
        if let Some(acked) = j.acked.get(seq) {
            assert_eq!(acked, p, "{what}: seq {seq} holds another payload");
        }
    }
    for (seq, p) in j.acked.range(j.trimmed + 1..) {
        assert_eq!(
            seen.get(p),
            Some(seq),
            "{what}: acknowledged seq {seq} lost"
        );
    }
    let next = o.wal.append(b"after".to_vec(), 0).unwrap();
    let highest = j.acked.keys().chain(seen.values()).max().copied();
    assert!(
        highest.is_none_or(|h| next > h),
        "{what}: seq {next} reused"
    );
}

#[test]
fn wal_crash_at_every_op_keeps_acknowledged_appends() {
    let clean = FaultFs::new();
    workload(&clean, &mut Journal::default()).unwrap();
    let total = clean.ops();
    assert!(total > 50, "workload too small: {total} ops");

    for k in 1..=total + 1 {
        for seed in 0..3 {
            let fs = FaultFs::with_plan(FaultPlan::default().crash_after_ops(k));
            let mut j = Journal::default();
            let result = workload(&fs, &mut j);
            assert_eq!(result.is_ok(), k > total, "crash at op {k}");
            let disk = || fs.power_loss(seed);
            check_recovered(&disk(), &j, &format!("crash at op {k}, seed {seed}"));

            // Now crash again while recovering, at each of its operations.
            if seed != 0 || k % 3 != 0 {
                continue;
            }
            let probe = disk();
            drop(open_with(Arc::new(probe.clone()), &wal_dir(), small_files(), 1).unwrap());
            for r in 1..=probe.ops() {
                let again = disk();
                again.set_plan(FaultPlan::default().crash_after_ops(r));
                assert!(open_with(Arc::new(again.clone()), &wal_dir(), small_files(), 1).is_err());
                let what = format!("crash at op {k}, then at recovery op {r}");
                check_recovered(&again.power_loss(r), &j, &what);
            }
        }
    }
}
