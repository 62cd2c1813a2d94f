use std::collections::BTreeSet;
use std::thread;

use super::*;
use crate::io::{FaultPlan, RealFs};

#[test]
fn wal_round_trip_and_reopen_continue_seqs() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    assert!(o.events.is_empty() && o.replayed.is_empty());
    assert_eq!(o.wal.last_committed_seq(), 0);
    for i in 0..10 {
        assert_eq!(o.wal.append(payload(i), i as u64).unwrap(), i as u64 + 1);
    }
    assert_eq!(o.wal.last_committed_seq(), 10);
    let stats = o.wal.stats();
    assert_eq!((stats.appends, stats.commits), (10, 10));
    let expected: Vec<(u64, u64)> = (1..=10).map(|s| (s, s - 1)).collect();
    assert_eq!(*o.committed.lock().unwrap(), expected);
    o.wal.close().unwrap();

    let o = open_fault(&fs);
    assert!(o.events.is_empty(), "{:?}", o.events);
    let expected: Vec<(u64, Vec<u8>)> = (0..10).map(|i| (i as u64 + 1, payload(i))).collect();
    assert_eq!(o.replayed, expected);
    assert_eq!(o.wal.append(b"next".to_vec(), 0).unwrap(), 11);
    drop(o);

    // The floor from the caller wins when it is higher.
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), opts(), 500).unwrap();
    assert_eq!(o.replayed.len(), 11);
    assert_eq!(o.wal.last_committed_seq(), 499);
    assert_eq!(o.wal.append(Vec::new(), 0).unwrap(), 500);
    drop(o);
    let o = open_fault(&fs);
    assert_eq!(o.replayed.last(), Some(&(500, Vec::new())));
    assert_eq!(o.wal.append(b"x".to_vec(), 0).unwrap(), 501);
}

#[test]
fn wal_reopen_without_appends_does_not_pile_up_files() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    o.wal.append(b"a".to_vec(), 0).unwrap();
    drop(o);
    for _ in 0..3 {
        drop(open_fault(&fs));
    }
    // The file with the record, and one header-only file for new records.
    assert_eq!(wal_files(&fs, &wal_dir()).len(), 2);
    let o = open_fault(&fs);
    assert_eq!(o.replayed, vec![(1, b"a".to_vec())]);
    assert_eq!(o.wal.append(b"b".to_vec(), 0).unwrap(), 2);
}

#[test]
fn wal_on_real_fs_with_rotation_by_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/wal");
    let small = WalOptions {
        segment_bytes: 100,
        ..opts()
    };
    let o = open_with(Arc::new(RealFs), &dir, small.clone(), 1).unwrap();
    for i in 0..20 {
        o.wal.append(payload(i), 0).unwrap();
    }
    o.wal.close().unwrap();
    assert!(wal_files(&RealFs, &dir).len() > 3);
    let o = open_with(Arc::new(RealFs), &dir, small, 1).unwrap();
    assert!(o.events.is_empty(), "{:?}", o.events);
    let expected: Vec<(u64, Vec<u8>)> = (0..20).map(|i| (i as u64 + 1, payload(i))).collect();
    assert_eq!(o.replayed, expected);
}

#[test]
fn wal_group_commit_shares_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let o = open_with(Arc::new(RealFs), tmp.path(), WalOptions::default(), 1).unwrap();
    let wal = &o.wal;
    let seqs: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                s.spawn(move || {
                    (0..200u64)
                        .map(|i| wal.append(payload(i as usize), t * 1000 + i).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 1600);
    assert_eq!(unique.first().copied(), Some(1));
    assert_eq!(unique.last().copied(), Some(1600));
    let stats = wal.stats();
    assert_eq!(stats.appends, 1600);
    assert!(stats.commits < 800, "{stats:?}");
    let committed = o.committed.lock().unwrap().clone();
    let order: Vec<u64> = committed.iter().map(|&(s, _)| s).collect();
    assert_eq!(order, (1..=1600).collect::<Vec<_>>());
    // Each thread's items came back in the order it appended them.
    for t in 0..8u64 {
        let mine: Vec<u64> = committed
            .iter()
            .filter(|&&(_, item)| item / 1000 == t)
            .map(|&(_, item)| item % 1000)
            .collect();
        assert_eq!(mine, (0..200).collect::<Vec<_>>());
    }
}

#[test]
fn wal_max_batch_bytes_limits_a_round() {
    let fs = FaultFs::new();
    let o = open_with(
        Arc::new(fs.clone()),
        &wal_dir(),
        WalOptions {
            group_commit_window: Duration::from_millis(10),
            max_batch_bytes: 1,
            ..WalOptions::default()
        },
        1,
    )
    .unwrap();
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| o.wal.append(vec![1; 100], 0).unwrap());
        }
    });
    // Every record exceeds the limit alone, so every round holds one.
    assert_eq!(o.wal.stats().commits, 4);
}

