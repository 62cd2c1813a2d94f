//! The physical scan: one DataFusion partition per kept storage partition.
//!
//! Each partition runs its storage scan on a blocking thread (the store
//! decodes memory-mapped blocks synchronously) and hands batches over a
//! channel of [`CHANNEL_BATCHES`], so a slow consumer holds back the decoder
//! instead of letting batches pile up: a scan's memory stays bounded
//! whatever the data size. Dropping the stream (a `LIMIT` reached, a query
//! cancelled) stops the decoder at its next batch.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PhysicalExpr, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use wattson_storage::{Month, ScanRequest, Store};

/// Batches decoded ahead of the consumer, per partition.
const CHANNEL_BATCHES: usize = 2;

/// One storage partition to read: a device's month, narrowed to the
/// query's time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartScan {
    pub device: String,
    pub month: Month,
    pub start: i64,
    pub end: i64,
}

/// Reads partitions of one table through [`Store::scan`].
#[derive(Debug)]
pub(crate) struct StoreScanExec {
    store: Arc<Store>,
    table: String,
    /// Storage column names, in output order.
    columns: Vec<String>,
    /// The output schema: the same columns, possibly renamed and with the
    /// time zone dropped (the seed's `dt`).
    schema: SchemaRef,
    parts: Vec<PartScan>,
    /// Rows each partition may stop after; only set when no filter above
    /// the scan can drop rows.
    limit: Option<usize>,
    /// A summary of the pruning, for `EXPLAIN`.
    pruning: String,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl StoreScanExec {
    pub(crate) fn new(
        store: Arc<Store>,
        table: String,
        columns: Vec<String>,
        schema: SchemaRef,
        parts: Vec<PartScan>,
        limit: Option<usize>,
        pruning: String,
    ) -> Self {
        // Every partition yields its rows in time order (the store sorts and
        // deduplicates each one), which lets DataFusion skip sorts and merge
        // partitions in order.
        let time = columns
            .iter()
            .position(|c| c == wattson_storage::model::TIME_COLUMN)
            .map(|i| {
                let expr: Arc<dyn PhysicalExpr> = Arc::new(Column::new(schema.field(i).name(), i));
                vec![PhysicalSortExpr::new_default(expr)]
            });
        let eq = EquivalenceProperties::new_with_orderings(schema.clone(), time);
        // Zero partitions trips some operators; an empty table still gets one
        // partition that yields nothing.
        let partitions = parts.len().max(1);
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        StoreScanExec {
            store,
            table,
            columns,
            schema,
            parts,
            limit,
            pruning,
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for StoreScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StoreScanExec: table={}, partitions={}, {}, columns=[{}]",
            self.table,
            self.parts.len(),
            self.pruning,
            self.columns.join(", ")
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

/// The counters one partition reports to `EXPLAIN ANALYZE`.
struct PartMetrics {
    output_rows: Count,
    partitions: Count,
    blocks_total: Count,
    blocks_pruned: Count,
    blocks_read: Count,
    buffered_rows: Count,
}

impl PartMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(set).counter(name, partition);
        PartMetrics {
            output_rows: MetricBuilder::new(set).output_rows(partition),
            partitions: counter("partitions_scanned"),
            blocks_total: counter("blocks_total"),
            blocks_pruned: counter("blocks_pruned"),
            blocks_read: counter("blocks_read"),
            buffered_rows: counter("buffered_rows"),
        }
    }
}

impl ExecutionPlan for StoreScanExec {
    fn name(&self) -> &str {
        "StoreScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "StoreScanExec has no children".into(),
            ))
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let Some(part) = self.parts.get(partition).cloned() else {
            // The placeholder partition of an empty scan.
            let empty = futures::stream::empty();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, empty)));
        };
        let metrics = PartMetrics::new(&self.metrics, partition);
        // `count(*)` projects no column; the rows still need counting.
        let columns = if self.columns.is_empty() {
            vec![wattson_storage::model::TIME_COLUMN.to_owned()]
        } else {
            self.columns.clone()
        };
        let request = ScanRequest {
            table: self.table.clone(),
            devices: Some(vec![part.device.clone()]),
            start: Some(part.start.max(part.month.start_ns())),
            end: Some(part.end.min(part.month.end_ns())),
            columns: Some(columns),
            skip_damaged: false,
        };
        let store = self.store.clone();
        let limit = self.limit;
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_BATCHES);
        let out_schema = schema.clone();
        tokio::task::spawn_blocking(move || {
            let result = scan_partition(&store, &request, &out_schema, limit, &metrics, &tx);
            if let Err(e) = result {
                // The receiver may be gone already; then nobody needs the error.
                let _ = tx.blocking_send(Err(e));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

fn scan_partition(
    store: &Store,
    request: &ScanRequest,
    schema: &SchemaRef,
    limit: Option<usize>,
    metrics: &PartMetrics,
    tx: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
) -> DfResult<()> {
    let mut scan = store
        .scan(request)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut remaining = limit.unwrap_or(usize::MAX);
    let mut result = Ok(());
    while remaining > 0 {
        let batch = match scan.next() {
            None => break,
            Some(Err(e)) => {
                result = Err(DataFusionError::External(Box::new(e)));
                break;
            }
            Some(Ok(batch)) => batch,
        };
        let batch = if batch.num_rows() > remaining {
            batch.slice(0, remaining)
        } else {
            batch
        };
        remaining -= batch.num_rows();
        let batch = conform(batch, schema)?;
        metrics.output_rows.add(batch.num_rows());
        if tx.blocking_send(Ok(batch)).is_err() {
            // The consumer has what it needs.
            break;
        }
    }
    let m = scan.metrics();
    metrics.partitions.add(m.partitions);
    metrics.blocks_total.add(m.blocks_total);
    metrics.blocks_pruned.add(m.blocks_pruned);
    metrics.blocks_read.add(m.blocks_read);
    metrics.buffered_rows.add(m.buffered_rows);
    result
}

/// Gives a storage batch the output schema's names and time zone. The
/// columns already come in output order.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    if schema.fields().is_empty() {
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        return Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            Vec::new(),
            &opts,
        )?);
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| match field.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, tz)
                if array.data_type() != field.data_type() =>
            {
                Arc::new(
                    array
                        .as_primitive::<TimestampNanosecondType>()
                        .clone()
                        .with_timezone_opt(tz.clone()),
                ) as ArrayRef
            }
            _ => array.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
