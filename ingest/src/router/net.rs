//! The people's listener: rumqttd's `Server<V4>` on a thread of its own
//! with a current-thread tokio runtime.
//!
//! Why a runtime of our own: `Server::start` spawns a detached task per
//! connection and has no stop call. Dropping the runtime that runs those
//! tasks is the only way to close people's connections at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;

use rumqttd::protocol::v4::V4;
use rumqttd::{LinkType, Server};
use tokio::sync::oneshot;

use crate::{Error, Result};

/// Binds and releases `addr`, for a clear error before anything starts.
pub(super) fn probe_bind(addr: SocketAddr) -> Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| Error::LiveListen {
            addr,
            reason: e.to_string(),
        })
}

/// The listener thread and the means to stop it.
#[derive(Debug)]
pub(super) struct NetThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    listening: Arc<AtomicBool>,
}

impl NetThread {
    /// Starts listening on `server`'s address; returns once the socket is
    /// bound (or failed to bind).
    pub(super) fn start(mut server: Server<V4>, addr: SocketAddr) -> Result<Self> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let listening = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&listening);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("wattson-live-net")
            .build()
            .map_err(|e| Error::LiveBroker(format!("cannot build the listener runtime: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("wattson-live-net".to_owned())
            .spawn(move || {
                runtime.block_on(serve(&mut server, addr, stop_rx, ready_tx, &flag));
                flag.store(false, Ordering::Release);
                // Dropping the runtime drops every connection task, which
                // closes the people's sockets.
                drop(runtime);
            })
            .map_err(|e| Error::LiveBroker(format!("cannot spawn the listener thread: {e}")))?;
        let mut net = NetThread {
            stop: Some(stop_tx),
            thread: Some(thread),
            listening,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(net),
            Ok(Err(e)) => {
                net.shutdown();
                Err(e)
            }
            Err(_) => {
                net.shutdown();
                Err(Error::LiveBroker(
                    "the listener thread ended before it was ready".to_owned(),
                ))
            }
        }
    }

    pub(super) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Stops accepting, closes all people's connections, joins the thread.
    /// Idempotent.
    pub(super) fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            // Err only if the thread already ended; joining is still right.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the live broker listener thread panicked");
        }
    }
}

async fn serve(
    server: &mut Server<V4>,
    addr: SocketAddr,
    stop: oneshot::Receiver<()>,
    ready: mpsc::SyncSender<Result<()>>,
    listening: &AtomicBool,
) {
    let mut accept = pin!(server.start(LinkType::Remote));
    // rumqttd binds at the start of `start` and only then awaits accepts,
    // so the first poll tells whether the bind worked. Polled with the
    // task's own context, so no wake-up is lost.
    let first = std::future::poll_fn(|cx| Poll::Ready(accept.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        let reason = match result {
            Err(e) => e.to_string(),
            Ok(()) => "the listener stopped at once".to_owned(),
        };
        // The receiver waits in `start`; if it is gone nobody needs this.
        let _ = ready.send(Err(Error::LiveListen { addr, reason }));
        return;
    }
    listening.store(true, Ordering::Release);
    let _ = ready.send(Ok(()));
    tokio::select! {
        result = accept => {
            tracing::error!(?result, %addr, "live broker listener stopped; people cannot connect");
        }
        // A send or a dropped sender: both mean stop.
        _ = stop => {}
    }
}
