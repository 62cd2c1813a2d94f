//! The embedded rumqttd broker that people's MQTT clients (Home Assistant,
//! Node-RED, the dashboard) subscribe to for live readings.
//!
//! # What it owns
//! - One rumqttd [`Router`](rumqttd::Router) thread, configured with bounded
//!   settings (never `RouterConfig::default()`, which panics the router at
//!   the first subscription).
//! - One MQTT 3.1.1 TCP listener for people, with every connection task, on
//!   a dedicated thread with its own current-thread tokio runtime. Owning
//!   the runtime is what lets [`LiveBroker::shutdown`] close people's
//!   connections: rumqttd spawns one detached task per connection and
//!   offers no way to stop them, but dropping their runtime does. It also
//!   keeps subscribers from competing with device ingest for the caller's
//!   executor.
//! - One internal local link, `wattson-fwd`, through which [`LiveHandle`]
//!   (a [`LivePublisher`](crate::live::LivePublisher)) forwards readings
//!   that the store has already accepted.
//!
//! # What it promises
//! - No anonymous access: an auth handler is always installed, and start
//!   fails if it is not. It accepts only people (viewer and above) from the
//!   user store; device credentials are refused (meters use Wattson's own
//!   device listener, where the PUBACK means durable). Client ids that are
//!   empty or start with `wattson-` are refused, so nobody can take over
//!   the `wattson-fwd` link by connecting with its id. Passwords are never
//!   logged.
//! - Publishing never blocks ingest: [`LiveHandle::publish`] copies the
//!   message into a bounded queue (bounded in messages and in bytes) and
//!   returns `false`, counting a drop, when it is full. A dedicated thread
//!   feeds the router.
//! - Live delivery is best effort. A subscriber that falls behind by more
//!   than the router keeps in memory (a few segments per subscribed filter)
//!   silently skips ahead; rumqttd logs "jumping to head". The store, not
//!   this broker, is the source of truth.
//!
//! # Known limitations (rumqttd 0.20)
//! - **No ACL.** An authenticated person can PUBLISH, e.g. into `meters/#`,
//!   and other subscribers see it as live data. Such messages never reach
//!   the store: Wattson never ingests from this router. Refusing people's
//!   PUBLISH is not possible with the stock listener (the auth hook sees
//!   only the CONNECT), so it is documented rather than enforced.
//! - Memory per subscribed filter: each distinct filter keeps up to
//!   `SEGMENT_SIZE * SEGMENT_COUNT` bytes of recent messages, so a person
//!   subscribing to many distinct filters costs memory.
//! - The router thread cannot be stopped: it holds a sender to its own
//!   channel and has no shutdown call. [`LiveBroker::shutdown`] closes the
//!   listener, all people's connections and Wattson's link threads; the
//!   idle router thread lives until the process exits.
//! - rumqttd refuses a login by closing the socket without a CONNACK, so
//!   clients see a connection error rather than "bad user name or
//!   password". Anonymous CONNECTs are refused by rumqttd before the hook
//!   runs and are not counted in [`LiveStats::logins_refused`].
//! - Over `max_connections`, rumqttd drops new connections without a
//!   CONNACK.

mod auth;
mod fanout;
mod net;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};

use crate::auth::Verifier;
use crate::{Error, Result};

pub use fanout::LiveHandle;

/// Bytes per commit-log segment in the router (rumqttd panics below 1 KiB).
const SEGMENT_SIZE: usize = 1024 * 1024;
/// Segments kept per subscribed filter; the oldest is dropped beyond this.
const SEGMENT_COUNT: usize = 4;
/// Messages the router writes to one connection before it waits for the
/// connection to catch up.
const MAX_OUTGOING_PACKETS: u64 = 200;
/// Unacknowledged QoS 1/2 messages per connection.
const MAX_INFLIGHT: usize = 100;

/// Settings of the live broker.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Where people's MQTT clients connect. Default `127.0.0.1:1884`.
    pub listen: SocketAddr,
    /// Largest MQTT packet a client may send, and largest message
    /// [`LiveHandle`] forwards, in bytes. Default 64 KiB.
    pub max_payload_size: usize,
    /// How long a new connection may take to send CONNECT. Default 5 s.
    pub connection_timeout_ms: u16,
    /// Connections the router accepts, people and the internal link.
    /// Default 1024.
    pub max_connections: usize,
    /// Messages waiting between [`LiveHandle::publish`] and the router.
    /// Default 8192.
    pub queue_messages: usize,
    /// Bytes (topics plus payloads) waiting in that queue. Default 16 MiB.
    pub queue_bytes: usize,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1884)),
            max_payload_size: 64 * 1024,
            connection_timeout_ms: 5_000,
            max_connections: 1024,
            queue_messages: 8192,
            queue_bytes: 16 * 1024 * 1024,
        }
    }
}

