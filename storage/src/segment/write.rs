//! Building a segment file: input checks, per-chunk encoding choice, and the
//! durable tmp -> fsync -> rename -> fsync-dir sequence.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};

use zstd::bulk::Compressor;

use super::encoding as enc;
use super::{
    BlockMeta, ChunkMeta, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_BLOCK_ROWS, SegmentMeta, Stats,
    WriteOptions, footer,
};
use crate::error::{Error, Result};
use crate::io::{Vfs, WriteFile};
use crate::model::{self, ChannelType, MAX_STRING_BYTES};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}

pub(super) fn write_segment(
    vfs: &dyn Vfs,
    final_path: &Path,
    meta: &SegmentMeta,
    times: &[i64],
    columns: &[ArrayRef],
    opts: &WriteOptions,
) -> Result<u64> {
    check_input(meta, times, columns, opts)?;
    let tmp = tmp_path(final_path);
    let written = vfs
        .create(&tmp)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|mut file| {
            write_body(file.as_mut(), &tmp, meta, times, columns, opts)?;
            file.sync_data().map_err(|e| Error::io(&tmp, e))?;
            Ok(file.len())
        })
        .and_then(|len| {
            vfs.rename(&tmp, final_path)
                .map_err(|e| Error::io(final_path, e))?;
            Ok(len)
        });
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            // Best effort: a leftover .tmp is harmless (never mapped) but untidy.
            let _ = vfs.remove_file(&tmp);
            return Err(e);
        }
    };
    // The rename is not durable until the directory entry is.
    let parent = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    vfs.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
    Ok(len)
}

