//! Reading a segment through a memory map: open-time validation of the
//! frame (header, trailer, footer), then checksummed, bounded decoding of
//! individual chunks on demand.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, new_null_array};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use zstd::bulk::Decompressor;

use super::encoding::{self as enc, Decoded, Reader};
use super::{
    BlockMeta, ChunkMeta, FORMAT_VERSION, HEADER_LEN, MAGIC, SegmentMeta, Stats, TRAILER_LEN,
    corrupt_at, footer, write::stats_of,
};
use crate::error::{Error, Result};
use crate::io::{Mapped, Vfs};
use crate::model::{ChannelType, widen};

/// An open, validated segment. Cloning is cheap (one shared map and index).
#[derive(Debug, Clone)]
pub struct SegmentReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The whole file; chunks are sliced out of it without copying.
    map: Mapped,
    meta: SegmentMeta,
    blocks: Vec<BlockMeta>,
    /// Sum of block rows, kept so callers need not add them up.
    rows: u64,
    /// Earliest and latest time over every block; `None` without blocks.
    /// Kept because listing partitions (every query plan) would otherwise
    /// walk every block of every file.
    time_range: Option<(i64, i64)>,
    /// This open's key in the block cache; unique in the process.
    id: u64,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl SegmentReader {
    /// Maps the file and validates header, trailer, footer checksum and every
    /// offset and length in the footer against the file size.
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<SegmentReader> {
        let map = vfs.map(path).map_err(|e| Error::io(path, e))?;
        let bytes: &[u8] = &map;
        let file_len = bytes.len() as u64;
        let corrupt = |offset: u64, reason: String| Error::corrupt(path, offset, reason);
        if file_len < HEADER_LEN + TRAILER_LEN {
            return Err(corrupt(
                0,
                format!("{file_len} bytes is too short for a segment"),
            ));
        }
        if bytes[..8] != MAGIC {
            return Err(corrupt(0, "bad magic: not a Wattson segment file".into()));
        }
        let version = le_u16(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(corrupt(
                8,
                format!("format version {version}; this build reads version {FORMAT_VERSION}"),
            ));
        }
        if le_u16(bytes, 10) != 0 || le_u32(bytes, 12) != 0 {
            return Err(corrupt(
                10,
                "unknown header flags or reserved bits set".into(),
            ));
        }
        // Checked above: file_len >= TRAILER_LEN.
        let t = (file_len - TRAILER_LEN) as usize;
        if bytes[t + 16..] != MAGIC {
            return Err(corrupt(
                t as u64 + 16,
                "trailer magic missing: the file is truncated or damaged".into(),
            ));
        }
        let footer_offset = u64::from(le_u32(bytes, t)) | (u64::from(le_u32(bytes, t + 4)) << 32);
        let footer_len = le_u32(bytes, t + 8);
        let footer_crc = le_u32(bytes, t + 12);
        // Exact tiling: a changed offset or length can never still add up.
        let fits = footer_offset >= HEADER_LEN
            && footer_offset.checked_add(u64::from(footer_len) + TRAILER_LEN) == Some(file_len);
        if !fits {
            return Err(corrupt(
                t as u64,
                format!(
                    "footer at {footer_offset} of {footer_len} bytes does not end at the trailer ({t})"
                ),
            ));
        }
        let footer_bytes = &bytes[footer_offset as usize..t];
        if crc32c::crc32c(footer_bytes) != footer_crc {
            return Err(corrupt(footer_offset, "footer checksum mismatch".into()));
        }
        let (meta, blocks) = footer::decode(path, footer_bytes, footer_offset)?;
        let rows = blocks.iter().map(|b| u64::from(b.rows)).sum();
        let time_range = blocks
            .iter()
            .fold(None, |range, b| Some(widen(range, b.min_time, b.max_time)));
        Ok(SegmentReader {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                map,
                meta,
                blocks,
                rows,
                time_range,
                id: super::cache::next_segment_id(),
            }),
        })
    }

    /// This open's key in the block cache.
    pub(crate) fn cache_id(&self) -> u64 {
        self.inner.id
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn meta(&self) -> &SegmentMeta {
        &self.inner.meta
    }

    pub fn blocks(&self) -> &[BlockMeta] {
        &self.inner.blocks
    }

    pub fn rows(&self) -> u64 {
        self.inner.rows
    }

    /// Earliest and latest reading time in the file, from block statistics;
    /// `None` for a file without blocks.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        self.inner.time_range
    }

    pub fn file_len(&self) -> u64 {
        self.inner.map.len() as u64
    }

    fn block(&self, block: usize) -> Result<&BlockMeta> {
        self.inner.blocks.get(block).ok_or_else(|| {
            Error::InvalidInput(format!(
                "block {block} does not exist; {} has {} blocks",
                self.inner.path.display(),
                self.inner.blocks.len()
            ))
        })
    }

    /// Bytes `offset..offset + len`; `open` has already checked the range.
    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset.saturating_add(len)).ok());
        range
            .and_then(|(start, end)| self.inner.map.get(start..end))
            .ok_or_else(|| Error::corrupt(&self.inner.path, offset, "range outside the file"))
    }

    /// The chunk's payload after the CRC check and (bounded) decompression.
    fn payload(&self, b: &BlockMeta, c: &ChunkMeta) -> Result<Cow<'_, [u8]>> {
        let stored = self.bytes(c.offset, u64::from(c.len))?;
        if crc32c::crc32c(stored) != c.crc32c {
            return Err(Error::corrupt(
                self.path(),
                c.offset,
                "chunk checksum mismatch",
            ));
        }
        let tag = c.encoding & !enc::ZSTD;
        let bound = enc::max_payload(tag, b.rows as usize, c.null_count as usize);
        if c.encoding & enc::ZSTD == 0 {
            if stored.len() > bound {
                return Err(Error::corrupt(
                    self.path(),
                    c.offset,
                    "chunk larger than its rows allow",
                ));
            }
            return Ok(Cow::Borrowed(stored));
        }
        decompress(stored, bound)
            .map(Cow::Owned)
            .map_err(corrupt_at(self.path(), c.offset))
    }

    /// Decoded timestamps of block `block`; verifies that chunk's CRC32C first.
    pub fn read_times(&self, block: usize) -> Result<Vec<i64>> {
        let b = self.block(block)?;
        let payload = self.payload(b, &b.time)?;
        let decode = || -> Decoded<Vec<i64>> {
            let mut r = Reader::new(&payload);
            let times = enc::decode_times(&mut r, b.rows as usize)?;
            r.finish()?;
            if times.windows(2).any(|w| w[0] >= w[1]) {
                return Err("timestamps are not strictly ascending".into());
            }
            if times.first() != Some(&b.min_time) || times.last() != Some(&b.max_time) {
                return Err("timestamps disagree with the block's time range".into());
            }
            Ok(times)
        };
        decode().map_err(corrupt_at(self.path(), b.time.offset))
    }

    /// Decoded column `column` (index into `meta().columns`) of block `block`,
    /// as an Arrow array of the channel's type; verifies the chunk's CRC first.
    pub fn read_column(&self, block: usize, column: usize) -> Result<ArrayRef> {
        let b = self.block(block)?;
        let (c, ty) = b
            .columns
            .get(column)
            .zip(self.inner.meta.columns.get(column))
            .map(|(c, (_, ty))| (c, *ty))
            .ok_or_else(|| Error::InvalidInput(format!("column {column} does not exist")))?;
        let rows = b.rows as usize;
        if c.encoding == enc::ALL_NULL {
            return Ok(new_null_array(&ty.arrow_type(), rows));
        }
        let payload = self.payload(b, c)?;
        decode_column(&payload, ty, c, rows).map_err(corrupt_at(self.path(), c.offset))
    }

    /// [`read_column`](Self::read_column) through `cache`: a decoded chunk
    /// is kept there and later reads of it skip the checksum and decoding.
    pub(crate) fn read_column_cached(
        &self,
        cache: &super::BlockCache,
        block: usize,
        column: usize,
    ) -> Result<ArrayRef> {
        if let Some(array) = cache.get(self.inner.id, block, column) {
            return Ok(array);
        }
        let array = self.read_column(block, column)?;
        cache.insert(self.inner.id, block, column, &array);
        Ok(array)
    }

    /// [`read_times`](Self::read_times) through `cache`, as
    /// [`read_column_cached`](Self::read_column_cached) does for channels:
    /// repeated scans that output or filter on time would otherwise decode
    /// the time chunk again each time, most of a warm scan's cost.
    pub(crate) fn read_times_cached(
        &self,
        cache: &super::BlockCache,
        block: usize,
    ) -> Result<ScalarBuffer<i64>> {
        let cached = cache.get(self.inner.id, block, super::cache::TIME_CHUNK);
        if let Some(times) = cached
            .as_ref()
            .and_then(|a| a.as_primitive_opt::<Int64Type>())
        {
            return Ok(times.values().clone());
        }
        let times = ScalarBuffer::from(self.read_times(block)?);
        let array: ArrayRef = Arc::new(Int64Array::new(times.clone(), None));
        cache.insert(self.inner.id, block, super::cache::TIME_CHUNK, &array);
        Ok(times)
    }

    /// Checks every block and chunk checksum, decodes every chunk, and checks
    /// that null counts and statistics in the footer match the data.
    pub fn verify(&self) -> Result<()> {
        for (i, b) in self.inner.blocks.iter().enumerate() {
            if crc32c::crc32c(self.bytes(b.offset, b.len)?) != b.crc32c {
                return Err(Error::corrupt(
                    self.path(),
                    b.offset,
                    "block checksum mismatch",
                ));
            }
            self.read_times(i)?;
            for (j, (c, (_, ty))) in b.columns.iter().zip(&self.inner.meta.columns).enumerate() {
                let array = self.read_column(i, j)?;
                let ty = *ty;
                if array.null_count() != c.null_count as usize
                    || !same_stats(&stats_of(array.as_ref(), ty)?, &c.stats)
                {
                    return Err(Error::corrupt(
                        self.path(),
                        c.offset,
                        "null count or statistics do not match the data",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Bit-exact comparison, so NaN bounds compare equal to themselves.
fn same_stats(a: &Stats, b: &Stats) -> bool {
    match (a, b) {
        (Stats::F64 { min: a0, max: a1 }, Stats::F64 { min: b0, max: b1 }) => {
            a0.to_bits() == b0.to_bits() && a1.to_bits() == b1.to_bits()
        }
        _ => a == b,
    }
}

thread_local! {
    /// Scans decode many small chunks; a fresh zstd context per chunk would
    /// cost more than the decompression itself.
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses one zstd frame whose declared size is at most `bound`; the
/// declared size is also the only allocation.
fn decompress(src: &[u8], bound: usize) -> Decoded<Vec<u8>> {
    let size = match zstd::zstd_safe::get_frame_content_size(src) {
        Ok(Some(size)) => size,
        Ok(None) => return Err("zstd frame does not declare its size".into()),
        Err(_) => return Err("invalid zstd frame header".into()),
    };
    if size > bound as u64 {
        return Err(format!(
            "zstd frame declares {size} bytes, more than the {bound} its rows allow"
        ));
    }
    match zstd::zstd_safe::find_frame_compressed_size(src) {
        Ok(n) if n == src.len() => {}
        _ => return Err("chunk is not exactly one zstd frame".into()),
    }
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(Decompressor::new().map_err(|e| format!("zstd: {e}"))?),
        };
        dctx.decompress(src, size as usize)
            .map_err(|e| format!("zstd: {e}"))
    })?;
    if out.len() as u64 != size {
        return Err(format!(
            "zstd frame gave {} bytes, declared {size}",
            out.len()
        ));
    }
    Ok(out)
}

/// Spreads the `n` non-null values over `rows` slots; null slots get the default.
fn scatter<T: Copy + Default>(values: Vec<T>, nulls: Option<&NullBuffer>) -> Vec<T> {
    match nulls {
        None => values,
        Some(nulls) => {
            let mut it = values.into_iter();
            nulls
                .iter()
                .map(|valid| {
                    if valid {
                        it.next().unwrap_or_default()
                    } else {
                        T::default()
                    }
                })
                .collect()
        }
    }
}

fn decode_column(payload: &[u8], ty: ChannelType, c: &ChunkMeta, rows: usize) -> Decoded<ArrayRef> {
    let mut r = Reader::new(payload);
    let nulls = c.null_count as usize;
    let validity = if nulls > 0 {
        let bits = r.take(rows.div_ceil(8))?;
        if enc::check_bits(bits, rows)? != rows - nulls {
            return Err("validity bitmap disagrees with the null count".into());
        }
        let buffer = BooleanBuffer::new(Buffer::from(bits.to_vec()), 0, rows);
        Some(NullBuffer::new(buffer))
    } else {
        None
    };
    let n = rows - nulls;
    let tag = c.encoding & !enc::ZSTD;
    let array: ArrayRef = match ty {
        ChannelType::F64 => {
            let values = scatter(enc::decode_f64(tag, &mut r, n)?, validity.as_ref());
            Arc::new(Float64Array::new(ScalarBuffer::from(values), validity))
        }
        ChannelType::I64 => {
            if tag != enc::I64_DELTA {
                return Err(format!("encoding {tag} is not an integer encoding"));
            }
            let values = scatter(enc::decode_i64(&mut r, n)?, validity.as_ref());
            Arc::new(Int64Array::new(ScalarBuffer::from(values), validity))
        }
        ChannelType::Bool => {
            let values = scatter(enc::decode_bool(tag, &mut r, n)?, validity.as_ref());
            Arc::new(BooleanArray::new(BooleanBuffer::from(values), validity))
        }
        ChannelType::Str => {
            if tag != enc::STR_DICT {
                return Err(format!("encoding {tag} is not a string encoding"));
            }
            let (dict, indices) = enc::decode_str(&mut r, n)?;
            let mut offsets = Vec::with_capacity(rows + 1);
            let mut data = Vec::new();
            offsets.push(0i32);
            let mut next = indices.into_iter();
            for i in 0..rows {
                if validity.as_ref().is_none_or(|v| v.is_valid(i)) {
                    let s = next
                        .next()
                        .and_then(|k| dict.get(k as usize))
                        .copied()
                        .unwrap_or("");
                    data.extend_from_slice(s.as_bytes());
                }
                let end = i32::try_from(data.len()).map_err(|_| "string data exceeds 2 GiB")?;
                offsets.push(end);
            }
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
            let array = StringArray::try_new(offsets, Buffer::from(data), validity)
                .map_err(|e| format!("string column: {e}"))?;
            Arc::new(array)
        }
    };
    r.finish()?;
    Ok(array)
}
