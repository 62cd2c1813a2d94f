//! Cancelling running DoGets. Every DoGet stream is registered under its
//! caller and ticket while it runs; `CancelFlightInfo` (and Flight SQL's
//! older `CancelQuery`) stops the caller's streams of the info's tickets,
//! which then end with `CANCELLED` rather than look complete, and let go of
//! their query at once. A DoGet is registered before its query is planned,
//! so a cancel during planning counts too. Shutting down stops them all.
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
    /// Why the call must stop, once it must.
    stop: watch::Sender<Option<&'static str>>,
}

const CANCELLED: &str =
    "the query was cancelled (CancelFlightInfo); the rows sent so far are not the whole result";
const SHUTTING_DOWN: &str =
    "the server is shutting down; the rows sent so far are not the whole result";

impl Running {
    /// Registers a DoGet before its query is planned, so that a cancel
    /// during planning stops it too.
    pub(crate) fn register(self: &Arc<Self>, user: &str, ticket: Bytes) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(None);
        self.calls.lock().insert(
            id,
            Call {
                user: user.to_owned(),
                ticket,
                stop,
            },
        );
        Registration {
            stopped,
            registered: Registered {
                running: self.clone(),
                id,
            },
        }
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
                call.stop.send_replace(Some(CANCELLED));
                stopped += 1;
            }
        }
        stopped
    }

    /// Stops every DoGet: the server is shutting down.
    pub(crate) fn stop_all(&self) {
        for call in self.calls.lock().values() {
            call.stop.send_replace(Some(SHUTTING_DOWN));
        }
    }
}

/// A registered DoGet whose stream is being made.
pub(crate) struct Registration {
    stopped: watch::Receiver<Option<&'static str>>,
    registered: Registered,
}

impl Registration {
    /// Runs `make` (the planning) unless the call is stopped first, then
    /// wraps its stream so that a stop ends it.
    pub(crate) async fn run<F>(self, make: F) -> Result<BoxStream<FlightData>, Status>
    where
        F: Future<Output = Result<BoxStream<FlightData>, Status>>,
    {
        let mut stopped = self.stopped.clone();
        let inner = tokio::select! {
            made = make => made?,
            why = stop_reason(&mut stopped) => return Err(Status::cancelled(why)),
        };
        Ok(Box::pin(Tracked {
            inner,
            stopped: Box::pin(async move { stop_reason(&mut stopped).await }),
            registered: Some(self.registered),
        }))
    }
}

/// Waits until the call must stop; never returns if it never must.
async fn stop_reason(stopped: &mut watch::Receiver<Option<&'static str>>) -> &'static str {
    let why = stopped
        .wait_for(Option::is_some)
        .await
        .ok()
        .map(|why| why.unwrap_or(CANCELLED));
    match why {
        Some(why) => why,
        // The sender lives in the registry as long as the registration.
        None => futures::future::pending().await,
    }
}

/// Removes its call from [`Running`] when dropped.
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
    stopped: Pin<Box<dyn Future<Output = &'static str> + Send>>,
    /// `None` once the stream has ended or was stopped.
    registered: Option<Registered>,
}

impl Tracked {
    /// Lets go of the query at once, whether or not the client reads on.
    fn finish(&mut self) {
        self.inner = Box::pin(futures::stream::empty());
        self.registered = None;
    }
}

impl Stream for Tracked {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.registered.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(why) = self.stopped.as_mut().poll(cx) {
            self.finish();
            return Poll::Ready(Some(Err(Status::cancelled(why))));
        }
        let next = self.inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None)) {
            self.finish();
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

    async fn track(
        running: &Arc<Running>,
        ticket: &'static [u8],
        n: usize,
    ) -> BoxStream<FlightData> {
        let registration = running.register("ana", Bytes::from_static(ticket));
        registration
            .run(async move { Ok(frames(n)) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_call_is_registered_until_its_stream_ends_or_goes() {
        let running = Arc::new(Running::default());
        let mut ended = track(&running, b"t", 3).await;
        assert_eq!(running.calls.lock().len(), 1);
        assert_eq!(ended.by_ref().count().await, 3);
        assert!(running.calls.lock().is_empty(), "ended, still held");
        drop(track(&running, b"t", 3).await);
        assert!(running.calls.lock().is_empty(), "dropped");
    }

    #[tokio::test]
    async fn cancel_matches_user_and_ticket_and_lets_go_at_once() {
        let running = Arc::new(Running::default());
        let mut a = track(&running, b"a", 100).await;
        let mut b = track(&running, b"b", 100).await;
        assert!(a.next().await.unwrap().is_ok());
        assert_eq!(running.cancel("bob", &info(b"a")), 0);
        assert_eq!(running.cancel("ana", &info(b"a")), 1);
        let status = a.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Cancelled);
        assert_eq!(
            running.calls.lock().len(),
            1,
            "a's call is gone before a goes"
        );
        assert!(a.next().await.is_none());
        assert_eq!(b.by_ref().count().await, 100);
    }

    #[tokio::test]
    async fn a_cancel_during_planning_stops_the_call() {
        let running = Arc::new(Running::default());
        let registration = running.register("ana", Bytes::from_static(b"slow"));
        let planning = registration.run(futures::future::pending());
        let cancel = async {
            tokio::task::yield_now().await;
            running.cancel("ana", &info(b"slow"))
        };
        let (made, stopped) = tokio::join!(planning, cancel);
        assert_eq!(stopped, 1);
        assert_eq!(made.err().unwrap().code(), tonic::Code::Cancelled);
        assert!(running.calls.lock().is_empty());
    }

    #[tokio::test]
    async fn stop_all_says_the_server_is_shutting_down() {
        let running = Arc::new(Running::default());
        let mut a = track(&running, b"a", 100).await;
        running.stop_all();
        let status = a.next().await.unwrap().unwrap_err();
        assert!(status.message().contains("shutting down"), "{status}");
    }
}
