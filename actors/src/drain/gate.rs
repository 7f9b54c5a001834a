//! Admission without a mailbox: the in-flight count as one atomic word.
//!
//! The coordinator owns the [`Gate`]; every request asks it for a [`Permit`]
//! through an [`Admission`] handle, on whichever thread serves it, without a
//! message. The word holds the count and a `CLOSED` bit:
//!
//! - admitting is a compare-and-swap that adds one unless `CLOSED` is set;
//! - closing sets `CLOSED` and reads the count in the same atomic step, so
//!   once the coordinator has seen zero, nothing can be admitted again;
//! - dropping a permit subtracts one; the permit that takes a closed or
//!   watched gate to zero tells the coordinator (a message only while a drain
//!   waits for zero, never per request while serving).
//!
//! The counters a drain reports (answered during the drain, cancelled after
//! the cut) are atomics beside the word, written before the count goes down.

use std::fmt;
use std::future::pending;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::state::{CancelReason, DrainState, NotAdmitted};

const CLOSED: u64 = 1 << 63;
/// Set once the listener is closing: the coordinator wants to hear of every
/// return to zero (the gate stays open for requests on open connections).
const WATCHED: u64 = 1 << 62;
/// The count's bits.
const COUNT: u64 = !(CLOSED | WATCHED);

/// No cut yet, in [`Gate::cut`].
const NO_CUT: u8 = 0;

/// The count, the flags and the counters of one drain.
pub(crate) struct Gate {
    word: AtomicU64,
    /// Set when the drain begins: answered work is counted as completed, and
    /// responses carry `Connection: close`.
    draining: AtomicBool,
    completed_in_drain: AtomicUsize,
    cancelled: AtomicUsize,
    /// The cut's reason once there was one (kept after the state is Stopped).
    cut: AtomicU8,
    /// Admissions so far, counted only while debug logging is on.
    admitted: AtomicU64,
    /// Of the requests in flight, those parked in a long-poll: answered
    /// "nothing yet" at a forced cut, so not counted as cut.
    parked: AtomicUsize,
    /// The published state, which permits watch for the cut.
    state: watch::Receiver<DrainState>,
    /// Told once a closed gate's count reaches zero.
    emptied: mpsc::UnboundedSender<()>,
    /// How long work past its safe point may run after a cut.
    grace: Duration,
}

impl Gate {
    pub(crate) fn new(
        state: watch::Receiver<DrainState>,
        emptied: mpsc::UnboundedSender<()>,
        grace: Duration,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            word: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            completed_in_drain: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            cut: AtomicU8::new(NO_CUT),
            admitted: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            state,
            emptied,
            grace,
        })
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        usize::try_from(self.word.load(Ordering::Acquire) & COUNT).unwrap_or(usize::MAX)
    }

    /// From now on every return to zero is told; answers how many are in
    /// flight (read in the same atomic step).
    pub(crate) fn watch(&self) -> usize {
        let before = self.word.fetch_or(WATCHED, Ordering::AcqRel);
        usize::try_from(before & COUNT).unwrap_or(usize::MAX)
    }

    /// Stops admission (once and for all); answers how many are in flight.
    pub(crate) fn close(&self) -> usize {
        let before = self.word.fetch_or(CLOSED, Ordering::AcqRel);
        usize::try_from(before & COUNT).unwrap_or(usize::MAX)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// From now on, answered work counts as completed during the drain.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Remembers the cut's reason for permits that look after the drain is over.
    pub(crate) fn record_cut(&self, reason: CancelReason) {
        let code = match reason {
            CancelReason::DrainTimeout => 1,
            CancelReason::ShutdownForced => 2,
        };
        let _ = self
            .cut
            .compare_exchange(NO_CUT, code, Ordering::AcqRel, Ordering::Acquire);
    }

    fn recorded_cut(&self) -> Option<CancelReason> {
        match self.cut.load(Ordering::Acquire) {
            1 => Some(CancelReason::DrainTimeout),
            2 => Some(CancelReason::ShutdownForced),
            _ => None,
        }
    }

    /// Requests in flight parked in a long-poll.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    pub(crate) fn completed_in_drain(&self) -> usize {
        self.completed_in_drain.load(Ordering::Acquire)
    }

    pub(crate) fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// Where requests are admitted: a cheap handle on the coordinator's gate,
/// usable from any thread.
#[derive(Clone)]
pub struct Admission(pub(crate) Arc<Gate>);

