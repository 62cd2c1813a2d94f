//! The bridge from async connections to the blocking, fsyncing
//! [`Store::append`].
//!
//! Why threads: `Store::append` blocks until the WAL is fdatasync'd
//! (milliseconds). Calling it on the tokio executor would stall every
//! connection on that worker. A few dedicated threads take whatever messages
//! are queued, append them as one batch (so one fsync covers many messages,
//! on top of the store's own group commit) and answer each message on its
//! oneshot.
//!
//! Why a bounded channel: when the disk falls behind, the queue fills and
//! [`Appender::submit`] waits; the connection stops reading its socket and
//! the device sees slower PUBACKs. Nothing is dropped.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use wattson_storage::{Reading, Store};

use super::stats::MqttStats;
use crate::live::LivePublisher;
use crate::payload::{Decoder, IngestCounters, TopicMap, error_topic};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// `Store::append` returned Ok for a batch holding all `rows` readings of
    /// the message: durable.
    Stored { rows: usize },
    /// The store refused the message for its content (type conflict,
    /// retention, invalid input): nothing of it was written. Already logged,
    /// counted and reported on the device's error topic.
    Rejected,
    /// The append failed (I/O, poisoned WAL) or the appender is gone. May or
    /// may not be on disk; must not be acknowledged.
    Failed,
}

/// One message's readings on their way to the store.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) device: String,
    pub(super) topic: String,
    /// As received, offered to the live publisher after the append.
    pub(super) payload: Bytes,
    pub(super) readings: Vec<Reading>,
    /// `readings.len()` as submitted.
    pub(super) rows: usize,
    /// The server time the readings without a timestamp got, so that a
    /// re-decode gives the same readings.
    pub(super) received_ns: i64,
    /// `None` for QoS 0: nobody waits.
    pub(super) reply: Option<oneshot::Sender<Outcome>>,
}

/// Most readings appended in one `Store::append` call.
const DEFAULT_MAX_BATCH: usize = 10_000;

