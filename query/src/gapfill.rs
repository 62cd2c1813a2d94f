//! Gap filling: `date_bin_gapfill`, `locf` and `interpolate`, with the
//! semantics of InfluxDB 3.
//!
//! ```sql
//! SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS minute, device,
//!        locf(avg(pa_v)), interpolate(avg(wd_p)), avg(rf_p)
//! FROM power_consumption
//! WHERE time >= '2022-08-01T00:00:00Z' AND time < '2022-08-01T01:00:00Z'
//! GROUP BY minute, device
//! ```
//!
//! gives a row for every bin of the `WHERE` range and every group (here:
//! device), even bins without readings. Their aggregates are NULL, or with
//! `locf` the group's last non-null value before the bin, or with
//! `interpolate` the straight line between the group's neighbouring
//! non-null values (NULL before the first and after the last). The range
//! must be bounded on both sides in `WHERE`.
//!
//! How: [`rewrite`] turns the aggregate into a plain `date_bin` aggregate
//! and puts a [`GapFill`] node above it, which [`GapFillExec`] executes by
//! reading the (small) aggregated result whole, then emitting each group's
//! bins in order.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampNanosecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, Extension, LogicalPlan, Projection, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
    Volatility,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    PhysicalExpr, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use crate::prune::{Columns, Region};

/// Rows one gap-filled result may have: a typo in the bin width should not
/// fill memory.
const MAX_ROWS: usize = 10_000_000;

const GAPFILL: &str = "date_bin_gapfill";
const LOCF: &str = "locf";
const INTERPOLATE: &str = "interpolate";

fn misuse(name: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{name}() only works in an aggregate query grouped by date_bin_gapfill(INTERVAL, time) \
         with a time range in WHERE, for example: SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS t, \
         locf(avg(wd_p)) FROM power_consumption WHERE time >= '2022-08-01T00:00:00Z' AND \
         time < '2022-08-02T00:00:00Z' GROUP BY t"
    ))
}

/// `date_bin_gapfill`, `locf` and `interpolate` as functions the SQL
/// planner knows. [`rewrite`] removes them; reaching `invoke` means they
/// were used where gap filling cannot apply.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Marker {
    name: &'static str,
    signature: Signature,
}

impl Marker {
    pub(crate) fn all() -> Vec<ScalarUDF> {
        [GAPFILL, LOCF, INTERPOLATE]
            .into_iter()
            .map(|name| {
                ScalarUDF::from(Marker {
                    name,
                    signature: Signature::user_defined(Volatility::Immutable),
                })
            })
            .collect()
    }
}

impl ScalarUDFImpl for Marker {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        let pick = if self.name == GAPFILL { 1 } else { 0 };
        arg_types
            .get(pick)
            .cloned()
            .ok_or_else(|| misuse(self.name))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(misuse(self.name))
    }
}

/// How a column's gaps are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
enum Fill {
    Null,
    Locf,
    Interpolate,
}

/// The logical node: fills the bins of `[start, end)` of every group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GapFill {
    input: LogicalPlan,
    /// The input's, with the filled columns nullable: gaps are NULL.
    schema: DFSchemaRef,
    time: usize,
    groups: Vec<usize>,
    fills: Vec<Fill>,
    stride: i64,
    origin: i64,
    start: i64,
    end: i64,
}

impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (
            self.time,
            &self.groups,
            self.stride,
            self.origin,
            self.start,
            self.end,
        )
            .partial_cmp(&(
                other.time,
                &other.groups,
                other.stride,
                other.origin,
                other.start,
                other.end,
            ))
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "GapFill: stride={}ns, range=[{}, {}), fills={:?}",
            self.stride, self.start, self.end, self.fills
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("GapFill has one input".into()))?;
        Ok(GapFill {
            input,
            ..self.clone()
        })
    }
}

fn function_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::ScalarFunction(f) => Some(f.func.name()),
        _ => None,
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// An interval literal without months, in ns.
fn stride_ns(e: &Expr) -> Option<i64> {
    match strip_alias(e) {
        Expr::Literal(v, _) => match v {
            ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => i64::from(i.days)
                .checked_mul(86_400_000_000_000)?
                .checked_add(i.nanoseconds),
            ScalarValue::IntervalDayTime(Some(i)) => i64::from(i.days)
                .checked_mul(86_400_000)?
                .checked_add(i64::from(i.milliseconds))?
                .checked_mul(1_000_000),
            _ => None,
        },
        _ => None,
    }
}

