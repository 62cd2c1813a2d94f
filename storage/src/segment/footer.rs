//! The footer: segment meta and the block index, and the structural checks
//! that make every offset in it safe to use.
//!
//! The footer is CRC-protected, so these checks do not find random damage
//! (the CRC does); they make sure that even a well-checksummed but
//! inconsistent footer (a bug, or a hand-crafted file) cannot point the
//! reader outside the file or at overlapping bytes.

use std::path::Path;

use super::encoding::{self as enc, Decoded, Reader};
use super::{BlockMeta, ChunkMeta, HEADER_LEN, MAX_BLOCK_ROWS, SegmentMeta, Stats};
use crate::error::{Error, Result};
use crate::model::{ChannelType, Month};

const STATS_ALL_NULL: u8 = 0;
const STATS_F64: u8 = 1;
const STATS_I64: u8 = 2;
const STATS_BOOL: u8 = 3;
const STATS_STR: u8 = 4;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // The writer rejects longer names and strings before getting here.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_chunk(out: &mut Vec<u8>, c: &ChunkMeta) {
    out.extend_from_slice(&c.offset.to_le_bytes());
    out.extend_from_slice(&c.len.to_le_bytes());
    out.extend_from_slice(&c.crc32c.to_le_bytes());
    out.push(c.encoding);
    out.extend_from_slice(&c.null_count.to_le_bytes());
    match &c.stats {
        Stats::AllNull => out.push(STATS_ALL_NULL),
        Stats::F64 { min, max } => {
            out.push(STATS_F64);
            out.extend_from_slice(&min.to_bits().to_le_bytes());
            out.extend_from_slice(&max.to_bits().to_le_bytes());
        }
        Stats::I64 { min, max } => {
            out.push(STATS_I64);
            out.extend_from_slice(&min.to_le_bytes());
            out.extend_from_slice(&max.to_le_bytes());
        }
        Stats::Bool {
            any_true,
            any_false,
        } => {
            out.push(STATS_BOOL);
            out.push(u8::from(*any_true));
            out.push(u8::from(*any_false));
        }
        Stats::Str { min, max } => {
            out.push(STATS_STR);
            put_str(out, min);
            put_str(out, max);
        }
    }
}

/// Serialises the footer (see `docs/storage-format.md, "Segment files"`).
pub(crate) fn encode(meta: &SegmentMeta, blocks: &[BlockMeta]) -> Vec<u8> {
    let mut out = Vec::new();
    put_str(&mut out, &meta.table);
    put_str(&mut out, &meta.device);
    out.extend_from_slice(&meta.month.year.to_le_bytes());
    out.push(meta.month.month as u8);
    out.extend_from_slice(&meta.min_seq.to_le_bytes());
    out.extend_from_slice(&meta.max_seq.to_le_bytes());
    out.extend_from_slice(&(meta.columns.len() as u16).to_le_bytes());
    for (name, ty) in &meta.columns {
        put_str(&mut out, name);
        out.push(ty.tag());
    }
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        out.extend_from_slice(&b.rows.to_le_bytes());
        out.extend_from_slice(&b.min_time.to_le_bytes());
        out.extend_from_slice(&b.max_time.to_le_bytes());
        out.extend_from_slice(&b.offset.to_le_bytes());
        out.extend_from_slice(&b.len.to_le_bytes());
        out.extend_from_slice(&b.crc32c.to_le_bytes());
        put_chunk(&mut out, &b.time);
        for c in &b.columns {
            put_chunk(&mut out, c);
        }
    }
    out
}

fn get_str(r: &mut Reader<'_>) -> Decoded<String> {
    let len = usize::from(r.u16()?);
    let bytes = r.take(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("string is not UTF-8: {e}"))
}

fn get_bool(r: &mut Reader<'_>) -> Decoded<bool> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(format!("boolean byte {b} is not 0 or 1")),
    }
}

