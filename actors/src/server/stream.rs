//! A TCP stream that carries its connection's guard and its [`Activity`].
//!
//! The [`ConnGuard`] lives exactly as long as the socket: when actix-http's
//! dispatcher drops the stream (the connection is over, or the coordinator
//! asked for it to close), the guard drops with it and the DrainCoordinator
//! hears that the connection is gone.
//!
//! Every byte read and every write is told to the [`Activity`], which knows
//! what the connection owes its client and when a request has taken too long;
//! and a read is refused (without waking anyone) while the activity says the
//! client must read its answers first. This stream sits under actix-http's
//! dispatcher, which is where these bounds have to be drawn: the dispatcher
//! itself times out only a connection's first head, and wakes itself in a
//! loop while its writes are blocked.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::drain::{ConnGuard, ConnId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::activity::Activity;

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
        activity.opened(Instant::now());
        TrackedStream {
            io,
            guard,
            activity,
        }
    }

    /// What the connection is doing, for the app to tell when it answers.
    pub fn activity(&self) -> Rc<Activity> {
        self.activity.clone()
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
        let this = &mut *self;
        if this
            .activity
            .paused(|| this.io.poll_write_ready(cx).is_ready())
        {
            this.activity.park(cx.waker());
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                self.activity.read(read, Instant::now());
            }
        }
        polled
    }
}

impl TrackedStream {
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) => self.activity.wrote(*n > 0, Instant::now()),
            Poll::Pending => self.activity.wrote(false, Instant::now()),
            Poll::Ready(Err(_)) => {}
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
            self.activity.flushed(Instant::now());
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
