//! Flight SQL: statements, prepared statements and the metadata commands,
//! over the read-only [`QueryEngine`]. Results stream batch by batch from
//! DataFusion into Flight data; nothing is collected on the server.
//!
//! The gate ([`crate::gate`]) has already checked the caller's token and
//! put their [`Principal`] into the request's extensions.
//!
//! Statement tickets carry the SQL text itself, so a ticket needs no server
//! state and is re-checked (token and read-only rules) when it is redeemed.
//! Prepared statements live on the server, at most
//! [`crate::FlightOptions::max_prepared_per_user`] per user (the oldest is
//! dropped), and only their owner may use them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, PutResult, SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};
use wattson_ingest::auth::{Principal, Role};

use crate::cancel::Running;
use crate::encode::flight_data;
use crate::error::{Error, Result, from_datafusion};
use crate::{Deps, metadata, put};

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// A prepared statement kept for its owner.
#[derive(Debug)]
struct Prepared {
    owner: String,
    sql: String,
    /// Rows of parameters bound by the last `DoPut`; empty until then.
    /// Each row runs the statement once.
    params: Vec<Vec<ScalarValue>>,
    created: Instant,
}

/// The Flight SQL half of the service.
pub(crate) struct SqlService {
    pub(crate) deps: Deps,
    sql_info: SqlInfoData,
    xdbc_info: XdbcTypeInfoData,
    prepared: Mutex<HashMap<String, Prepared>>,
    max_prepared_per_user: usize,
    pub(crate) running: Arc<Running>,
}

impl std::fmt::Debug for SqlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlService")
            .field("prepared", &self.prepared.lock().len())
            .finish_non_exhaustive()
    }
}

/// The caller, as the gate recorded them.
pub(crate) fn principal<T>(req: &Request<T>) -> Result<Principal> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Internal("a call reached Flight SQL without the auth gate".into()))
}

fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into()?;
    Ok(bytes)
}

/// Encodes a result stream as Flight data, batch by batch.
pub(crate) fn encode(stream: SendableRecordBatchStream) -> DoGetStream {
    let schema = stream.schema();
    let batches =
        stream.map_err(|e| FlightError::Tonic(Box::new(Status::from(from_datafusion(e)))));
    Box::pin(flight_data(schema, batches).map_err(Status::from))
}

/// The answer to a metadata DoGet: one built batch.
fn answer_one<E: Into<Error>>(
    schema: SchemaRef,
    batch: std::result::Result<RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| FlightError::Tonic(Box::new(Status::from(e.into()))));
    Ok(Response::new(Box::pin(
        flight_data(schema, futures::stream::once(async { batch })).map_err(Status::from),
    )))
}

/// The answer to a metadata GetFlightInfo: the result's schema, and the
/// command itself as the ticket.
fn command_info(
    schema: &Schema,
    cmd: &impl ProstMessageExt,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    let info = info_for(schema, cmd.as_any().encode_to_vec(), request.into_inner())?;
    Ok(Response::new(info))
}

