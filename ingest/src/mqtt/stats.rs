//! Counters of the MQTT listener: plain atomics, read with
//! [`MqttStats::snapshot`] (for `/metrics` and `system.*` tables later).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive, in milliseconds) of the PUBACK latency buckets;
/// a last, unbounded bucket follows. Latency is measured from the moment a
/// PUBLISH is parsed to the moment its PUBACK is written, so it includes
/// queueing for the appender and the group-commit fsync.
pub const PUBACK_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Live counters, shared by every connection and appender thread.
#[derive(Debug, Default)]
pub struct MqttStats {
    pub(super) connections_open: AtomicU64,
    pub(super) connections_refused_limit: AtomicU64,
    pub(super) connects_ok: AtomicU64,
    pub(super) connects_denied: AtomicU64,
    pub(super) takeovers: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) messages_qos0: AtomicU64,
    pub(super) messages_qos1: AtomicU64,
    pub(super) readings_stored: AtomicU64,
    pub(super) payload_rejected: AtomicU64,
    pub(super) acl_denied: AtomicU64,
    pub(super) append_failures: AtomicU64,
    pub(super) pubacks_sent: AtomicU64,
    pub(super) live_dropped: AtomicU64,
    pub(super) lost_acknowledged: AtomicU64,
    pub(super) connection_panics: AtomicU64,
    pub(super) tls_handshake_failures: AtomicU64,
    pub(super) puback_latency: [AtomicU64; PUBACK_BUCKETS_MS.len() + 1],
    pub(super) puback_latency_sum_us: AtomicU64,
}

/// A consistent-enough copy of [`MqttStats`] (each field read atomically,
/// not all at one instant).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttStatsSnapshot {
    /// Connections currently open (gauge), authenticated or not.
    pub connections_open: u64,
    /// Connections dropped at accept because `max_connections` were open.
    pub connections_refused_limit: u64,
    pub connects_ok: u64,
    /// CONNECTs answered with a refusal (credentials, role, client id,
    /// service unavailable).
    pub connects_denied: u64,
    /// Older connections closed because the same device connected again.
    pub takeovers: u64,
    /// Connections closed for malformed or forbidden packets (not ACL).
    pub protocol_errors: u64,
    pub messages_qos0: u64,
    pub messages_qos1: u64,
    /// Readings whose append returned Ok (fsync'd).
    pub readings_stored: u64,
    /// Messages refused whole: by the decoder or by the store's validation.
    pub payload_rejected: u64,
    /// PUBLISHes to a topic the device may not write (connection closed).
    pub acl_denied: u64,
    /// Messages whose append failed (I/O, poisoned WAL); never acknowledged.
    pub append_failures: u64,
    pub pubacks_sent: u64,
    /// Messages the live publisher refused (best effort; nothing lost).
    pub live_dropped: u64,
    /// Acknowledged but not stored. Must stay 0; anything else is a bug.
    pub lost_acknowledged: u64,
    /// Connection tasks that panicked. Must stay 0; anything else is a bug.
    pub connection_panics: u64,
    /// TLS handshakes that failed or timed out (wrong CA, plain MQTT sent
    /// to the TLS port, scanners).
    pub tls_handshake_failures: u64,
    /// PUBACK latency histogram: counts per bucket of [`PUBACK_BUCKETS_MS`],
    /// plus the last, unbounded bucket.
    pub puback_latency: Vec<u64>,
    /// Sum of all PUBACK latencies, in microseconds.
    pub puback_latency_sum_us: u64,
}

impl MqttStatsSnapshot {
    /// The scalar counters by name (everything but the latency histogram),
    /// for `system.ingest` and `/metrics`.
    pub fn named(&self) -> [(&'static str, u64); 18] {
        [
            ("connections_open", self.connections_open),
            ("connections_refused_limit", self.connections_refused_limit),
            ("connects_ok", self.connects_ok),
            ("connects_denied", self.connects_denied),
            ("takeovers", self.takeovers),
            ("protocol_errors", self.protocol_errors),
            ("messages_qos0", self.messages_qos0),
            ("messages_qos1", self.messages_qos1),
            ("readings_stored", self.readings_stored),
            ("payload_rejected", self.payload_rejected),
            ("acl_denied", self.acl_denied),
            ("append_failures", self.append_failures),
            ("pubacks_sent", self.pubacks_sent),
            ("live_dropped", self.live_dropped),
            ("lost_acknowledged", self.lost_acknowledged),
            ("connection_panics", self.connection_panics),
            ("tls_handshake_failures", self.tls_handshake_failures),
            ("puback_latency_sum_us", self.puback_latency_sum_us),
        ]
    }
}

impl MqttStats {
    pub fn snapshot(&self) -> MqttStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttStatsSnapshot {
            connections_open: get(&self.connections_open),
            connections_refused_limit: get(&self.connections_refused_limit),
            connects_ok: get(&self.connects_ok),
            connects_denied: get(&self.connects_denied),
            takeovers: get(&self.takeovers),
            protocol_errors: get(&self.protocol_errors),
            messages_qos0: get(&self.messages_qos0),
            messages_qos1: get(&self.messages_qos1),
            readings_stored: get(&self.readings_stored),
            payload_rejected: get(&self.payload_rejected),
            acl_denied: get(&self.acl_denied),
            append_failures: get(&self.append_failures),
            pubacks_sent: get(&self.pubacks_sent),
            live_dropped: get(&self.live_dropped),
            lost_acknowledged: get(&self.lost_acknowledged),
            connection_panics: get(&self.connection_panics),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            puback_latency: self.puback_latency.iter().map(get).collect(),
            puback_latency_sum_us: get(&self.puback_latency_sum_us),
        }
    }

    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn record_puback(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = PUBACK_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(PUBACK_BUCKETS_MS.len());
        if let Some(c) = self.puback_latency.get(bucket) {
            Self::inc(c);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        Self::add(&self.puback_latency_sum_us, us);
        Self::inc(&self.pubacks_sent);
    }
}
