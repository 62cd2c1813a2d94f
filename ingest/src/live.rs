//! The seam between durable ingest and live subscribers: accepted readings
//! and device error messages are offered to a [`LivePublisher`] after they
//! are stored. The store is the source of truth; live delivery is best
//! effort and never slows ingest down.

/// Where accepted readings and device error messages go for live
/// subscribers (the embedded broker's router, the dashboard).
pub trait LivePublisher: Send + Sync + std::fmt::Debug + 'static {
    /// Offers one message. Never blocks; returns `false` when it was dropped
    /// (the caller counts drops).
    fn publish(&self, topic: &str, payload: &[u8]) -> bool;
}

/// A publisher that delivers nothing, for a server without live subscribers.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLive;

impl LivePublisher for NoLive {
    fn publish(&self, _topic: &str, _payload: &[u8]) -> bool {
        true
    }
}

/// Offers every message to several publishers (the subscriber broker and
/// the dashboard); reports a drop when any of them dropped it.
#[derive(Debug, Default, Clone)]
pub struct Fanout(pub Vec<std::sync::Arc<dyn LivePublisher>>);

impl LivePublisher for Fanout {
    fn publish(&self, topic: &str, payload: &[u8]) -> bool {
        let mut delivered = true;
        for target in &self.0 {
            delivered &= target.publish(topic, payload);
        }
        delivered
    }
}
