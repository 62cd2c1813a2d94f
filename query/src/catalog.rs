//! The catalog users see: `wattson.public` holds the store's tables and the
//! seed system's monthly views of them, `wattson.system` the system tables.
//! Names are computed from the store on every lookup, so a table or month
//! that appears while the server runs is queryable at once.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use wattson_storage::model::validate_device_name;
use wattson_storage::{Month, PartitionInfo, Store};

use crate::table::{StoreTable, View};

pub const CATALOG: &str = "wattson";
pub const PUBLIC: &str = "public";
pub const SYSTEM: &str = "system";

/// Ingest's counters, for the system tables. The query crate does not
/// depend on ingest; the server passes an adapter.
pub trait IngestSource: Send + Sync + fmt::Debug {
    /// Named server-wide counters, for `system.ingest`.
    fn counters(&self) -> Vec<(String, u64)>;
    /// Rejected messages per device since the server started.
    fn rejections(&self) -> Vec<DeviceRejections>;
}

/// One device's rejected messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRejections {
    pub device: String,
    pub rejected: u64,
    pub last_reason: Option<String>,
}

#[derive(Debug)]
pub(crate) struct WattsonCatalog {
    pub(crate) public: Arc<PublicSchema>,
    pub(crate) system: Arc<SystemSchema>,
}

impl CatalogProvider for WattsonCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![PUBLIC.to_owned(), SYSTEM.to_owned()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match name {
            PUBLIC => Some(self.public.clone()),
            SYSTEM => Some(self.system.clone()),
            _ => None,
        }
    }
}

pub(crate) struct PublicSchema {
    pub(crate) store: Arc<Store>,
    pub(crate) prune: bool,
}

impl fmt::Debug for PublicSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicSchema").finish_non_exhaustive()
    }
}

fn month_suffix(m: Month) -> String {
    format!("{:04}_{:02}", m.year, m.month)
}

impl PublicSchema {
    /// Resolves a name to a table and the view of it, if data exists for it.
    fn resolve(&self, name: &str) -> Option<(String, View)> {
        let tables: Vec<String> = self.store.tables().into_iter().map(|t| t.name).collect();
        if tables.iter().any(|t| t == name) {
            return Some((name.to_owned(), View::Whole));
        }
        let (prefix, month) = split_month(name)?;
        let parts_of = |table: &str| {
            self.store
                .partitions_of(table, month.start_ns(), month.end_ns())
        };
        if tables.iter().any(|t| t == prefix) {
            return (!parts_of(prefix).is_empty()).then(|| (prefix.to_owned(), View::Month(month)));
        }
        tables.iter().find_map(|t| {
            let device = prefix.strip_suffix(t.as_str())?.strip_suffix('_')?;
            validate_device_name(device).ok()?;
            parts_of(t)
                .iter()
                .any(|p| p.device == device)
                .then(|| (t.clone(), View::DeviceMonth(device.to_owned(), month)))
        })
    }
}

/// `anything_2022_07` → (`anything`, July 2022).
fn split_month(name: &str) -> Option<(&str, Month)> {
    let (rest, mm) = name.rsplit_once('_')?;
    let (prefix, yyyy) = rest.rsplit_once('_')?;
    if prefix.is_empty() || yyyy.len() != 4 || mm.len() != 2 {
        return None;
    }
    if !yyyy.bytes().chain(mm.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month = Month::parse(&format!("{yyyy}-{mm}"))?;
    Some((prefix, month))
}

#[async_trait]
impl SchemaProvider for PublicSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.store.tables().into_iter().map(|t| t.name).collect();
        for p in self.store.partitions() {
            let month = month_suffix(p.month);
            names.insert(format!("{}_{month}", p.table));
            names.insert(format!("{}_{}_{month}", p.device, p.table));
        }
        names.into_iter().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.resolve(name).and_then(|(table, view)| {
            StoreTable::new(self.store.clone(), &table, view, self.prune)
                .map(|t| Arc::new(t) as Arc<dyn TableProvider>)
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }
}

pub(crate) struct SystemSchema {
    pub(crate) store: Arc<Store>,
    pub(crate) ingest: Option<Arc<dyn IngestSource>>,
}

impl fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemSchema").finish_non_exhaustive()
    }
}

