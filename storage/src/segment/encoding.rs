//! Value encodings of chunk payloads (the bytes before zstd), and the bounded
//! little-endian reader that decodes them and the footer.
//!
//! Encoders are infallible and may offer several candidates; the writer keeps
//! whichever is smallest after compression. Decoders treat their input as
//! hostile: every count is bounded by the caller's row count, every length by
//! the bytes at hand, and leftover bytes are an error, so a decoder either
//! returns exactly what the writer encoded or fails.

use std::collections::HashMap;

use crate::model::MAX_STRING_BYTES;

/// Encoding tags (low 7 bits of `ChunkMeta::encoding`). Stored on disk: never
/// renumber, only add.
pub(crate) const ALL_NULL: u8 = 0;
pub(crate) const TIME_DOD: u8 = 1;
pub(crate) const F64_DECIMAL: u8 = 2;
pub(crate) const F64_SHUFFLE: u8 = 3;
pub(crate) const F64_XOR: u8 = 4;
pub(crate) const I64_DELTA: u8 = 5;
pub(crate) const BOOL_BITS: u8 = 6;
pub(crate) const BOOL_RLE: u8 = 7;
pub(crate) const STR_DICT: u8 = 8;
/// Set in `ChunkMeta::encoding` when the stored bytes are one zstd frame.
pub(crate) const ZSTD: u8 = 0x80;

/// A decoding failure; the caller attaches file and offset.
pub(crate) type Decoded<T> = std::result::Result<T, String>;

/// Longest LEB128 encoding of a u64.
const MAX_VARINT: usize = 10;

pub(crate) use crate::varint::{put_u64 as put_varint, unzigzag, zigzag};

/// A cursor over untrusted bytes. Every read checks the remaining length.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "needs {n} bytes at position {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Decoded<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Decoded<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> Decoded<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Decoded<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// LEB128. Overlong forms are rejected so each value has one encoding.
    pub(crate) fn varint(&mut self) -> Decoded<u64> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT {
            let b = self.u8()?;
            if i == MAX_VARINT - 1 && b > 1 {
                return Err("varint overflows 64 bits".into());
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err("overlong varint".into());
                }
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// A varint that must be at most `max`.
    pub(crate) fn varint_max(&mut self, max: usize, what: &str) -> Decoded<usize> {
        let v = self.varint()?;
        if v > max as u64 {
            return Err(format!("{what} {v} exceeds the limit {max}"));
        }
        Ok(v as usize)
    }

    pub(crate) fn finish(&self) -> Decoded<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(format!("{n} unexpected trailing bytes")),
        }
    }
}