#[test]
fn wal_rejects_bad_input() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    let err = o.wal.append(vec![0; MAX_PAYLOAD + 1], 0).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(o.wal.is_poisoned().is_none());
    o.wal.close().unwrap();
    assert!(matches!(o.wal.append(Vec::new(), 0), Err(Error::Closed)));
    o.wal.close().unwrap();

    let long = WalOptions {
        group_commit_window: Duration::from_millis(11),
        ..WalOptions::default()
    };
    let Err(err) = open_with(Arc::new(fs.clone()), &wal_dir(), long, 1) else {
        panic!("a window over the maximum was accepted")
    };
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[test]
fn wal_rotate_with_and_trim() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    // Nothing written yet: no new file.
    assert_eq!(o.wal.rotate_with(|s| s).unwrap(), 0);
    assert_eq!(wal_files(&fs, &wal_dir()).len(), 1);
    for i in 0..3 {
        o.wal.append(payload(i), 0).unwrap();
    }
    assert_eq!(o.wal.rotate_with(|s| s).unwrap(), 3);
    for i in 3..5 {
        o.wal.append(payload(i), 0).unwrap();
    }
    assert_eq!(o.wal.rotate_with(|s| s * 10).unwrap(), 50);
    o.wal.append(payload(5), 0).unwrap();
    let names = |fs: &FaultFs| -> Vec<String> {
        wal_files(fs, &wal_dir())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(&fs),
        [1, 4, 6].map(|s| format!("{s:020}.wal")).to_vec()
    );

    o.wal.trim(2).unwrap();
    assert_eq!(names(&fs).len(), 3, "file 1 still holds seq 3");
    o.wal.trim(3).unwrap();
    assert_eq!(names(&fs), [4, 6].map(|s| format!("{s:020}.wal")).to_vec());
    o.wal.trim(u64::MAX).unwrap();
    assert_eq!(names(&fs), vec![format!("{:020}.wal", 6)]);
    drop(o);

    // The trim was durable, and replay starts after it.
    let o = open_fault(&fs.power_loss(3));
    assert_eq!(o.replayed, vec![(6, payload(5))]);
}

#[test]
fn wal_poisoned_by_eio_on_fsync() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    o.wal.append(b"ok".to_vec(), 1).unwrap();
    fs.set_plan(FaultPlan::default().fail_sync_after(1));
    let err = o.wal.append(b"lost".to_vec(), 2).unwrap_err();
    let Error::WalPoisoned { cause } = &err else {
        panic!("{err}")
    };
    assert!(cause.contains("os error 5"), "{cause}");
    let ops = fs.ops();
    let again = o.wal.append(b"later".to_vec(), 3).unwrap_err();
    assert!(matches!(&again, Error::WalPoisoned { cause: c } if c == cause));
    assert_eq!(fs.ops(), ops, "the failed fsync is not retried");
    assert_eq!(o.wal.is_poisoned().as_ref(), Some(cause));
    assert!(o.wal.rotate_with(|_| ()).is_err());
    assert_eq!(*o.committed.lock().unwrap(), vec![(1, 1)]);
    assert_eq!(o.wal.last_committed_seq(), 1);
    assert!(matches!(o.wal.close(), Err(Error::WalPoisoned { .. })));
}

