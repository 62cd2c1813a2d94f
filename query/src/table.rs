//! Table providers over the store: a whole table, and the seed system's
//! per-month views of it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use wattson_storage::model::{DEVICE_COLUMN, TIME_COLUMN};
use wattson_storage::{Month, Store};

use crate::exec::{PartScan, StoreScanExec};
use crate::prune::{Columns, Region};

/// The seed system's name for the time column of its monthly tables.
pub const SEED_TIME_COLUMN: &str = "dt";

/// Which slice of a table a provider shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// `power_consumption`: every device and month; `time`, `device`,
    /// then the channels.
    Whole,
    /// `{table}_{yyyy}_{mm}`: one month of every device, same columns.
    Month(Month),
    /// `{device}_{table}_{yyyy}_{mm}`: one device's month with the seed's
    /// columns: `dt` (a timestamp without time zone, in UTC), then the
    /// channels.
    DeviceMonth(String, Month),
}

/// A DataFusion table over one store table.
pub struct StoreTable {
    store: Arc<Store>,
    table: String,
    view: View,
    /// Storage column per output column.
    sources: Vec<String>,
    schema: SchemaRef,
    /// When off, scans read every partition and block the view covers
    /// (tests compare results with and without pruning).
    prune: bool,
}

impl fmt::Debug for StoreTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTable")
            .field("table", &self.table)
            .field("view", &self.view)
            .finish()
    }
}

impl StoreTable {
    /// `None` when the store has no such table.
    pub fn new(store: Arc<Store>, table: &str, view: View, prune: bool) -> Option<Self> {
        let base = store.schema(table)?;
        let mut sources = Vec::with_capacity(base.fields().len());
        let mut fields = Vec::with_capacity(base.fields().len());
        for field in base.fields() {
            match (&view, field.name().as_str()) {
                (View::DeviceMonth(..), DEVICE_COLUMN) => continue,
                (View::DeviceMonth(..), TIME_COLUMN) => fields.push(Arc::new(Field::new(
                    SEED_TIME_COLUMN,
                    DataType::Timestamp(TimeUnit::Nanosecond, None),
                    false,
                ))),
                _ => fields.push(field.clone()),
            }
            sources.push(field.name().clone());
        }
        Some(StoreTable {
            store,
            table: table.to_owned(),
            view,
            sources,
            schema: Arc::new(Schema::new(fields)),
            prune,
        })
    }

    fn columns(&self) -> Columns<'_> {
        match self.view {
            View::DeviceMonth(..) => Columns {
                time: SEED_TIME_COLUMN,
                device: None,
            },
            _ => Columns {
                time: TIME_COLUMN,
                device: Some(DEVICE_COLUMN),
            },
        }
    }

    /// The region the view itself covers.
    fn view_region(&self) -> Region {
        match &self.view {
            View::Whole => Region::all(),
            View::Month(m) => Region {
                start: m.start_ns(),
                end: m.end_ns(),
                devices: None,
            },
            View::DeviceMonth(d, m) => Region {
                start: m.start_ns(),
                end: m.end_ns(),
                devices: Some(BTreeSet::from([d.clone()])),
            },
        }
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        match self.view {
            View::Whole => TableType::Base,
            _ => TableType::View,
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let cols = self.columns();
        Ok(filters
            .iter()
            .map(|f| {
                if Region::of(f, cols).is_all() {
                    TableProviderFilterPushDown::Unsupported
                } else {
                    // The scan prunes partitions and blocks by the region
                    // but returns whole blocks: DataFusion filters the rows.
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut region = self.view_region();
        if self.prune {
            for f in filters {
                region = region.intersect(&Region::of(f, self.columns()));
            }
        }
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&indices)?);
        let columns = indices.iter().map(|&i| self.sources[i].clone()).collect();
        let parts = if region.is_empty() {
            Vec::new()
        } else {
            self.store
                .partitions_of(&self.table, region.start, region.end)
                .into_iter()
                .filter(|p| {
                    region
                        .devices
                        .as_ref()
                        .is_none_or(|d| d.contains(&p.device))
                })
                .map(|p| PartScan {
                    device: p.device,
                    month: p.month,
                    start: region.start,
                    end: region.end,
                })
                .collect()
        };
        let pruning = describe(&region, self.prune);
        Ok(Arc::new(StoreScanExec::new(
            self.store.clone(),
            self.table.clone(),
            columns,
            schema,
            parts,
            limit,
            pruning,
        )))
    }
}

fn describe(region: &Region, prune: bool) -> String {
    if !prune {
        return "pruning=off".into();
    }
    let bound = |v: i64, open: i64| {
        if v == open {
            "∞".to_owned()
        } else {
            chrono::DateTime::from_timestamp_nanos(v)
                .format("%Y-%m-%dT%H:%M:%S%.fZ")
                .to_string()
        }
    };
    let devices = match &region.devices {
        None => "*".to_owned(),
        Some(d) => d.iter().cloned().collect::<Vec<_>>().join(" "),
    };
    format!(
        "time=[{}, {}), devices=[{devices}]",
        bound(region.start, i64::MIN),
        bound(region.end, i64::MAX)
    )
}