/// Packs bits LSB-first, the layout of Arrow validity and boolean buffers.
pub(crate) fn pack_bits(bits: impl IntoIterator<Item = bool>, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(8)];
    for (i, bit) in bits.into_iter().enumerate().take(len) {
        if bit {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Checks a packed bitmap of `len` bits (padding bits must be zero, so the
/// encoding is canonical) and returns how many bits are set.
pub(crate) fn check_bits(bytes: &[u8], len: usize) -> Decoded<usize> {
    if bytes.len() != len.div_ceil(8) {
        return Err(format!("bitmap of {} bytes for {len} bits", bytes.len()));
    }
    if !len.is_multiple_of(8) && bytes.last().is_some_and(|b| b >> (len % 8) != 0) {
        return Err("bitmap padding bits are set".into());
    }
    Ok(bytes.iter().map(|b| b.count_ones() as usize).sum())
}

fn get_bit(bytes: &[u8], i: usize) -> bool {
    bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Largest payload (bitmap included) a chunk of `rows` rows with `nulls`
/// nulls can have under encoding `tag`: the cap on decompression, so a
/// corrupt frame header cannot claim gigabytes.
pub(crate) fn max_payload(tag: u8, rows: usize, nulls: usize) -> usize {
    let n = rows.saturating_sub(nulls);
    let bitmap = if nulls > 0 { rows.div_ceil(8) } else { 0 };
    let values = match tag {
        TIME_DOD => MAX_VARINT * rows,
        F64_DECIMAL | BOOL_RLE => 1 + MAX_VARINT * n,
        F64_SHUFFLE | F64_XOR => 8 * n,
        I64_DELTA => MAX_VARINT * n,
        BOOL_BITS => n.div_ceil(8),
        STR_DICT => MAX_VARINT + n * (2 * MAX_VARINT + MAX_STRING_BYTES),
        _ => 0,
    };
    bitmap + values
}

/// Timestamps: first value, first delta, then delta-of-delta, all zigzag
/// varints. Regular sampling makes every delta-of-delta 0, one byte each,
/// which zstd then reduces to almost nothing. Wrapping arithmetic keeps any
/// i64 sequence exact.
pub(crate) fn encode_times(times: &[i64], out: &mut Vec<u8>) {
    let mut prev = 0i64;
    let mut prev_delta = 0i64;
    for (i, &t) in times.iter().enumerate() {
        let delta = t.wrapping_sub(prev);
        let v = if i == 0 {
            t
        } else {
            delta.wrapping_sub(prev_delta)
        };
        put_varint(out, zigzag(v));
        prev = t;
        prev_delta = if i == 0 { 0 } else { delta };
    }
}

pub(crate) fn decode_times(r: &mut Reader<'_>, rows: usize) -> Decoded<Vec<i64>> {
    let mut out = Vec::with_capacity(rows);
    let mut prev = 0i64;
    let mut prev_delta = 0i64;
    for i in 0..rows {
        let v = unzigzag(r.varint()?);
        let t = if i == 0 {
            v
        } else {
            let delta = prev_delta.wrapping_add(v);
            prev_delta = delta;
            prev.wrapping_add(delta)
        };
        out.push(t);
        prev = t;
    }
    Ok(out)
}

const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// 2^53: integers below it in magnitude convert to f64 and back exactly.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
/// 2^52: from here on every f64 is an integer.
const HALF_EXACT: f64 = 4_503_599_627_370_496.0;

/// `Some(k)` when `v` is exactly `k / 10^d`, checked bit for bit through the
/// very computation the decoder performs. NaN, infinities and -0.0 fail
/// (0i64 would decode as +0.0).
pub(super) fn scaled(v: f64, d: usize) -> Option<i64> {
    let p = POW10[d];
    let y = v * p;
    if y.is_nan() || y.abs() >= MAX_EXACT {
        return None;
    }
    // `f64::round` is a libm call on baseline x86-64, paid per value when
    // sealing. Adding ½ and truncating agrees with it wherever the check
    // below can pass (`y` next to an integer); from 2^52 on, `y` is an
    // integer already and adding ½ could round up.
    let k = if y.abs() < HALF_EXACT {
        (y + 0.5f64.copysign(y)) as i64
    } else {
        y as i64
    };
    ((k as f64 / p).to_bits() == v.to_bits()).then_some(k)
}

/// The smallest number of decimals d in 0..=9 at which every value passes
/// [`scaled`], with the scaled integers. A value exact at some d is usually,
/// but not provably, exact at a larger one, so when d grows every value is
/// checked again from the start. Meter data settles on its d within the
/// first few non-integer values, so this is about one pass.
fn decimal_scale(values: &[f64]) -> Option<(usize, Vec<i64>)> {
    let mut d = 0;
    let mut ks = Vec::with_capacity(values.len());
    let mut i = 0;
    while let Some(&v) = values.get(i) {
        match scaled(v, d) {
            Some(k) => {
                ks.push(k);
                i += 1;
            }
            None => {
                d += 1;
                if d >= POW10.len() {
                    return None;
                }
                ks.clear();
                i = 0;
            }
        }
    }
    Some((d, ks))
}

/// Byte-transposes 8-byte words so that equal high bytes (sign, exponent)
/// line up into long runs zstd compresses well.
fn shuffle(words: impl ExactSizeIterator<Item = u64>, out: &mut Vec<u8>) {
    let n = words.len();
    let start = out.len();
    out.resize(start + 8 * n, 0);
    for (i, w) in words.enumerate() {
        for (j, b) in w.to_le_bytes().into_iter().enumerate() {
            out[start + j * n + i] = b;
        }
    }
}

fn unshuffle(bytes: &[u8], n: usize) -> Decoded<Vec<u64>> {
    if bytes.len() != 8 * n {
        return Err(format!("{} shuffled bytes for {n} values", bytes.len()));
    }
    Ok((0..n)
        .map(|i| {
            let mut w = [0u8; 8];
            for (j, b) in w.iter_mut().enumerate() {
                *b = bytes[j * n + i];
            }
            u64::from_le_bytes(w)
        })
        .collect())
}

/// Candidate encodings of non-null f64 values. Meter readings are almost
/// always short decimals; if all values are, the scaled-integer form is the
/// only candidate (it is far smaller). Otherwise both raw-bit forms are
/// offered and the writer keeps the one zstd shrinks more: plain shuffle wins
/// on noisy data, XOR-with-previous on slowly changing or repeated values.
pub(crate) fn f64_candidates(values: &[f64]) -> Vec<(u8, Vec<u8>)> {
    if let Some((d, ks)) = decimal_scale(values) {
        let mut out = Vec::with_capacity(1 + ks.len() * 2);
        out.push(d as u8);
        let mut prev = 0i64;
        for k in ks {
            put_varint(&mut out, zigzag(k.wrapping_sub(prev)));
            prev = k;
        }
        return vec![(F64_DECIMAL, out)];
    }
    let mut plain = Vec::new();
    shuffle(values.iter().map(|v| v.to_bits()), &mut plain);
    let mut xored = Vec::new();
    let mut prev = 0u64;
    shuffle(
        values.iter().map(|v| {
            let x = v.to_bits() ^ prev;
            prev = v.to_bits();
            x
        }),
        &mut xored,
    );
    vec![(F64_SHUFFLE, plain), (F64_XOR, xored)]
}

/// `n` zigzag varint deltas, summed: the hot loop of reading scaled
/// decimals and integers. Most deltas of meter data fit in one byte, so that
/// case skips the general (checked) varint decoder.
fn decode_delta_varints(r: &mut Reader<'_>, n: usize) -> Decoded<Vec<i64>> {
    let mut out = Vec::with_capacity(n);
    let mut k = 0i64;
    while out.len() < n {
        let delta = match r.buf.get(r.pos) {
            Some(&b) if b < 0x80 => {
                r.pos += 1;
                u64::from(b)
            }
            _ => r.varint()?,
        };
        k = k.wrapping_add(unzigzag(delta));
        out.push(k);
    }
    Ok(out)
}

pub(crate) fn decode_f64(tag: u8, r: &mut Reader<'_>, n: usize) -> Decoded<Vec<f64>> {
    match tag {
        F64_DECIMAL => {
            let d = r.u8()? as usize;
            let p = *POW10
                .get(d)
                .ok_or_else(|| format!("decimal scale {d} > 9"))?;
            // Two passes: the prefix sum is sequential, the conversion is
            // not, so the compiler can vectorise the division.
            let ks = decode_delta_varints(r, n)?;
            // The range check rides along branch-free; the rare error then
            // looks for the culprit.
            let mut high = 0u64;
            let out: Vec<f64> = ks
                .iter()
                .map(|&k| {
                    high |= k.unsigned_abs() >> 53;
                    k as f64 / p
                })
                .collect();
            if high != 0
                && let Some(k) = ks.iter().find(|k| k.unsigned_abs() >= 1 << 53)
            {
                return Err(format!("scaled integer {k} out of range"));
            }
            Ok(out)
        }
        F64_SHUFFLE | F64_XOR => {
            let mut words = unshuffle(r.take(8 * n)?, n)?;
            if tag == F64_XOR {
                let mut prev = 0u64;
                for w in &mut words {
                    *w ^= prev;
                    prev = *w;
                }
            }
            Ok(words.into_iter().map(f64::from_bits).collect())
        }
        _ => Err(format!("encoding {tag} is not a float encoding")),
    }
}

/// Integers: zigzag varints of the deltas (counters and slowly moving values
/// give small deltas).
pub(crate) fn encode_i64(values: &[i64], out: &mut Vec<u8>) {
    let mut prev = 0i64;
    for &v in values {
        put_varint(out, zigzag(v.wrapping_sub(prev)));
        prev = v;
    }
}

pub(crate) fn decode_i64(r: &mut Reader<'_>, n: usize) -> Decoded<Vec<i64>> {
    decode_delta_varints(r, n)
}

/// Booleans: packed bits, or run lengths (first value as a byte, then
/// varint lengths of alternating runs), whichever is smaller before zstd.
pub(crate) fn bool_candidates(values: &[bool]) -> Vec<(u8, Vec<u8>)> {
    let bits = pack_bits(values.iter().copied(), values.len());
    let mut rle = vec![u8::from(values.first().copied().unwrap_or(false))];
    let mut run = 0u64;
    for (i, &v) in values.iter().enumerate() {
        if i > 0 && v != values[i - 1] {
            put_varint(&mut rle, run);
            run = 0;
        }
        run += 1;
    }
    put_varint(&mut rle, run);
    if rle.len() < bits.len() {
        vec![(BOOL_RLE, rle)]
    } else {
        vec![(BOOL_BITS, bits)]
    }
}

pub(crate) fn decode_bool(tag: u8, r: &mut Reader<'_>, n: usize) -> Decoded<Vec<bool>> {
    match tag {
        BOOL_BITS => {
            let bytes = r.take(n.div_ceil(8))?;
            check_bits(bytes, n)?;
            Ok((0..n).map(|i| get_bit(bytes, i)).collect())
        }
        BOOL_RLE => {
            let mut value = match r.u8()? {
                0 => false,
                1 => true,
                b => return Err(format!("run-length start value {b} is not 0 or 1")),
            };
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let run = r.varint_max(n - out.len(), "run length")?;
                if run == 0 {
                    return Err("empty run".into());
                }
                out.resize(out.len() + run, value);
                value = !value;
            }
            Ok(out)
        }
        _ => Err(format!("encoding {tag} is not a boolean encoding")),
    }
}

/// Strings: a dictionary of the distinct values in first-seen order
/// (count, then length-prefixed UTF-8), then one index per value. Status and
/// label channels repeat a handful of values.
pub(crate) fn encode_str(values: &[&str], out: &mut Vec<u8>) {
    let mut dict: HashMap<&str, u64> = HashMap::new();
    let mut order = Vec::new();
    let indices: Vec<u64> = values
        .iter()
        .map(|&s| {
            *dict.entry(s).or_insert_with(|| {
                order.push(s);
                order.len() as u64 - 1
            })
        })
        .collect();
    put_varint(out, order.len() as u64);
    for s in order {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    for i in indices {
        put_varint(out, i);
    }
}

/// Returns the dictionary (borrowed from the payload) and one index per value.
pub(crate) fn decode_str<'a>(r: &mut Reader<'a>, n: usize) -> Decoded<(Vec<&'a str>, Vec<u32>)> {
    let dict_len = r.varint_max(n, "dictionary size")?;
    let mut dict = Vec::with_capacity(dict_len);
    for _ in 0..dict_len {
        let len = r.varint_max(MAX_STRING_BYTES, "string length")?;
        let s =
            std::str::from_utf8(r.take(len)?).map_err(|e| format!("string is not UTF-8: {e}"))?;
        dict.push(s);
    }
    let mut indices = Vec::with_capacity(n);
    for _ in 0..n {
        let i = r.varint()?;
        if i >= dict_len as u64 {
            return Err(format!("dictionary index {i} >= {dict_len}"));
        }
        indices.push(i as u32);
    }
    Ok((dict, indices))
}
