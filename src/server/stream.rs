//! A TCP stream that carries its connection's guard.
//!
//! The [`ConnGuard`] lives exactly as long as the socket: when actix-http's
//! dispatcher drops the stream (the connection is over, or the coordinator
//! asked for it to close), the guard drops with it and the DrainCoordinator
//! hears that the connection is gone.
//!
//! It also keeps [`Activity`]: whether bytes were read that no flushed write
//! has answered yet. The coordinator counts a request done when its work ends,
//! a moment *before* its response is written; the idle sweep must not close the
//! connection in that moment, so it asks the stream too.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use drainer_actors::{ConnGuard, ConnId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Whether a connection owes its client an answer, as seen at the socket.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bytes were read since the last flushed response.
    awaiting: Cell<bool>,
    /// Bytes were written since the last flush.
    wrote: Cell<bool>,
}

impl Activity {
    /// True when the client sent something that has not been answered yet.
    pub fn awaiting_response(&self) -> bool {
        self.awaiting.get()
    }
}

/// See the module documentation.
pub struct TrackedStream {
    io: TcpStream,
    /// Dropped with the socket; that drop is what tells the coordinator.
    guard: ConnGuard,
    /// Shared with the task serving this connection.
    activity: Rc<Activity>,
}

impl TrackedStream {
    /// Wraps `io`, which the `guard` was registered for.
    pub fn new(io: TcpStream, guard: ConnGuard, activity: Rc<Activity>) -> Self {
        TrackedStream {
            io,
            guard,
            activity,
        }
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
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                self.activity.awaiting.set(true);
            }
        }
        polled
    }
}

impl TrackedStream {
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                self.activity.wrote.set(true);
            }
        }
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            if self.activity.wrote.replace(false) {
                // A response went out whole: nothing is owed any more.
                self.activity.awaiting.set(false);
            }
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