/// The time range the filters below `plan` allow for column `time`.
fn range_below(plan: &LogicalPlan, time: &str) -> Region {
    let mut region = Region::all();
    let cols = Columns { time, device: None };
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::Filter(f) => region = region.intersect(&Region::of(&f.predicate, cols)),
            LogicalPlan::TableScan(s) => {
                for f in &s.filters {
                    region = region.intersect(&Region::of(f, cols));
                }
            }
            LogicalPlan::Join(_) | LogicalPlan::Union(_) => return Ok(TreeNodeRecursion::Jump),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    region
}

/// Replaces `date_bin_gapfill` aggregates by `date_bin` ones under a
/// [`GapFill`] node, and strips `locf` and `interpolate` from the
/// projection above them.
pub(crate) fn rewrite(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Projection(projection) = &node else {
            return Ok(Transformed::no(node));
        };
        let LogicalPlan::Aggregate(agg) = projection.input.as_ref() else {
            return Ok(Transformed::no(node));
        };
        let Some(gi) = agg
            .group_expr
            .iter()
            .position(|e| function_name(strip_alias(e)) == Some(GAPFILL))
        else {
            return Ok(Transformed::no(node));
        };
        let Expr::ScalarFunction(call) = strip_alias(&agg.group_expr[gi]) else {
            return Ok(Transformed::no(node));
        };
        let args = &call.args;
        let stride = args
            .first()
            .and_then(stride_ns)
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                DataFusionError::Plan(
                    "date_bin_gapfill: the first argument must be a positive INTERVAL in days, hours, minutes or seconds".into(),
                )
            })?;
        let time_name = match args.get(1).map(strip_alias) {
            Some(Expr::Column(c)) => c.name.clone(),
            _ => {
                return Err(DataFusionError::Plan(
                    "date_bin_gapfill: the second argument must be the time column".into(),
                ));
            }
        };
        let origin = match args.get(2).map(strip_alias) {
            None => 0,
            Some(e) => crate::prune::timestamp_ns(e).ok_or_else(|| {
                DataFusionError::Plan(
                    "date_bin_gapfill: the origin must be a timestamp literal, for example TIMESTAMP '2022-07-01T00:00:00Z'".into(),
                )
            })?,
        };
        let region = range_below(&agg.input, &time_name);
        if region.start == i64::MIN || region.end == i64::MAX {
            return Err(DataFusionError::Plan(format!(
                "date_bin_gapfill needs a time range bounded on both sides in WHERE, for example \
                 {time_name} >= '2022-08-01T00:00:00Z' AND {time_name} < '2022-08-02T00:00:00Z'"
            )));
        }
        let name = agg.group_expr[gi].schema_name().to_string();
        let date_bin = datafusion::functions::datetime::date_bin();
        let mut bin_args = vec![args[0].clone(), args[1].clone()];
        if let Some(o) = args.get(2) {
            bin_args.push(o.clone());
        }
        let mut group_expr = agg.group_expr.clone();
        group_expr[gi] = Expr::ScalarFunction(ScalarFunction::new_udf(date_bin, bin_args)).alias(name);
        // Each filled use gets an aggregate column of its own: DataFusion
        // merges identical aggregates, and `avg(x)` next to `locf(avg(x))`
        // must stay unfilled.
        let n_groups = agg.group_expr.len();
        let mut aggr_expr = agg.aggr_expr.clone();
        let mut filled: Vec<(String, Fill)> = Vec::new();
        let mut exprs = Vec::with_capacity(projection.expr.len());
        for e in &projection.expr {
            let (fill, name, inner) = match strip_alias(e) {
                Expr::ScalarFunction(f) if f.func.name() == LOCF => (Fill::Locf, LOCF, f.args.first()),
                Expr::ScalarFunction(f) if f.func.name() == INTERPOLATE => {
                    (Fill::Interpolate, INTERPOLATE, f.args.first())
                }
                _ => {
                    exprs.push(e.clone());
                    continue;
                }
            };
            let Some(Expr::Column(col)) = inner.map(strip_alias) else {
                return Err(misuse(name));
            };
            let idx = agg
                .schema
                .index_of_column(col)
                .ok()
                .filter(|i| *i >= n_groups)
                .ok_or_else(|| misuse(name))?;
            let out_name = e.schema_name().to_string();
            let column_name = format!("{name}({})", col.name);
            if !filled.iter().any(|(n, _)| *n == column_name) {
                let source = strip_alias(&agg.aggr_expr[idx - n_groups]).clone();
                aggr_expr.push(source.alias(column_name.clone()));
                filled.push((column_name.clone(), fill));
            }
            exprs.push(Expr::Column(datafusion::common::Column::from_name(column_name)).alias(out_name));
        }
        let new_agg = Aggregate::try_new(agg.input.clone(), group_expr, aggr_expr)?;
        let mut fills = vec![Fill::Null; new_agg.schema.fields().len()];
        for (column_name, fill) in &filled {
            let idx = new_agg.schema.index_of_column_by_name(None, column_name).ok_or_else(|| {
                DataFusionError::Internal(format!("gap fill column {column_name} vanished"))
            })?;
            fills[idx] = *fill;
        }
        let fields = new_agg
            .schema
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                let nullable = f.is_nullable() || (i != gi && i >= n_groups);
                (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(nullable)))
            })
            .collect();
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        let gapfill = GapFill {
            schema,
            input: LogicalPlan::Aggregate(new_agg),
            time: gi,
            groups: (0..n_groups).filter(|i| *i != gi).collect(),
            fills,
            stride,
            origin,
            start: region.start,
            end: region.end,
        };
        let extension = LogicalPlan::Extension(Extension {
            node: Arc::new(gapfill),
        });
        let projection = Projection::try_new(exprs, Arc::new(extension))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    })
    .map(|t| t.data)
}

