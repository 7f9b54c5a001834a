//! What can begin or change a shutdown, and the one table of what each does.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::signals::ShutdownSignal;

/// What began a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A signal (SIGTERM, SIGINT, SIGQUIT).
    Signal(ShutdownSignal),
    /// A prestop hook (`POST /admin/prestop`, or [`crate::Handle::prestop`]).
    PreStop,
    /// A transport's own protocol asked for a drain (stdin's `tcp_shutdown`).
    ProtocolDrain,
    /// A transport's input ended (stdin closed).
    EndOfInput,
    /// An embedder or a test asked through a [`crate::Handle`].
    Requested,
    /// A successor took the listeners over ([`crate::handoff`]): a drain
    /// without the delay and without readiness turning 503.
    Takeover {
        /// The successor's pid.
        successor: u32,
    },
}

impl Trigger {
    /// The successor's pid, when a takeover began the shutdown.
    pub fn successor(self) -> Option<u32> {
        match self {
            Trigger::Takeover { successor } => Some(successor),
            _ => None,
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Signal(signal) => write!(f, "{signal}"),
            Trigger::PreStop => f.write_str("prestop"),
            Trigger::ProtocolDrain => f.write_str("protocol drain"),
            Trigger::EndOfInput => f.write_str("end of input"),
            Trigger::Requested => f.write_str("requested"),
            Trigger::Takeover { .. } => f.write_str("takeover"),
        }
    }
}

/// What a request to stop asks for, whatever its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Drain gracefully (SIGTERM, a first SIGINT, [`crate::Handle::drain`]).
    Drain,
    /// Insist (SIGQUIT, [`crate::Handle::force`]).
    Force,
    /// A second interrupt: insist if a drain is under way, drain otherwise.
    Interrupt,
}

impl From<ShutdownSignal> for Ask {
    fn from(signal: ShutdownSignal) -> Ask {
        match signal {
            ShutdownSignal::Terminate => Ask::Drain,
            ShutdownSignal::Interrupt => Ask::Interrupt,
            ShutdownSignal::Quit => Ask::Force,
        }
    }
}

/// What the Supervisor does about an [`Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Begin (or continue) the graceful drain.
    Drain,
    /// Cut the drain: cancel the work and skip the waits that remain.
    Force,
    /// A drain is already under way: nothing more.
    Ignore,
}

/// The one place that maps a request to what it does (docs/operations.md's signal table).
/// `exiting`: something has already asked the process to exit.
pub fn command_for(ask: Ask, exiting: bool) -> Command {
    match (ask, exiting) {
        (Ask::Drain | Ask::Interrupt, false) => Command::Drain,
        (Ask::Drain, true) => Command::Ignore,
        (Ask::Interrupt, true) | (Ask::Force, _) => Command::Force,
    }
}

/// What one shutdown is asked to do; fixed by its first trigger, handed to
/// every phase in its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownOrder {
    /// What began it.
    pub trigger: Trigger,
    /// When the drain began.
    pub began: Instant,
    /// How long to keep serving from `began`.
    pub delay: Duration,
    /// How long in-flight work may run once admission stops.
    pub drain_timeout: Duration,
}

/// When the process exits once the shutdown is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitRule {
    /// A signal asked: the outcome decides the code.
    Outcome,
    /// The input ended: always 0.
    Zero,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_table() {
        use ShutdownSignal::*;
        let command = |s: ShutdownSignal, exiting| command_for(Ask::from(s), exiting);
        assert_eq!(command(Terminate, false), Command::Drain);
        assert_eq!(command(Interrupt, false), Command::Drain);
        assert_eq!(command(Quit, false), Command::Force);
        assert_eq!(command(Terminate, true), Command::Ignore);
        assert_eq!(command(Interrupt, true), Command::Force);
        assert_eq!(command(Quit, true), Command::Force);
    }

    #[test]
    fn triggers_read_as_the_report_line_says_them() {
        assert_eq!(
            Trigger::Signal(ShutdownSignal::Terminate).to_string(),
            "SIGTERM"
        );
        assert_eq!(Trigger::PreStop.to_string(), "prestop");
        assert_eq!(Trigger::ProtocolDrain.to_string(), "protocol drain");
        assert_eq!(Trigger::EndOfInput.to_string(), "end of input");
    }
}