/// A FlightInfo whose one endpoint redeems `ticket` here.
fn info_for(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

fn random_handle() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SqlService {
    pub(crate) fn new(deps: Deps, max_prepared_per_user: usize) -> Result<Self> {
        Ok(SqlService {
            deps,
            sql_info: metadata::sql_info()?,
            xdbc_info: metadata::xdbc_info()?,
            prepared: Mutex::new(HashMap::new()),
            max_prepared_per_user: max_prepared_per_user.max(1),
            running: Arc::default(),
        })
    }

    async fn statement_schema(&self, sql: &str) -> Result<Schema> {
        let plan = self.deps.engine.plan(sql).await?;
        Ok(plan.schema().as_arrow().clone())
    }

    /// The SQL and bound parameters of the caller's prepared statement.
    fn lookup(&self, who: &Principal, handle: &[u8]) -> Result<(String, Vec<Vec<ScalarValue>>)> {
        let handle = std::str::from_utf8(handle).unwrap_or_default();
        let map = self.prepared.lock();
        match map.get(handle) {
            Some(p) if p.owner == who.user => Ok((p.sql.clone(), p.params.clone())),
            _ => Err(Error::NotFound(
                "no such prepared statement (closed, replaced by newer ones, or not yours)".into(),
            )),
        }
    }

    fn bind(&self, who: &Principal, handle: &[u8], params: Vec<Vec<ScalarValue>>) -> Result<()> {
        let handle = std::str::from_utf8(handle).unwrap_or_default();
        let mut map = self.prepared.lock();
        match map.get_mut(handle) {
            Some(p) if p.owner == who.user => {
                p.params = params;
                Ok(())
            }
            _ => Err(Error::NotFound("no such prepared statement".into())),
        }
    }

    async fn stream_sql(&self, sql: &str) -> Result<DoGetStream> {
        Ok(encode(self.deps.engine.stream(sql).await?))
    }
}

/// `ActionCancelQueryResult.CancelResult.CANCEL_RESULT_CANCELLED`: the
/// enum is in a module arrow-flight does not export.
const CANCEL_RESULT_CANCELLED: i32 = 1;

/// Most rows of parameters one execution binds: each row is a query.
const MAX_PARAMETER_ROWS: usize = 1_000;

/// The rows of the parameter batches, one value per column.
async fn read_params(stream: PeekableFlightDataStream) -> Result<Vec<Vec<ScalarValue>>> {
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(FlightError::from),
    );
    let mut rows = Vec::new();
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| Error::InvalidArgument(format!("parameters: {e}")))?;
        for row in 0..batch.num_rows() {
            if rows.len() == MAX_PARAMETER_ROWS {
                return Err(Error::InvalidArgument(format!(
                    "more than {MAX_PARAMETER_ROWS} rows of parameters; each row runs the query once, so bind fewer or put the values in the query (IN (...), or a join)"
                )));
            }
            let values = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, row))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(from_datafusion)?;
            rows.push(values);
        }
    }
    Ok(rows)
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The gate answers handshakes itself.
        Err(Error::Internal("handshake reached Flight SQL".into()).into())
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = principal(&request)?;
        let schema = self.statement_schema(&query.query).await?;
        tracing::debug!(user = %who.user, "flight sql statement planned");
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let info = info_for(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = principal(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Error::InvalidArgument("the statement ticket is not UTF-8".into()))?;
        tracing::info!(user = %who.user, sql = %sql, "flight sql query");
        Ok(Response::new(self.stream_sql(&sql).await?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = principal(&request)?;
        let (sql, rows) = self.lookup(&who, &cmd.prepared_statement_handle)?;
        let several = rows.len() > 1;
        let mut plan = self.deps.engine.plan(&sql).await.map_err(Error::from)?;
        // Every row gives the same columns: the first one tells, and with
        // several any may be null (as `stream_with_param_rows` streams them).
        if let Some(params) = rows.into_iter().next().filter(|p| !p.is_empty()) {
            plan = plan.with_param_values(params).map_err(from_datafusion)?;
        }
        let mut schema = plan.schema().as_arrow().clone();
        if several {
            schema = wattson_query::nullable(&schema);
        }
        let info = info_for(&schema, cmd.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = principal(&request)?;
        let (sql, rows) = self.lookup(&who, &cmd.prepared_statement_handle)?;
        tracing::info!(user = %who.user, sql = %sql, parameter_rows = rows.len(), "flight sql prepared query");
        let stream = self
            .deps
            .engine
            .stream_with_param_rows(&sql, rows)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(encode(stream)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = principal(&request)?;
        let plan = self
            .deps
            .engine
            .plan(&query.query)
            .await
            .map_err(Error::from)?;
        let mut params: Vec<(String, Option<DataType>)> = plan
            .get_parameter_types()
            .map_err(from_datafusion)?
            .into_iter()
            .collect();
        // `$2` before `$10`: by number, not text.
        params.sort_by_key(|(name, _)| {
            name.trim_start_matches('$')
                .parse::<u64>()
                .unwrap_or(u64::MAX)
        });
        let param_schema = Schema::new(
            params
                .iter()
                .map(|(name, ty)| Field::new(name, ty.clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        );
        let dataset = plan.schema().as_arrow().clone();
        let handle = random_handle();
        {
            let mut map = self.prepared.lock();
            let mine: Vec<(Instant, String)> = map
                .iter()
                .filter(|(_, p)| p.owner == who.user)
                .map(|(h, p)| (p.created, h.clone()))
                .collect();
            if mine.len() >= self.max_prepared_per_user
                && let Some((_, oldest)) = mine.iter().min()
            {
                map.remove(oldest);
            }
            map.insert(
                handle.clone(),
                Prepared {
                    owner: who.user.clone(),
                    sql: query.query,
                    params: Vec::new(),
                    created: Instant::now(),
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes(&dataset)?,
            parameter_schema: if param_schema.fields().is_empty() {
                Default::default()
            } else {
                schema_bytes(&param_schema)?
            },
        })
    }

    /// Flight SQL's older form of `CancelFlightInfo` (see the gate).
    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let who = principal(&request)?;
        let info = FlightInfo::decode(query.info).map_err(|e| {
            Error::InvalidArgument(format!("CancelQuery: the FlightInfo does not decode: {e}"))
        })?;
        let stopped = self.running.cancel(&who.user, &info);
        tracing::info!(user = %who.user, stopped, "flight sql query cancelled");
        Ok(ActionCancelQueryResult {
            result: CANCEL_RESULT_CANCELLED,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let who = principal(&request)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        let mut map = self.prepared.lock();
        if map.get(&handle).is_some_and(|p| p.owner == who.user) {
            map.remove(&handle);
        }
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let who = principal(&request)?;
        let params = read_params(request.into_inner()).await?;
        self.bind(&who, &query.prepared_statement_handle, params)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn do_put_statement_update(
        &self,
        _cmd: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Error::Query(wattson_query::Error::NotAllowed(
            "updates are not allowed: Wattson's SQL is read-only; import data with DoPut of Arrow batches (admins)".into(),
        ))
        .into())
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = principal(&request)?;
        if !who.role.allows(Role::Admin) {
            return Err(Error::PermissionDenied("only admins may import data".into()).into());
        }
        let rows = put::import(self.deps.store.clone(), &cmd.table, request.into_inner()).await?;
        tracing::info!(user = %who.user, table = %cmd.table, rows, "flight sql bulk ingest");
        Ok(i64::try_from(rows).unwrap_or(i64::MAX))
    }

    async fn do_put_fallback(
        &self,
        mut request: Request<PeekableFlightDataStream>,
        _message: Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        let who = principal(&request)?;
        if !who.role.allows(Role::Admin) {
            return Err(Error::PermissionDenied("only admins may import data".into()).into());
        }
        let descriptor = match request.get_mut().peek().await {
            Some(Ok(first)) => first.flight_descriptor.clone(),
            Some(Err(e)) => return Err(e.clone()),
            None => None,
        };
        let table = match descriptor.as_ref().map(|d| d.path.as_slice()) {
            Some([table]) => table.clone(),
            _ => {
                return Err(Error::InvalidArgument(
                    "DoPut needs a path descriptor naming the table: FlightDescriptor.for_path(\"power_consumption\")".into(),
                )
                .into());
            }
        };
        let rows = put::import(self.deps.store.clone(), &table, request.into_inner()).await?;
        tracing::info!(user = %who.user, table = %table, rows, "flight bulk import");
        let body = serde_json::json!({ "rows": rows }).to_string();
        let out = futures::stream::once(async move {
            Ok(PutResult {
                app_metadata: body.into_bytes().into(),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(wattson_query::CATALOG);
        let schema = b.schema();
        answer_one(schema, b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        for name in metadata::schemas(self.deps.engine.context()) {
            b.append(wattson_query::CATALOG, name);
        }
        let schema = b.schema();
        answer_one(schema, b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        let schema = b.schema();
        let built = match metadata::tables(self.deps.engine.context(), &mut b).await {
            Ok(()) => b.build().map_err(Error::from),
            Err(e) => Err(e),
        };
        answer_one(schema, built)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        let schema = b.schema();
        answer_one(schema, b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.clone().into_builder(&self.sql_info).schema(),
            &query,
            request,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&self.sql_info);
        let schema = b.schema();
        answer_one(schema, b.build())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.into_builder(&self.xdbc_info).schema(),
            &query,
            request,
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&self.xdbc_info);
        let schema = b.schema();
        answer_one(schema, b.build())
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        _message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        // Plain tickets are routed by the gate; anything else is unknown.
        let _ = principal(&request)?;
        Err(Error::InvalidArgument("unknown ticket; use one from GetFlightInfo".into()).into())
    }

    async fn get_flight_info_fallback(
        &self,
        cmd: arrow_flight::sql::Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let _ = principal(&request)?;
        Err(Error::InvalidArgument(format!(
            "unsupported command {}; use Flight SQL statements or a JSON command {{\"table\", ...}}",
            cmd.type_url()
        ))
        .into())
    }

    /// The answers are fixed at startup ([`metadata::sql_info`]).
    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
