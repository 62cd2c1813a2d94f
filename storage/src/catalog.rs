//! The catalog: each table's channels (name and type, in order of first
//! appearance) and retention period.
//!
//! The catalog only grows: channels are never removed or retyped, which is
//! what lets the WAL and segment files be read back against it. It is
//! persisted with the atomic-file protocol (see `docs/storage-format.md`,
//! "Catalog file") whenever retention changes and before every seal, and
//! rebuilt from segments and the WAL where it is missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::Vfs;
use crate::memtable::{Prepared, PreparedRow, ROW_BYTES, value_bytes};
use crate::model::{
    ChannelType, MAX_CHANNELS, MAX_STRING_BYTES, Reading, Value, same_name, validate_channel_name,
    validate_device_name, validate_table_name, validate_time,
};
use crate::varint::{Reader, put_bytes, put_u64};

pub(crate) const CATALOG_FILE: &str = "catalog.wcat";
const MAGIC: &[u8; 8] = b"WTSNCAT\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;

/// One table's schema and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub name: String,
    /// Channels in order of first appearance.
    pub channels: Vec<(String, ChannelType)>,
    /// Whole months that end before `now - retention` are dropped.
    pub retention: Option<Duration>,
    /// Channel name to position; FxHash because every appended value looks
    /// its channel up here.
    index: FxHashMap<String, usize>,
}

impl TableDef {
    fn new(name: &str) -> Self {
        TableDef {
            name: name.to_owned(),
            channels: Vec::new(),
            retention: None,
            index: FxHashMap::default(),
        }
    }