const SYSTEM_TABLES: [&str; 3] = ["devices", "ingest", "partitions"];

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SYSTEM_TABLES.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let batch = match name {
            "devices" => self.devices()?,
            "partitions" => self.partitions()?,
            "ingest" => self.ingest()?,
            _ => return Ok(None),
        };
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        SYSTEM_TABLES.contains(&name)
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> DfResult<RecordBatch> {
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(DataFusionError::from)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SystemSchema {
    fn devices(&self) -> DfResult<RecordBatch> {
        // (device, table) → (first, last, readings)
        let mut rows: std::collections::BTreeMap<(String, String), (i64, i64, u64)> =
            Default::default();
        for p in self.store.partitions() {
            let e =
                rows.entry((p.device.clone(), p.table.clone()))
                    .or_insert((i64::MAX, i64::MIN, 0));
            e.0 = e.0.min(p.min_time);
            e.1 = e.1.max(p.max_time);
            e.2 += p.rows;
        }
        let rejections = self
            .ingest
            .as_ref()
            .map(|i| i.rejections())
            .unwrap_or_default();
        let rejected_of = |device: &str| rejections.iter().find(|r| r.device == device);
        let mut device = StringBuilder::new();
        let mut table = StringBuilder::new();
        let mut first = TimestampNanosecondBuilder::new().with_timezone("UTC");
        let mut last = TimestampNanosecondBuilder::new().with_timezone("UTC");
        let mut readings = Int64Builder::new();
        let mut rejected = Int64Builder::new();
        let mut reason = StringBuilder::new();
        let mut seen = BTreeSet::new();
        for ((d, t), (lo, hi, n)) in &rows {
            seen.insert(d.clone());
            device.append_value(d);
            table.append_value(t);
            first.append_option((*lo != i64::MAX).then_some(*lo));
            last.append_option((*hi != i64::MIN).then_some(*hi));
            readings.append_value(clamp(*n));
            let r = rejected_of(d);
            rejected.append_value(clamp(r.map_or(0, |r| r.rejected)));
            reason.append_option(r.and_then(|r| r.last_reason.clone()));
        }
        // Devices whose every message was rejected have no partition.
        for r in rejections.iter().filter(|r| !seen.contains(&r.device)) {
            device.append_value(&r.device);
            table.append_null();
            first.append_null();
            last.append_null();
            readings.append_value(0);
            rejected.append_value(clamp(r.rejected));
            reason.append_option(r.last_reason.clone());
        }
        batch(
            vec![
                Field::new("device", DataType::Utf8, false),
                Field::new("table", DataType::Utf8, true),
                Field::new("first_seen", timestamp(), true),
                Field::new("last_seen", timestamp(), true),
                Field::new("readings", DataType::Int64, false),
                Field::new("rejected", DataType::Int64, false),
                Field::new("last_rejection", DataType::Utf8, true),
            ],
            vec![
                Arc::new(device.finish()),
                Arc::new(table.finish()),
                Arc::new(first.finish()),
                Arc::new(last.finish()),
                Arc::new(readings.finish()),
                Arc::new(rejected.finish()),
                Arc::new(reason.finish()),
            ],
        )
    }

    fn partitions(&self) -> DfResult<RecordBatch> {
        let channels = |table: &str| self.store.table(table).map_or(0, |t| t.channels.len());
        let parts: Vec<PartitionInfo> = self.store.partitions();
        let mut table = StringBuilder::new();
        let mut device = StringBuilder::new();
        let mut month = StringBuilder::new();
        let mut rows = Int64Builder::new();
        let mut buffered = Int64Builder::new();
        let mut segments = Int64Builder::new();
        let mut bytes = Int64Builder::new();
        let mut per_value = Float64Builder::new();
        for p in &parts {
            table.append_value(&p.table);
            device.append_value(&p.device);
            month.append_value(p.month.to_string());
            rows.append_value(clamp(p.rows));
            buffered.append_value(clamp(p.buffered_rows));
            segments.append_value(clamp(p.segments as u64));
            bytes.append_value(clamp(p.bytes_on_disk));
            // Values on disk count every channel of a row, nulls included:
            // that is what the bytes store.
            let values = (p.rows - p.buffered_rows) as f64 * channels(&p.table) as f64;
            per_value.append_option((values > 0.0).then(|| p.bytes_on_disk as f64 / values));
        }
        batch(
            vec![
                Field::new("table", DataType::Utf8, false),
                Field::new("device", DataType::Utf8, false),
                Field::new("month", DataType::Utf8, false),
                Field::new("rows", DataType::Int64, false),
                Field::new("buffered_rows", DataType::Int64, false),
                Field::new("segments", DataType::Int64, false),
                Field::new("bytes_on_disk", DataType::Int64, false),
                Field::new("bytes_per_value", DataType::Float64, true),
            ],
            vec![
                Arc::new(table.finish()),
                Arc::new(device.finish()),
                Arc::new(month.finish()),
                Arc::new(rows.finish()),
                Arc::new(buffered.finish()),
                Arc::new(segments.finish()),
                Arc::new(bytes.finish()),
                Arc::new(per_value.finish()),
            ],
        )
    }

    fn ingest(&self) -> DfResult<RecordBatch> {
        let mut name = StringBuilder::new();
        let mut value = Int64Builder::new();
        let wal = self.store.wal_stats();
        let storage = [
            ("wal_appends", wal.appends),
            ("wal_commits", wal.commits),
            ("wal_bytes", wal.bytes),
        ];
        let counters = self
            .ingest
            .as_ref()
            .map(|i| i.counters())
            .unwrap_or_default();
        for (n, v) in counters
            .iter()
            .map(|(n, v)| (n.as_str(), *v))
            .chain(storage)
        {
            name.append_value(n);
            value.append_value(clamp(v));
        }
        batch(
            vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("value", DataType::Int64, false),
            ],
            vec![Arc::new(name.finish()), Arc::new(value.finish())],
        )
    }
}