#[derive(Debug)]
pub(super) struct Appender {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// What rebuilds a message's readings from its payload: the same decoder
/// and topic map the connection used (decoding is deterministic given the
/// receive time).
#[derive(Debug, Clone)]
pub(super) struct Redecode {
    pub(super) decoder: Decoder,
    pub(super) topics: Arc<TopicMap>,
    /// Per-device counts of stored messages and readings: counted here,
    /// once the store confirmed them.
    pub(super) counters: Arc<IngestCounters>,
}

struct Worker {
    store: Arc<Store>,
    live: Arc<dyn LivePublisher>,
    redecode: Redecode,
    stats: Arc<MqttStats>,
    max_batch: usize,
}

impl Appender {
    /// Starts `threads` (at least 1) appender threads behind a queue of
    /// `queue` messages (at least 1).
    pub(super) fn start(
        store: Arc<Store>,
        live: Arc<dyn LivePublisher>,
        redecode: Redecode,
        stats: Arc<MqttStats>,
        threads: usize,
        queue: usize,
    ) -> crate::Result<Appender> {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let worker = Worker {
                store: store.clone(),
                live: live.clone(),
                redecode: redecode.clone(),
                stats: stats.clone(),
                max_batch: DEFAULT_MAX_BATCH,
            };
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("wattson-mqtt-append-{i}"))
                .spawn(move || worker.run(&rx))
                .map_err(|source| crate::Error::Io {
                    path: "(spawning an MQTT appender thread)".into(),
                    source,
                })?;
            handles.push(handle);
        }
        Ok(Appender {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
        })
    }

    /// Queues a job, waiting while the queue is full (backpressure). Gives
    /// the job back if the appender is shut down.
    pub(super) async fn submit(&self, job: Job) -> Result<(), Job> {
        let tx = self.tx.lock().clone();
        match tx {
            Some(tx) => tx.send(job).await.map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Stops taking jobs, lets the threads finish the queued ones, joins
    /// them. Blocking: call from `spawn_blocking` in async code.
    pub(super) fn shutdown(&self) {
        drop(self.tx.lock().take());
        let handles = std::mem::take(&mut *self.threads.lock());
        for h in handles {
            if h.join().is_err() {
                tracing::error!("an MQTT appender thread panicked");
            }
        }
    }
}

impl Worker {
    fn run(&self, rx: &Mutex<mpsc::Receiver<Job>>) {
        loop {
            // One thread at a time gathers a batch: it waits for the first
            // job, then takes what is already queued, up to `max_batch`
            // readings. The lock is released before the (slow) append, so
            // the next thread gathers the next batch meanwhile.
            let batch = {
                let mut rx = rx.lock();
                let Some(first) = rx.blocking_recv() else {
                    return;
                };
                let mut rows = first.rows;
                let mut batch = vec![first];
                while rows < self.max_batch {
                    match rx.try_recv() {
                        Ok(job) => {
                            rows += job.rows;
                            batch.push(job);
                        }
                        Err(_) => break,
                    }
                }
                batch
            };
            self.append(batch);
        }
    }

    fn append(&self, mut jobs: Vec<Job>) {
        let total: usize = jobs.iter().map(|j| j.rows).sum();
        // The readings move into the batch (`Store::append` consumes them).
        // Copying them instead cost several percent of the server's CPU,
        // for the rare batch that one message's content spoils: then the
        // messages are decoded again from their payloads (below).
        let mut readings: Vec<Reading> = Vec::with_capacity(total);
        for job in &mut jobs {
            readings.append(&mut job.readings);
        }
        match self.store.append(readings) {
            Ok(receipt) if receipt.rows == total => {
                for job in jobs {
                    self.finish_stored(job);
                }
            }
            Ok(receipt) => {
                // Never seen; would mean the store stored something else
                // than asked. Do not acknowledge anything of it.
                tracing::error!(
                    asked = total,
                    stored = receipt.rows,
                    "store appended a different number of rows than asked; not acknowledging"
                );
                for job in jobs {
                    self.finish_failed(job);
                }
            }
            Err(e) if is_content_error(&e) && jobs.len() > 1 => {
                // One message's content spoiled the combined batch, and the
                // store guarantees nothing of it was written. Retry each
                // message alone so the others are not punished for it.
                for mut job in jobs {
                    match self.decode_again(&job) {
                        Some(readings) => {
                            job.readings = readings;
                            self.append(vec![job]);
                        }
                        None => self.finish_failed(job),
                    }
                }
            }
            Err(e) if is_content_error(&e) => {
                for job in jobs {
                    self.finish_rejected(job, &e);
                }
            }
            Err(e) => {
                tracing::error!("MQTT append failed; messages not acknowledged: {e}");
                for job in jobs {
                    self.finish_failed(job);
                }
            }
        }
    }

    /// The readings of `job` as its connection decoded them; `None` (never
    /// seen: it decoded before) means the message is failed, not
    /// acknowledged, and the device resends it.
    fn decode_again(&self, job: &Job) -> Option<Vec<Reading>> {
        let Redecode {
            decoder, topics, ..
        } = &self.redecode;
        let m = topics.authorize(&job.device, &job.topic)?;
        match decoder.decode(&m, &job.payload, job.received_ns) {
            Ok(readings) if readings.len() == job.rows => Some(readings),
            other => {
                tracing::error!(device = %job.device, topic = %job.topic, ok = other.is_ok(), "a message did not decode again as before; not acknowledging it");
                None
            }
        }
    }

    fn finish_stored(&self, job: Job) {
        let rows = job.rows;
        MqttStats::add(&self.stats.readings_stored, rows as u64);
        self.redecode.counters.record_ok(&job.device, rows);
        reply(job.reply, Outcome::Stored { rows });
        // Live delivery after the reply: it is best effort and must not
        // delay the PUBACK.
        if !self.live.publish(&job.topic, &job.payload) {
            MqttStats::inc(&self.stats.live_dropped);
        }
    }

    fn finish_rejected(&self, job: Job, e: &wattson_storage::Error) {
        MqttStats::inc(&self.stats.payload_rejected);
        tracing::warn!(device = %job.device, topic = %job.topic, "message refused by the store: {e}");
        let reason = serde_json::Value::from(e.to_string());
        let msg = format!("{{\"error\":\"store_refused\",\"reason\":{reason}}}");
        if !self.live.publish(&error_topic(&job.device), msg.as_bytes()) {
            MqttStats::inc(&self.stats.live_dropped);
        }
        reply(job.reply, Outcome::Rejected);
    }

    fn finish_failed(&self, job: Job) {
        MqttStats::inc(&self.stats.append_failures);
        reply(job.reply, Outcome::Failed);
    }
}

fn reply(to: Option<oneshot::Sender<Outcome>>, outcome: Outcome) {
    if let Some(tx) = to {
        // The connection may be gone (closed, taken over): then nobody will
        // acknowledge, and the device resends after reconnecting.
        let _ = tx.send(outcome);
    }
}

/// Errors caused by the message's content: the store guarantees nothing was
/// written and the schema is unchanged, so the message can be refused for
/// good (and the rest of a combined batch retried).
fn is_content_error(e: &wattson_storage::Error) -> bool {
    use wattson_storage::Error as E;
    matches!(
        e,
        E::TypeConflict { .. } | E::InvalidInput(_) | E::BeyondRetention { .. }
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wattson_storage::Store;

    use super::*;
    use crate::live::NoLive;

    /// 2026-01-01T00:00:00Z in ms.
    const T0_MS: i64 = 1_767_225_600_000;

    fn redecode() -> Redecode {
        Redecode {
            decoder: Decoder::default(),
            topics: Arc::new(TopicMap::default()),
            counters: Arc::new(IngestCounters::new()),
        }
    }

    /// A QoS 1 message of device m1 with a JSON payload, decoded as the
    /// connection would.
    fn job(json: &str) -> (Job, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let topic = "meters/m1/power";
        let m = TopicMap::default().authorize("m1", topic).unwrap();
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let readings = Decoder::default()
            .decode(&m, json.as_bytes(), now_ns)
            .unwrap();
        let job = Job {
            device: "m1".into(),
            topic: topic.into(),
            payload: Bytes::copy_from_slice(json.as_bytes()),
            rows: readings.len(),
            readings,
            received_ns: now_ns,
            reply: Some(tx),
        };
        (job, rx)
    }

    /// One message with a type conflict in a combined batch is refused
    /// alone; the others are stored.
    #[test]
    fn a_bad_message_does_not_spoil_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_default(dir.path()).unwrap());
        let (first, _) = job(&format!(r#"{{"ts":{T0_MS},"pa_v":1.0}}"#));
        store.append(first.readings).unwrap();
        let stats = Arc::new(MqttStats::default());
        let worker = Worker {
            store: store.clone(),
            live: Arc::new(NoLive),
            redecode: redecode(),
            stats: stats.clone(),
            max_batch: DEFAULT_MAX_BATCH,
        };
        let (a, mut ra) = job(&format!(r#"{{"ts":{},"pa_v":2.0}}"#, T0_MS + 1));
        let (b, mut rb) = job(&format!(r#"{{"ts":{},"pa_v":true}}"#, T0_MS + 2));
        let (c, mut rc) = job(&format!(r#"{{"ts":{},"pa_v":3.0}}"#, T0_MS + 3));
        worker.append(vec![a, b, c]);
        assert_eq!(ra.try_recv().unwrap(), Outcome::Stored { rows: 1 });
        assert_eq!(rb.try_recv().unwrap(), Outcome::Rejected);
        assert_eq!(rc.try_recv().unwrap(), Outcome::Stored { rows: 1 });
        let s = stats.snapshot();
        assert_eq!((s.readings_stored, s.payload_rejected), (2, 1));
        let rows: usize = store
            .scan(&wattson_storage::ScanRequest::table("power"))
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 3);
    }
}