    /// Position of a channel in [`TableDef::channels`].
    pub fn channel_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub(crate) fn add_channel(&mut self, name: &str, ty: ChannelType) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.channels.push((name.to_owned(), ty));
        self.index.insert(name.to_owned(), self.channels.len() - 1);
        self.channels.len() - 1
    }

    /// The retention cutoff in ns at time `now_ns`: months ending at or
    /// before it are expired.
    pub(crate) fn cutoff_ns(&self, now_ns: i64) -> Option<i64> {
        let r = self.retention?;
        Some(now_ns.saturating_sub(i64::try_from(r.as_nanos()).unwrap_or(i64::MAX)))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Catalog {
    pub(crate) tables: BTreeMap<String, TableDef>,
}

impl Catalog {
    pub(crate) fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables.get(name)
    }

    pub(crate) fn table_mut(&mut self, name: &str) -> &mut TableDef {
        self.tables
            .entry(name.to_owned())
            .or_insert_with(|| TableDef::new(name))
    }

    /// Checks a batch against the schema, extends the schema with its new
    /// channels, and resolves every channel to its index. All or nothing: on
    /// error the catalog is unchanged. Also returns whether the schema grew.
    pub(crate) fn admit(&mut self, readings: Vec<Reading>) -> Result<(Prepared, bool)> {
        // Channels this batch adds, in order of first appearance, so two
        // readings of one batch that disagree about a new channel's type are
        // caught too.
        let mut new_channels: Vec<(String, String, ChannelType)> = Vec::new();
        let mut new_tables: Vec<&str> = Vec::new();
        let mut indices = Vec::with_capacity(readings.iter().map(|r| r.values.len()).sum());
        let mut bytes = ROW_BYTES * readings.len();
        // The last reading that used each channel index: finds a channel
        // named twice in one reading without comparing names pairwise.
        let mut seen: Vec<usize> = Vec::new();
        // Name pointer, index and type of the previous reading's channels:
        // readings of one producer share their name `Arc`s, so a pointer
        // match skips the lookup (see `batch::encode`).
        let mut last: Vec<(*const str, usize, ChannelType)> = Vec::new();
        // The previous reading's table (with its definition) and device:
        // a message's readings share them, so they are looked up and checked
        // once per run, comparing pointers before bytes.
        let mut last_table: Option<(&Arc<str>, Option<&TableDef>)> = None;
        let mut last_device: Option<&Arc<str>> = None;
        for (ri, r) in readings.iter().enumerate() {
            let def = match last_table {
                Some((t, def)) if same_name(t, &r.table) => def,
                _ => {
                    last.clear();
                    let def = self.tables.get(&*r.table);
                    if def.is_none() && !new_tables.contains(&&*r.table) {
                        validate_table_name(&r.table)?;
                        new_tables.push(&r.table);
                    }
                    last_table = Some((&r.table, def));
                    def
                }
            };
            if !last_device.is_some_and(|d| same_name(d, &r.device)) {
                validate_device_name(&r.device)?;
                last_device = Some(&r.device);
            }
            validate_time(&r.table, r.time)?;
            let known = def.map_or(0, |d| d.channels.len());
            for (vi, (name, value)) in r.values.iter().enumerate() {
                let got = value.channel_type();
                bytes += value_bytes(value);
                if let Value::Str(s) = value
                    && s.len() > MAX_STRING_BYTES
                {
                    return Err(Error::InvalidInput(format!(
                        "table `{}`: channel `{name}` holds a string of {} bytes; the limit is {MAX_STRING_BYTES}",
                        r.table,
                        s.len()
                    )));
                }
                let ptr = Arc::as_ptr(name);
                let cached = last
                    .get(vi)
                    .filter(|c| std::ptr::eq(c.0, ptr))
                    .map(|c| (c.1, c.2));
                let existing = cached.or_else(|| {
                    def.and_then(|d| d.index.get(&**name).map(|&i| (i, d.channels[i].1)))
                });
                let (idx, ty) = match existing {
                    Some(found) => found,
                    None => {
                        let pending = new_channels
                            .iter()
                            .filter(|c| *c.0 == *r.table)
                            .enumerate()
                            .find(|(_, c)| *c.1 == **name)
                            .map(|(k, c)| (known + k, c.2));
                        match pending {
                            Some(found) => found,
                            None => {
                                validate_channel_name(name)?;
                                let k = new_channels.iter().filter(|c| *c.0 == *r.table).count();
                                if known + k >= MAX_CHANNELS {
                                    return Err(Error::InvalidInput(format!(
                                        "table `{}` would have more than {MAX_CHANNELS} channels; `{name}` was rejected",
                                        r.table
                                    )));
                                }
                                new_channels.push((r.table.to_string(), name.to_string(), got));
                                (known + k, got)
                            }
                        }
                    }
                };
                if ty != got {
                    return Err(Error::TypeConflict {
                        table: r.table.to_string(),
                        channel: name.to_string(),
                        existing: ty,
                        got,
                    });
                }
                if seen.len() <= idx {
                    seen.resize(idx + 1, usize::MAX);
                }
                if seen[idx] == ri {
                    return Err(Error::InvalidInput(format!(
                        "table `{}`: channel `{name}` appears twice in one reading",
                        r.table
                    )));
                }
                seen[idx] = ri;
                indices.push(idx);
                match last.get_mut(vi) {
                    Some(slot) => *slot = (ptr, idx, ty),
                    None => last.push((ptr, idx, ty)),
                }
            }
        }
        let changed = !new_tables.is_empty() || !new_channels.is_empty();
        let new_tables: Vec<String> = new_tables.into_iter().map(str::to_owned).collect();
        for table in &new_tables {
            self.table_mut(table);
        }
        for (table, name, ty) in new_channels {
            self.table_mut(&table).add_channel(&name, ty);
        }
        let mut indices = indices.into_iter();
        let rows = readings
            .into_iter()
            .map(|r| PreparedRow {
                table: r.table,
                device: r.device,
                time: r.time,
                values: r
                    .values
                    .into_iter()
                    .map(|(_, v)| (indices.next().unwrap_or_default(), v))
                    .collect(),
            })
            .collect();
        Ok((Prepared { rows, bytes }, changed))
    }

    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_u64(&mut body, self.tables.len() as u64);
        for def in self.tables.values() {
            put_bytes(&mut body, def.name.as_bytes());
            match def.retention {
                None => body.push(0),
                Some(d) => {
                    body.push(1);
                    put_u64(&mut body, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                }
            }
            put_u64(&mut body, def.channels.len() as u64);
            for (name, ty) in &def.channels {
                put_bytes(&mut body, name.as_bytes());
                body.push(ty.tag());
            }
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Catalog> {
        let bad = |offset: usize, reason: &str| Error::corrupt(path, offset as u64, reason);
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad(0, "not a catalog file (bad magic or too short)"));
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if word(8) != VERSION {
            return Err(bad(8, &format!("unsupported catalog version {}", word(8))));
        }
        let len = word(12) as usize;
        let body = bytes
            .get(HEADER_LEN..)
            .filter(|b| b.len() == len)
            .ok_or_else(|| bad(12, "catalog length does not match the file size"))?;
        if crc32c::crc32c(body) != word(16) {
            return Err(bad(16, "catalog checksum mismatch"));
        }
        let mut r = Reader::new(body);
        let malformed = |r: &Reader<'_>| bad(HEADER_LEN + r.pos(), "malformed catalog entry");
        let mut catalog = Catalog::default();
        let n = r.len().ok_or_else(|| malformed(&r))?;
        for _ in 0..n {
            let name = r.str().ok_or_else(|| malformed(&r))?.to_owned();
            let mut def = TableDef::new(&name);
            def.retention = match r.u8() {
                Some(0) => None,
                Some(1) => Some(Duration::from_nanos(r.u64().ok_or_else(|| malformed(&r))?)),
                _ => return Err(malformed(&r)),
            };
            let channels = r.len().ok_or_else(|| malformed(&r))?;
            for _ in 0..channels {
                let ch = r.str().ok_or_else(|| malformed(&r))?;
                let ty = r
                    .u8()
                    .and_then(ChannelType::from_tag)
                    .ok_or_else(|| malformed(&r))?;
                def.add_channel(ch, ty);
            }
            catalog.tables.insert(name, def);
        }
        if !r.is_empty() {
            return Err(malformed(&r));
        }
        Ok(catalog)
    }

    /// Loads the catalog file of `dir`, if there is one.
    pub(crate) fn load(vfs: &dyn Vfs, dir: &Path) -> Result<Option<Catalog>> {
        let path = dir.join(CATALOG_FILE);
        if !vfs.exists(&path) {
            return Ok(None);
        }
        let bytes = vfs.read(&path).map_err(|e| Error::io(&path, e))?;
        Catalog::decode(&path, &bytes).map(Some)
    }

    /// Writes the catalog atomically: temp file, fsync, rename, fsync dir.
    pub(crate) fn save(&self, vfs: &dyn Vfs, dir: &Path) -> Result<()> {
        write_atomic(vfs, dir, CATALOG_FILE, &self.encode())
    }
}

/// Temp file, fsync, rename, fsync of the directory: after this returns the
/// file holds `bytes` even across power loss, and before it the old file
/// stays whole.
pub(crate) fn write_atomic(vfs: &dyn Vfs, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = vfs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_data().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    vfs.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    vfs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(table: &str, values: Vec<(&str, Value)>) -> Reading {
        Reading {
            table: table.into(),
            device: "m1".into(),
            time: 0,
            values: values.into_iter().map(|(n, v)| (n.into(), v)).collect(),
        }
    }

    #[test]
    fn conflicts_name_table_channel_and_both_types() {
        let mut c = Catalog::default();
        c.admit(vec![reading("t", vec![("a", Value::F64(1.0))])])
            .unwrap();
        let err = c
            .admit(vec![reading(
                "t",
                vec![("b", Value::Bool(true)), ("a", Value::I64(1))],
            )])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "table `t`: channel `a` is f64 but the reading has i64; the reading was rejected"
        );
        // All or nothing: `b` was not added.
        assert_eq!(c.table("t").unwrap().channels.len(), 1);
        let err = c
            .admit(vec![
                reading("t", vec![("c", Value::F64(1.0))]),
                reading("t", vec![("c", Value::Str("x".into()))]),
            ])
            .unwrap_err();
        assert!(matches!(err, Error::TypeConflict { .. }), "{err}");
    }

    #[test]
    fn channels_keep_order_of_first_appearance_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = crate::io::RealFs;
        let mut c = Catalog::default();
        c.admit(vec![
            reading("t", vec![("z", Value::F64(1.0)), ("a", Value::I64(1))]),
            reading("t", vec![("m", Value::Bool(true))]),
        ])
        .unwrap();
        c.table_mut("t").retention = Some(Duration::from_secs(86_400));
        c.save(&vfs, dir.path()).unwrap();
        let back = Catalog::load(&vfs, dir.path()).unwrap().unwrap();
        assert_eq!(back, c);
        let names: Vec<_> = back
            .table("t")
            .unwrap()
            .channels
            .iter()
            .map(|c| c.0.as_str())
            .collect();
        assert_eq!(names, ["z", "a", "m"]);
    }

    #[test]
    fn damaged_catalog_is_reported_not_panicked() {
        let mut c = Catalog::default();
        c.admit(vec![reading("t", vec![("a", Value::F64(1.0))])])
            .unwrap();
        let good = c.encode();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    Catalog::decode(Path::new("x"), &bad).is_err(),
                    "flip {i}:{bit}"
                );
            }
        }
        for len in 0..good.len() {
            assert!(Catalog::decode(Path::new("x"), &good[..len]).is_err());
        }
    }

    #[test]
    fn bad_names_and_long_strings_are_rejected() {
        let mut c = Catalog::default();
        assert!(c.admit(vec![reading("T", vec![])]).is_err());
        assert!(
            c.admit(vec![reading("t", vec![("time", Value::F64(1.0))])])
                .is_err()
        );
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        assert!(
            c.admit(vec![reading("t", vec![("s", Value::Str(long))])])
                .is_err()
        );
        assert!(
            c.admit(vec![reading(
                "t",
                vec![("a", Value::F64(1.0)), ("a", Value::F64(2.0))]
            )])
            .is_err()
        );
    }
    proptest::proptest! {
        // A catalog file may be damaged or foreign: any bytes, and any body
        // under a valid header and checksum, load or fail, never panic.
        #[test]
        fn any_catalog_bytes_load_or_fail(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let path = Path::new("catalog.wcat");
            let _ = Catalog::decode(path, &body);
            let mut file = Vec::with_capacity(HEADER_LEN + body.len());
            file.extend_from_slice(MAGIC);
            file.extend_from_slice(&VERSION.to_le_bytes());
            file.extend_from_slice(&(body.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            file.resize(HEADER_LEN, 0);
            file.extend_from_slice(&body);
            if let Ok(catalog) = Catalog::decode(path, &file) {
                // What loads saves back to the same catalog.
                let again = Catalog::decode(path, &catalog.encode()).unwrap();
                proptest::prop_assert_eq!(again, catalog);
            }
        }
    }
}
