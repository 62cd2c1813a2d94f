//! The service tonic serves: every call passes the auth gate here, then
//! goes to the plain Flight path ([`crate::plain`]) or to Flight SQL
//! ([`crate::sql`]).
//!
//! arrow-flight's Flight SQL dispatcher decodes every descriptor and ticket
//! as a protobuf `Any` and has no `ListFlights` hook, so plain Flight is
//! routed here, before it: JSON commands and tickets start with `{`, path
//! descriptors are typed as paths.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, Criteria,
    Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse, PollInfo,
    PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::StreamExt;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use wattson_ingest::auth::{Role, UNKNOWN_SOURCE};

use crate::auth::{self, READ_ROLE};
use crate::cancel::BoxStream;
use crate::error::Error;
use crate::plain;
use crate::sql::{SqlService, principal};

/// How long a handshake without an `authorization` header may take to
/// send its credentials message.
const HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Auth in front of plain Flight and Flight SQL.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) sql: Arc<SqlService>,
}

impl Gate {
    /// Checks the bearer token and records the caller in the request.
    fn admit<T>(&self, request: &mut Request<T>, needed: Role) -> Result<(), Status> {
        let who = auth::authorize(&self.sql.deps.tokens, request.metadata(), needed)?;
        request.extensions_mut().insert(who);
        Ok(())
    }
}

#[tonic::async_trait]
impl FlightService for Gate {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        // Never unthrottled: a connection without an address (not TCP) is
        // throttled per account name, as the subscriber port is.
        let peer = request.remote_addr().map_or(UNKNOWN_SOURCE, |a| a.ip());
        let (metadata, _, mut stream) = request.into_parts();
        // Clients with header credentials may send no message at all, or
        // keep the stream open: only wait when the header is absent.
        let first = if metadata.get("authorization").is_some() {
            None
        } else {
            tokio::time::timeout(HANDSHAKE_WAIT, stream.next())
                .await
                .map_err(|_| Error::Unauthenticated("no credentials in the handshake".into()))?
                .transpose()?
        };
        let creds = auth::credentials(&metadata, first.as_ref())?;
        let deps = &self.sql.deps;
        let token = match auth::login(&deps.verifier, &deps.tokens, &creds, peer).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(user = %creds.user, %peer, error = %e, "flight login failed");
                return Err(e.into());
            }
        };
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::Internal("a token is not a valid header value".into()))?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::once(async { Ok(reply) })));
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn list_flights(
        &self,
        mut request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        let infos = plain::list_flights(&self.sql.deps.store)?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            infos.into_iter().map(Ok),
        ))))
    }

    async fn get_flight_info(
        &self,
        mut request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        if plain::is_plain_descriptor(request.get_ref()) {
            let info = plain::flight_info(&self.sql.deps.store, request.into_inner())?;
            return Ok(Response::new(info));
        }
        FlightService::get_flight_info(&*self.sql, request).await
    }

    /// Queries are planned when asked and run as their tickets are
    /// redeemed, so a poll is complete at once: GetFlightInfo's answer, with
    /// no descriptor to poll again (the protocol's answer for a query that
    /// is done).
    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let info = self.get_flight_info(request).await?.into_inner();
        let poll = PollInfo::new()
            .with_info(info)
            .try_with_progress(1.0)
            .map_err(Error::from)?;
        Ok(Response::new(poll))
    }

    async fn get_schema(
        &self,
        mut request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        if !plain::is_plain_descriptor(request.get_ref()) {
            return Err(Status::unimplemented(
                "GetSchema answers plain Flight commands; Flight SQL clients get the schema from GetFlightInfo",
            ));
        }
        let schema = plain::schema(&self.sql.deps.store, request.get_ref())?;
        let result: SchemaResult = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(Error::from)?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        mut request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        let user = principal(&request)?.user;
        let registration = self
            .sql
            .running
            .register(&user, request.get_ref().ticket.clone());
        let stream = registration
            .run(async {
                if plain::is_plain_ticket(request.get_ref()) {
                    let stream = plain::do_get(self.sql.deps.store.clone(), request.get_ref())?;
                    Ok(Box::pin(stream) as BoxStream<FlightData>)
                } else {
                    let response = FlightService::do_get(&*self.sql, request).await?;
                    Ok(response.into_inner())
                }
            })
            .await?;
        Ok(Response::new(stream))
    }

    async fn do_put(
        &self,
        mut request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        // Binding parameters is a read; imports check for admin themselves.
        self.admit(&mut request, READ_ROLE)?;
        FlightService::do_put(&*self.sql, request).await
    }

    async fn do_exchange(
        &self,
        mut request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    async fn do_action(
        &self,
        mut request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        if request.get_ref().r#type == CANCEL_FLIGHT_INFO {
            return self.cancel_flight_info(&request);
        }
        FlightService::do_action(&*self.sql, request).await
    }

    async fn list_actions(
        &self,
        mut request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.admit(&mut request, READ_ROLE)?;
        let sql = FlightService::list_actions(&*self.sql, request)
            .await?
            .into_inner();
        let cancel = ActionType {
            r#type: CANCEL_FLIGHT_INFO.into(),
            description: "Stops the caller's running DoGets of a FlightInfo's tickets.\n\
                Request Message: CancelFlightInfoRequest\n\
                Response Message: CancelFlightInfoResult"
                .into(),
        };
        Ok(Response::new(Box::pin(
            futures::stream::once(async { Ok(cancel) }).chain(sql),
        )))
    }
}

/// The Flight action that cancels a FlightInfo's work (Flight 14 and later;
/// arrow-flight's Flight SQL dispatcher does not know it).
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

impl Gate {
    /// Stops the caller's running DoGets of the info's tickets. The answer
    /// is CANCELLED either way: none of them runs for the caller any more.
    fn cancel_flight_info(
        &self,
        request: &Request<Action>,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let user = principal(request)?.user;
        let info = CancelFlightInfoRequest::decode(request.get_ref().body.clone())
            .ok()
            .and_then(|r| r.info)
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "CancelFlightInfo needs a CancelFlightInfoRequest with the FlightInfo".into(),
                )
            })?;
        let stopped = self.sql.running.cancel(&user, &info);
        tracing::info!(user = %user, stopped, "flight query cancelled");
        let result = CancelFlightInfoResult {
            status: CancelStatus::Cancelled as i32,
        };
        let body = arrow_flight::Result {
            body: result.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(body)
        }))))
    }
}
