//! The WAL's bytes on disk: segment file names, the file header and the
//! record frame. Encoding and bounds-checked decoding only; deciding what a
//! bad frame means is recovery's job. The layout is documented byte for byte
//! in `docs/storage-format.md, "Write-ahead log"`.
//!
//! ```text
//! file header (28 bytes)
//!   0  magic      8  b"WTSNWAL\0"
//!   8  version    4  u32 = 1
//!  12  reserved   4  u32 = 0 (ignored when read)
//!  16  first_seq  8  u64, equals the number in the file name
//!  24  crc        4  CRC32C of bytes 0..24
//! record (16 + len bytes), repeated to the end of the file
//!   0  len        4  u32, payload bytes, at most MAX_PAYLOAD
//!   4  crc        4  CRC32C of the 8 seq bytes followed by the payload
//!   8  seq        8  u64
//!  16  payload  len
//! ```
//! All integers are little-endian.

use std::path::Path;

use crate::error::{Error, Result};

/// First bytes of every WAL segment file.
pub(crate) const MAGIC: [u8; 8] = *b"WTSNWAL\0";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 28;
pub(crate) const RECORD_HEADER_LEN: usize = 16;
/// Largest payload of one record. Bounds the allocation a damaged length
/// field could ask for, and keeps one record far below a segment's size.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Segment files are `{first_seq:020}.wal`; zero padding makes the name
/// order the seq order.
const SUFFIX: &str = ".wal";
const DIGITS: usize = 20;

pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

/// The first seq named by a segment file name, or `None` for other files.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_header(first_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header's first seq, or [`Error::Corrupt`] at the offending field.
pub(crate) fn decode_header(path: &Path, bytes: &[u8]) -> Result<u64> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        let reason = format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        );
        return Err(Error::corrupt(path, 0, reason));
    };
    if h[0..8] != MAGIC {
        return Err(Error::corrupt(path, 0, "bad magic: not a Wattson WAL file"));
    }
    if u32_at(h, 24) != crc32c::crc32c(&h[..24]) {
        return Err(Error::corrupt(path, 24, "header checksum mismatch"));
    }
    let version = u32_at(h, 8);
    if version != VERSION {
        let reason = format!("unsupported WAL version {version}");
        return Err(Error::corrupt(path, 8, reason));
    }
    Ok(u64_at(h, 16))
}

fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// Appends one framed record to `out`. The caller has checked the payload
/// against [`MAX_PAYLOAD`], so the length fits in a u32.
pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len
}

/// The fixed part of a record, read without trusting it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub(crate) len: usize,
    pub(crate) crc: u32,
    pub(crate) seq: u64,
}

/// Reads the frame at `pos`, or `None` if fewer than 16 bytes remain.
pub(crate) fn read_frame(bytes: &[u8], pos: usize) -> Option<Frame> {
    let h = bytes.get(pos..pos.checked_add(RECORD_HEADER_LEN)?)?;
    Some(Frame {
        len: u32_at(h, 0) as usize,
        crc: u32_at(h, 4),
        seq: u64_at(h, 8),
    })
}

impl Frame {
    /// The payload if the length is sane, the record lies inside `bytes` and
    /// the checksum matches; `None` otherwise.
    pub(crate) fn payload<'a>(&self, bytes: &'a [u8], pos: usize) -> Option<&'a [u8]> {
        if self.len > MAX_PAYLOAD {
            return None;
        }
        let start = pos.checked_add(RECORD_HEADER_LEN)?;
        let payload = bytes.get(start..start.checked_add(self.len)?)?;
        (record_crc(self.seq, payload) == self.crc).then_some(payload)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
