//! Opening an existing log: reads every segment file in seq order, hands each
//! intact record to the caller's replay function, and repairs what a crash or
//! bad disk left behind. It promises:
//! - every record whose frame and checksum are intact, and whose seq is
//!   greater than every seq replayed before it, is replayed exactly once, in
//!   file order;
//! - bytes that are not replayed are either reported (a [`RecoveryEvent`]
//!   naming file and offset) or were a torn tail that no caller was ever told
//!   was durable;
//! - nothing panics and nothing allocates more than a file's size, whatever
//!   the bytes.
//!
//! The rules (see `docs/storage-format.md, "Write-ahead log"`): a bad frame at the end of the last
//! file is a torn tail, truncated away (a read-only replay only reports it:
//! beside a live writer it is usually a record being written). Anywhere else the scanner looks for
//! the next valid record byte by byte; the bytes it skips are damage,
//! reported and copied to the quarantine directory, and the records after
//! them are still replayed. A file with an unusable header is moved to
//! quarantine (or left alone and skipped), except a last file too short to
//! hold a header: that is a crash during rotation, and it is removed.

use std::path::{Path, PathBuf};

use super::RecoveryEvent;
use super::format::{self, HEADER_LEN, RECORD_HEADER_LEN};
use crate::error::{Error, Result};
use crate::io::Vfs;

/// A segment file that recovery kept.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) first_seq: u64,
    pub(super) path: PathBuf,
}

pub(super) struct Recovered {
    /// Readable segment files, in seq order.
    pub(super) segments: Vec<Segment>,
    /// Files holding nothing but a header: safe to delete once a newer
    /// segment is durable.
    pub(super) empty: Vec<PathBuf>,
    /// New seqs must start at or above this, so that no seq that may exist
    /// on disk (replayed, damaged or in a skipped file) is ever reused.
    pub(super) next_seq: u64,
    pub(super) events: Vec<RecoveryEvent>,
}

pub(super) type Replay<'a> = &'a mut dyn FnMut(u64, &[u8]) -> Result<()>;

/// How much recovery may change on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repair {
    /// The owner of the log: truncate torn tails, remove cut-off files,
    /// copy damage to the quarantine directory.
    Write,
    /// A reader beside a live writer: change nothing. What looks like a torn
    /// tail is then usually a record the writer is still writing.
    ReadOnly,
}

pub(super) fn recover(
    vfs: &dyn Vfs,
    dir: &Path,
    quarantine_dir: Option<&Path>,
    repair: Repair,
    replay: Replay<'_>,
) -> Result<Recovered> {
    let mut files = Vec::new();
    for path in vfs.list_dir(dir).map_err(|e| Error::io(dir, e))? {
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_file_name);
        if let Some(seq) = seq
            && !vfs.is_dir(&path)
        {
            files.push((seq, path));
        }
    }
    files.sort();

    let mut scan = Scan {
        vfs,
        dir,
        repair,
        quarantine: Quarantine {
            vfs,
            dir: quarantine_dir,
            ready: false,
        },
        last_seq: None,
        out: Recovered {
            segments: Vec::new(),
            empty: Vec::new(),
            next_seq: 1,
            events: Vec::new(),
        },
    };
    let count = files.len();
    for (i, (name_seq, path)) in files.into_iter().enumerate() {
        scan.file(name_seq, path, i + 1 == count, replay)?;
    }
    let mut out = scan.out;
    if let Some(last) = scan.last_seq {
        out.next_seq = out.next_seq.max(last.saturating_add(1));
    }
    Ok(out)
}

struct Scan<'a> {
    vfs: &'a dyn Vfs,
    dir: &'a Path,
    repair: Repair,
    quarantine: Quarantine<'a>,
    /// Highest seq replayed so far, across files.
    last_seq: Option<u64>,
    out: Recovered,
}