fn get_chunk(r: &mut Reader<'_>) -> Decoded<ChunkMeta> {
    Ok(ChunkMeta {
        offset: r.u64()?,
        len: r.u32()?,
        crc32c: r.u32()?,
        encoding: r.u8()?,
        null_count: r.u32()?,
        stats: match r.u8()? {
            STATS_ALL_NULL => Stats::AllNull,
            STATS_F64 => Stats::F64 {
                min: f64::from_bits(r.u64()?),
                max: f64::from_bits(r.u64()?),
            },
            STATS_I64 => Stats::I64 {
                min: r.i64()?,
                max: r.i64()?,
            },
            STATS_BOOL => Stats::Bool {
                any_true: get_bool(r)?,
                any_false: get_bool(r)?,
            },
            STATS_STR => Stats::Str {
                min: get_str(r)?,
                max: get_str(r)?,
            },
            t => return Err(format!("unknown statistics tag {t}")),
        },
    })
}

fn parse(r: &mut Reader<'_>) -> Decoded<(SegmentMeta, Vec<BlockMeta>)> {
    let table = get_str(r)?;
    let device = get_str(r)?;
    let year = r.i32()?;
    let month = u32::from(r.u8()?);
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not 1 to 12"));
    }
    let (min_seq, max_seq) = (r.u64()?, r.u64()?);
    if min_seq > max_seq {
        return Err(format!("sequence range {min_seq}..={max_seq} is inverted"));
    }
    let column_count = r.u16()?;
    let mut columns = Vec::new();
    for _ in 0..column_count {
        let name = get_str(r)?;
        let tag = r.u8()?;
        let ty = ChannelType::from_tag(tag).ok_or_else(|| format!("unknown type tag {tag}"))?;
        columns.push((name, ty));
    }
    let block_count = r.u32()?;
    // No capacity from the untrusted count: the loop ends at the footer's end.
    let mut blocks = Vec::new();
    for _ in 0..block_count {
        let (rows, min_time, max_time) = (r.u32()?, r.i64()?, r.i64()?);
        let (offset, len, crc32c) = (r.u64()?, r.u64()?, r.u32()?);
        let time = get_chunk(r)?;
        let mut chunks = Vec::new();
        for _ in 0..column_count {
            chunks.push(get_chunk(r)?);
        }
        blocks.push(BlockMeta {
            rows,
            min_time,
            max_time,
            offset,
            len,
            crc32c,
            time,
            columns: chunks,
        });
    }
    r.finish()?;
    let month = Month { year, month };
    let meta = SegmentMeta {
        table,
        device,
        month,
        min_seq,
        max_seq,
        columns,
    };
    Ok((meta, blocks))
}

/// Parses and checks the footer bytes found at `footer_offset`.
pub(crate) fn decode(
    path: &Path,
    bytes: &[u8],
    footer_offset: u64,
) -> Result<(SegmentMeta, Vec<BlockMeta>)> {
    let mut r = Reader::new(bytes);
    let (meta, blocks) = parse(&mut r).map_err(|reason| {
        Error::corrupt(
            path,
            footer_offset + r.pos() as u64,
            format!("footer: {reason}"),
        )
    })?;
    validate(&meta, &blocks, footer_offset)
        .map_err(|(offset, reason)| Error::corrupt(path, offset, format!("footer: {reason}")))?;
    Ok((meta, blocks))
}

