//! The `wattson-fwd` link: from [`LiveHandle::publish`] (called by ingest,
//! must never block) to rumqttd's router (whose `LinkTx::publish` blocks
//! when the router's channel is full).
//!
//! Between them sits a bounded queue, bounded in messages and in bytes, and
//! two threads: one feeds the router, one drains the link's notifications
//! and answers `Unschedule` so the router never parks the link.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::Notification;
use rumqttd::local::{LinkError, LinkRx, LinkTx};

use super::{LiveStats, RouterSettings};
use crate::live::LivePublisher;
use crate::{Error, Result};

/// How often the threads look at the stop flag when idle.
const POLL: Duration = Duration::from_millis(50);

/// MQTT's limit on a topic's length.
const MAX_TOPIC_BYTES: usize = 65_535;

struct Msg {
    topic: Bytes,
    payload: Bytes,
}

impl Msg {
    fn cost(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

#[derive(Debug)]
struct Shared {
    tx: SyncSender<Msg>,
    /// Bytes accepted by `publish` and not yet handed to the router.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    max_payload: usize,
    /// Set by shutdown: `publish` refuses, the threads finish.
    closed: AtomicBool,
    published: AtomicU64,
    dropped: AtomicU64,
    invalid: AtomicU64,
}

/// Forwards messages to the live broker's subscribers; a
/// [`LivePublisher`]. Cheap to clone; every clone feeds the same queue.
#[derive(Debug, Clone)]
pub struct LiveHandle {
    shared: Arc<Shared>,
}

impl LiveHandle {
    /// The counters kept by the handle (the login counters are zero here;
    /// see [`LiveBroker::stats`](super::LiveBroker::stats)).
    pub fn stats(&self) -> LiveStats {
        let s = &self.shared;
        LiveStats {
            published: s.published.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            invalid: s.invalid.load(Ordering::Relaxed),
            ..LiveStats::default()
        }
    }

    fn valid(&self, topic: &str, payload: &[u8]) -> bool {
        !topic.is_empty()
            && topic.len() <= MAX_TOPIC_BYTES
            && !topic.contains('\0')
            && rumqttd::protocol::valid_topic(topic)
            && payload.len() <= self.shared.max_payload
    }
}

impl LivePublisher for LiveHandle {
    fn publish(&self, topic: &str, payload: &[u8]) -> bool {
        let s = &self.shared;
        if !self.valid(topic, payload) {
            s.invalid.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let cost = topic.len() + payload.len();
        // Reserve the bytes first, so concurrent publishers cannot together
        // overshoot the byte bound.
        let before = s.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if s.closed.load(Ordering::Acquire) || before + cost > s.max_bytes {
            s.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Copy: the caller's buffer may be reused as soon as we return.
        let msg = Msg {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
        };
        match s.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                s.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
                s.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The queue and its two threads.
#[derive(Debug)]
pub(super) struct Fanout {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Fanout {
    /// Starts the threads for a link built with
    /// `LinkBuilder::new("wattson-fwd", router_tx).dynamic_filters(true)`.
    pub(super) fn start(config: &RouterSettings, tx: LinkTx, rx: LinkRx) -> Result<Self> {
        let (queue_tx, queue_rx) = sync_channel(config.queue_messages);
        let shared = Arc::new(Shared {
            tx: queue_tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes: config.queue_bytes,
            max_payload: config.max_payload_size,
            closed: AtomicBool::new(false),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
        });
        let mut fanout = Fanout {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        let feeder = Arc::clone(&shared);
        fanout.threads.push(spawn("wattson-live-fwd", move || {
            feed(&feeder, &queue_rx, tx)
        })?);
        let drainer = Arc::clone(&shared);
        match spawn("wattson-live-rx", move || drain(&drainer, rx)) {
            Ok(t) => fanout.threads.push(t),
            Err(e) => {
                fanout.shutdown();
                return Err(e);
            }
        }
        Ok(fanout)
    }

    pub(super) fn handle(&self) -> LiveHandle {
        LiveHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Refuses new messages, lets the feeder hand the queued ones to the
    /// router, and joins both threads. Idempotent.
    pub(super) fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a live broker link thread panicked");
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| Error::LiveBroker(format!("cannot spawn thread {name}: {e}")))
}

/// Hands queued messages to the router. `LinkTx::publish` blocks while the
/// router's channel is full; that is fine here, and is what makes the
/// queue fill up and `publish` drop instead of ingest waiting.
fn feed(shared: &Shared, queue: &Receiver<Msg>, mut link: LinkTx) {
    loop {
        match queue.recv_timeout(POLL) {
            Ok(msg) => {
                let cost = msg.cost();
                let sent = link.publish(msg.topic, msg.payload);
                shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
                match sent {
                    Ok(_) => {
                        shared.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Only if the router thread died; nothing will
                        // deliver again, so stop and let publish() drop.
                        tracing::error!(error = %e, "live broker router is gone; live delivery stopped");
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        shared.closed.store(true, Ordering::Release);
                        return;
                    }
                }
            }
            // Idle: the queue is empty, so after shutdown nothing is lost.
            Err(RecvTimeoutError::Timeout) => {
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Reads the link's notifications. The link subscribes to nothing, so
/// little arrives; but a local link that leaves `Unschedule` unanswered is
/// parked by the router for good (facts.md), so answer it anyway.
fn drain(shared: &Shared, mut rx: LinkRx) {
    while !shared.closed.load(Ordering::Acquire) {
        match rx.recv_deadline(Instant::now() + POLL) {
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = rx.ready() {
                    tracing::error!(error = %e, "live broker router is gone");
                    return;
                }
            }
            Ok(Some(Notification::Disconnect(..))) => {
                tracing::error!("live broker router disconnected the wattson-fwd link");
                shared.closed.store(true, Ordering::Release);
                return;
            }
            Ok(_) | Err(LinkError::RecvTimeout(_)) => {}
            Err(e) => {
                tracing::error!(error = %e, "live broker link receive failed");
                return;
            }
        }
    }
}
