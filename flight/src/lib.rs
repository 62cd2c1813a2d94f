//! Arrow Flight and Flight SQL for Wattson: authenticated, streaming data
//! access for ML clients (pyarrow, ADBC, pandas, polars, JDBC).
//!
//! This crate owns the Flight port and promises:
//! - Every call but the handshake carries a bearer token from the handshake
//!   ([`auth`]); without one it fails `UNAUTHENTICATED`, with a role that
//!   may not do it `PERMISSION_DENIED`. Devices get no data; reads need an
//!   analyst, imports an admin.
//! - Flight SQL ([`sql`]) over the read-only [`QueryEngine`]: statements,
//!   prepared statements with parameters, and the metadata commands ADBC
//!   and JDBC call. Results stream batch by batch, never collected.
//! - Plain Flight ([`plain`]): `ListFlights` lists tables, `GetFlightInfo`
//!   with a JSON command gives one endpoint per (device, month) partition,
//!   `DoGet` streams one partition from the store.
//! - `DoPut` ([`put`]) imports Arrow batches durably (the put returns once
//!   every row is in the fsync'd WAL).
//! - Messages are bounded in both directions; TLS is optional.
//!
//! [`FlightServer::start`] binds and serves; [`FlightServer::shutdown`]
//! stops accepting, ends running `DoGet`s with `CANCELLED`, lets other
//! calls finish for up to [`SHUTDOWN_GRACE`], then closes what is left.
//! `docs/flight.md` has the protocol details.

mod auth;
mod cancel;
mod closable;
mod encode;
mod error;
mod gate;
mod metadata;
mod plain;
mod put;
mod sql;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use wattson_ingest::auth::{TokenStore, Verifier};
use wattson_query::QueryEngine;
use wattson_storage::Store;

pub use error::{Error, Result};

/// Settings of the Flight server. `Default` gives the server's defaults.
#[derive(Debug, Clone)]
pub struct FlightOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; `None` serves plain gRPC.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest gRPC message accepted or sent, bytes. Result batches are
    /// split to fit.
    pub max_message_bytes: usize,
    /// Prepared statements one user may hold; creating more drops their
    /// oldest.
    pub max_prepared_per_user: usize,
}

impl Default for FlightOptions {
    fn default() -> Self {
        FlightOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            tls: None,
            max_message_bytes: 64 << 20,
            max_prepared_per_user: 64,
        }
    }
}

/// What the Flight server shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Arc<Store>,
    pub engine: Arc<QueryEngine>,
    pub verifier: Verifier,
    pub tokens: Arc<TokenStore>,
}

/// How long a shutdown lets calls in flight finish before it closes their
/// connections: a client that stopped reading would hold it forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running Flight server.
#[derive(Debug)]
pub struct FlightServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    running: Arc<cancel::Running>,
    close_connections: CancellationToken,
    task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl FlightServer {
    /// Binds `opts.listen` and serves on the current tokio runtime.
    pub async fn start(opts: &FlightOptions, deps: Deps) -> Result<FlightServer> {
        let sql = sql::SqlService::new(deps, opts.max_prepared_per_user)?;
        let running = sql.running.clone();
        let gate = gate::Gate { sql: Arc::new(sql) };
        let service = FlightServiceServer::new(gate)
            .max_decoding_message_size(opts.max_message_bytes)
            .max_encoding_message_size(opts.max_message_bytes);
        let mut builder = Server::builder();
        if let Some((cert, key)) = &opts.tls {
            let read = |p: &PathBuf, what: &str| {
                std::fs::read(p).map_err(|e| {
                    Error::Startup(format!(
                        "reading the Flight TLS {what} {}: {e}",
                        p.display()
                    ))
                })
            };
            let identity = Identity::from_pem(read(cert, "certificate")?, read(key, "key")?);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| Error::Startup(format!("Flight TLS: {e}")))?;
        }
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| Error::Startup(format!("binding Flight to {}: {e}", opts.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Startup(format!("Flight listener address: {e}")))?;
        let close_connections = CancellationToken::new();
        let close = close_connections.clone();
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(move |accepted| accepted.map(|io| closable::Closable::new(io, &close)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = builder.add_service(service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Ok(FlightServer {
            addr,
            stop,
            running,
            close_connections,
            task,
        })
    }

    /// Where the server listens (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting calls, stops running DoGets (their clients get
    /// `CANCELLED`: the server is shutting down) and waits for the other
    /// calls to finish. Connections still open after [`SHUTDOWN_GRACE`]
    /// are closed.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(());
        self.running.stop_all();
        let finished = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(finished) => finished,
            Err(_) => {
                tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "Flight: calls still open after the shutdown grace (clients that stopped reading?); closing their connections"
                );
                self.close_connections.cancel();
                self.task.await
            }
        };
        match finished {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Internal(format!("Flight server: {e}"))),
            Err(e) => Err(Error::Internal(format!("Flight server task: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests;