fn tmp_path(final_path: &Path) -> PathBuf {
    let mut name = OsString::from(final_path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Everything the format or the reader's checks rely on, verified up front so
/// a bad call fails before any file is created.
fn check_input(
    meta: &SegmentMeta,
    times: &[i64],
    columns: &[ArrayRef],
    opts: &WriteOptions,
) -> Result<()> {
    if opts.block_rows == 0 || opts.block_rows > MAX_BLOCK_ROWS {
        return Err(invalid(format!(
            "block_rows {} is outside 1..={MAX_BLOCK_ROWS}",
            opts.block_rows
        )));
    }
    model::validate_table_name(&meta.table)?;
    model::validate_device_name(&meta.device)?;
    if !(1..=12).contains(&meta.month.month) {
        return Err(invalid(format!(
            "month {} is not 1 to 12",
            meta.month.month
        )));
    }
    if meta.min_seq > meta.max_seq {
        return Err(invalid("min_seq is greater than max_seq"));
    }
    if meta.columns.len() > usize::from(u16::MAX) {
        return Err(invalid("more than 65535 columns"));
    }
    let mut seen = HashSet::new();
    for (name, _) in &meta.columns {
        model::validate_channel_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(invalid(format!("column `{name}` appears twice")));
        }
    }
    if columns.len() != meta.columns.len() {
        return Err(invalid(format!(
            "{} arrays for {} columns",
            columns.len(),
            meta.columns.len()
        )));
    }
    let (start, end) = (meta.month.start_ns(), meta.month.end_ns());
    if let Some(t) = times.iter().find(|&&t| t < start || t >= end) {
        return Err(invalid(format!(
            "time {t} is outside the month {}",
            meta.month
        )));
    }
    if let Some(w) = times.windows(2).find(|w| w[0] >= w[1]) {
        return Err(invalid(format!(
            "times are not strictly ascending ({} then {})",
            w[0], w[1]
        )));
    }
    for ((name, ty), array) in meta.columns.iter().zip(columns) {
        if array.len() != times.len() {
            return Err(invalid(format!(
                "column `{name}` has {} values for {} times",
                array.len(),
                times.len()
            )));
        }
        if array.data_type() != &ty.arrow_type() {
            return Err(invalid(format!(
                "column `{name}` is {ty} but the array is {}",
                array.data_type()
            )));
        }
        if let Some(strings) = array.as_any().downcast_ref::<StringArray>()
            && strings.iter().flatten().any(|s| s.len() > MAX_STRING_BYTES)
        {
            return Err(invalid(format!(
                "column `{name}` has a string longer than {MAX_STRING_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

fn write_body(
    file: &mut dyn WriteFile,
    path: &Path,
    meta: &SegmentMeta,
    times: &[i64],
    columns: &[ArrayRef],
    opts: &WriteOptions,
) -> Result<()> {
    let write = |file: &mut dyn WriteFile, bytes: &[u8]| {
        file.write_all(bytes).map_err(|e| Error::io(path, e))
    };
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // flags
    header.extend_from_slice(&0u32.to_le_bytes()); // reserved
    write(file, &header)?;

    // One compression context for the whole file: creating one per chunk
    // costs more than compressing a small chunk.
    let mut zstd = zstd::bulk::Compressor::new(opts.zstd_level)
        .map_err(|e| invalid(format!("zstd level {}: {e}", opts.zstd_level)))?;
    let mut offset = HEADER_LEN;
    let mut blocks = Vec::new();
    let mut start = 0;
    while start < times.len() {
        let end = times.len().min(start + opts.block_rows);
        let block_times = &times[start..end];
        let mut chunks = Vec::with_capacity(columns.len() + 1);
        chunks.push(encode_times(block_times, &mut zstd)?);
        for ((_, ty), array) in meta.columns.iter().zip(columns) {
            let slice = array.slice(start, end - start);
            chunks.push(encode_column(slice.as_ref(), *ty, &mut zstd)?);
        }
        let block_offset = offset;
        let mut crc = 0u32;
        let mut metas = Vec::with_capacity(chunks.len());
        for (bytes, encoding, null_count, stats) in chunks {
            write(file, &bytes)?;
            crc = crc32c::crc32c_append(crc, &bytes);
            let len = u32::try_from(bytes.len())
                .map_err(|_| Error::Internal("a chunk exceeds 4 GiB".into()))?;
            metas.push(ChunkMeta {
                offset,
                len,
                crc32c: crc32c::crc32c(&bytes),
                encoding,
                null_count,
                stats,
            });
            offset += u64::from(len);
        }
        let mut metas = metas.into_iter();
        let time = metas
            .next()
            .ok_or_else(|| Error::Internal("block without a time chunk".into()))?;
        blocks.push(BlockMeta {
            rows: (end - start) as u32,
            min_time: block_times[0],
            max_time: block_times[block_times.len() - 1],
            offset: block_offset,
            len: offset - block_offset,
            crc32c: crc,
            time,
            columns: metas.collect(),
        });
        start = end;
    }

    let footer = footer::encode(meta, &blocks);
    let footer_len = u32::try_from(footer.len())
        .map_err(|_| invalid("the footer would exceed 4 GiB; write fewer blocks per file"))?;
    write(file, &footer)?;
    let mut trailer = Vec::with_capacity(super::TRAILER_LEN as usize);
    trailer.extend_from_slice(&offset.to_le_bytes());
    trailer.extend_from_slice(&footer_len.to_le_bytes());
    trailer.extend_from_slice(&crc32c::crc32c(&footer).to_le_bytes());
    trailer.extend_from_slice(&MAGIC);
    write(file, &trailer)
}

/// Stored bytes, encoding byte, null count and statistics of one chunk.
type Chunk = (Vec<u8>, u8, u32, Stats);

/// zstd when it pays, raw otherwise: tiny chunks grow under zstd's framing.
fn pack(tag: u8, payload: Vec<u8>, zstd: &mut Compressor<'_>) -> Result<(u8, Vec<u8>)> {
    let compressed = zstd
        .compress(&payload)
        .map_err(|e| Error::Internal(format!("zstd compression failed: {e}")))?;
    Ok(if compressed.len() < payload.len() {
        (tag | enc::ZSTD, compressed)
    } else {
        (tag, payload)
    })
}

fn encode_times(times: &[i64], zstd: &mut Compressor<'_>) -> Result<Chunk> {
    let mut payload = Vec::new();
    enc::encode_times(times, &mut payload);
    let (encoding, bytes) = pack(enc::TIME_DOD, payload, zstd)?;
    let stats = Stats::I64 {
        min: times.first().copied().unwrap_or_default(),
        max: times.last().copied().unwrap_or_default(),
    };
    Ok((bytes, encoding, 0, stats))
}

fn downcast<T: 'static>(array: &dyn Array) -> Result<&T> {
    array.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::Internal(format!(
            "array of type {} did not downcast",
            array.data_type()
        ))
    })
}

fn encode_column(array: &dyn Array, ty: ChannelType, zstd: &mut Compressor<'_>) -> Result<Chunk> {
    let rows = array.len();
    let nulls = array.null_count();
    let stats = stats_of(array, ty)?;
    if nulls == rows {
        return Ok((Vec::new(), enc::ALL_NULL, nulls as u32, stats));
    }
    let bitmap = match nulls {
        0 => Vec::new(),
        _ => enc::pack_bits((0..rows).map(|i| array.is_valid(i)), rows),
    };
    let candidates = match ty {
        ChannelType::F64 => {
            let values: Vec<f64> = downcast::<Float64Array>(array)?.iter().flatten().collect();
            enc::f64_candidates(&values)
        }
        ChannelType::I64 => {
            let values: Vec<i64> = downcast::<Int64Array>(array)?.iter().flatten().collect();
            let mut out = Vec::new();
            enc::encode_i64(&values, &mut out);
            vec![(enc::I64_DELTA, out)]
        }
        ChannelType::Bool => {
            let values: Vec<bool> = downcast::<BooleanArray>(array)?.iter().flatten().collect();
            enc::bool_candidates(&values)
        }
        ChannelType::Str => {
            let values: Vec<&str> = downcast::<StringArray>(array)?.iter().flatten().collect();
            let mut out = Vec::new();
            enc::encode_str(&values, &mut out);
            vec![(enc::STR_DICT, out)]
        }
    };
    let mut best: Option<(u8, Vec<u8>)> = None;
    for (tag, values) in candidates {
        let mut payload = bitmap.clone();
        payload.extend_from_slice(&values);
        let packed = pack(tag, payload, zstd)?;
        if best.as_ref().is_none_or(|b| packed.1.len() < b.1.len()) {
            best = Some(packed);
        }
    }
    let (encoding, bytes) = best.ok_or_else(|| Error::Internal("no encoding candidate".into()))?;
    Ok((bytes, encoding, nulls as u32, stats))
}

/// `v`'s bits as an integer that orders like [`f64::total_cmp`] (the very
/// transform it uses), so min and max are integer compares that the
/// compiler vectorises: sealing computes them for every value.
fn total_order_key(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// The inverse of [`total_order_key`] (the transform is its own inverse).
fn from_total_order_key(k: i64) -> f64 {
    f64::from_bits((k ^ (((k >> 63) as u64) >> 1) as i64) as u64)
}

/// Statistics of a column slice, as documented on [`Stats`]. Shared by the
/// writer and by `verify`, which recomputes them from decoded data.
pub(super) fn stats_of(array: &dyn Array, ty: ChannelType) -> Result<Stats> {
    if array.null_count() == array.len() {
        return Ok(Stats::AllNull);
    }
    Ok(match ty {
        ChannelType::F64 => {
            let a = downcast::<Float64Array>(array)?;
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            let mut take = |v: f64| {
                if !v.is_nan() {
                    let k = total_order_key(v);
                    lo = lo.min(k);
                    hi = hi.max(k);
                }
            };
            match a.nulls() {
                None => a.values().iter().for_each(|&v| take(v)),
                Some(valid) => a.values().iter().zip(valid.iter()).for_each(|(&v, ok)| {
                    if ok {
                        take(v)
                    }
                }),
            }
            let (min, max) = if lo > hi {
                (f64::NAN, f64::NAN)
            } else {
                (from_total_order_key(lo), from_total_order_key(hi))
            };
            Stats::F64 { min, max }
        }
        ChannelType::I64 => {
            let a = downcast::<Int64Array>(array)?;
            let min = a.iter().flatten().min().unwrap_or_default();
            let max = a.iter().flatten().max().unwrap_or_default();
            Stats::I64 { min, max }
        }
        ChannelType::Bool => {
            let a = downcast::<BooleanArray>(array)?;
            Stats::Bool {
                any_true: a.iter().flatten().any(|v| v),
                any_false: a.iter().flatten().any(|v| !v),
            }
        }
        ChannelType::Str => {
            let a = downcast::<StringArray>(array)?;
            let min = a.iter().flatten().min().unwrap_or_default();
            let max = a.iter().flatten().max().unwrap_or_default();
            Stats::Str {
                min: min.to_owned(),
                max: max.to_owned(),
            }
        }
    })
}
