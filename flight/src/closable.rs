//! Connections that a shutdown can close.
//!
//! tonic's graceful shutdown waits until every call on every connection has
//! ended. A call whose client stopped reading never ends: HTTP/2 flow
//! control holds back its last messages, and the end of the stream waits
//! behind them. So each accepted socket is wrapped here, and once the grace
//! period is over, [`FlightServer::shutdown`](crate::FlightServer::shutdown)
//! fails every read and write on it, which ends hyper's connection task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

pub(crate) struct Closable {
    io: TcpStream,
    close: CancellationToken,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Closable {
    pub(crate) fn new(io: TcpStream, close: &CancellationToken) -> Closable {
        Closable {
            io,
            close: close.clone(),
            closed: Box::pin(close.clone().cancelled_owned()),
        }
    }

    /// `Err` once the server closed its connections. Otherwise registers
    /// the task, so that closing wakes an idle or stalled connection too.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.close.is_cancelled() || self.closed.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the Flight server shut down",
            ));
        }
        Ok(())
    }
}

impl Connected for Closable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Closable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Closable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
