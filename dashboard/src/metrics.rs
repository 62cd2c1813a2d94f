//! `/metrics` in the Prometheus text format: ingest, PUBACK latency, WAL
//! commits and fsync latency, bytes on disk, SQL queries and the live feed.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use wattson_ingest::mqtt::PUBACK_BUCKETS_MS;

use crate::error::json_error;
use crate::session::same_secret;
use crate::web::AppState;

/// Upper bounds (seconds) of the query latency buckets.
const QUERY_BUCKETS_S: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// SQL run through the dashboard and the HTTP API: count, failures and
/// time to the first batch's plan plus execution (time to completion for
/// collected queries, time to the end of the stream for streamed ones).
#[derive(Debug, Default)]
pub(crate) struct QueryMetrics {
    count: AtomicU64,
    failed: AtomicU64,
    buckets: [AtomicU64; QUERY_BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
}

impl QueryMetrics {
    pub(crate) fn record(&self, took: Duration, ok: bool) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let s = took.as_secs_f64();
        let i = QUERY_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(QUERY_BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// The router of the metrics listener (localhost by default): no auth.
pub(crate) fn router(app: AppState) -> Router {
    Router::new().route("/metrics", get(open)).with_state(app)
}

async fn open(State(app): State<AppState>) -> Response {
    text(&app)
}

/// `/metrics` on the dashboard port: only with the configured token.
pub(crate) async fn with_token(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match &app.metrics_token {
        Some(token) if same_secret(given, token) => text(&app),
        _ => json_error(
            StatusCode::UNAUTHORIZED,
            "metrics need `Authorization: Bearer <dashboard.metrics_token>` here, or use dashboard.metrics_listen",
        ),
    }
}

fn histogram(out: &mut String, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn text(app: &AppState) -> Response {
    let mut out = String::new();
    let s = app.mqtt_stats.snapshot();
    for (name, value) in s.named() {
        if name == "puback_latency_sum_us" {
            continue;
        }
        let (kind, suffix) = if name == "connections_open" {
            ("gauge", "")
        } else {
            ("counter", "_total")
        };
        scalar(
            &mut out,
            &format!("wattson_mqtt_{name}{suffix}"),
            kind,
            &format!("MQTT listener: {}", name.replace('_', " ")),
            value,
        );
    }
    let bounds: Vec<f64> = PUBACK_BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect();
    histogram(
        &mut out,
        "wattson_mqtt_puback_latency_seconds",
        "From PUBLISH parsed to PUBACK written (includes the group-commit fsync)",
        &bounds,
        &s.puback_latency,
        s.puback_latency_sum_us as f64 / 1e6,
    );
    scalar(
        &mut out,
        "wattson_store_writable",
        "gauge",
        "1 while the store accepts writes; 0 while its disk is nearly full (until space is freed), while its write buffer is full and sealing it fails (until a seal succeeds), or after an I/O failure poisoned its write-ahead log (until restarted)",
        u64::from(app.store.write_failure().is_none()),
    );
    scalar(
        &mut out,
        "wattson_store_background_failing",
        "gauge",
        "1 while the store's last background work (sealing, compaction, retention) failed and has not succeeded since; the server log says why",
        u64::from(app.store.last_background_error().is_some()),
    );
    let wal = app.store.wal_stats();
    scalar(
        &mut out,
        "wattson_wal_appends_total",
        "counter",
        "WAL records made durable",
        wal.appends,
    );
    scalar(
        &mut out,
        "wattson_wal_commits_total",
        "counter",
        "WAL commit rounds (fdatasyncs)",
        wal.commits,
    );
    scalar(
        &mut out,
        "wattson_wal_bytes_total",
        "counter",
        "WAL bytes made durable",
        wal.bytes,
    );
    let wal_bounds: Vec<f64> = wattson_storage::wal::FSYNC_BUCKETS_US
        .iter()
        .map(|us| *us as f64 / 1e6)
        .collect();
    histogram(
        &mut out,
        "wattson_wal_fsync_seconds",
        "Duration of the WAL's fdatasync calls",
        &wal_bounds,
        &wal.fsync_latency,
        wal.fsync_sum_us as f64 / 1e6,
    );
    let cache = app.store.block_cache_stats();
    scalar(
        &mut out,
        "wattson_block_cache_hits_total",
        "counter",
        "Column chunks read from the decoded-block cache",
        cache.hits,
    );
    scalar(
        &mut out,
        "wattson_block_cache_misses_total",
        "counter",
        "Column chunks decoded from disk",
        cache.misses,
    );
    scalar(
        &mut out,
        "wattson_block_cache_bytes",
        "gauge",
        "Memory held by the decoded-block cache",
        cache.bytes,
    );
    let parts = app.store.partitions();
    let bytes: u64 = parts.iter().map(|p| p.bytes_on_disk).sum();
    scalar(
        &mut out,
        "wattson_storage_bytes_on_disk",
        "gauge",
        "Bytes of sealed column files",
        bytes,
    );
    scalar(
        &mut out,
        "wattson_storage_partitions",
        "gauge",
        "Stored (table, device, month) partitions",
        parts.len(),
    );
    let q = &app.queries;
    scalar(
        &mut out,
        "wattson_http_queries_total",
        "counter",
        "SQL queries run by the dashboard and HTTP API",
        q.count.load(Ordering::Relaxed),
    );
    scalar(
        &mut out,
        "wattson_http_queries_failed_total",
        "counter",
        "SQL queries that failed",
        q.failed.load(Ordering::Relaxed),
    );
    let counts: Vec<u64> = q
        .buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    histogram(
        &mut out,
        "wattson_http_query_duration_seconds",
        "SQL query duration, plan to last row",
        &QUERY_BUCKETS_S,
        &counts,
        q.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let (sent, queue_dropped, viewer_dropped) = app.live.stats();
    scalar(
        &mut out,
        "wattson_live_events_total",
        "counter",
        "Live events broadcast to dashboard viewers",
        sent,
    );
    scalar(
        &mut out,
        "wattson_live_queue_dropped_total",
        "counter",
        "Messages the live feed dropped because its queue was full",
        queue_dropped,
    );
    scalar(
        &mut out,
        "wattson_live_viewer_dropped_total",
        "counter",
        "Live events slow viewers missed",
        viewer_dropped,
    );
    scalar(
        &mut out,
        "wattson_dashboard_sessions",
        "gauge",
        "Open dashboard sessions",
        app.sessions.len(),
    );
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
