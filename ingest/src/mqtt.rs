//! The device-facing MQTT 3.1.1 listener, with durable acknowledgement.
//!
//! What this module owns: a tokio TCP listener ([`MqttServer`]) that speaks
//! MQTT 3.1.1 to meters, using rumqttd's public v4 packet codec
//! (`rumqttd::protocol::v4::V4`) but none of its broker: the stock broker
//! acknowledges before storing, keeps nothing on disk and has no per-topic
//! ACLs (see `facts.md`).
//!
//! What it promises:
//! - **A QoS 1 PUBACK means the message is durable**: it is sent only after
//!   `Store::append` returned Ok for a batch holding all of the message's
//!   readings (WAL fdatasync'd). PUBACKs go out in the order the PUBLISHes
//!   arrived (MQTT 3.1.1 §4.6). If the append fails (I/O error, poisoned
//!   WAL, full disk) the message is not acknowledged and the connection is
//!   closed; the device resends after reconnecting. `lost_acknowledged` in
//!   [`MqttStats`] counts violations and must stay 0.
//! - **A store that cannot write turns devices away**: while
//!   [`Store::write_failure`] says why (a poisoned WAL, until a restart; a
//!   nearly full disk, until space is freed; a full buffer that cannot be
//!   sealed, until a seal succeeds), every PUBLISH (QoS 0 too)
//!   closes its connection unstored, and CONNECTs are refused with
//!   ServiceUnavailable, so meters keep their readings queued instead of
//!   sending them into a store that drops them.
//! - **A message the device got wrong is acknowledged and dropped**: a
//!   payload the decoder refuses, or one the store refuses for its content
//!   (type conflict, retention), is counted, logged (rate-limited per
//!   device) and explained on `meters/{device}/errors` through the
//!   [`LivePublisher`]; a QoS 1 message is still PUBACKed, because it was
//!   received and handled (3.1.1 has no NACK, and a resend would fail the
//!   same way forever).
//! - **Authentication**: a CONNECT must carry username and password; the
//!   client id must equal the username (so one device cannot take over
//!   another's session); the credentials are checked with
//!   [`Verifier::verify_async`] (never on the executor, throttled per
//!   source address) and the role must be `device`: people use the
//!   separate subscriber listener. Refusals: missing credentials or a
//!   person's account → NotAuthorized, bad credentials → BadUserNamePassword,
//!   client id ≠ username → ClientIdentifierNotValid, throttled or busy →
//!   ServiceUnavailable; then the connection is closed. Passwords are never
//!   logged.
//! - **ACL**: a device publishes only where [`TopicMap::authorize`] lets it
//!   (under `meters/{its id}/`, resolving to itself). Any other PUBLISH
//!   closes the connection without storing anything (3.1.1 allows
//!   "acknowledge and drop" or "close"; closing makes a misconfigured
//!   device visible instead of silently losing its data). Counted in
//!   `acl_denied`.
//! - **One connection per device**: a new authenticated connection with the
//!   same device id takes over; the older one is closed at once, its
//!   unacknowledged messages are resent by the device (MQTT semantics; a
//!   meter that rebooted must not be locked out by its own stale session).
//! - **Limits**: at most `max_packet_bytes` per packet (the read buffer
//!   never grows beyond one packet), `max_connections` sockets (more are
//!   closed at accept), CONNECT within `connect_timeout`, keep-alive
//!   enforced (closed after 1.5 × keep_alive without a packet; 0 = none),
//!   at most `max_inflight` unacknowledged QoS 1 messages per connection
//!   (beyond it the socket is not read: backpressure). When the appender
//!   queue is full, connections wait as well: slower PUBACKs, never loss.
//! - Malformed input (bad remaining length, oversized packet, non-UTF-8
//!   topic, wildcards in a topic, a packet before CONNECT, a second CONNECT,
//!   QoS 2) closes that connection only. Nothing here panics on input.
//!
//! Protocol choices: QoS 2 is refused by closing the connection (meters use
//! QoS 0 or 1; exactly-once would need per-session state). Sessions are not
//! kept: CONNACK always says session_present = false, whatever
//! clean_session asked. Last wills are ignored. A device SUBSCRIBE gets a
//! SUBACK with Failure for every filter; UNSUBSCRIBE an UNSUBACK. QoS 0
//! messages go the same way to the store, best effort: nobody is told if
//! their append fails (counted in `append_failures`), but the next PUBLISH
//! once the store cannot write closes the connection (above).
//!
//! TLS: an optional second listener ([`TlsSettings`], port 8883 by
//! default) speaks the same protocol inside rustls; the plain listener can
//! be turned off. Both share `max_connections`. The TLS handshake runs in the
//! connection's task and counts against `connect_timeout`, so a slow or
//! silent client never holds up the accept loop.
//!
//! Not here: the broker for human subscribers (rumqttd's router, elsewhere
//! in this crate), MQTT 5.

