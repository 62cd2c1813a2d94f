//! Sealed segment files: the immutable, columnar home of one
//! (table, device, month) partition's readings.
//!
//! This module owns the segment byte format (described byte for byte in
//! `docs/storage-format.md, "Segment files"`), the writer [`write_segment`] and the reader
//! [`SegmentReader`]. It promises:
//!
//! - **Durability**: [`write_segment`] returns only after the file is complete
//!   under its final name and the directory entry is synced
//!   (tmp -> fsync -> rename -> fsync dir). A crash leaves either no file or
//!   at most a stray `.tmp` file, never a half-written segment.
//! - **Damage is always detected, never returned as data**: every byte of the
//!   file is covered either by an exact-match check (header, trailer magic,
//!   lengths that must add up to the file size) or by a CRC32C (footer, every
//!   block and every chunk). Readers report damage as [`Error::Corrupt`] with
//!   the file and offset, and never panic.
//! - **Bounded work on hostile bytes**: every length is checked against the
//!   file size before use, and every decoded size is bounded by the block's
//!   row count (itself at most [`MAX_BLOCK_ROWS`]), so a corrupt varint or
//!   zstd frame cannot make the reader allocate without limit.
//! - **Compactness**: each chunk picks the encoding that compresses best
//!   (delta-of-delta time, scaled decimals for meter-style floats, dictionary
//!   strings, ...) and is then zstd-compressed when that helps.
//!
//! Blocks carry min/max time and per-chunk statistics in the footer, so a scan
//! can skip blocks without touching their bytes.

use std::path::Path;

use arrow_array::ArrayRef;

use crate::error::{Error, Result};
use crate::io::Vfs;
use crate::model::{ChannelType, Month};

mod cache;
mod encoding;
mod footer;
mod read;
mod write;

#[cfg(test)]
mod tests;

pub(crate) use cache::BlockCache;
pub use cache::{BlockCacheStats, default_block_cache_bytes};
pub use read::SegmentReader;

/// First bytes of every segment file, repeated at its very end.
pub const MAGIC: [u8; 8] = *b"WTSNSEG\0";
/// The format version this code writes. Bump it on any byte-level change and
/// keep reading the older versions.
pub const FORMAT_VERSION: u16 = 1;
/// Largest number of rows a block may hold. Readers rely on it to bound what
/// a (possibly corrupt) block can make them allocate.
pub const MAX_BLOCK_ROWS: usize = 1 << 20;

/// magic (8) + version u16 + flags u16 + reserved u32.
pub(crate) const HEADER_LEN: u64 = 16;
/// footer offset u64 + footer length u32 + footer CRC32C u32 + magic (8).
pub(crate) const TRAILER_LEN: u64 = 24;

/// What a segment holds, stored in its footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub table: String,
    pub device: String,
    pub month: Month,
    /// Range of WAL sequence numbers whose rows this file contains (inclusive).
    pub min_seq: u64,
    pub max_seq: u64,
    /// Channel columns stored in this file, in table order (never `time`/`device`).
    pub columns: Vec<(String, ChannelType)>,
}

/// Knobs of [`write_segment`]. They change the bytes written, never what is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Rows per block (1 to [`MAX_BLOCK_ROWS`]). Larger blocks compress
    /// better; smaller ones let scans skip more precisely.
    pub block_rows: usize,
    /// zstd level for every chunk.
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            block_rows: 65_536,
            zstd_level: 7,
        }
    }
}

/// Where one block lives and what it holds. Stored in the footer, so scans
/// can prune blocks by time or value without reading them.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMeta {
    pub rows: u32,
    pub min_time: i64,
    pub max_time: i64,
    /// Absolute file offset of the block's first byte (its time chunk).
    pub offset: u64,
    pub len: u64,
    /// CRC32C over the block's whole byte range.
    pub crc32c: u32,
    pub time: ChunkMeta,
    /// One per entry of [`SegmentMeta::columns`], in that order.
    pub columns: Vec<ChunkMeta>,
}

/// One column of one block.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkMeta {
    /// Absolute file offset of the chunk's stored bytes.
    pub offset: u64,
    pub len: u32,
    /// CRC32C over the chunk's stored bytes.
    pub crc32c: u32,
    /// Encoding tag (low 7 bits) and zstd flag (0x80); see `docs/storage-format.md, "Segment files"`.
    pub encoding: u8,
    pub null_count: u32,
    pub stats: Stats,
}

/// Value statistics of one chunk, over its non-null values.
///
/// Float rule: `min`/`max` follow IEEE 754 total order (so `-0.0 < +0.0`)
/// over the non-NaN values, because a NaN bound would make every range
/// comparison false and defeat pruning. If every non-null value is NaN, both
/// are NaN. Infinities count as ordinary values.
/// Strings compare byte-wise (Rust's `str` order).
#[derive(Debug, Clone, PartialEq)]
pub enum Stats {
    /// Every row is null (also used for no rows at all).
    AllNull,
    F64 {
        min: f64,
        max: f64,
    },
    I64 {
        min: i64,
        max: i64,
    },
    Bool {
        any_true: bool,
        any_false: bool,
    },
    Str {
        min: String,
        max: String,
    },
}

/// Writes one sealed segment durably and returns its size in bytes.
///
/// `times` must be strictly ascending and inside `meta.month`; `columns[i]`
/// must match `meta.columns[i]` (Float64Array / Int64Array / BooleanArray /
/// StringArray, nulls allowed) and have the same length as `times`. Strings
/// are at most [`crate::model::MAX_STRING_BYTES`] bytes.
///
/// The bytes go to `{final_path}.tmp` first, which is fsynced, renamed to
/// `final_path`, and then the parent directory is fsynced. If a step before
/// the rename fails, the temporary file is removed (best effort) and
/// `final_path` is untouched. If only the directory sync fails, the file may
/// exist but is not known to be durable: treat the write as failed.
pub fn write_segment(
    vfs: &dyn Vfs,
    final_path: &Path,
    meta: &SegmentMeta,
    times: &[i64],
    columns: &[ArrayRef],
    opts: &WriteOptions,
) -> Result<u64> {
    write::write_segment(vfs, final_path, meta, times, columns, opts)
}

/// Turns a decoding failure inside a chunk or the footer into the crate's
/// error, keeping the file and the absolute offset.
fn corrupt_at(path: &Path, offset: u64) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::corrupt(path, offset, reason)
}