#[test]
fn wal_poisoned_by_enospc_fails_queued_appends_too() {
    let fs = FaultFs::new();
    let o = open_with(
        Arc::new(fs.clone()),
        &wal_dir(),
        WalOptions {
            group_commit_window: MAX_GROUP_COMMIT_WINDOW,
            ..WalOptions::default()
        },
        1,
    )
    .unwrap();
    fs.set_plan(FaultPlan::default().space_limit_bytes(100));
    let wal = &o.wal;
    let results: Vec<Result<u64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| s.spawn(move || wal.append(vec![i; 100], 0)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        let Err(Error::WalPoisoned { cause }) = r else {
            panic!("{r:?}")
        };
        assert!(cause.contains("os error 28"), "{cause}");
    }
    assert!(o.committed.lock().unwrap().is_empty());
    assert!(o.wal.append(Vec::new(), 0).is_err());
}

#[test]
fn wal_poisoned_when_on_commit_panics() {
    let fs = FaultFs::new();
    let (wal, _) = Wal::<u64>::open(
        Arc::new(fs.clone()),
        wal_dir(),
        opts(),
        1,
        &mut |_, _| Ok(()),
        Box::new(|_| panic!("on_commit bug")),
    )
    .unwrap();
    assert!(matches!(
        wal.append(b"a".to_vec(), 0),
        Err(Error::WalPoisoned { .. })
    ));
    assert!(wal.append(b"b".to_vec(), 0).is_err());
    assert!(wal.close().is_err());
}

#[test]
fn wal_is_send_and_sync_for_any_send_item() {
    fn check<X: Send + Sync>() {}
    check::<Wal<std::cell::Cell<u8>>>();
}

/// Freezes the byte layout documented in docs/storage-format.md, "Write-ahead log".
#[test]
fn wal_format_bytes_are_frozen() {
    let header = format::encode_header(7);
    let mut expected = b"WTSNWAL\0".to_vec();
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&0x3b80_418b_u32.to_le_bytes());
    assert_eq!(header.to_vec(), expected);

    let mut record = Vec::new();
    format::encode_record(&mut record, 7, b"abc");
    let mut expected = vec![3, 0, 0, 0];
    expected.extend_from_slice(&0x169f_7661_u32.to_le_bytes());
    expected.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(b"abc");
    assert_eq!(record, expected);

    assert_eq!(format::file_name(7), "00000000000000000007.wal");
    assert_eq!(format::parse_file_name("00000000000000000007.wal"), Some(7));
    assert_eq!(format::parse_file_name("7.wal"), None);
    assert_eq!(format::parse_file_name("0000000000000000000x.wal"), None);
}

#[test]
fn wal_poisoned_by_eio_on_write_keeps_what_was_acknowledged() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    o.wal.append(b"kept".to_vec(), 1).unwrap();
    fs.set_plan(FaultPlan::default().fail_write_after(1));
    let err = o.wal.append(b"failed".to_vec(), 2).unwrap_err();
    assert!(matches!(&err, Error::WalPoisoned { cause } if cause.contains("os error 5")));
    assert!(o.wal.append(b"later".to_vec(), 3).is_err());
    drop(o);
    let o = open_fault(&fs.power_loss(0));
    assert_eq!(o.replayed, vec![(1, b"kept".to_vec())]);
}

/// Bytes of every file in the WAL directory.
fn wal_bytes(fs: &FaultFs) -> u64 {
    wal_files(fs, &wal_dir())
        .iter()
        .map(|p| fs.read(p).unwrap().len() as u64)
        .sum()
}