impl Scan<'_> {
    fn file(
        &mut self,
        name_seq: u64,
        path: PathBuf,
        is_last: bool,
        replay: Replay<'_>,
    ) -> Result<()> {
        let bytes = self.vfs.read(&path).map_err(|e| Error::io(&path, e))?;
        self.out.next_seq = self.out.next_seq.max(name_seq);
        let first_seq = match format::decode_header(&path, &bytes) {
            Ok(seq) if seq == name_seq => seq,
            Ok(seq) => {
                let reason = format!("header names first seq {seq}, the file name {name_seq}");
                return self.bad_file(name_seq, path, bytes.len(), reason);
            }
            Err(_) if is_last && bytes.len() < HEADER_LEN => {
                // Rotation writes and syncs the header before any record, so
                // a short last file is a rotation cut off by a crash (or,
                // beside a live writer, one being written right now).
                if self.repair == Repair::Write {
                    self.vfs
                        .remove_file(&path)
                        .map_err(|e| Error::io(&path, e))?;
                    self.vfs
                        .sync_dir(self.dir)
                        .map_err(|e| Error::io(self.dir, e))?;
                }
                self.out.events.push(RecoveryEvent::TornTail {
                    file: path,
                    offset: 0,
                    discarded_bytes: bytes.len() as u64,
                });
                return Ok(());
            }
            Err(e) => return self.bad_file(name_seq, path, bytes.len(), e.to_string()),
        };

        let mut pos = HEADER_LEN;
        while pos < bytes.len() {
            if let Some((seq, payload)) = self.valid_record(&bytes, pos, first_seq) {
                replay(seq, payload)?;
                self.last_seq = Some(seq);
                pos += format::record_len(payload.len());
                continue;
            }
            let next_valid =
                (pos + 1..bytes.len()).find(|&q| self.valid_record(&bytes, q, first_seq).is_some());
            match next_valid {
                Some(q) => self.damaged(&path, &bytes, pos, q)?,
                None if is_last => {
                    if self.repair == Repair::Write {
                        self.vfs
                            .truncate(&path, pos as u64)
                            .map_err(|e| Error::io(&path, e))?;
                    }
                    self.out.events.push(RecoveryEvent::TornTail {
                        file: path.clone(),
                        offset: pos as u64,
                        discarded_bytes: (bytes.len() - pos) as u64,
                    });
                    if pos == HEADER_LEN {
                        self.out.empty.push(path.clone());
                    }
                    break;
                }
                // A file was complete when the log rotated past it.
                None => self.damaged(&path, &bytes, pos, bytes.len())?,
            }
            pos = next_valid.unwrap_or(bytes.len());
        }
        if bytes.len() == HEADER_LEN {
            self.out.empty.push(path.clone());
        }
        self.out.segments.push(Segment { first_seq, path });
        Ok(())
    }

    /// The payload of the record at `pos` if it can be trusted: sane length,
    /// inside the file, checksum ok, and a seq that fits where it lies.
    fn valid_record<'b>(
        &self,
        bytes: &'b [u8],
        pos: usize,
        first_seq: u64,
    ) -> Option<(u64, &'b [u8])> {
        let frame = format::read_frame(bytes, pos)?;
        // Records of a file hold consecutive seqs from `first_seq`, each at
        // least 16 bytes long: that bounds the seq found at `pos` and rejects
        // almost all garbage before the checksum is computed.
        let max_seq = first_seq.saturating_add(((pos - HEADER_LEN) / RECORD_HEADER_LEN) as u64);
        let after_last = self.last_seq.is_none_or(|last| frame.seq > last);
        if frame.seq < first_seq || frame.seq > max_seq || !after_last {
            return None;
        }
        Some((frame.seq, frame.payload(bytes, pos)?))
    }

    fn damaged(&mut self, path: &Path, bytes: &[u8], from: usize, to: usize) -> Result<()> {
        let quarantined = self.quarantine.copy(path, from as u64, &bytes[from..to])?;
        tracing::warn!(file = %path.display(), offset = from, len = to - from, "WAL damage skipped");
        self.out.events.push(RecoveryEvent::Damaged {
            file: path.to_path_buf(),
            offset: from as u64,
            len: (to - from) as u64,
            quarantined,
        });
        Ok(())
    }

    fn bad_file(&mut self, name_seq: u64, path: PathBuf, len: usize, reason: String) -> Result<()> {
        // The file's records are unknown but hold consecutive seqs from about
        // `name_seq`, one per 16 bytes at most: skip past all of them.
        let room = (len.saturating_sub(HEADER_LEN) / RECORD_HEADER_LEN) as u64;
        let bound = name_seq.saturating_add(room).saturating_add(1);
        self.out.next_seq = self.out.next_seq.max(bound);
        tracing::warn!(file = %path.display(), %reason, "unreadable WAL file skipped");
        let quarantined = self.quarantine.take(&path, self.dir)?;
        self.out.events.push(RecoveryEvent::BadFile {
            file: path,
            reason,
            quarantined,
        });
        Ok(())
    }
}