/// Plans [`GapFill`] nodes; everything else as DataFusion does.
#[derive(Debug)]
pub(crate) struct Planner;

#[async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(Extensions)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

struct Extensions;

#[async_trait]
impl ExtensionPlanner for Extensions {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let input = physical_inputs
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("GapFill has one input".into()))?;
        Ok(Some(Arc::new(GapFillExec::new(input, node.clone()))))
    }
}

/// Executes [`GapFill`]: reads the aggregated input whole (bins × groups
/// rows), then emits every group's bins in time order.
#[derive(Debug)]
pub(crate) struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    node: GapFill,
    properties: Arc<PlanProperties>,
}

impl GapFillExec {
    fn new(input: Arc<dyn ExecutionPlan>, node: GapFill) -> Self {
        let schema: SchemaRef = Arc::new(node.schema.as_arrow().clone());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        GapFillExec {
            input,
            node,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "GapFillExec: stride={}ns, fills={:?}",
            self.node.stride, self.node.fills
        )
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &str {
        "GapFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        let input = children
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("GapFillExec has one child".into()))?;
        Ok(Arc::new(GapFillExec::new(input, self.node.clone())))
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

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let in_schema = self.input.schema();
        let schema = self.schema();
        let node = self.node.clone();
        let out_schema = schema.clone();
        let stream = futures::stream::once(async move {
            let mut batches = Vec::new();
            while let Some(b) = input.next().await {
                batches.push(b?);
            }
            let all = concat_batches(&in_schema, &batches)?;
            fill(&all, &node, &out_schema)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The start of the bin that contains `t`; `None` when that lies outside
/// the times a timestamp can hold (an origin centuries away can put it
/// there). `stride` is positive.
fn bin_of(t: i64, stride: i64, origin: i64) -> Option<i64> {
    let (t, stride, origin) = (i128::from(t), i128::from(stride), i128::from(origin));
    i64::try_from(origin + (t - origin).div_euclid(stride) * stride).ok()
}

fn fill(input: &RecordBatch, node: &GapFill, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let times = input
        .column(node.time)
        .as_primitive::<TimestampNanosecondType>();
    let tz = match schema.field(node.time).data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    // Groups in sorted order, each with its rows by bin.
    let group_cols: Vec<ArrayRef> = node
        .groups
        .iter()
        .map(|i| input.column(*i).clone())
        .collect();
    let converter = RowConverter::new(
        group_cols
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    // Without group columns every row is in the one group (the converter
    // would make zero rows).
    let rows = (!group_cols.is_empty())
        .then(|| converter.convert_columns(&group_cols))
        .transpose()?;
    let mut groups: BTreeMap<Vec<u8>, (u32, BTreeMap<i64, u32>)> = BTreeMap::new();
    for i in 0..input.num_rows() {
        if times.is_null(i) {
            continue;
        }
        let key = rows
            .as_ref()
            .map_or_else(Vec::new, |r| r.row(i).as_ref().to_vec());
        let entry = groups.entry(key).or_insert((i as u32, BTreeMap::new()));
        entry.1.insert(times.value(i), i as u32);
    }
    let first = bin_of(node.start, node.stride, node.origin).ok_or_else(|| {
        DataFusionError::Plan(
            "date_bin_gapfill: the first bin would start outside the times a timestamp can hold; use an origin nearer the range".into(),
        )
    })?;
    let bins: Vec<i64> = std::iter::successors(Some(first), |b| b.checked_add(node.stride))
        .take_while(|b| *b < node.end)
        .take(MAX_ROWS + 1)
        .collect();
    if bins.len().saturating_mul(groups.len().max(1)) > MAX_ROWS {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "date_bin_gapfill would make more than {MAX_ROWS} rows; use a wider bin or a shorter range"
        )));
    }
    // Per output row: the group's representative row, the bin, and the
    // input row of that bin if any.
    let mut rep = Vec::new();
    let mut out_times = Vec::new();
    let mut source: Vec<Option<u32>> = Vec::new();
    let mut group_starts = Vec::new();
    for (representative, by_bin) in groups.values() {
        group_starts.push(source.len());
        for b in &bins {
            rep.push(*representative);
            out_times.push(*b);
            source.push(by_bin.get(b).copied());
        }
    }
    group_starts.push(source.len());
    let rep = UInt32Array::from(rep);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(input.num_columns());
    for (i, col) in input.columns().iter().enumerate() {
        let column = if i == node.time {
            Arc::new(
                TimestampNanosecondArray::from(out_times.clone()).with_timezone_opt(tz.clone()),
            ) as ArrayRef
        } else if node.groups.contains(&i) {
            take(col.as_ref(), &rep, None)?
        } else {
            match node.fills[i] {
                Fill::Null => take(col.as_ref(), &UInt32Array::from(source.clone()), None)?,
                Fill::Locf => {
                    let mut idx = Vec::with_capacity(source.len());
                    for g in group_starts.windows(2) {
                        let mut last = None;
                        for s in &source[g[0]..g[1]] {
                            if let Some(r) = s.filter(|r| col.is_valid(*r as usize)) {
                                last = Some(r);
                            }
                            idx.push(last);
                        }
                    }
                    take(col.as_ref(), &UInt32Array::from(idx), None)?
                }
                Fill::Interpolate => interpolate(col, &source, &out_times, &group_starts)?,
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Straight lines between each group's known values, by time.
fn interpolate(
    col: &ArrayRef,
    source: &[Option<u32>],
    times: &[i64],
    group_starts: &[usize],
) -> DfResult<ArrayRef> {
    if !col.data_type().is_numeric() {
        return Err(DataFusionError::Plan(format!(
            "interpolate() needs a numeric aggregate, got {}",
            col.data_type()
        )));
    }
    let values = cast(col, &DataType::Float64)?;
    let values = values.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    let known = |k: usize| -> Option<f64> {
        source[k]
            .filter(|r| values.is_valid(*r as usize))
            .map(|r| values.value(r as usize))
    };
    let mut out: Vec<Option<f64>> = vec![None; source.len()];
    for g in group_starts.windows(2) {
        let mut prev: Option<usize> = None;
        for k in g[0]..g[1] {
            let Some(v) = known(k) else { continue };
            out[k] = Some(v);
            if let Some(p) = prev
                && let Some(pv) = known(p)
            {
                let span = (times[k] - times[p]) as f64;
                for m in p + 1..k {
                    let frac = (times[m] - times[p]) as f64 / span;
                    out[m] = Some(pv + (v - pv) * frac);
                }
            }
            prev = Some(k);
        }
    }
    let filled: ArrayRef = Arc::new(Float64Array::from(out));
    Ok(cast(&filled, col.data_type())?)
}
