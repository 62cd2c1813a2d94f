//! Damaged and hostile bytes: every single-bit flip and every truncation of a
//! real segment is detected; arbitrary bytes, and mutations that come with
//! freshly recomputed checksums, never panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;

use super::{Contents, golden_input, read_all, write};
use crate::error::Result;
use crate::io::{RealFs, Vfs};
use crate::segment::{BlockMeta, HEADER_LEN, MAGIC, SegmentReader, footer};

/// Opens, verifies and reads everything from `bytes` stored at `path`.
fn outcome(path: &Path, bytes: &[u8]) -> Result<Contents> {
    let mut f = RealFs.create(path).unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    let r = SegmentReader::open(&RealFs, path)?;
    read_all(&r)
}

/// Like [`outcome`], but a panic fails with the name of the damage.
fn checked(path: &Path, bytes: &[u8], what: &str) -> Result<Contents> {
    catch_unwind(AssertUnwindSafe(|| outcome(path, bytes)))
        .unwrap_or_else(|_| panic!("reader panicked on {what}"))
}

fn original() -> (tempfile::TempDir, Vec<u8>, Contents) {
    let (m, times, cols, opts) = golden_input();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write(dir.path(), &m, &times, &cols, &opts);
    let bytes = RealFs.read(&path).unwrap();
    let contents = outcome(&dir.path().join("probe"), &bytes).unwrap();
    (dir, bytes, contents)
}

#[test]
fn every_bit_flip_is_detected() {
    let (dir, bytes, _) = original();
    let path = dir.path().join("flipped");
    println!("flipping all {} bits", bytes.len() * 8);
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let what = format!("bit {bit} (byte {}) flipped", bit / 8);
        assert!(
            checked(&path, &damaged, &what).is_err(),
            "{what} was not detected"
        );
    }
}

#[test]
fn every_truncation_and_extension_is_detected() {
    let (dir, bytes, _) = original();
    let path = dir.path().join("cut");
    for len in 0..bytes.len() {
        let what = format!("truncation to {len} bytes");
        assert!(
            checked(&path, &bytes[..len], &what).is_err(),
            "{what} was not detected"
        );
    }
    for extra in [&[0u8][..], &MAGIC, &bytes[bytes.len() - 24..]] {
        let mut longer = bytes.clone();
        longer.extend_from_slice(extra);
        assert!(checked(&path, &longer, "extension").is_err());
    }
}

/// Writes a file whose header and trailer are valid and whose footer
/// checksum matches, around arbitrary footer bytes, so the footer parser
/// and validator see hostile input.
fn framed(footer: &[u8], blocks: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(blocks);
    let footer_offset = out.len() as u64;
    out.extend_from_slice(footer);
    out.extend_from_slice(&footer_offset.to_le_bytes());
    out.extend_from_slice(&(footer.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(footer).to_le_bytes());
    out.extend_from_slice(&MAGIC);
    out
}

/// Re-seals `bytes` (a mutated copy of `clean`'s file, same layout): recomputes
/// every chunk and block CRC and the footer CRC, so only structural checks
/// and decoders stand between the damage and the caller.
fn reseal(clean: &SegmentReader, bytes: &[u8], tweak: impl FnOnce(&mut Vec<BlockMeta>)) -> Vec<u8> {
    let mut blocks = clean.blocks().to_vec();
    for b in &mut blocks {
        let block = &bytes[b.offset as usize..(b.offset + b.len) as usize];
        b.crc32c = crc32c::crc32c(block);
        for c in std::iter::once(&mut b.time).chain(&mut b.columns) {
            let start = c.offset as usize;
            c.crc32c = crc32c::crc32c(&bytes[start..start + c.len as usize]);
        }
    }
    tweak(&mut blocks);
    let footer = footer::encode(clean.meta(), &blocks);
    framed(&footer, &bytes[HEADER_LEN as usize..blocks_end(clean)])
}

fn blocks_end(r: &SegmentReader) -> usize {
    r.blocks().last().map_or(HEADER_LEN, |b| b.offset + b.len) as usize
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600), frame in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let input = if frame { framed(&bytes, &[]) } else { bytes };
        let _ = checked(&dir.path().join("x"), &input, "arbitrary bytes");
    }

    #[test]
    fn random_damage_is_detected_or_harmless(
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let (dir, mut bytes, contents) = original();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if let Ok(got) = checked(&dir.path().join("x"), &bytes, "random edits") {
            prop_assert_eq!(got, contents, "damage returned different data");
        }
    }

    /// With valid checksums the reader may accept different data, but it must
    /// neither panic nor allocate without bound.
    #[test]
    fn resealed_damage_never_panics(
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        field in 0usize..6,
        value in any::<u32>(),
        which in any::<prop::sample::Index>(),
    ) {
        let (dir, mut bytes, _) = original();
        let clean_path = dir.path().join("clean");
        let _ = outcome(&clean_path, &bytes);
        let clean = SegmentReader::open(&RealFs, &clean_path).unwrap();
        let body = HEADER_LEN as usize..blocks_end(&clean);
        for (at, v) in &edits {
            bytes[body.start + at.index(body.len())] = *v;
        }
        let sealed = reseal(&clean, &bytes, |blocks| {
            let b = which.get_mut(blocks);
            let n = b.columns.len();
            let c = &mut b.columns[value as usize % n];
            match field {
                0 => b.rows = value,
                1 => c.null_count = value,
                2 => c.encoding = value as u8,
                3 => b.time.encoding = value as u8,
                4 => b.rows = value % 64,
                _ => c.null_count = value % 20,
            }
        });
        let _ = checked(&dir.path().join("x"), &sealed, "resealed damage");
    }
}
