//! Shutdown signals as a stream.
//!
//! [`Signals::install`] registers SIGTERM, SIGINT and SIGQUIT handlers. Call it
//! first thing: once installed, a signal is queued for the Supervisor instead
//! of killing the process, however early it arrives. What each of those three
//! *means* is decided in one place, the Supervisor's `command_for`.
//!
//! Every other signal whose default would end the process without a word,
//! but which nobody sends to stop a service — SIGHUP (a closed terminal, an
//! ssh session ending, `logrotate`'s `kill -HUP`, a supervisor's reload) and
//! [`IGNORED`]'s others — is logged and ignored here: the process keeps
//! serving. SIGHUP does not drain: a reload is not a stop, and a service that
//! drains on every closed terminal would stop by accident. Fault signals
//! (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) and real-time signals keep their
//! defaults: a process in that state must not pretend to carry on.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use log::warn;
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

/// The signals that are logged and ignored, with their names.
pub const IGNORED: [(&str, libc::c_int); 10] = [
    ("SIGHUP", libc::SIGHUP),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGALRM", libc::SIGALRM),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
];

/// The three shutdown signals, merged; the ignored ones logged. Never ends.
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    ignored: Vec<(&'static str, Signal)>,
}

impl Signals {
    /// Installs the handlers. Must run inside a Tokio (actix) runtime.
    pub fn install() -> io::Result<Signals> {
        let ignored = IGNORED
            .iter()
            .map(|&(name, number)| Ok((name, signal(SignalKind::from_raw(number))?)))
            .collect::<io::Result<_>>()?;
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            ignored,
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
        for (name, signal) in &mut self.ignored {
            while let Poll::Ready(Some(())) = signal.poll_recv(cx) {
                warn!(
                    "{name} received: ignored, the process keeps serving \
                     (SIGTERM or SIGINT drains it, SIGQUIT cuts it short)"
                );
            }
        }
        Poll::Pending
    }
}
