//! Read-only opens: they see what a writer would after recovery, beside a
//! live writer, and change nothing on disk.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use super::*;

/// Every file under `dir` with its bytes, through the store's own VFS, so
/// the same check works on the real disk and on `FaultFs`.
fn snapshot(vfs: &dyn Vfs, dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for p in vfs.list_dir(&d).unwrap() {
            if vfs.is_dir(&p) {
                // Directories count too: a read-only open must not create one.
                out.insert(p.clone(), b"<dir>".to_vec());
                todo.push(p);
            } else {
                let bytes = vfs.read(&p).unwrap();
                out.insert(p, bytes);
            }
        }
    }
    out
}

fn writes_rejected(store: &Store) {
    let read_only = |r: Result<()>| match r {
        Err(e @ Error::ReadOnly { .. }) => assert!(e.to_string().contains("read-only"), "{e}"),
        other => panic!("expected Error::ReadOnly, got {other:?}"),
    };
    read_only(store.append(vec![f("m1", T0, 1.0)]).map(|_| ()));
    read_only(store.append(Vec::new()).map(|_| ()));
    read_only(store.flush());
    read_only(store.compact().map(|_| ()));
    read_only(store.set_retention("power", Some(Duration::from_secs(86_400))));
    read_only(store.enforce_retention().map(|_| ()));
}

#[test]
fn a_read_only_open_sees_what_the_writer_sees_while_it_runs_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = test_opts(Arc::new(RealFs));
    let writer = Store::open(dir.path(), opts.clone()).unwrap();
    writer
        .append((0..40).map(|i| f("m1", T0 + i * SEC, i as f64)).collect())
        .unwrap();
    writer
        .append(vec![
            f("m2", T0, 7.0),
            r("m2", T0 + SEC, &[("e", Value::I64(3))]),
        ])
        .unwrap();
    writer.flush().unwrap();
    // Sealed rows replaced by buffered ones, a new device and a new channel,
    // all only in the WAL.
    writer
        .append(vec![
            f("m1", T0 + 5 * SEC, 55.0),
            f("m3", T0 + 86_400 * 40 * SEC, 1.5),
            r("m1", T0 + 100 * SEC, &[("s", Value::Str("on".into()))]),
        ])
        .unwrap();
    let before = snapshot(&RealFs, dir.path());

    let reader = Store::open_read_only(dir.path(), opts.clone()).unwrap();
    assert!(reader.is_read_only() && !writer.is_read_only());
    assert!(
        reader.recovery_report().is_empty(),
        "{:?}",
        reader.recovery_report()
    );
    assert_eq!(all(&reader), all(&writer));
    assert_eq!(reader.partitions(), writer.partitions());
    assert!(reader.partitions().iter().any(|p| p.buffered_rows > 0));
    assert!(reader.partitions().iter().any(|p| p.segments > 0));
    assert_eq!(reader.tables(), writer.tables());
    assert_eq!(reader.schema("power"), writer.schema("power"));
    assert_eq!(latest_of(&reader), latest_of(&writer));
    assert!(reader.verify().is_empty());
    reader.close().unwrap();
    drop(reader);
    assert_eq!(snapshot(&RealFs, dir.path()), before);

    // The writer is unaffected; a reader is a snapshot of its open.
    let reader = Store::open_read_only(dir.path(), opts.clone()).unwrap();
    let seen = all(&reader);
    writer.append(vec![f("m4", T0, 4.0)]).unwrap();
    writer.flush().unwrap();
    writer.compact().unwrap();
    assert_eq!(
        all(&reader),
        seen,
        "a read-only store does not follow writes"
    );
    let again = Store::open_read_only(dir.path(), opts.clone()).unwrap();
    assert_eq!(all(&again), all(&writer));
    assert_eq!(all(&again).len(), seen.len() + 1);
}