/// The optional directory that keeps damaged bytes and unreadable files for
/// a human to inspect, created on first use.
struct Quarantine<'a> {
    vfs: &'a dyn Vfs,
    dir: Option<&'a Path>,
    ready: bool,
}

impl Quarantine<'_> {
    fn ready_dir(&mut self) -> Result<Option<PathBuf>> {
        let Some(dir) = self.dir else { return Ok(None) };
        if !self.ready {
            create_dir_durably(self.vfs, dir)?;
            self.ready = true;
        }
        Ok(Some(dir.to_path_buf()))
    }

    /// A name in the quarantine directory not taken yet.
    fn target(&self, qdir: &Path, name: String) -> PathBuf {
        let mut target = qdir.join(&name);
        let mut n = 1;
        while self.vfs.exists(&target) {
            target = qdir.join(format!("{name}.{n}"));
            n += 1;
        }
        target
    }

    fn copy(&mut self, file: &Path, offset: u64, bytes: &[u8]) -> Result<Option<PathBuf>> {
        let Some(qdir) = self.ready_dir()? else {
            return Ok(None);
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        // Reopening the same damaged log copies the same bytes again; the
        // fixed name keeps that from piling up copies.
        let target = qdir.join(format!("{name}.at-{offset}.damaged"));
        write_durably(self.vfs, &target, bytes)?;
        self.vfs.sync_dir(&qdir).map_err(|e| Error::io(&qdir, e))?;
        Ok(Some(target))
    }

    fn take(&mut self, file: &Path, from_dir: &Path) -> Result<Option<PathBuf>> {
        let Some(qdir) = self.ready_dir()? else {
            return Ok(None);
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let target = self.target(&qdir, format!("{name}.bad"));
        if self.vfs.rename(file, &target).is_err() {
            // Another file system: copy, then delete.
            let bytes = self.vfs.read(file).map_err(|e| Error::io(file, e))?;
            write_durably(self.vfs, &target, &bytes)?;
            self.vfs.sync_dir(&qdir).map_err(|e| Error::io(&qdir, e))?;
            self.vfs.remove_file(file).map_err(|e| Error::io(file, e))?;
        }
        self.vfs.sync_dir(&qdir).map_err(|e| Error::io(&qdir, e))?;
        self.vfs
            .sync_dir(from_dir)
            .map_err(|e| Error::io(from_dir, e))?;
        Ok(Some(target))
    }
}

fn write_durably(vfs: &dyn Vfs, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = vfs.create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// The directory that holds `path`; `.` for a bare relative name.
pub(super) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` and its missing parents, and syncs the parent of each, so
/// the directory itself survives power loss (not only its contents).
pub(super) fn create_dir_durably(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    let mut to_sync = vec![parent_dir(dir)];
    let mut cur = dir;
    while !vfs.is_dir(cur) {
        to_sync.push(parent_dir(cur));
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    vfs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    to_sync.sort();
    to_sync.dedup();
    for d in to_sync {
        vfs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}