/// Blocks must tile the bytes between header and footer exactly, in order,
/// with their chunks tiling each block; times must increase across blocks and
/// stay in the month; encodings and statistics must fit the column types.
/// Errors carry the offset of the offending block.
fn validate(
    meta: &SegmentMeta,
    blocks: &[BlockMeta],
    footer_offset: u64,
) -> std::result::Result<(), (u64, String)> {
    let mut next = HEADER_LEN;
    let mut prev_max: Option<i64> = None;
    let (month_start, month_end) = (meta.month.start_ns(), meta.month.end_ns());
    for (i, b) in blocks.iter().enumerate() {
        let fail = |reason: String| (b.offset, format!("block {i}: {reason}"));
        let rows = b.rows as usize;
        if rows == 0 || rows > MAX_BLOCK_ROWS {
            return Err(fail(format!("{rows} rows is outside 1..={MAX_BLOCK_ROWS}")));
        }
        let span = i128::from(b.max_time) - i128::from(b.min_time);
        if span < rows as i128 - 1 {
            return Err(fail(format!(
                "time range {}..={} cannot hold {rows} distinct timestamps",
                b.min_time, b.max_time
            )));
        }
        if b.min_time < month_start || b.max_time >= month_end {
            return Err(fail(format!("times leave the month {}", meta.month)));
        }
        if prev_max.is_some_and(|p| b.min_time <= p) {
            return Err(fail("blocks are not in ascending time order".into()));
        }
        prev_max = Some(b.max_time);
        if b.offset != next {
            return Err(fail(format!(
                "starts at {} but {next} was expected",
                b.offset
            )));
        }
        let mut chunk_next = b.offset;
        let chunks = std::iter::once((&b.time, None))
            .chain(b.columns.iter().zip(meta.columns.iter().map(|c| Some(c.1))));
        for (c, ty) in chunks {
            if c.offset != chunk_next {
                return Err(fail(format!(
                    "chunk at {} but {chunk_next} expected",
                    c.offset
                )));
            }
            check_chunk(c, ty, b).map_err(|reason| (c.offset, format!("block {i}: {reason}")))?;
            chunk_next += u64::from(c.len);
        }
        if chunk_next - b.offset != b.len {
            return Err(fail(format!(
                "chunks add up to {} bytes, not {}",
                chunk_next - b.offset,
                b.len
            )));
        }
        next = b
            .offset
            .checked_add(b.len)
            .filter(|&end| end <= footer_offset)
            .ok_or_else(|| {
                fail(format!(
                    "length {} runs past the footer at {footer_offset}",
                    b.len
                ))
            })?;
    }
    if next != footer_offset {
        return Err((
            next,
            format!("blocks end at {next} but the footer starts at {footer_offset}"),
        ));
    }
    Ok(())
}

/// `ty` is `None` for the time chunk.
fn check_chunk(c: &ChunkMeta, ty: Option<ChannelType>, b: &BlockMeta) -> Decoded<()> {
    let tag = c.encoding & !enc::ZSTD;
    if c.null_count > b.rows {
        return Err(format!("{} nulls in {} rows", c.null_count, b.rows));
    }
    let Some(ty) = ty else {
        let stats = Stats::I64 {
            min: b.min_time,
            max: b.max_time,
        };
        if tag != enc::TIME_DOD || c.null_count != 0 || c.len == 0 || c.stats != stats {
            return Err("time chunk has a wrong encoding, nulls or statistics".into());
        }
        return Ok(());
    };
    if c.null_count == b.rows {
        if c.encoding != enc::ALL_NULL || c.len != 0 || c.stats != Stats::AllNull {
            return Err("all-null chunk has bytes, an encoding or statistics".into());
        }
        return Ok(());
    }
    let encoding_ok = match ty {
        ChannelType::F64 => matches!(tag, enc::F64_DECIMAL | enc::F64_SHUFFLE | enc::F64_XOR),
        ChannelType::I64 => tag == enc::I64_DELTA,
        ChannelType::Bool => matches!(tag, enc::BOOL_BITS | enc::BOOL_RLE),
        ChannelType::Str => tag == enc::STR_DICT,
    };
    let stats_ok = match (&c.stats, ty) {
        (Stats::F64 { min, max }, ChannelType::F64) => min <= max || (min.is_nan() && max.is_nan()),
        (Stats::I64 { min, max }, ChannelType::I64) => min <= max,
        (
            Stats::Bool {
                any_true,
                any_false,
            },
            ChannelType::Bool,
        ) => *any_true || *any_false,
        (Stats::Str { min, max }, ChannelType::Str) => min <= max,
        _ => false,
    };
    if !encoding_ok || c.len == 0 {
        return Err(format!(
            "encoding {:#04x} does not fit a {ty} column",
            c.encoding
        ));
    }
    if !stats_ok {
        return Err(format!("statistics {:?} do not fit a {ty} column", c.stats));
    }
    Ok(())
}