impl Admission {
    /// A permit for one unit of work, or [`NotAdmitted`] once admission has stopped.
    pub fn admit(&self) -> Result<Permit, NotAdmitted> {
        let gate = &self.0;
        let mut word = gate.word.load(Ordering::Acquire);
        loop {
            if word & CLOSED != 0 {
                return Err(NotAdmitted);
            }
            match gate.word.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        if log::log_enabled!(log::Level::Debug) {
            let id = gate.admitted.fetch_add(1, Ordering::Relaxed) + 1;
            let in_flight = (word & COUNT) + 1;
            log::debug!("admitted request {id}; {in_flight} in flight");
        }
        Ok(Permit {
            gate: gate.clone(),
            cancelled: false,
            answered: false,
        })
    }

    /// Requests in flight now (a published copy; nothing decides from it).
    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    /// Whether admission has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Whether a drain has begun: a plain atomic read, without the state
    /// channel's lock (every response reads it, for `Connection: close`).
    pub fn drain_begun(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("in_flight", &self.0.in_flight())
            .field("closed", &self.0.is_closed())
            .finish()
    }
}

/// The right to run one unit of work. Dropping it counts the request down.
pub struct Permit {
    gate: Arc<Gate>,
    /// Set when the work honoured a cancellation instead of finishing.
    cancelled: bool,
    /// Set when the work's real result was given (counted in the report).
    answered: bool,
}

impl Permit {
    /// Once the request is cancelled, how long work already past its safe
    /// point (a write begun) may still run before it must be stopped: the
    /// coordinator's linger. The coordinator gives up on the work
    /// [`super::CANCEL_ALLOWANCE`] after that.
    pub fn grace(&self) -> Duration {
        self.gate.grace
    }

    /// Resolves when the drain is cut (at the drain deadline, or when a
    /// person insists); never resolves otherwise.
    pub async fn cancelled(&self) -> CancelReason {
        // A receiver of its own only when asked: most work never asks.
        let mut state = self.gate.state.clone();
        cut_of(&self.gate, &mut state).await
    }

    /// The published drain state (a receiver of its own).
    pub(crate) fn state(&self) -> watch::Receiver<DrainState> {
        self.gate.state.clone()
    }

    /// The drain's cut, if it has come (recorded before it is published).
    pub fn is_cancelled(&self) -> Option<CancelReason> {
        self.gate.recorded_cut()
    }

    /// Parks the request (a pending long-poll) until the guard drops.
    pub(crate) fn park(&self) -> Parked {
        self.gate.parked.fetch_add(1, Ordering::AcqRel);
        Parked(self.gate.clone())
    }

    /// Records that the work stopped at a safe point because it was cancelled.
    pub fn mark_cancelled(&mut self) {
        self.cancelled = true;
    }

    /// Records that the work produced its real result (a job written, a
    /// reply sent): what the shutdown report counts as completed.
    pub fn mark_answered(&mut self) {
        self.answered = true;
    }
}

/// Resolves with the cut's reason once there is one.
pub(crate) async fn cut_of(gate: &Gate, state: &mut watch::Receiver<DrainState>) -> CancelReason {
    if let Some(reason) = gate.recorded_cut() {
        return reason;
    }
    match state.wait_for(|s| s.cut().is_some()).await {
        Ok(s) => match s.cut() {
            Some(reason) => reason,
            None => pending().await,
        },
        Err(_) => match gate.recorded_cut() {
            Some(reason) => reason,
            None => pending().await,
        },
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("cancelled", &self.cancelled)
            .field("answered", &self.answered)
            .finish()
    }
}

/// A request parked in a long-poll, for as long as it lives.
pub(crate) struct Parked(Arc<Gate>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // This is the count-down: it runs on success, error, panic and when a
        // client's disconnect drops the work. The counters first, so the
        // coordinator reads them once it hears the count reached zero.
        let gate = &self.gate;
        if self.cancelled {
            gate.cancelled.fetch_add(1, Ordering::AcqRel);
        } else if self.answered && gate.draining.load(Ordering::Acquire) {
            gate.completed_in_drain.fetch_add(1, Ordering::AcqRel);
        }
        let before = gate.word.fetch_sub(1, Ordering::AcqRel);
        if before & COUNT == 1 && before & (CLOSED | WATCHED) != 0 {
            let _ = gate.emptied.send(());
        }
    }
}
