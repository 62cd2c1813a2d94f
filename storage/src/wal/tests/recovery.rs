use proptest::prelude::*;

use super::*;

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(payload).collect()
}

/// The byte ranges `events` account for in `file`.
fn reported(events: &[RecoveryEvent], file: &Path) -> Vec<(usize, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            RecoveryEvent::TornTail {
                file: f,
                offset,
                discarded_bytes,
            } if f == file => Some((*offset as usize, (offset + discarded_bytes) as usize)),
            RecoveryEvent::Damaged {
                file: f,
                offset,
                len,
                ..
            } if f == file => Some((*offset as usize, (offset + len) as usize)),
            RecoveryEvent::BadFile { file: f, .. } if f == file => Some((0, usize::MAX)),
            _ => None,
        })
        .collect()
}

/// The oracle for damaged logs: every replayed record is an original one,
/// byte for byte and with its own seq, in order; every original record not
/// replayed overlaps a reported range.
fn check_against(o: &Opened, original: &[Vec<u8>], placed: &[Placed]) {
    let mut last = 0;
    for (seq, p) in &o.replayed {
        assert!(*seq > last, "seqs in order: {:?}", o.replayed);
        last = *seq;
        assert_eq!(original.get(*seq as usize - 1), Some(p), "seq {seq}");
    }
    for (i, at) in placed.iter().enumerate() {
        if o.replayed.iter().any(|(s, _)| *s == i as u64 + 1) {
            continue;
        }
        let covered = reported(&o.events, &at.file)
            .iter()
            .any(|&(from, to)| from < at.end && at.start < to);
        assert!(covered, "record {} lost silently: {:?}", i + 1, o.events);
    }
}

#[test]
fn wal_torn_tail_truncated_at_every_length() {
    let original = payloads(5);
    let last = {
        let (_, placed) = build_log(&original, &[]);
        placed[4].clone()
    };
    for len in last.start..last.end {
        let (fs, _) = build_log(&original, &[]);
        fs.corrupt(&last.file, |b| b.truncate(len)).unwrap();
        let o = open_fault(&fs);
        let expected_events = if len == last.start {
            vec![]
        } else {
            vec![RecoveryEvent::TornTail {
                file: last.file.clone(),
                offset: last.start as u64,
                discarded_bytes: (len - last.start) as u64,
            }]
        };
        assert_eq!(o.events, expected_events, "cut at {len}");
        assert_eq!(o.replayed.len(), 4);
        assert_eq!(fs.read(&last.file).unwrap().len(), last.start);
        assert_eq!(o.wal.append(b"again".to_vec(), 0).unwrap(), 5);
        drop(o);
        let o = open_fault(&fs);
        assert!(o.events.is_empty(), "{:?}", o.events);
        assert_eq!(o.replayed.len(), 5);
        assert_eq!(o.replayed[4], (5, b"again".to_vec()));
    }
}

#[test]
fn wal_incomplete_header_of_last_file_is_removed() {
    let original = payloads(3);
    for len in 0..format::HEADER_LEN {
        let (fs, _) = build_log(&original, &[]);
        let torn = wal_dir().join(format::file_name(4));
        let mut f = fs.create(&torn).unwrap();
        f.write_all(&format::encode_header(4)[..len]).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&wal_dir()).unwrap();
        let o = open_fault(&fs);
        assert_eq!(
            o.events,
            vec![RecoveryEvent::TornTail {
                file: torn.clone(),
                offset: 0,
                discarded_bytes: len as u64,
            }]
        );
        assert_eq!(o.replayed.len(), 3);
        assert_eq!(o.wal.append(Vec::new(), 0).unwrap(), 4);
    }
}

#[test]
fn wal_bit_flips_in_every_byte_never_give_a_wrong_payload() {
    let original = payloads(6);
    for rotate_after in [&[][..], &[2][..]] {
        let (clean, placed) = build_log(&original, rotate_after);
        for file in wal_files(&clean, &wal_dir()) {
            let len = clean.read(&file).unwrap().len();
            for at in 0..len {
                for mask in [0x01u8, 0x80, 0xff] {
                    let (fs, _) = build_log(&original, rotate_after);
                    fs.corrupt(&file, |b| b[at] ^= mask).unwrap();
                    let o = open_fault(&fs);
                    assert!(!o.events.is_empty(), "flip at {at} went unnoticed");
                    check_against(&o, &original, &placed);
                    // The log takes new records after any damage.
                    let seq = o.wal.append(b"new".to_vec(), 0).unwrap();
                    assert!(o.replayed.iter().all(|(s, _)| *s < seq));
                }
            }
        }
    }
}

