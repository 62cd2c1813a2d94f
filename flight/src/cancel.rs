//! Cancelling running DoGets. Every DoGet stream is registered under its
//! caller and ticket while it runs; `CancelFlightInfo` (and Flight SQL's
//! older `CancelQuery`) stops the caller's streams of the info's tickets,
//! which then end with `CANCELLED` rather than look complete. Dropping the
//! stream stops the query behind it.
//!
//! Tickets are stateless (a statement ticket carries its SQL), so a cancel
//! does not void one: redeeming it again runs the query again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use arrow_flight::{FlightData, FlightInfo};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::bytes::Bytes;
use tokio::sync::watch;
use tonic::Status;

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The DoGets running now.
#[derive(Debug, Default)]
pub(crate) struct Running {
    next_id: AtomicU64,
    calls: Mutex<HashMap<u64, Call>>,
}

#[derive(Debug)]
struct Call {
    user: String,
    ticket: Bytes,
    stop: watch::Sender<bool>,
}

impl Running {
    /// `stream`, registered until it ends or is dropped, and stoppable by
    /// [`Running::cancel`].
    pub(crate) fn track(
        self: &Arc<Self>,
        user: &str,
        ticket: Bytes,
        stream: BoxStream<FlightData>,
    ) -> BoxStream<FlightData> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (stop, mut stopped) = watch::channel(false);
        self.calls.lock().insert(
            id,
            Call {
                user: user.to_owned(),
                ticket,
                stop,
            },
        );
        Box::pin(Tracked {
            inner: stream,
            stopped: Box::pin(async move {
                // An error means the sender is gone: never cancelled.
                if stopped.wait_for(|s| *s).await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }),
            done: false,
            _registered: Registered {
                running: self.clone(),
                id,
            },
        })
    }

    /// Stops `user`'s DoGets of the tickets in `info`; returns how many.
    pub(crate) fn cancel(&self, user: &str, info: &FlightInfo) -> usize {
        let tickets: Vec<&Bytes> = info
            .endpoint
            .iter()
            .filter_map(|e| e.ticket.as_ref())
            .map(|t| &t.ticket)
            .collect();
        let mut stopped = 0;
        for call in self.calls.lock().values() {
            if call.user == user && tickets.contains(&&call.ticket) {
                call.stop.send_replace(true);
                stopped += 1;
            }
        }
        stopped
    }
}

/// Removes its call from [`Running`] when the stream goes.
struct Registered {
    running: Arc<Running>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running.calls.lock().remove(&self.id);
    }
}

struct Tracked {
    inner: BoxStream<FlightData>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
    _registered: Registered,
}

impl Stream for Tracked {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.stopped.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Status::cancelled(
                "the query was cancelled (CancelFlightInfo); the rows sent so far are not the whole result",
            ))));
        }
        let next = self.inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None)) {
            self.done = true;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use arrow_flight::{FlightEndpoint, Ticket};

    use super::*;

    fn frames(n: usize) -> BoxStream<FlightData> {
        Box::pin(futures::stream::iter(
            (0..n).map(|_| Ok(FlightData::default())),
        ))
    }

    fn info(ticket: &'static [u8]) -> FlightInfo {
        FlightInfo::new().with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
    }

    #[tokio::test]
    async fn a_call_is_registered_while_its_stream_lives() {
        let running = Arc::new(Running::default());
        let done = running.track("ana", Bytes::from_static(b"t"), frames(3));
        assert_eq!(running.calls.lock().len(), 1);
        assert_eq!(done.collect::<Vec<_>>().await.len(), 3);
        assert!(running.calls.lock().is_empty(), "ended");
        let dropped = running.track("ana", Bytes::from_static(b"t"), frames(3));
        drop(dropped);
        assert!(running.calls.lock().is_empty(), "dropped");
    }

    #[tokio::test]
    async fn cancel_matches_user_and_ticket() {
        let running = Arc::new(Running::default());
        let mut a = running.track("ana", Bytes::from_static(b"a"), frames(100));
        let mut b = running.track("ana", Bytes::from_static(b"b"), frames(100));
        assert!(a.next().await.unwrap().is_ok());
        assert_eq!(running.cancel("bob", &info(b"a")), 0);
        assert_eq!(running.cancel("ana", &info(b"a")), 1);
        let status = a.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Cancelled);
        assert!(a.next().await.is_none());
        assert_eq!(b.by_ref().count().await, 100);
    }
}