impl RouterSettings {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidInput(format!("live broker: {what}")));
        if self.max_payload_size < 128 || self.max_payload_size > SEGMENT_SIZE {
            return bad("max_payload_size must be between 128 bytes and 1 MiB");
        }
        if self.connection_timeout_ms == 0 {
            return bad("connection_timeout_ms must be positive");
        }
        if self.max_connections < 2 {
            return bad("max_connections must be at least 2");
        }
        if self.queue_messages == 0 || self.queue_bytes < self.max_payload_size {
            return bad("queue_messages must be positive and queue_bytes >= max_payload_size");
        }
        Ok(())
    }

    fn router_config(&self) -> RouterConfig {
        RouterConfig {
            max_connections: self.max_connections,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        }
    }

    fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            name: "wattson-live".to_owned(),
            listen: self.listen,
            tls: None,
            // A small pause between accepts: a connection flood is slowed
            // rather than turned into a task flood.
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: self.connection_timeout_ms,
                max_payload_size: self.max_payload_size,
                max_inflight_count: MAX_INFLIGHT,
                auth: None,
                external_auth: None,
                // People's publishes to topics nobody subscribes are
                // dropped, not a reason to create commit logs.
                dynamic_filters: false,
            },
        }
    }
}

/// Counters of the live broker; see [`LiveBroker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Messages handed to the router.
    pub published: u64,
    /// Messages refused because the queue was full or the broker stopped.
    pub dropped: u64,
    /// Messages refused because the topic or size is not valid MQTT.
    pub invalid: u64,
    /// Logins the auth handler accepted.
    pub logins_accepted: u64,
    /// Logins the auth handler refused.
    pub logins_refused: u64,
    /// Whether the people's listener is still accepting connections.
    pub listening: bool,
}

/// The embedded broker for live subscribers. See the module doc.
#[derive(Debug)]
pub struct LiveBroker {
    handle: LiveHandle,
    fanout: fanout::Fanout,
    net: net::NetThread,
    logins: Arc<auth::LoginCounters>,
    listen: SocketAddr,
}

impl LiveBroker {
    /// Starts the router, the internal link and the people's listener.
    ///
    /// Blocks for a few milliseconds (the router handshake and the bind);
    /// call it at startup, not in the middle of serving on an executor
    /// thread. Fails with [`Error::LiveListen`] when the address cannot be
    /// bound, e.g. because another broker already listens there.
    pub fn start(config: RouterSettings, verifier: Verifier) -> Result<LiveBroker> {
        config.validate()?;
        // Probe the address before the router thread exists: rumqttd binds
        // inside its accept loop, and a router thread cannot be stopped, so
        // a taken port should fail here without leaving one behind.
        net::probe_bind(config.listen)?;

        let logins = Arc::new(auth::LoginCounters::default());
        let mut server = config.server_settings();
        auth::install(&mut server, verifier, Arc::clone(&logins));
        // Anonymous access must be impossible: rumqttd accepts everyone when
        // neither a password map nor a handler is set.
        if server.connections.external_auth.is_none() || server.connections.auth.is_some() {
            return Err(Error::Internal(
                "live broker auth handler was not installed".to_owned(),
            ));
        }

        let router_tx = rumqttd::Router::new(0, config.router_config()).spawn();
        // dynamic_filters: publishing to a topic nobody subscribed to yet
        // must not disconnect the link.
        let (link_tx, link_rx, _connack) =
            rumqttd::local::LinkBuilder::new("wattson-fwd", router_tx.clone())
                .dynamic_filters(true)
                .build()
                .map_err(|e| {
                    Error::LiveBroker(format!("cannot connect the wattson-fwd link: {e}"))
                })?;
        let mut fanout = fanout::Fanout::start(&config, link_tx, link_rx)?;
        let listener = rumqttd::Server::new(server, router_tx, rumqttd::protocol::v4::V4);
        let net = match net::NetThread::start(listener, config.listen) {
            Ok(net) => net,
            Err(e) => {
                fanout.shutdown();
                return Err(e);
            }
        };
        tracing::info!(listen = %config.listen, "live MQTT broker listening for people");
        Ok(LiveBroker {
            handle: fanout.handle(),
            fanout,
            net,
            logins,
            listen: config.listen,
        })
    }

    /// The publisher that forwards accepted readings to live subscribers.
    /// Cheap to clone.
    pub fn handle(&self) -> LiveHandle {
        self.handle.clone()
    }

    /// The address people's clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LiveStats {
        let mut stats = self.handle.stats();
        stats.logins_accepted = self.logins.accepted();
        stats.logins_refused = self.logins.refused();
        stats.listening = self.net.is_listening();
        stats
    }

    /// Stops the listener, closes every person's connection, refuses
    /// further publishes (counted as dropped) and stops the internal link's
    /// threads after the queue is drained. Idempotent. Blocks for up to a
    /// few hundred milliseconds, so call it from a blocking context.
    ///
    /// What remains: the rumqttd router thread, idle, until the process
    /// exits (rumqttd 0.20 offers no way to stop it).
    pub fn shutdown(&mut self) {
        self.net.shutdown();
        self.fanout.shutdown();
    }
}

impl Drop for LiveBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