mod appender;
mod conn;
mod stats;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use wattson_storage::Store;
use wattson_storage::clock::Clock;

use crate::auth::Verifier;
use crate::live::LivePublisher;
use crate::log_limit::LogLimiter;
use crate::payload::{Decoder, IngestCounters, TopicMap};
use crate::{Error, Result};
use appender::Appender;
pub use stats::{MqttStats, MqttStatsSnapshot, PUBACK_BUCKETS_MS};
pub use tls::{TlsSettings, load_acceptor};

/// Settings of the device listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Where to listen without TLS; port 0 picks a free port (see
    /// [`MqttServer::local_addr`]). `None`: meters must use TLS.
    pub listen: Option<SocketAddr>,
    /// The TLS listener, if any (see [`MqttServer::tls_addr`]).
    pub tls: Option<TlsSettings>,
    /// Largest packet (its remaining length) accepted; larger ones close the
    /// connection before being read.
    pub max_packet_bytes: usize,
    /// Most open sockets, over both listeners; more are closed right after
    /// accept.
    pub max_connections: usize,
    /// Time a new socket has for the TLS handshake, and then again for its
    /// CONNECT (and to take a write, so a client that stops reading cannot
    /// pin a task forever).
    pub connect_timeout: Duration,
    /// Most unacknowledged QoS 1 messages per connection; beyond it the
    /// socket is not read until PUBACKs go out.
    pub max_inflight: usize,
    /// Threads calling `Store::append` (2-4 is plenty: each batch waits on
    /// one shared fsync).
    pub append_threads: usize,
    /// Messages queued for the appender threads, across all connections.
    pub append_queue: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            tls: None,
            max_packet_bytes: 256 * 1024,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 100,
            append_threads: 2,
            append_queue: 4096,
        }
    }
}

/// What the listener works with.
#[derive(Debug, Clone)]
pub struct MqttDeps {
    pub store: Arc<Store>,
    pub verifier: Verifier,
    pub topics: Arc<TopicMap>,
    /// Cloned per connection (each clone has its own name cache).
    pub decoder: Decoder,
    pub counters: Arc<IngestCounters>,
    pub live: Arc<dyn LivePublisher>,
    /// The server's receive time for readings without a timestamp.
    pub clock: Arc<dyn Clock>,
}

/// State shared by the accept loop and every connection.
#[derive(Debug)]
struct Shared {
    config: MqttConfig,
    deps: MqttDeps,
    stats: Arc<MqttStats>,
    appender: Appender,
    /// `max_connections` permits, shared by both listeners.
    slots: Arc<Semaphore>,
    sessions: Sessions,
    acl_log: LogLimiter,
    login_log: LogLimiter,
}

/// The running listener. Dropping it without [`shutdown`](Self::shutdown)
/// stops accepting but does not wait for in-flight appends.
#[derive(Debug)]
pub struct MqttServer {
    local_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// One accept loop per listener.
    accept: Vec<JoinHandle<()>>,
}

