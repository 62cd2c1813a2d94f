//! Wattson's web front end: the dashboard and the HTTP API, on axum.
//!
//! This crate owns what people and HTTP clients see on the dashboard port:
//! - Login against the shared [`UserStore`] (viewer and above), with
//!   server-side [`session::Sessions`] (256-bit ids, `HttpOnly`,
//!   `SameSite=Strict`, `Secure` under TLS, idle and absolute timeouts),
//!   a CSRF token per session checked on every state-changing request
//!   along with `Origin`, and a strict Content-Security-Policy: the pages
//!   run only the scripts embedded in this binary ([`assets`]).
//! - The live view, fed by [`live::LiveHub`] (ingest's live publisher)
//!   over server-sent events; history downsampled on the server with
//!   [`downsample::M4`]; daily kWh; CSV and Parquet downloads; the fleet.
//! - `POST /api/query` (JSON, CSV or Arrow IPC, streamed) for sessions and
//!   bearer tokens from the shared [`TokenStore`], and `/metrics`.
//!
//! It promises that every route but the login page and static assets
//! refuses a request without a valid session (or token, where allowed),
//! and that nothing here can write to the store.

pub mod assets;
pub mod downsample;
mod error;
pub mod live;
mod metrics;
pub mod session;
mod sql;
mod tls;
mod views;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use wattson_ingest::auth::{TokenStore, UserStore, Verifier};
use wattson_ingest::mqtt::MqttStats;
use wattson_query::QueryEngine;
use wattson_storage::Store;

pub use error::{Error, Result};
pub use live::LiveHub;

/// Settings of the dashboard (`[dashboard]` in `wattson.toml`).
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain and key: HTTPS when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after login, used or not.
    pub session_max: Duration,
    /// Where `/metrics` answers without a token (localhost by default).
    pub metrics_listen: Option<SocketAddr>,
    /// A token that opens `/metrics` on the main port too.
    pub metrics_token: Option<String>,
    /// A device silent this long is flagged on the live view.
    pub stale_after: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            metrics_token: None,
            stale_after: Duration::from_secs(10),
        }
    }
}

/// What the dashboard shares with the rest of the server.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Arc<Store>,
    pub users: Arc<UserStore>,
    pub verifier: Verifier,
    pub tokens: Arc<TokenStore>,
    pub engine: Arc<QueryEngine>,
    pub mqtt_stats: Arc<MqttStats>,
    pub live: Arc<LiveHub>,
}

/// A running dashboard.
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dashboard {
    /// Binds the listeners and starts serving on the current runtime.
    pub async fn start(config: DashboardConfig, deps: Deps) -> Result<Dashboard> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(
                wattson_ingest::mqtt::load_acceptor(&wattson_ingest::mqtt::TlsSettings {
                    listen: config.listen,
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .map_err(|e| Error::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let (stop, stopped) = watch::channel(false);
        deps.live.start();
        let app = Arc::new(web::App::new(&config, deps, tls.is_some(), stopped.clone()));
        let router = web::router(app.clone());
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        let tcp = bind(config.listen).await?;
        let addr = tcp.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let mut tasks = Vec::new();
        let service = router.into_make_service_with_connect_info::<tls::ClientAddr>();
        let shutdown = wait_for(stopped.clone());
        tasks.push(match tls {
            Some(acceptor) => {
                let listener =
                    tls::TlsListener::new(tcp, acceptor).map_err(|source| Error::Bind {
                        addr: config.listen,
                        source,
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, service)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::error!("dashboard stopped: {e}");
                    }
                })
            }
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(tcp, service)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!("dashboard stopped: {e}");
                }
            }),
        });
        let mut metrics_addr = None;
        if let Some(at) = config.metrics_listen {
            let tcp = bind(at).await?;
            metrics_addr = tcp.local_addr().ok();
            let router = metrics::router(app.clone());
            let shutdown = wait_for(stopped.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(tcp, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!("metrics listener stopped: {e}");
                }
            }));
        }
        let sweeper = app.clone();
        let mut stop_sweep = stopped;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = stop_sweep.changed() => return,
                }
                sweeper.sessions.sweep(std::time::Instant::now());
            }
        }));
        Ok(Dashboard {
            addr,
            metrics_addr,
            stop,
            tasks,
        })
    }

    /// Where the dashboard listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` answers without a token, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, ends live streams, and waits (briefly) for
    /// requests in flight.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    let _ = stopped.wait_for(|s| *s).await;
}