#[test]
fn writes_on_a_read_only_store_fail_and_close_writes_nothing() {
    let (fs, writer) = mem_store();
    writer.append(vec![f("m1", T0, 1.0)]).unwrap();
    let before = snapshot(fs.as_ref(), Path::new(DIR));
    let reader = Store::open_read_only(DIR, test_opts(fs.clone())).unwrap();
    writes_rejected(&reader);
    assert_eq!(reader.wal_stats(), wal::WalStats::default());
    reader.close().unwrap();
    reader.close().unwrap();
    drop(reader);
    assert_eq!(snapshot(fs.as_ref(), Path::new(DIR)), before);
    // The writer's lock was never touched.
    writer.append(vec![f("m1", T0 + SEC, 2.0)]).unwrap();
    assert_eq!(all(&writer).len(), 2);
}

#[test]
fn a_read_only_open_of_a_missing_directory_fails_and_creates_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("nope");
    let err = Store::open_read_only(&dir, test_opts(Arc::new(RealFs))).unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchDirectory { path } if path == &dir),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.exists());
}

#[test]
fn damage_and_a_torn_wal_tail_are_reported_and_left_in_place() {
    let (fs, store) = mem_store();
    store.append(vec![f("m1", T0, 1.0)]).unwrap();
    store.flush().unwrap();
    store.append(vec![f("m2", T0, 2.0)]).unwrap();
    store.flush().unwrap();
    store.append(vec![f("m3", T0, 3.0)]).unwrap();
    let seg = store.shared.state.read().parts.values().next().unwrap()[0]
        .path()
        .to_owned();
    drop(store);
    fs.corrupt(&seg, |b| {
        let n = b.len();
        b[n - 10] ^= 0xff;
    })
    .unwrap();
    let wal_dir = Path::new(DIR).join(WAL_DIR);
    let last_wal = fs.list_dir(&wal_dir).unwrap().pop().unwrap();
    fs.corrupt(&last_wal, |b| b.extend_from_slice(&[0x5a; 11]))
        .unwrap();
    let before = snapshot(fs.as_ref(), Path::new(DIR));

    let reader = Store::open_read_only(DIR, test_opts(fs.clone())).unwrap();
    let report = reader.recovery_report();
    assert_eq!(report.len(), 2, "{report:?}");
    assert!(
        report.iter().any(|e| matches!(e,
            RecoveryEvent::SegmentQuarantined { file, moved_to: None, .. } if file == &seg)),
        "{report:?}"
    );
    assert!(
        report.iter().any(|e| matches!(e,
            RecoveryEvent::Wal(wal::RecoveryEvent::TornTail { file, discarded_bytes: 11, .. })
                if file == &last_wal)),
        "{report:?}"
    );
    assert!(
        report
            .iter()
            .any(|e| e.to_string().contains("left in place"))
    );
    let seen = all(&reader);
    assert_eq!(
        seen,
        vec![
            ("m2".into(), T0, vec![Some("2.0".into())]),
            ("m3".into(), T0, vec![Some("3.0".into())]),
        ]
    );
    drop(reader);
    assert_eq!(snapshot(fs.as_ref(), Path::new(DIR)), before);

    // A writer then repairs, and sees the same rows.
    let writer = Store::open(DIR, test_opts(fs.clone())).unwrap();
    assert_eq!(all(&writer), seen);
    assert!(!fs.exists(&seg));
}

#[test]
fn leftovers_of_an_interrupted_compaction_win_as_they_would_for_the_writer() {
    let (fs, store) = mem_store();
    for i in 0..3 {
        store.append(vec![f("m1", T0 + i * SEC, i as f64)]).unwrap();
        store.flush().unwrap();
    }
    store.append(vec![f("m1", T0 + SEC, 10.0)]).unwrap();
    let inputs: Vec<(PathBuf, Vec<u8>)> = store
        .shared
        .state
        .read()
        .parts
        .values()
        .next()
        .unwrap()
        .iter()
        .map(|s| (s.path().to_owned(), fs.read(s.path()).unwrap()))
        .collect();
    assert_eq!(store.compact().unwrap(), 1);
    let want = all(&store);
    drop(store);
    // The compaction "crashed" before deleting its inputs, and a seal left
    // a temporary file.
    for (path, bytes) in &inputs {
        let mut file = fs.create(path).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_data().unwrap();
    }
    let tmp = inputs[0].0.with_extension("wseg.tmp");
    fs.create(&tmp)
        .unwrap()
        .write_all(b"half a segment")
        .unwrap();
    let before = snapshot(fs.as_ref(), Path::new(DIR));

    let reader = Store::open_read_only(DIR, test_opts(fs.clone())).unwrap();
    assert!(
        reader.recovery_report().is_empty(),
        "{:?}",
        reader.recovery_report()
    );
    assert_eq!(all(&reader), want);
    assert_eq!(reader.partitions()[0].segments, 1);
    drop(reader);
    assert_eq!(snapshot(fs.as_ref(), Path::new(DIR)), before);

    let writer = Store::open(DIR, test_opts(fs.clone())).unwrap();
    assert_eq!(all(&writer), want);
    let leftovers = writer
        .recovery_report()
        .iter()
        .filter(|e| matches!(e, RecoveryEvent::CompactionLeftover { .. }))
        .count();
    assert_eq!(leftovers, inputs.len(), "{:?}", writer.recovery_report());
    assert!(!fs.exists(&tmp));
}