impl MqttServer {
    /// Binds the listener and starts accepting. Must run inside a tokio
    /// runtime.
    pub async fn start(config: MqttConfig, deps: MqttDeps) -> Result<MqttServer> {
        if config.max_packet_bytes == 0 || config.max_connections == 0 || config.max_inflight == 0 {
            return Err(Error::InvalidInput(
                "mqtt: max_packet_bytes, max_connections and max_inflight must be at least 1"
                    .into(),
            ));
        }
        if config.listen.is_none() && config.tls.is_none() {
            return Err(Error::InvalidInput(
                "mqtt: the plain listener is off and no TLS listener is set; meters could not connect".into(),
            ));
        }
        // Certificate problems are found before anything listens.
        let acceptor = config.tls.as_ref().map(load_acceptor).transpose()?;
        let plain = match config.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let secure = match (&config.tls, acceptor) {
            (Some(tls), Some(acceptor)) => Some((bind(tls.listen).await?, acceptor)),
            _ => None,
        };
        let stats = Arc::new(MqttStats::default());
        let appender = Appender::start(
            deps.store.clone(),
            deps.live.clone(),
            appender::Redecode {
                decoder: deps.decoder.clone(),
                topics: deps.topics.clone(),
                counters: deps.counters.clone(),
            },
            stats.clone(),
            config.append_threads,
            config.append_queue,
        )?;
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
            deps,
            stats,
            appender,
            sessions: Sessions::default(),
            acl_log: LogLimiter::new(Duration::from_secs(60)),
            login_log: LogLimiter::new(Duration::from_secs(60)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut accept = Vec::new();
        let mut local_addr = None;
        let mut tls_addr = None;
        if let Some((listener, addr)) = plain {
            local_addr = Some(addr);
            tracing::info!(%addr, "MQTT device listener started");
            accept.push(tokio::spawn(accept_loop(
                listener,
                None,
                shared.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(((listener, addr), acceptor)) = secure {
            tls_addr = Some(addr);
            tracing::info!(%addr, "MQTT device listener (TLS) started");
            accept.push(tokio::spawn(accept_loop(
                listener,
                Some(acceptor),
                shared.clone(),
                stop_rx,
            )));
        }
        Ok(MqttServer {
            local_addr,
            tls_addr,
            shared,
            stop,
            accept,
        })
    }

    /// The plain listener's address as bound (useful with port 0); `None`
    /// when meters must use TLS.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The TLS listener's address as bound, if it runs.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The listener's counters.
    pub fn stats(&self) -> &Arc<MqttStats> {
        &self.shared.stats
    }

    /// Stops accepting, lets every connection finish its in-flight appends
    /// and send their PUBACKs (no new packets are read), closes the
    /// connections, then stops the appender threads.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for accept in std::mem::take(&mut self.accept) {
            if accept.await.is_err() {
                tracing::error!("an MQTT accept loop panicked");
            }
        }
        let shared = self.shared.clone();
        if tokio::task::spawn_blocking(move || shared.appender.shutdown())
            .await
            .is_err()
        {
            tracing::error!("stopping the MQTT appender panicked");
        }
        tracing::info!("MQTT device listener stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Listen { addr, source })?;
    Ok((listener, local))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            // Reap finished connection tasks so the set does not grow.
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                note_panic(&shared.stats, done);
            }
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!("MQTT accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
                    MqttStats::inc(&shared.stats.connections_refused_limit);
                    if shared.login_log.allow("connection limit") {
                        tracing::warn!(%peer, max_connections = shared.config.max_connections, "MQTT connection limit reached; closing new connections");
                    }
                    drop(socket);
                    continue;
                };
                let shared = shared.clone();
                let stop = stop.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    MqttStats::inc(&shared.stats.connections_open);
                    serve_socket(socket, peer, tls, &shared, stop).await;
                    shared.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    while let Some(done) = conns.join_next().await {
        note_panic(&shared.stats, done);
    }
}

/// Runs one accepted socket, after the TLS handshake when `tls` is set.
async fn serve_socket(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // PUBACKs are small and latency matters more than packing.
    let _ = socket.set_nodelay(true);
    let Some(acceptor) = tls else {
        conn::serve(socket, peer, shared, stop).await;
        return;
    };
    let timeout = shared.config.connect_timeout;
    let handshake = tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(socket)) => r,
        () = stopped(&mut stop) => return,
    };
    match handshake {
        Ok(Ok(stream)) => conn::serve(stream, peer, shared, stop).await,
        Ok(Err(e)) => {
            MqttStats::inc(&shared.stats.tls_handshake_failures);
            tracing::debug!(%peer, "MQTT TLS handshake failed: {e}");
        }
        Err(_) => {
            MqttStats::inc(&shared.stats.tls_handshake_failures);
            tracing::debug!(%peer, "MQTT TLS handshake not done within connect_timeout");
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the new soft limit. Every MQTT connection is a file descriptor,
/// and the usual soft limit of 1,024 would cap a server configured for
/// 10,000 meters (accept then fails with EMFILE).
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct; raising the soft limit up
        // to the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// A connection task that panicked is a bug (input must never cause one);
/// it is counted and logged, and no other connection is affected.
fn note_panic(stats: &MqttStats, done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        MqttStats::inc(&stats.connection_panics);
        // The task's `connections_open` decrement did not run.
        stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        tracing::error!("an MQTT connection task failed: {e}");
    }
}

/// Resolves once shutdown is asked for (or the server handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped at once: it is not `Send`.
    let _ = stop.wait_for(|s| *s).await;
}

/// Which connection currently holds each device id, so a newer connection
/// can close an older one.
#[derive(Debug, Default)]
struct Sessions {
    next_id: AtomicU64,
    by_device: Mutex<HashMap<String, (u64, Arc<Notify>)>>,
}

impl Sessions {
    /// Registers a connection for `device`, closing the previous holder.
    /// Returns the connection's id and what wakes it when taken over.
    fn take_over(&self, device: &str, stats: &MqttStats) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let old = self
            .by_device
            .lock()
            .insert(device.to_owned(), (id, kick.clone()));
        if let Some((_, old_kick)) = old {
            MqttStats::inc(&stats.takeovers);
            tracing::info!(
                device,
                "device connected again; closing its older connection"
            );
            // notify_one stores a permit: the old task sees it even if it is
            // not waiting right now.
            old_kick.notify_one();
        }
        (id, kick)
    }

    /// Forgets `device` if connection `id` still holds it.
    fn release(&self, device: &str, id: u64) {
        let mut map = self.by_device.lock();
        if map.get(device).is_some_and(|(held, _)| *held == id) {
            map.remove(device);
        }
    }
}