#[test]
fn wal_mid_log_damage_is_reported_quarantined_and_skipped() {
    let original = payloads(5);
    let (fs, placed) = build_log(&original, &[]);
    let bad = placed[2].clone();
    let before = fs.read(&bad.file).unwrap();
    fs.corrupt(&bad.file, |b| b[bad.start + 20] ^= 0x10)
        .unwrap();
    let quarantine = PathBuf::from("/data/quarantine");
    let with_q = WalOptions {
        quarantine_dir: Some(quarantine.clone()),
        ..opts()
    };
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), with_q, 1).unwrap();
    let copy = quarantine.join(format!("{}.at-{}.damaged", format::file_name(1), bad.start));
    assert_eq!(
        o.events,
        vec![RecoveryEvent::Damaged {
            file: bad.file.clone(),
            offset: bad.start as u64,
            len: (bad.end - bad.start) as u64,
            quarantined: Some(copy.clone()),
        }]
    );
    let seqs: Vec<u64> = o.replayed.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 4, 5]);
    check_against(&o, &original, &placed);
    let mut damaged = before[bad.start..bad.end].to_vec();
    damaged[20] ^= 0x10;
    assert_eq!(fs.read(&copy).unwrap(), damaged);
    assert_eq!(o.wal.append(Vec::new(), 0).unwrap(), 6);
    drop(o);
    // The quarantine copy and the directory survive power loss.
    assert_eq!(fs.power_loss(9).read(&copy).unwrap(), damaged);
}

#[test]
fn wal_damage_at_end_of_non_last_file_is_damage_not_torn() {
    let original = payloads(6);
    let (fs, placed) = build_log(&original, &[2]);
    let bad = placed[2].clone();
    fs.corrupt(&bad.file, |b| b.truncate(bad.end - 3)).unwrap();
    let o = open_fault(&fs);
    assert_eq!(
        o.events,
        vec![RecoveryEvent::Damaged {
            file: bad.file.clone(),
            offset: bad.start as u64,
            len: (bad.end - 3 - bad.start) as u64,
            quarantined: None,
        }]
    );
    let seqs: Vec<u64> = o.replayed.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 4, 5, 6]);
    assert_eq!(
        fs.read(&bad.file).unwrap().len(),
        bad.end - 3,
        "not truncated"
    );
}

#[test]
fn wal_bad_header_file_is_quarantined_or_skipped() {
    let original = payloads(6);
    let (fs, placed) = build_log(&original, &[2]);
    let first = placed[0].file.clone();
    fs.corrupt(&first, |b| b[0] = b'X').unwrap();

    // Without a quarantine directory: reported, left in place, every time.
    for _ in 0..2 {
        let o = open_fault(&fs);
        assert!(matches!(
            &o.events[..],
            [RecoveryEvent::BadFile { file, reason, quarantined: None }]
                if *file == first && reason.contains("magic")
        ));
        let seqs: Vec<u64> = o.replayed.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [4, 5, 6]);
        assert!(fs.exists(&first));
    }

    let quarantine = PathBuf::from("/q");
    let with_q = WalOptions {
        quarantine_dir: Some(quarantine.clone()),
        ..opts()
    };
    let o = open_with(Arc::new(fs.clone()), &wal_dir(), with_q, 1).unwrap();
    let moved = quarantine.join(format!("{}.bad", format::file_name(1)));
    assert!(matches!(
        &o.events[..],
        [RecoveryEvent::BadFile { quarantined: Some(q), .. }] if *q == moved
    ));
    assert!(!fs.exists(&first) && fs.exists(&moved));
    drop(o);
    let after = fs.power_loss(1);
    assert!(!after.exists(&first) && after.exists(&moved));
    let o = open_fault(&after);
    assert!(o.events.is_empty(), "{:?}", o.events);
}

#[test]
fn wal_bad_last_file_does_not_lead_to_seq_reuse() {
    let original = payloads(3);
    let (fs, placed) = build_log(&original, &[]);
    fs.corrupt(&placed[0].file, |b| b[9] ^= 1).unwrap();
    let o = open_fault(&fs);
    assert!(matches!(&o.events[..], [RecoveryEvent::BadFile { .. }]));
    assert!(o.replayed.is_empty());
    // Seqs 1..=3 may still sit in the skipped file.
    assert!(o.wal.append(Vec::new(), 0).unwrap() > 3);
}

#[test]
fn wal_replay_error_aborts_open() {
    let (fs, _) = build_log(&payloads(3), &[]);
    let result = Wal::<u64>::open(
        Arc::new(fs),
        wal_dir(),
        opts(),
        1,
        &mut |seq, _| {
            if seq == 2 {
                Err(Error::InvalidInput("refused".into()))
            } else {
                Ok(())
            }
        },
        Box::new(|_| {}),
    );
    assert!(matches!(result, Err(Error::InvalidInput(m)) if m == "refused"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes after (or instead of) valid records: no panic, and
    /// nothing is replayed that was not written.
    #[test]
    fn wal_arbitrary_tail_never_panics(
        keep in 0usize..4,
        garbage in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let original = payloads(4);
        let (fs, placed) = build_log(&original, &[]);
        let cut = placed[keep].start;
        fs.corrupt(&placed[0].file, |b| {
            b.truncate(cut);
            b.extend_from_slice(&garbage);
        })
        .unwrap();
        let o = open_fault(&fs);
        for (seq, p) in &o.replayed {
            prop_assert_eq!(original.get(*seq as usize - 1), Some(p));
        }
        prop_assert!(o.replayed.len() >= keep);
    }
}