/// A writer seals, compacts and trims its log in a loop while readers open
/// the directory: each reader sees every batch acknowledged before its open
/// began, whole, and nothing that was never appended.
#[test]
fn read_only_opens_beside_a_busy_writer_see_consistent_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        compact_min_segments: 3,
        ..test_opts(Arc::new(RealFs))
    };
    let writer = Arc::new(Store::open(dir.path(), opts.clone()).unwrap());
    const BATCHES: u64 = 150;
    const PER_BATCH: i64 = 3;
    let acked = Arc::new(AtomicU64::new(0));
    let batch = |i: u64| -> Vec<Reading> {
        (0..PER_BATCH)
            .map(|k| f(&format!("m{k}"), T0 + i as i64 * SEC, i as f64))
            .collect()
    };
    let worker = {
        let (writer, acked) = (writer.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..BATCHES {
                writer.append(batch(i)).unwrap();
                acked.store(i + 1, Ordering::SeqCst);
                if i % 4 == 3 {
                    writer.flush().unwrap();
                }
                if i % 12 == 11 {
                    writer.compact().unwrap();
                }
            }
        })
    };
    let mut opened = 0;
    // At least one open, even if the writer finished before the first.
    while !worker.is_finished() || opened == 0 {
        let floor = acked.load(Ordering::SeqCst);
        let reader = match Store::open_read_only(dir.path(), opts.clone()) {
            Ok(reader) => reader,
            Err(Error::ChangedDuringOpen { .. }) => continue,
            Err(e) => panic!("read-only open failed: {e}"),
        };
        let ceiling = acked.load(Ordering::SeqCst) + 1;
        opened += 1;
        let mut per_batch: BTreeMap<i64, i64> = BTreeMap::new();
        // Before the first append there is no table to scan.
        let rows = if reader.table("power").is_some() {
            all(&reader)
        } else {
            Vec::new()
        };
        for (_, time, _) in rows {
            *per_batch.entry((time - T0) / SEC).or_default() += 1;
        }
        let seen = per_batch.len() as u64;
        assert!(
            per_batch.values().all(|n| *n == PER_BATCH),
            "a batch was seen in part: {per_batch:?}"
        );
        assert!(
            per_batch.keys().copied().eq(0..seen as i64),
            "batches seen are not a prefix: {per_batch:?}"
        );
        assert!(
            (floor..=ceiling).contains(&seen),
            "saw {seen} batches, {floor} were acknowledged before the open, at most {ceiling} after"
        );
        assert!(
            reader
                .recovery_report()
                .iter()
                .all(|e| matches!(e, RecoveryEvent::Wal(wal::RecoveryEvent::TornTail { .. })))
        );
    }
    worker.join().unwrap();
    assert!(opened > 0, "no read-only open succeeded");
    let reader = Store::open_read_only(dir.path(), opts).unwrap();
    assert_eq!(all(&reader), all(&writer));
}

/// Decides, given an operation's name and path, whether the hook runs.
type When = Box<dyn Fn(&str, &Path) -> bool + Send + Sync>;

/// Runs `hook` just before chosen operations of the reader's VFS, to put a
/// writer's seal exactly into the window between two steps of an open.
struct HookFs {
    inner: Arc<FaultFs>,
    /// Given each `list_dir` or `read` as (operation, path); `true` runs the hook.
    when: When,
    hook: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for HookFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookFs")
    }
}

