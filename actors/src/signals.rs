//! Shutdown signals as a stream.
//!
//! [`Signals::install`] registers SIGTERM, SIGINT and SIGQUIT handlers. Call it
//! first thing: once installed, a signal is queued for the Supervisor instead
//! of killing the process, however early it arrives. What each signal *means*
//! is decided in one place, the Supervisor's `command_for`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A request to shut down, from a signal (or from a test's channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: drain gracefully; repeats change nothing.
    Terminate,
    /// SIGINT: the first drains gracefully, one during a drain cuts it short.
    Interrupt,
    /// SIGQUIT: cut short at once.
    Quit,
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "SIGINT",
            ShutdownSignal::Quit => "SIGQUIT",
        })
    }
}

/// The three shutdown signals, merged. Never ends.
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside a Tokio (actix) runtime.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

impl Stream for Signals {
    type Item = ShutdownSignal;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShutdownSignal>> {
        // Quit first: when several are pending, the strongest wins.
        if let Poll::Ready(Some(())) = self.quit.poll_recv(cx) {
            return Poll::Ready(Some(ShutdownSignal::Quit));
        }
        if let Poll::Ready(Some(())) = self.int.poll_recv(cx) {
            return Poll::Ready(Some(ShutdownSignal::Interrupt));
        }
        if let Poll::Ready(Some(())) = self.term.poll_recv(cx) {
            return Poll::Ready(Some(ShutdownSignal::Terminate));
        }
        Poll::Pending
    }
}
