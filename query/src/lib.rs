//! SQL over Wattson's store, with Apache DataFusion.
//!
//! This crate owns what users can ask in SQL and how it runs:
//! - [`QueryEngine`]: a DataFusion session over a [`Store`], read-only
//!   (DDL, DML, `COPY` and `SET` are refused on every path), with a memory
//!   limit and a timeout per query.
//! - The catalog `wattson`: schema `public` holds one table per store table
//!   (`time`, `device`, then the channels) and the seed system's monthly
//!   views of it, `{device}_{table}_{yyyy}_{mm}` (columns `dt`, then the
//!   channels) and `{table}_{yyyy}_{mm}`; schema `system` holds `devices`,
//!   `partitions` and `ingest`. `information_schema` lists them all.
//! - Scans prune months, devices and blocks by the query's time and device
//!   filters ([`prune`]), run one partition per storage partition in
//!   parallel, and stream in bounded memory.
//! - Energy functions ([`functions`]), and `last_cache('table')`: the
//!   newest reading of every device from the store's last-value cache.
//!
//! It promises that a reading is queryable as soon as its append returned
//! (the store applies committed rows before any scan), and that no
//! user-facing statement can write anything.

mod catalog;
mod error;
mod exec;
pub mod functions;
mod gapfill;
mod latest;
pub mod prune;
mod table;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use futures::{StreamExt, TryStreamExt};
use wattson_storage::Store;

pub use catalog::{CATALOG, DeviceRejections, IngestSource, PUBLIC, SYSTEM};
pub use error::{Error, Result};
pub use table::{SEED_TIME_COLUMN, StoreTable, View};

use crate::catalog::{PublicSchema, SystemSchema, WattsonCatalog};

/// Settings of a [`QueryEngine`]. `Default` gives the server's defaults.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Memory one query may hold in sorts, joins and aggregations before it
    /// spills or fails.
    pub memory_limit: usize,
    /// A query running longer is cancelled.
    pub timeout: Duration,
    /// Threads DataFusion plans for; at least the scan's partitions run in
    /// parallel anyway.
    pub target_partitions: usize,
    /// Default longest gap `energy_kwh` and `twa` integrate across.
    pub max_gap: Duration,
    /// Prune by time and device filters (off only to test that pruning
    /// does not change results).
    pub prune: bool,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            memory_limit: 1 << 30,
            timeout: Duration::from_secs(300),
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_gap: Duration::from_secs(300),
            prune: true,
        }
    }
}

/// A read-only SQL session over a store. Cheap to share: queries run
/// concurrently.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    timeout: Duration,
    runtime: Arc<QueryRuntime>,
}