impl HookFs {
    fn maybe(&self, op: &str, path: &Path) {
        if (self.when)(op, path) {
            (self.hook)();
        }
    }
}

impl Vfs for HookFs {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.maybe("list_dir", path);
        self.inner.list_dir(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn crate::io::WriteFile>> {
        self.inner.create(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn crate::io::WriteFile>> {
        self.inner.open_append(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.maybe("read", path);
        self.inner.read(path)
    }
    fn map(&self, path: &Path) -> std::io::Result<crate::io::Mapped> {
        self.inner.map(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> std::io::Result<DirLock> {
        self.inner.lock(path)
    }
    fn available_bytes(&self, path: &Path) -> std::io::Result<u64> {
        self.inner.available_bytes(path)
    }
}

/// A writer with one sealed batch and one batch only in the WAL, and a
/// reader VFS that seals (appending first if `append_each_time`) whenever
/// `when` says so.
fn racing_reader(
    when: impl Fn(&str, &Path) -> bool + Send + Sync + 'static,
    append_each_time: bool,
) -> (Arc<Store>, StoreOptions) {
    let (fs, writer) = mem_store();
    let writer = Arc::new(writer);
    writer.append(vec![f("m1", T0, 1.0)]).unwrap();
    writer.flush().unwrap();
    writer.append(vec![f("m1", T0 + SEC, 2.0)]).unwrap();
    let n = AtomicU64::new(2);
    let hook = {
        let writer = writer.clone();
        move || {
            if append_each_time {
                let i = n.fetch_add(1, Ordering::SeqCst) as i64;
                writer
                    .append(vec![f("m1", T0 + i * SEC, i as f64)])
                    .unwrap();
            }
            writer.flush().unwrap();
        }
    };
    let vfs = HookFs {
        inner: fs.clone(),
        when: Box::new(when),
        hook: Box::new(hook),
    };
    (writer, test_opts(Arc::new(vfs)))
}

fn is_wal_dir(p: &Path) -> bool {
    p == Path::new(DIR).join(WAL_DIR)
}

#[test]
fn a_seal_between_loading_segments_and_reading_the_wal_restarts_the_open() {
    // The second listing of the WAL directory is replay's: by then the
    // segments are loaded, and this seal moves the buffered row into a new
    // segment and trims the log file that held it.
    let calls = AtomicU64::new(0);
    let (writer, opts) = racing_reader(
        move |op, p| op == "list_dir" && is_wal_dir(p) && calls.fetch_add(1, Ordering::SeqCst) == 1,
        false,
    );
    let reader = Store::open_read_only(DIR, opts).unwrap();
    assert_eq!(all(&reader).len(), 2, "the row moved by the seal is seen");
    assert_eq!(all(&reader), all(&writer));
}

#[test]
fn a_wal_file_trimmed_while_it_is_read_restarts_the_open() {
    let fired = AtomicBool::new(false);
    let (writer, opts) = racing_reader(
        move |op, p| {
            op == "read"
                && p.parent().is_some_and(is_wal_dir)
                && !fired.swap(true, Ordering::SeqCst)
        },
        false,
    );
    let reader = Store::open_read_only(DIR, opts).unwrap();
    assert_eq!(all(&reader).len(), 2);
    assert_eq!(all(&reader), all(&writer));
}

#[test]
fn a_directory_that_changes_during_every_attempt_fails_clearly() {
    let calls = AtomicU64::new(0);
    let (_writer, opts) = racing_reader(
        // Replay's listing in every attempt (each attempt lists the WAL
        // directory three times: the check before, replay, the check after).
        move |op, p| {
            op == "list_dir" && is_wal_dir(p) && calls.fetch_add(1, Ordering::SeqCst) % 3 == 1
        },
        true,
    );
    let err = Store::open_read_only(DIR, opts).unwrap_err();
    assert!(
        matches!(err, Error::ChangedDuringOpen { attempts, .. } if attempts == READ_ONLY_OPEN_ATTEMPTS),
        "{err:?}"
    );
    assert!(err.to_string().contains("try again"), "{err}");
}
