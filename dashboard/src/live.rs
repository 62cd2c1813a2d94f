//! The live feed: ingest offers every stored message to [`LiveHub`], which
//! queues it without blocking; one task decodes it and broadcasts a small
//! JSON event to every open live view. A full queue or a slow viewer drops
//! events (counted), never slows ingest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use wattson_ingest::live::LivePublisher;
use wattson_ingest::payload::{Decoder, TopicMap, error_topic};
use wattson_storage::Value;

/// Messages waiting for the decoding task.
const QUEUE: usize = 8192;
/// Events a viewer may fall behind before it loses the oldest.
const VIEWER_BACKLOG: usize = 4096;
/// Readings of one message sent live; a large batch is history, not live.
const MAX_READINGS_PER_EVENT: usize = 60;

/// One message as ingest handed it over.
#[derive(Debug)]
struct Offered {
    topic: String,
    payload: Vec<u8>,
    received_ns: i64,
}

/// The dashboard's [`LivePublisher`]; add it to serve's live targets.
#[derive(Debug)]
pub struct LiveHub {
    queue: mpsc::Sender<Offered>,
    /// Taken by the decoding task when the dashboard starts.
    pending: Mutex<Option<mpsc::Receiver<Offered>>>,
    events: broadcast::Sender<Arc<str>>,
    topics: Arc<TopicMap>,
    decoder: Decoder,
    /// Messages dropped because the queue was full.
    queue_dropped: AtomicU64,
    /// Events viewers missed because they fell behind.
    viewer_dropped: AtomicU64,
    /// Events broadcast.
    sent: AtomicU64,
}

impl LiveHub {
    /// `topics` and `decoder` should be the ones ingest uses, so the live
    /// view sees the readings the store got.
    pub fn new(topics: Arc<TopicMap>, decoder: Decoder) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (events, _) = broadcast::channel(VIEWER_BACKLOG);
        Arc::new(LiveHub {
            queue,
            pending: Mutex::new(Some(rx)),
            events,
            topics,
            decoder,
            queue_dropped: AtomicU64::new(0),
            viewer_dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Counts events a viewer missed.
    pub fn count_viewer_drop(&self, n: u64) {
        self.viewer_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// (events sent, messages dropped at the queue, events viewers missed).
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.queue_dropped.load(Ordering::Relaxed),
            self.viewer_dropped.load(Ordering::Relaxed),
        )
    }

    /// Starts the decoding task on the current runtime (once).
    pub(crate) fn start(self: &Arc<Self>) {
        let Some(mut rx) = self.pending.lock().take() else {
            return;
        };
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if hub.events.receiver_count() == 0 {
                    continue;
                }
                if let Some(event) = hub.event(&m) {
                    hub.sent.fetch_add(1, Ordering::Relaxed);
                    // No receiver left is not an error: nobody is watching.
                    let _ = hub.events.send(event.into());
                }
            }
        });
    }

    /// `{"d": device, "tb": table, "r": [[time_ms, {channel: value}], ...]}`,
    /// or `None` for messages that are not readings.
    fn event(&self, m: &Offered) -> Option<String> {
        let matched = self.topics.resolve(&m.topic)?;
        if m.topic == error_topic(&matched.device) {
            return None;
        }
        let readings = self
            .decoder
            .decode(&matched, &m.payload, m.received_ns)
            .ok()?;
        let table = readings.first()?.table.clone();
        let skip = readings.len().saturating_sub(MAX_READINGS_PER_EVENT);
        let rows: Vec<serde_json::Value> = readings
            .iter()
            .skip(skip)
            .map(|r| {
                let values: serde_json::Map<String, serde_json::Value> = r
                    .values
                    .iter()
                    .map(|(name, v)| {
                        let v = match v {
                            Value::F64(x) => serde_json::Value::from(*x),
                            Value::I64(x) => serde_json::Value::from(*x),
                            Value::Bool(x) => serde_json::Value::from(u8::from(*x)),
                            Value::Str(s) => serde_json::Value::from(s.as_str()),
                        };
                        (name.to_string(), v)
                    })
                    .collect();
                serde_json::json!([r.time / 1_000_000, values])
            })
            .collect();
        Some(serde_json::json!({ "d": matched.device, "tb": table, "r": rows }).to_string())
    }
}

impl LivePublisher for LiveHub {
    fn publish(&self, topic: &str, payload: &[u8]) -> bool {
        if self.events.receiver_count() == 0 {
            // Nobody is watching: skip the copy.
            return true;
        }
        let offered = Offered {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            received_ns: now_ns(),
        };
        match self.queue.try_send(offered) {
            Ok(()) => true,
            Err(_) => {
                self.queue_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