/// The threads queries run on.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for QueryRuntime {
    type Target = tokio::runtime::Handle;

    fn deref(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // A plain drop blocks, which panics inside async code; running
        // queries are cancelled either way.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A query running on the engine's threads; dropping it cancels it.
struct Running {
    rx: tokio::sync::mpsc::Receiver<DfResult<RecordBatch>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("session", &self.ctx.session_id())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What user-facing SQL may do: queries only.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

impl QueryEngine {
    pub fn new(
        store: Arc<Store>,
        ingest: Option<Arc<dyn IngestSource>>,
        opts: &QueryOptions,
    ) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, PUBLIC)
            .with_target_partitions(opts.target_partitions.max(1))
            // Round-robin repartitioning would interleave one partition's
            // batches across aggregators, and the time-weighted aggregates
            // rely on each stream being in time order.
            .with_round_robin_repartition(false);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(opts.memory_limit)))
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(gapfill::Planner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let catalog = WattsonCatalog {
            public: Arc::new(PublicSchema {
                store: store.clone(),
                prune: opts.prune,
            }),
            system: Arc::new(SystemSchema {
                store: store.clone(),
                ingest,
            }),
        };
        ctx.register_udtf("last_cache", Arc::new(latest::LastCache { store }));
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        let max_gap = i64::try_from(opts.max_gap.as_nanos()).unwrap_or(i64::MAX);
        for udaf in functions::energy::TimeWeighted::all(max_gap) {
            ctx.register_udaf(udaf);
        }
        for udf in gapfill::Marker::all() {
            ctx.register_udf(udf);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.target_partitions.max(1))
            .thread_name("wattson-query")
            .enable_time()
            .build()
            .map_err(|e| Error::Execution(format!("cannot start the query threads: {e}")))?;
        Ok(QueryEngine {
            ctx,
            timeout: opts.timeout,
            runtime: Arc::new(QueryRuntime(Some(runtime))),
        })
    }

    /// Plans `sql` and starts it: the result streams batch by batch. The
    /// query runs on the engine's own threads; the stream fails with
    /// [`Error::Timeout`] once it has run for the timeout, and dropping the
    /// stream cancels the query.
    pub async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        self.start(sql, Vec::new(), tokio::time::Instant::now() + self.timeout)
            .await
    }

    /// [`QueryEngine::stream`] with values for the statement's placeholders
    /// (`$1`, `$2`, ...), once per row of values, in order, as one stream,
    /// within one timeout for all of them: Flight SQL's prepared statements
    /// execute every parameter set bound to them. Each
    /// run is planned when the previous one has streamed. With several
    /// rows every column is nullable, since a later row may bind a null
    /// where the first did not.
    pub async fn stream_with_param_rows(
        &self,
        sql: &str,
        rows: Vec<Vec<datafusion::scalar::ScalarValue>>,
    ) -> Result<SendableRecordBatchStream> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let several = rows.len() > 1;
        let mut rows = rows.into_iter();
        let first = self
            .start(sql, rows.next().unwrap_or_default(), deadline)
            .await?;
        if !several {
            return Ok(first);
        }
        let schema = Arc::new(nullable(&first.schema()));
        let (engine, sql) = (self.clone(), sql.to_owned());
        let rest = futures::stream::iter(rows)
            .then(move |params| {
                let (engine, sql) = (engine.clone(), sql.clone());
                async move { engine.start(&sql, params, deadline).await }
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            first.chain(rest),
        )))
    }

    /// Plans `sql` with `params` and starts it, failing with
    /// [`Error::Timeout`] at `deadline`.
    async fn start(
        &self,
        sql: &str,
        params: Vec<datafusion::scalar::ScalarValue>,
        deadline: tokio::time::Instant,
    ) -> Result<SendableRecordBatchStream> {
        let mut plan = tokio::time::timeout_at(deadline, self.plan(sql))
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        if !params.is_empty() {
            plan = plan.with_param_values(params)?;
        }
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        // DataFusion computes inside `poll`: on the caller's runtime a heavy
        // query would starve its timers (and the server's other tasks).
        let task = self.runtime.spawn(async move {
            let mut stream = match df.execute_stream().await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        let running = Running { rx, task };
        let timeout = self.timeout;
        let limited = futures::stream::unfold(Some(running), move |state| async move {
            let mut running = state?;
            match tokio::time::timeout_at(deadline, running.rx.recv()).await {
                Ok(Some(item)) => Some((item, Some(running))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(DataFusionError::External(Box::new(Error::Timeout(timeout)))),
                    None,
                )),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, limited)))
    }

    /// Runs `sql` to completion.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let mut stream = self.stream(sql).await?;
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            out.push(batch?);
        }
        Ok(out)
    }

    /// The logical plan of a read-only statement.
    pub async fn plan(&self, sql: &str) -> Result<datafusion::logical_expr::LogicalPlan> {
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| self.explain_plan_error(e))?;
        // Refused before planning: planning `COPY` or `CREATE EXTERNAL
        // TABLE` already looks at file formats and paths.
        check_read_only(&statement)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.explain_plan_error(e))?;
        let plan = gapfill::rewrite(plan)?;
        read_only()
            .verify_plan(&plan)
            .map_err(|e| Error::NotAllowed(format!("{}; {READ_ONLY}", Error::from(e))))?;
        Ok(plan)
    }

    /// The DataFusion session, for callers that plan themselves (Flight
    /// SQL). Every statement must still pass [`QueryEngine::plan`].
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Adds a suggestion to "table not found" errors.
    fn explain_plan_error(&self, e: datafusion::error::DataFusionError) -> Error {
        let err = Error::from(e);
        let Error::Plan(msg) = &err else {
            return err;
        };
        let Some(missing) = missing_table(msg) else {
            return err;
        };
        let names = self
            .ctx
            .catalog(CATALOG)
            .and_then(|c| c.schema(PUBLIC))
            .map(|s| s.table_names())
            .unwrap_or_default();
        match suggest(&missing, &names) {
            Some(best) => Error::Plan(format!("{msg}; did you mean `{best}`?")),
            None if names.is_empty() => Error::Plan(format!("{msg}; the store has no tables yet")),
            None => Error::Plan(format!(
                "{msg}; see `SELECT table_name FROM information_schema.tables`"
            )),
        }
    }
}

const READ_ONLY: &str = "Wattson's SQL is read-only: only SELECT, WITH, VALUES, SHOW, DESCRIBE and EXPLAIN queries are allowed";

fn check_read_only(statement: &DFStatement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::Statement as S;
    let allowed = match statement {
        DFStatement::Statement(s) => matches!(
            s.as_ref(),
            S::Query(_) | S::ShowTables { .. } | S::ShowColumns { .. } | S::ExplainTable { .. }
        ),
        DFStatement::Explain(e) => return check_read_only(&e.statement),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    Err(Error::NotAllowed(format!(
        "{} is not allowed; {READ_ONLY}",
        words.join(" ")
    )))
}

/// `schema` with every field nullable.
pub fn nullable(schema: &Schema) -> Schema {
    Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    )
}

/// The table name in DataFusion's "table 'a.b.c' not found".
fn missing_table(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("table '")?;
    let (name, _) = rest.split_once("' not found")?;
    Some(name.rsplit('.').next().unwrap_or(name).to_owned())
}

/// The closest name, if it is close enough to be a typo.
fn suggest(name: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| c.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
