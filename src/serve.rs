//! `wattson serve`: the store, the device-facing MQTT listener, the
//! subscriber broker, the SQL engine, Arrow Flight and the dashboard in one
//! process, configured by embedded defaults and an optional `wattson.toml`
//! (checked before anything starts), shut down gracefully on SIGINT or
//! SIGTERM: listeners first, then the store is sealed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use wattson_dashboard::{Dashboard, DashboardConfig, Deps as DashboardDeps, LiveHub};
use wattson_ingest::auth::{TokenStore, UserStore, Verifier};
use wattson_ingest::live::{Fanout, LivePublisher};
use wattson_ingest::mqtt::{MqttConfig, MqttDeps, MqttServer, MqttStats, TlsSettings};
use wattson_ingest::payload::{DecodeOptions, Decoder, IngestCounters, TopicMap, TopicPattern};
use wattson_ingest::router::{LiveBroker, RouterSettings};
use wattson_query::{DeviceRejections, IngestSource, QueryEngine, QueryOptions};
use wattson_storage::clock::SystemClock;
use wattson_storage::{Store, StoreOptions};

/// Every setting with its default, as `wattson config --print-default`
/// prints it. A test checks that it parses to [`Config::default`].
pub const DEFAULT_CONFIG: &str = r#"# Wattson configuration. Every key is optional; these are the defaults.
# The data directory is chosen with --data-dir (default ./wattson-data).

[storage]
# Memory for buffered readings before they are sealed into column files (MiB).
buffer_mib = 256
# How long concurrent appends wait to share one fdatasync (milliseconds, at most 10).
group_commit_ms = 2
# Seal buffered readings at least this often (seconds), so restarts replay little.
seal_interval_s = 600
# Memory for decoded column blocks kept for repeated reads (MiB); 0 turns it off.
# Unset: an eighth of the machine's memory, at most 1024.
# block_cache_mib = 1024
# Refuse new readings while the disk has less free space than this (MiB), so
# nothing half-written needs a restart; writes resume once space is freed.
# 0 turns the check off.
min_free_mib = 256

[mqtt]
# Where meters connect (MQTT 3.1.1). Only device accounts may log in here.
listen = "0.0.0.0:1883"
# false: no plain listener, meters must use TLS ([mqtt.tls]).
plaintext = true
# Largest MQTT packet accepted (KiB); a larger one closes that connection.
max_packet_kib = 256
# Open connections, plain and TLS together; more are closed at once.
max_connections = 10000
# Seconds a new connection has for the TLS handshake, then for its CONNECT.
connect_timeout_s = 10
# Unacknowledged QoS 1 messages per connection before Wattson stops reading it.
max_inflight = 100

[mqtt.tls]
# MQTT over TLS for meters, on when `cert` and `key` are set: PEM files with
# the certificate chain (the server's certificate first) and its private key
# (PKCS#8, RSA or EC). Checked at startup; a wrong file stops the server.
listen = "0.0.0.0:8883"
cert = ""
key = ""

[subscribers]
# Where people's MQTT clients (Home Assistant, Node-RED) subscribe to live
# readings. Only viewer, analyst and admin accounts may log in here.
listen = "0.0.0.0:1884"

[ingest]
# Readings dated further than this into the future are rejected (seconds).
max_clock_skew_s = 86400
# Largest message payload (KiB) and most readings in one message; a larger
# message is refused whole and explained on meters/{id}/errors.
max_payload_kib = 256
max_readings_per_message = 10000

# Topic patterns, first match wins. {device} and {table} each match one topic
# level. A fixed `table`, and a `channel` for bare-number payloads, map
# devices with fixed topics. Meters may publish only under meters/{their id}/.
[[ingest.topics]]
pattern = "meters/{device}/{table}"

[flight]
# Arrow Flight and Flight SQL for analysts and admins (pyarrow, ADBC, JDBC).
listen = "0.0.0.0:50051"
# TLS on when both are set: PEM certificate chain and private key.
cert = ""
key = ""
# Largest gRPC message received or sent (MiB), 4 to 1024; results are sent in
# messages of about 2 MiB.
max_message_mib = 64
# Prepared statements one user may keep open; more drop the oldest.
max_prepared_per_user = 64

