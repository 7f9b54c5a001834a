//! The values the drain publishes: its state, why work was cancelled, and how
//! the drain ended.

use std::fmt;

/// Why in-flight work was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// `DRAIN_TIMEOUT_MS` passed before the work finished.
    DrainTimeout,
    /// A person or an orchestrator insisted (a second SIGINT, or SIGQUIT).
    ShutdownForced,
}

impl CancelReason {
    /// The error string a client is answered with.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::DrainTimeout => "drain_timeout",
            CancelReason::ShutdownForced => "shutdown_forced",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a drain ended. It becomes the exit code in [`Outcome::exit_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every admitted request got its real answer.
    Drained,
    /// The drain was cut short by the deadline or by a signal.
    CutShort {
        /// What cut it short.
        reason: CancelReason,
        /// Requests in flight when the cut came.
        remaining: usize,
        /// Of those, how many were cancelled and answered with an error.
        cancelled: usize,
    },
}

impl Outcome {
    /// The process exit code: 0 for a completed drain, 1 for a cut one.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Drained => 0,
            Outcome::CutShort { .. } => 1,
        }
    }

    /// True when nothing was cut short.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Drained)
    }
}

/// The drain's published state, read by probes, by the drain policy
/// (`Connection: close`) and by work that watches for the cut. Admission
/// itself is decided by the coordinator's gate, never by this copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    /// Serving normally.
    Active,
    /// A drain has begun; `admitting` is true during the shutdown delay.
    Draining {
        /// Whether new work is still admitted.
        admitting: bool,
        /// Set once the drain is cut short: why. Work that has not finished
        /// sees its cancellation through this.
        cut: Option<CancelReason>,
    },
    /// The drain is over.
    Stopped,
}

impl DrainState {
    /// True only before any drain has begun.
    pub fn is_active(self) -> bool {
        matches!(self, DrainState::Active)
    }

    /// Whether new work would (probably) be admitted.
    pub fn admitting(self) -> bool {
        matches!(
            self,
            DrainState::Active
                | DrainState::Draining {
                    admitting: true,
                    ..
                }
        )
    }

    /// Why the drain was cut, once it was.
    pub fn cut(self) -> Option<CancelReason> {
        match self {
            DrainState::Draining { cut, .. } => cut,
            _ => None,
        }
    }

    /// Its name, as `drainer_drain_state` and the status lines say it.
    pub fn name(self) -> &'static str {
        match self {
            DrainState::Active => "active",
            DrainState::Draining { .. } => "draining",
            DrainState::Stopped => "stopped",
        }
    }
}

/// The answer to an admission once the drain no longer takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server_shutting_down")]
pub struct NotAdmitted;

/// What persistent connections are told, published by the DrainCoordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// Serve as usual (also during `SHUTDOWN_DELAY_MS`).
    Serving,
    /// The listener has closed: say goodbye (a WebSocket waits for its
    /// client's Close reply, counted from its own goodbye).
    Goodbye,
    /// Close now without waiting for any reply: a forced cut, or the end of
    /// `close_persistent`.
    Forced,
}
