//! A TCP stream that carries its connection's guard.
//!
//! The [`ConnGuard`] lives exactly as long as the socket: when actix-http's
//! dispatcher drops the stream (the connection is over, or the coordinator
//! asked for it to close), the guard drops with it and the DrainCoordinator
//! hears that the connection is gone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use drainer_actors::{ConnGuard, ConnId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// See the module documentation.
pub struct TrackedStream {
    io: TcpStream,
    /// Dropped with the socket; that drop is what tells the coordinator.
    guard: ConnGuard,
}

impl TrackedStream {
    /// Wraps `io`, which the `guard` was registered for.
    pub fn new(io: TcpStream, guard: ConnGuard) -> Self {
        TrackedStream { io, guard }
    }

    /// The connection's id, for requests to pass along when they ask to be admitted.
    pub fn conn_id(&self) -> ConnId {
        self.guard.id()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
