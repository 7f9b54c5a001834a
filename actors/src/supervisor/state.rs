//! The Supervisor's shutdown state: one enum, switched in one place
//! ([`super::Supervisor`]'s `start` and `finish`), and the values the phases
//! publish as the shutdown goes on.

use tokio::sync::watch;

use crate::drain::WorkDone;
use crate::lifecycle::Lifecycle;

use super::report::Report;
use super::trigger::{ShutdownOrder, Trigger};

/// Where the shutdown is. Each variant owns what only it needs.
pub(crate) enum ShutdownState {
    /// Serving; the phases wait for the first trigger.
    Active {
        /// The registered phases, taken by the trigger.
        lifecycle: Lifecycle,
    },
    /// The phases are running.
    Draining {
        /// What the first trigger asked for.
        order: ShutdownOrder,
    },
    /// The phases are over; the actors are stopping.
    Stopped {
        /// The final figures.
        report: Report,
    },
}

impl ShutdownState {
    /// What began the shutdown, once something has.
    pub(crate) fn trigger(&self) -> Option<Trigger> {
        match self {
            ShutdownState::Active { .. } => None,
            ShutdownState::Draining { order } => Some(order.trigger),
            ShutdownState::Stopped { report } => report.trigger,
        }
    }
}

/// Milestones the phases and the coordinator publish for whoever waits on
/// them (a prestop's answer, a protocol drain's, the drain phase).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Milestones {
    /// The delay is over (a prestop answers).
    pub delay_over: bool,
    /// Admission has stopped, with this many in flight (a protocol drain answers).
    pub admission_stopped: Option<usize>,
    /// The coordinator reported the work's end.
    pub work: Option<WorkDone>,
    /// Every connection but the persistent ones has closed.
    pub quiet: bool,
    /// When the listener closed and the goodbyes went out.
    pub goodbye_at: Option<tokio::time::Instant>,
    /// The persistent connections have closed too.
    pub settled: bool,
}

/// Sets a milestone when dropped: whether its phase finished, failed or was
/// cut at its deadline, whoever waits on the milestone is answered.
pub(super) struct Mark {
    pub milestones: watch::Sender<Milestones>,
    pub set: fn(&mut Milestones),
}

impl Drop for Mark {
    fn drop(&mut self) {
        self.milestones.send_modify(self.set);
    }
}