#[test]
fn wal_failed_file_start_keeps_the_current_file() {
    let fs = FaultFs::new();
    let small = WalOptions {
        segment_bytes: 64,
        ..opts()
    };
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), small.clone(), 1).unwrap();
    for i in 0..2 {
        o.wal.append(payload(i), 0).unwrap();
    }
    let before = wal_files(&fs, &wal_dir());
    assert_eq!(before.len(), 1);

    // No file can be created: the rounds that would start a new file go
    // into the current one, and the caller of rotate_with gets the error.
    fs.set_plan(FaultPlan::default().fail_create_after(1));
    for i in 2..6 {
        assert_eq!(o.wal.append(payload(i), 0).unwrap(), i as u64 + 1);
    }
    let err = o
        .wal
        .rotate_with(|_| panic!("runs only at a file boundary"))
        .unwrap_err();
    assert!(err.to_string().contains("os error 28"), "{err}");
    assert_eq!(o.wal.is_poisoned(), None);
    assert_eq!(wal_files(&fs, &wal_dir()), before);

    // A full disk: the file is created, its header cannot be written, and
    // the file goes again.
    fs.set_plan(FaultPlan::default().space_limit_bytes(wal_bytes(&fs)));
    assert!(o.wal.rotate_with(|_| ()).is_err());
    assert_eq!(o.wal.is_poisoned(), None);
    assert_eq!(wal_files(&fs, &wal_dir()), before);

    // Space again: the next round starts a new file, and so does rotate_with.
    fs.set_plan(FaultPlan::default());
    assert_eq!(o.wal.append(payload(6), 0).unwrap(), 7);
    assert_eq!(wal_files(&fs, &wal_dir()).len(), 2);
    assert_eq!(o.wal.rotate_with(|s| s).unwrap(), 7);
    assert_eq!(o.wal.append(payload(7), 0).unwrap(), 8);
    let committed: Vec<u64> = o.committed.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(committed, (1..=8).collect::<Vec<u64>>());
    drop(o);

    let all: Vec<(u64, Vec<u8>)> = (0..8).map(|i| (i as u64 + 1, payload(i))).collect();
    let o = open_with(Arc::new(fs.power_loss(1)), &wal_dir(), small.clone(), 1).unwrap();
    assert!(o.events.is_empty(), "{:?}", o.events);
    assert_eq!(o.replayed, all);
    // The first file holds seqs 1 to 6, though it was due to close after 2.
    o.wal.trim(5).unwrap();
    drop(o);
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), small.clone(), 1).unwrap();
    assert_eq!(o.replayed, all);
    o.wal.trim(6).unwrap();
    drop(o);
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), small, 1).unwrap();
    assert_eq!(o.replayed, all[6..]);
}

#[test]
fn wal_failed_file_start_is_retried_after_a_sixteenth_of_a_file() {
    let fs = FaultFs::new();
    let o = open_with(
        Arc::new(fs.clone()),
        &wal_dir(),
        WalOptions {
            segment_bytes: 1600,
            ..opts()
        },
        1,
    )
    .unwrap();
    // 30-byte records: the file reaches 1600 bytes at the 53rd.
    let record = || vec![7u8; 14];
    while wal_bytes(&fs) < 1600 {
        o.wal.append(record(), 0).unwrap();
    }
    fs.set_plan(FaultPlan::default().fail_create_after(1));
    // A round is a write and a sync; a round that tries a new file also
    // has the failed create, and the removal and directory sync after it.
    let mut ops_per_round = Vec::new();
    for _ in 0..8 {
        let before = fs.ops();
        o.wal.append(record(), 0).unwrap();
        ops_per_round.push(fs.ops() - before);
    }
    // Tried at once, then again after 100 more bytes (four rounds).
    assert_eq!(ops_per_round, [5, 2, 2, 2, 5, 2, 2, 2]);
    assert_eq!(wal_files(&fs, &wal_dir()).len(), 1);
}

#[test]
fn wal_poisoned_when_a_failed_file_cannot_be_removed() {
    let fs = FaultFs::new();
    let o = open_fault(&fs);
    for i in 0..3 {
        o.wal.append(payload(i), 0).unwrap();
    }
    // The new file's header does not fit, and the power fails while the
    // file is being removed again (op 3: create, write, remove).
    fs.set_plan(
        FaultPlan::default()
            .space_limit_bytes(wal_bytes(&fs))
            .crash_after_ops(3),
    );
    let err = o.wal.rotate_with(|_| ()).unwrap_err();
    assert!(err.to_string().contains("simulated power loss"), "{err}");
    let Some(cause) = o.wal.is_poisoned() else {
        panic!("not poisoned")
    };
    assert!(cause.contains("simulated power loss"), "{cause}");
    drop(o);
    let all: Vec<(u64, Vec<u8>)> = (0..3).map(|i| (i as u64 + 1, payload(i))).collect();
    for seed in 0..4 {
        let o = open_fault(&fs.power_loss(seed));
        assert_eq!(o.replayed, all, "seed {seed}");
    }
}
