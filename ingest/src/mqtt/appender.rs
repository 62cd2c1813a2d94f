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
use crate::payload::error_topic;

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

struct Worker {
    store: Arc<Store>,
    live: Arc<dyn LivePublisher>,
    stats: Arc<MqttStats>,
    max_batch: usize,
}

impl Appender {
    /// Starts `threads` (at least 1) appender threads behind a queue of
    /// `queue` messages (at least 1).
    pub(super) fn start(
        store: Arc<Store>,
        live: Arc<dyn LivePublisher>,
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
        // A lone message gives its readings away. A combined batch is
        // copied: if one message's content fails it, the others are retried
        // alone (below), and `Store::append` consumes what it is given.
        let readings: Vec<Reading> = match jobs.as_mut_slice() {
            [one] => std::mem::take(&mut one.readings),
            _ => jobs
                .iter()
                .flat_map(|j| j.readings.iter().cloned())
                .collect(),
        };
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
                for job in jobs {
                    self.append(vec![job]);
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

    fn finish_stored(&self, job: Job) {
        let rows = job.rows;
        MqttStats::add(&self.stats.readings_stored, rows as u64);
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

    use wattson_storage::{Reading, Store, Value};

    use super::*;
    use crate::live::NoLive;

    const T0: i64 = 1_767_225_600_000_000_000;

    fn reading(time: i64, value: Value) -> Reading {
        Reading {
            table: "power".into(),
            device: "m1".into(),
            time,
            values: vec![(Arc::from("pa_v"), value)],
        }
    }

    fn job(r: Reading) -> (Job, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            device: "m1".into(),
            topic: "meters/m1/power".into(),
            payload: Bytes::new(),
            rows: 1,
            readings: vec![r],
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
        store.append(vec![reading(T0, Value::F64(1.0))]).unwrap();
        let stats = Arc::new(MqttStats::default());
        let worker = Worker {
            store: store.clone(),
            live: Arc::new(NoLive),
            stats: stats.clone(),
            max_batch: DEFAULT_MAX_BATCH,
        };
        let (a, mut ra) = job(reading(T0 + 1, Value::F64(2.0)));
        let (b, mut rb) = job(reading(T0 + 2, Value::Bool(true)));
        let (c, mut rc) = job(reading(T0 + 3, Value::F64(3.0)));
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
