use std::io::ErrorKind;
use std::path::Path;

use super::*;

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Creates `path` durably (entry and bytes) with `synced`, then appends
/// `unsynced` without syncing.
fn file_with(fs: &FaultFs, path: &str, synced: &[u8], unsynced: &[u8]) {
    let mut f = fs.create(p(path)).unwrap();
    f.write_all(synced).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(&parent_of(p(path))).unwrap();
    f.write_all(unsynced).unwrap();
}

#[test]
fn unsynced_writes_are_lost_or_torn_to_a_prefix() {
    let fs = FaultFs::new();
    file_with(&fs, "/f", b"abc", b"defgh");
    assert_eq!(fs.read(p("/f")).unwrap(), b"abcdefgh");
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let after = fs.power_loss(seed).read(p("/f")).unwrap();
        assert!(
            b"abcdefgh".starts_with(&after) && after.len() >= 3,
            "{after:?}"
        );
        seen.insert(after.len());
    }
    // Nothing, everything and some torn cut in between all occur.
    assert!(seen.contains(&3) && seen.contains(&8), "{seen:?}");
    assert!(seen.iter().any(|&l| l > 3 && l < 8), "{seen:?}");
}

#[test]
fn power_loss_is_deterministic_per_seed() {
    let fs = FaultFs::new();
    file_with(&fs, "/f", b"", &[7u8; 1000]);
    for seed in 0..16 {
        let a = fs.power_loss(seed).read(p("/f")).unwrap();
        let b = fs.power_loss(seed).read(p("/f")).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn synced_data_and_entries_survive() {
    let fs = FaultFs::new();
    fs.create_dir_all(p("/d/e")).unwrap();
    fs.sync_dir(p("/")).unwrap();
    fs.sync_dir(p("/d")).unwrap();
    file_with(&fs, "/d/e/f", b"hello", b"");
    let after = fs.power_loss(1);
    assert!(after.is_dir(p("/d/e")));
    assert_eq!(after.read(p("/d/e/f")).unwrap(), b"hello");
    assert_eq!(
        after.list_dir(p("/d/e")).unwrap(),
        vec![PathBuf::from("/d/e/f")]
    );
    assert_eq!(after.ops(), 0);
}

#[test]
fn unsynced_entries_are_lost() {
    let fs = FaultFs::new();
    let mut f = fs.create(p("/f")).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_data().unwrap();
    assert!(!fs.power_loss(0).exists(p("/f")), "file entry never synced");

    // A synced file inside a directory whose own entry was never synced.
    fs.create_dir_all(p("/d")).unwrap();
    file_with(&fs, "/d/g", b"x", b"");
    let after = fs.power_loss(0);
    assert!(!after.exists(p("/d")) && !after.exists(p("/d/g")));
}

#[test]
fn unsynced_rename_and_remove_are_reverted() {
    let fs = FaultFs::new();
    file_with(&fs, "/a", b"one", b"");
    fs.rename(p("/a"), p("/b")).unwrap();
    assert!(!fs.exists(p("/a")) && fs.exists(p("/b")));
    let after = fs.power_loss(0);
    assert_eq!(after.read(p("/a")).unwrap(), b"one");
    assert!(!after.exists(p("/b")));

    fs.sync_dir(p("/")).unwrap();
    let after = fs.power_loss(0);
    assert!(!after.exists(p("/a")));
    assert_eq!(after.read(p("/b")).unwrap(), b"one");

    fs.remove_file(p("/b")).unwrap();
    assert!(fs.power_loss(0).exists(p("/b")));
    fs.sync_dir(p("/")).unwrap();
    assert!(!fs.power_loss(0).exists(p("/b")));
}

#[test]
fn truncate_is_durable_at_once() {
    let fs = FaultFs::new();
    file_with(&fs, "/f", b"abcdef", b"ghi");
    fs.truncate(p("/f"), 4).unwrap();
    for seed in 0..8 {
        assert_eq!(fs.power_loss(seed).read(p("/f")).unwrap(), b"abcd");
    }
}

#[test]
fn create_over_existing_file_reverts_without_dir_sync() {
    let fs = FaultFs::new();
    file_with(&fs, "/f", b"old", b"");
    let mut f = fs.create(p("/f")).unwrap();
    f.write_all(b"new").unwrap();
    f.sync_data().unwrap();
    assert_eq!(fs.read(p("/f")).unwrap(), b"new");
    assert_eq!(fs.power_loss(0).read(p("/f")).unwrap(), b"old");
}

#[test]
fn enospc_writes_nothing() {
    let fs = FaultFs::with_plan(FaultPlan::default().space_limit_bytes(10));
    let mut f = fs.create(p("/f")).unwrap();
    f.write_all(&[1; 8]).unwrap();
    let err = f.write_all(&[2; 3]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28));
    assert_eq!(f.len(), 8);
    f.write_all(&[3; 2]).unwrap();
    assert_eq!(f.len(), 10);
}

#[test]
fn eio_on_nth_write_and_sync() {
    let fs = FaultFs::new();
    let mut f = fs.create(p("/f")).unwrap();
    f.write_all(b"a").unwrap();
    fs.set_plan(FaultPlan::default().fail_write_after(2));
    f.write_all(b"b").unwrap();
    assert_eq!(f.write_all(b"c").unwrap_err().raw_os_error(), Some(5));
    assert_eq!(f.write_all(b"d").unwrap_err().raw_os_error(), Some(5));
    assert_eq!(fs.read(p("/f")).unwrap(), b"ab");

    fs.set_plan(FaultPlan::default().fail_sync_after(1));
    assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
    assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
    fs.sync_dir(p("/")).unwrap();
    // The failed syncs made nothing durable: some power losses keep nothing.
    assert!((0..16).any(|seed| fs.power_loss(seed).read(p("/f")).unwrap().is_empty()));
}

/// Six mutating operations.
fn workload(fs: &FaultFs) -> io::Result<()> {
    fs.create_dir_all(p("/w"))?;
    fs.sync_dir(p("/"))?;
    let mut f = fs.create(p("/w/f"))?;
    f.write_all(b"payload")?;
    f.sync_data()?;
    fs.sync_dir(p("/w"))
}

#[test]
fn crash_after_ops_fails_that_op_and_everything_after() {
    let clean = FaultFs::new();
    workload(&clean).unwrap();
    let total = clean.ops();
    assert_eq!(total, 6);
    for k in 1..=total {
        let fs = FaultFs::with_plan(FaultPlan::default().crash_after_ops(k));
        let err = workload(&fs).unwrap_err();
        assert_eq!(err.to_string(), "simulated power loss");
        assert_eq!(fs.ops(), k, "ops before and including the failing one");
        assert!(fs.crashed());
        assert!(fs.list_dir(p("/")).is_err(), "reads fail after the crash");
        assert!(!fs.exists(p("/w")));
        // The disk after the crash holds what was durable before op k.
        let after = fs.power_loss(k);
        assert_eq!(after.exists(p("/w/f")), k > 6);
        assert_eq!(after.exists(p("/w")), k > 2);
    }
    let fs = FaultFs::with_plan(FaultPlan::default().crash_after_ops(total + 1));
    workload(&fs).unwrap();
    assert_eq!(fs.power_loss(0).read(p("/w/f")).unwrap(), b"payload");
}

#[test]
fn locks_are_exclusive_until_dropped_and_gone_after_power_loss() {
    let fs = FaultFs::new();
    let lock = fs.lock(p("/LOCK")).unwrap();
    assert_eq!(
        fs.lock(p("/LOCK")).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    fs.sync_dir(p("/")).unwrap();
    let after = fs.power_loss(0);
    drop(after.lock(p("/LOCK")).unwrap());
    drop(lock);
    drop(fs.lock(p("/LOCK")).unwrap());
}

#[test]
fn map_is_a_snapshot_and_corrupt_edits_durably() {
    let fs = FaultFs::new();
    file_with(&fs, "/f", b"abc", b"d");
    let map = fs.map(p("/f")).unwrap();
    fs.corrupt(p("/f"), |b| {
        b[0] ^= 0xff;
        b.truncate(3);
    })
    .unwrap();
    assert_eq!(&*map, b"abcd");
    assert_eq!(
        fs.power_loss(0).read(p("/f")).unwrap(),
        [b'a' ^ 0xff, b'b', b'c']
    );
}

#[test]
fn directory_rules() {
    let fs = FaultFs::new();
    fs.create_dir_all(p("/d")).unwrap();
    file_with(&fs, "/d/f", b"", b"");
    assert!(fs.create(p("/missing/f")).is_err());
    assert_eq!(
        fs.remove_dir(p("/d")).unwrap_err().kind(),
        ErrorKind::DirectoryNotEmpty
    );
    fs.remove_file(p("/d/f")).unwrap();
    fs.remove_dir(p("/d")).unwrap();
    assert!(!fs.is_dir(p("/d")));
}