[auth]
# Bearer tokens (Flight handshake, HTTP API) expire this long after login (hours).
token_ttl_h = 12

[query]
# Memory one SQL query may hold in sorts, joins and aggregations (MiB);
# beyond it the query spills or fails, and the server stays up.
memory_limit_mib = 1024
# A query running longer is cancelled (seconds).
timeout_s = 300
# energy_kwh and twa do not integrate across gaps longer than this (seconds).
max_gap_s = 300

[dashboard]
# The web dashboard and HTTP API (viewer and above may log in).
listen = "0.0.0.0:8080"
# HTTPS, on when `tls_cert` and `tls_key` are set (PEM files, as for [mqtt.tls]).
tls_cert = ""
tls_key = ""
# A session unused this long ends (minutes); every session ends this long
# after login (hours).
session_idle_min = 30
session_max_h = 12
# A device silent this long is flagged on the live view (seconds).
stale_after_s = 10
# Prometheus metrics without a token; "" or "off" turns this listener off.
metrics_listen = "127.0.0.1:9464"
# When set, /metrics on the dashboard port answers `Authorization: Bearer <token>`.
metrics_token = ""
"#;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub storage: StorageSection,
    pub mqtt: MqttSection,
    pub subscribers: SubscribersSection,
    pub ingest: IngestSection,
    pub flight: FlightSection,
    pub auth: AuthSection,
    pub query: QuerySection,
    pub dashboard: DashboardSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlightSection {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub max_message_mib: usize,
    pub max_prepared_per_user: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    pub buffer_mib: usize,
    pub group_commit_ms: u64,
    pub seal_interval_s: u64,
    pub block_cache_mib: Option<usize>,
    pub min_free_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSection {
    pub listen: SocketAddr,
    pub plaintext: bool,
    pub max_packet_kib: usize,
    pub max_connections: usize,
    pub connect_timeout_s: u64,
    pub max_inflight: usize,
    pub tls: TlsSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscribersSection {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    pub max_clock_skew_s: u64,
    pub max_payload_kib: usize,
    pub max_readings_per_message: usize,
    pub topics: Vec<TopicPattern>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub token_ttl_h: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySection {
    pub memory_limit_mib: usize,
    pub timeout_s: u64,
    pub max_gap_s: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSection {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub session_idle_min: u64,
    pub session_max_h: u64,
    pub stale_after_s: u64,
    /// Empty: no separate metrics listener.
    pub metrics_listen: String,
    pub metrics_token: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage: StorageSection {
                buffer_mib: 256,
                group_commit_ms: 2,
                seal_interval_s: 600,
                block_cache_mib: None,
                min_free_mib: 256,
            },
            mqtt: MqttSection {
                listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
                plaintext: true,
                max_packet_kib: 256,
                max_connections: 10_000,
                connect_timeout_s: 10,
                max_inflight: 100,
                tls: TlsSection {
                    listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
                    cert: PathBuf::new(),
                    key: PathBuf::new(),
                },
            },
            subscribers: SubscribersSection {
                listen: SocketAddr::from(([0, 0, 0, 0], 1884)),
            },
            ingest: IngestSection {
                max_clock_skew_s: 86_400,
                max_payload_kib: 256,
                max_readings_per_message: 10_000,
                topics: vec![TopicPattern::new(wattson_ingest::payload::DEFAULT_PATTERN)],
            },
            flight: FlightSection {
                listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
                cert: PathBuf::new(),
                key: PathBuf::new(),
                max_message_mib: 64,
                max_prepared_per_user: 64,
            },
            auth: AuthSection { token_ttl_h: 12 },
            query: QuerySection {
                memory_limit_mib: 1024,
                timeout_s: 300,
                max_gap_s: 300,
            },
            dashboard: DashboardSection {
                listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
                tls_cert: PathBuf::new(),
                tls_key: PathBuf::new(),
                session_idle_min: 30,
                session_max_h: 12,
                stale_after_s: 10,
                metrics_listen: "127.0.0.1:9464".to_owned(),
                metrics_token: String::new(),
            },
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Config::default().storage
    }
}
impl Default for MqttSection {
    fn default() -> Self {
        Config::default().mqtt
    }
}
impl Default for TlsSection {
    fn default() -> Self {
        Config::default().mqtt.tls
    }
}
impl Default for SubscribersSection {
    fn default() -> Self {
        Config::default().subscribers
    }
}
impl Default for IngestSection {
    fn default() -> Self {
        Config::default().ingest
    }
}
impl Default for FlightSection {
    fn default() -> Self {
        Config::default().flight
    }
}
impl Default for AuthSection {
    fn default() -> Self {
        Config::default().auth
    }
}
impl Default for QuerySection {
    fn default() -> Self {
        Config::default().query
    }
}
impl Default for DashboardSection {
    fn default() -> Self {
        Config::default().dashboard
    }
}

impl DashboardSection {
    fn to_config(&self) -> Result<DashboardConfig> {
        let tls = match (
            self.tls_cert.as_os_str().is_empty(),
            self.tls_key.as_os_str().is_empty(),
        ) {
            (true, true) => None,
            (false, false) => Some((self.tls_cert.clone(), self.tls_key.clone())),
            _ => bail!("[dashboard] needs both tls_cert and tls_key for HTTPS, or neither"),
        };
        let metrics_listen = match self.metrics_listen.trim() {
            "" | "off" => None,
            text => Some(text.parse().with_context(|| {
                format!(
                    "[dashboard] metrics_listen = {text:?} is not an address like 127.0.0.1:9464"
                )
            })?),
        };
        if self.session_idle_min == 0 || self.session_max_h == 0 {
            bail!("[dashboard] session_idle_min and session_max_h must be at least 1");
        }
        Ok(DashboardConfig {
            listen: self.listen,
            tls,
            session_idle: Duration::from_secs(self.session_idle_min.saturating_mul(60)),
            session_max: Duration::from_secs(self.session_max_h.saturating_mul(3600)),
            metrics_listen,
            metrics_token: Some(self.metrics_token.clone()).filter(|t| !t.is_empty()),
            stale_after: Duration::from_secs(self.stale_after_s.max(1)),
        })
    }
}

impl Config {
    /// Refuses numbers that would wrap when scaled to bytes, or that turn a
    /// feature into a failure (a query memory of 0 fails every query),
    /// naming the key and its allowed range.
    pub fn check(&self) -> Result<()> {
        const GIB_IN_MIB: u64 = 1 << 10;
        let ranges: [(&str, u64, u64, u64); 14] = [
            (
                "storage.group_commit_ms",
                self.storage.group_commit_ms,
                0,
                10,
            ),
            (
                "flight.max_message_mib",
                self.flight.max_message_mib as u64,
                4,
                1024,
            ),
            (
                "storage.buffer_mib",
                self.storage.buffer_mib as u64,
                1,
                64 * GIB_IN_MIB,
            ),
            (
                "storage.seal_interval_s",
                self.storage.seal_interval_s,
                1,
                7 * 86_400,
            ),
            (
                "mqtt.max_packet_kib",
                self.mqtt.max_packet_kib as u64,
                1,
                256 * 1024 - 1,
            ),
            (
                "mqtt.max_connections",
                self.mqtt.max_connections as u64,
                1,
                1_000_000,
            ),
            (
                "mqtt.connect_timeout_s",
                self.mqtt.connect_timeout_s,
                1,
                3_600,
            ),
            (
                "mqtt.max_inflight",
                self.mqtt.max_inflight as u64,
                1,
                65_535,
            ),
            (
                "ingest.max_payload_kib",
                self.ingest.max_payload_kib as u64,
                1,
                256 * 1024 - 1,
            ),
            (
                "ingest.max_readings_per_message",
                self.ingest.max_readings_per_message as u64,
                1,
                10_000_000,
            ),
            (
                "flight.max_prepared_per_user",
                self.flight.max_prepared_per_user as u64,
                1,
                100_000,
            ),
            ("auth.token_ttl_h", self.auth.token_ttl_h, 1, 24 * 366),
            (
                "query.memory_limit_mib",
                self.query.memory_limit_mib as u64,
                1,
                1024 * GIB_IN_MIB,
            ),
            ("query.timeout_s", self.query.timeout_s, 1, 7 * 86_400),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                bail!("{key} is {value}; it must be between {min} and {max}");
            }
        }
        Ok(())
    }

    /// Reads `path`, or `./wattson.toml` when no path is given and it exists,
    /// or the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let implicit = Path::new("wattson.toml");
        let path = match path {
            Some(p) => p,
            None if implicit.exists() => implicit,
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("in the configuration {}", path.display()))?;
        tracing::info!(config = %path.display(), "configuration loaded");
        Ok(config)
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(data_dir: &Path, config: Config) -> Result<()> {
    run_with(data_dir, config, Box::new(|_| {}))
}

/// Where a started server listens, for [`run_with`]'s callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The plain MQTT listener, or the TLS one when plain MQTT is off.
    pub meters: std::net::SocketAddr,
    pub subscribers: std::net::SocketAddr,
    /// Arrow Flight and Flight SQL.
    pub flight: std::net::SocketAddr,
    /// The dashboard and HTTP API.
    pub dashboard: std::net::SocketAddr,
    /// Whether the dashboard speaks HTTPS.
    pub dashboard_tls: bool,
}

/// [`run`], calling `on_ready` once every listener is up (`wattson demo`
/// starts its simulated meters from there).
pub fn run_with(
    data_dir: &Path,
    config: Config,
    on_ready: Box<dyn FnOnce(Listening) + Send>,
) -> Result<()> {
    config.check()?;
    let users = Arc::new(
        UserStore::open(data_dir)
            .with_context(|| format!("opening the user store in {}", data_dir.display()))?,
    );
    users.require_admin()?;
    let store = Arc::new(
        Store::open(
            data_dir,
            StoreOptions {
                buffer_bytes: config.storage.buffer_mib << 20,
                group_commit_window: Duration::from_millis(config.storage.group_commit_ms),
                seal_interval: Duration::from_secs(config.storage.seal_interval_s),
                block_cache_bytes: config
                    .storage
                    .block_cache_mib
                    .map_or_else(wattson_storage::default_block_cache_bytes, |m| {
                        m.saturating_mul(1 << 20)
                    }),
                min_free_bytes: config.storage.min_free_mib.saturating_mul(1 << 20),
                ..StoreOptions::default()
            },
        )
        .with_context(|| format!("opening the data directory {}", data_dir.display()))?,
    );
    for event in store.recovery_report() {
        tracing::warn!("recovery: {event}");
    }
    match wattson_ingest::mqtt::raise_open_file_limit() {
        Ok(n) if (n as usize) < config.mqtt.max_connections.saturating_add(256) => tracing::warn!(
            open_files = n,
            max_connections = config.mqtt.max_connections,
            "the open-file limit is below mqtt.max_connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) or connections will fail"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wattson-io")
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(serve(store.clone(), users, config, on_ready));
    // Whatever happened, seal what is buffered; acknowledged readings are
    // in the WAL either way.
    let closed = store.close();
    served?;
    closed.context("closing the store")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// What the front ends (Flight, the dashboard) share with ingest.
#[derive(Debug, Clone)]
pub struct Shared {
    pub store: Arc<Store>,
    pub users: Arc<UserStore>,
    pub verifier: Verifier,
    pub tokens: Arc<TokenStore>,
    pub engine: Arc<QueryEngine>,
    pub mqtt_stats: Arc<MqttStats>,
    pub counters: Arc<IngestCounters>,
}

/// `system.ingest` and the rejection columns of `system.devices`, from the
/// running listener's counters.
#[derive(Debug)]
struct LiveIngest {
    stats: Arc<MqttStats>,
    counters: Arc<IngestCounters>,
}

impl IngestSource for LiveIngest {
    fn counters(&self) -> Vec<(String, u64)> {
        self.stats
            .snapshot()
            .named()
            .iter()
            .map(|&(name, value)| (name.to_owned(), value))
            .collect()
    }

    fn rejections(&self) -> Vec<DeviceRejections> {
        self.counters
            .snapshot()
            .into_iter()
            .map(|c| DeviceRejections {
                device: c.device,
                rejected: c.rejected,
                last_reason: c.last_reason,
            })
            .collect()
    }
}

fn query_options(section: &QuerySection) -> QueryOptions {
    QueryOptions {
        memory_limit: section.memory_limit_mib << 20,
        timeout: Duration::from_secs(section.timeout_s),
        max_gap: Duration::from_secs(section.max_gap_s),
        ..QueryOptions::default()
    }
}

async fn serve(
    store: Arc<Store>,
    users: Arc<UserStore>,
    config: Config,
    on_ready: Box<dyn FnOnce(Listening) + Send>,
) -> Result<()> {
    let verifier = Verifier::new(users.clone()).context("starting the password verifier")?;
    let tokens = Arc::new(TokenStore::new(
        users.clone(),
        Duration::from_secs(config.auth.token_ttl_h.saturating_mul(3600)),
    ));
    let mut broker = LiveBroker::start(
        RouterSettings {
            listen: config.subscribers.listen,
            ..RouterSettings::default()
        },
        verifier.clone(),
    )
    .context("starting the subscriber broker")?;
    tracing::info!(listen = %broker.listen_addr(), "subscribers listening");
    let topics = TopicMap::new(&config.ingest.topics).context("in [[ingest.topics]]")?;
    let dashboard_config = config.dashboard.to_config()?;
    let topics = Arc::new(topics);
    let decoder = Decoder::new(DecodeOptions {
        max_clock_skew: Duration::from_secs(config.ingest.max_clock_skew_s),
        max_payload_bytes: config.ingest.max_payload_kib << 10,
        max_readings_per_message: config.ingest.max_readings_per_message,
        ..DecodeOptions::default()
    });
    let live_hub = LiveHub::new(topics.clone(), decoder.clone());
    let live_targets: Vec<Arc<dyn LivePublisher>> =
        vec![Arc::new(broker.handle()), live_hub.clone()];
    let live: Arc<dyn LivePublisher> = Arc::new(Fanout(live_targets));
    let counters = Arc::new(IngestCounters::new());
    let tls_section = &config.mqtt.tls;
    // Either path set turns TLS on; the listener names a missing other one.
    let tls = (!tls_section.cert.as_os_str().is_empty() || !tls_section.key.as_os_str().is_empty())
        .then(|| TlsSettings {
            listen: tls_section.listen,
            cert: tls_section.cert.clone(),
            key: tls_section.key.clone(),
        });
    let mqtt = MqttServer::start(
        MqttConfig {
            listen: config.mqtt.plaintext.then_some(config.mqtt.listen),
            tls,
            max_packet_bytes: config.mqtt.max_packet_kib << 10,
            max_connections: config.mqtt.max_connections,
            connect_timeout: Duration::from_secs(config.mqtt.connect_timeout_s),
            max_inflight: config.mqtt.max_inflight,
            ..MqttConfig::default()
        },
        MqttDeps {
            store: store.clone(),
            verifier: verifier.clone(),
            topics,
            decoder,
            counters: counters.clone(),
            live,
            clock: Arc::new(SystemClock),
        },
    )
    .await
    .context("starting the MQTT listener")?;
    if let Some(addr) = mqtt.local_addr() {
        tracing::info!(listen = %addr, "meters listening (MQTT)");
    }
    if let Some(addr) = mqtt.tls_addr() {
        tracing::info!(tls_listen = %addr, "meters listening (MQTT over TLS)");
    }
    let ingest_source: Arc<dyn IngestSource> = Arc::new(LiveIngest {
        stats: mqtt.stats().clone(),
        counters: counters.clone(),
    });
    let engine = QueryEngine::new(
        store.clone(),
        Some(ingest_source),
        &query_options(&config.query),
    )
    .context("starting the SQL engine")?;
    let shared = Shared {
        store,
        users,
        verifier,
        tokens,
        engine: Arc::new(engine),
        mqtt_stats: mqtt.stats().clone(),
        counters,
    };
    let flight = start_flight(&config.flight, &shared).await?;
    let dashboard_tls = dashboard_config.tls.is_some();
    let dashboard = Dashboard::start(
        dashboard_config,
        DashboardDeps {
            store: shared.store.clone(),
            users: shared.users.clone(),
            verifier: shared.verifier.clone(),
            tokens: shared.tokens.clone(),
            engine: shared.engine.clone(),
            mqtt_stats: shared.mqtt_stats.clone(),
            live: live_hub,
        },
    )
    .await
    .context("starting the dashboard")?;
    tracing::info!(
        dashboard_listen = %dashboard.local_addr(),
        tls = dashboard_tls,
        "dashboard listening"
    );
    if let Some(addr) = dashboard.metrics_addr() {
        tracing::info!(metrics_listen = %addr, "metrics listening (/metrics)");
    }
    if let Some(meters) = mqtt.local_addr().or(mqtt.tls_addr()) {
        on_ready(Listening {
            meters,
            subscribers: broker.listen_addr(),
            flight: flight.local_addr(),
            dashboard: dashboard.local_addr(),
            dashboard_tls,
        });
    }

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, finishing acknowledged work");
    if let Err(e) = flight.shutdown().await {
        tracing::warn!("Flight server: {e}");
    }
    tracing::info!("Flight server stopped");
    dashboard.shutdown().await;
    let stats = mqtt.stats().clone();
    mqtt.shutdown().await;
    broker.shutdown();
    let s = stats.snapshot();
    tracing::info!(
        readings_stored = s.readings_stored,
        pubacks_sent = s.pubacks_sent,
        lost_acknowledged = s.lost_acknowledged,
        "MQTT listener stopped"
    );
    Ok(())
}

async fn start_flight(
    section: &FlightSection,
    shared: &Shared,
) -> Result<wattson_flight::FlightServer> {
    let tls = match (
        section.cert.as_os_str().is_empty(),
        section.key.as_os_str().is_empty(),
    ) {
        (true, true) => None,
        (false, false) => Some((section.cert.clone(), section.key.clone())),
        _ => bail!("[flight] TLS needs both `cert` and `key`"),
    };
    let opts = wattson_flight::FlightOptions {
        listen: section.listen,
        tls: tls.clone(),
        max_message_bytes: section.max_message_mib << 20,
        max_prepared_per_user: section.max_prepared_per_user,
    };
    let server = wattson_flight::FlightServer::start(
        &opts,
        wattson_flight::Deps {
            store: shared.store.clone(),
            engine: shared.engine.clone(),
            verifier: shared.verifier.clone(),
            tokens: shared.tokens.clone(),
        },
    )
    .await
    .context("starting the Flight server")?;
    tracing::info!(
        listen = %server.local_addr(),
        tls = tls.is_some(),
        "flight listening (Arrow Flight, Flight SQL)"
    );
    Ok(server)
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_defaults_are_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(parsed, Config::default());
        let empty: Config = toml::from_str("").unwrap();
        assert_eq!(empty, Config::default());
    }

    #[test]
    fn numbers_out_of_range_are_named() {
        assert!(Config::default().check().is_ok());
        for (text, key) in [
            ("[storage]\nbuffer_mib = 0\n", "storage.buffer_mib is 0"),
            (
                "[query]\nmemory_limit_mib = 18446744073709551615\n",
                "query.memory_limit_mib",
            ),
            (
                "[mqtt]\nmax_connections = 18446744073709551615\n",
                "mqtt.max_connections",
            ),
            (
                "[ingest]\nmax_payload_kib = 300000\n",
                "between 1 and 262143",
            ),
            ("[flight]\nmax_message_mib = 1\n", "between 4 and 1024"),
        ] {
            let config: Config = toml::from_str(text).unwrap();
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[mqtt]\nlisten_port = 1\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }
}
