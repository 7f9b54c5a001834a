//! The DrainCoordinator: the one place that knows how much work is in flight,
//! which connections are open, and whether the service is Active, Draining or
//! Stopped.
//!
//! Work enters through [`Admit`], which answers with a [`Permit`] or
//! [`ShuttingDown`]. Dropping the permit is what counts the request down
//! ([`RequestFinished`]), so an error, a panic or a vanished client can never
//! leave the count stuck. Connections are tracked the same way, by a
//! [`ConnGuard`] that the transport keeps for as long as the socket lives.
//!
//! The drain itself is a sequence of messages from the Supervisor:
//! [`BeginDrain`] (health turns 503, requests still admitted during the
//! shutdown delay), [`StopAdmitting`] (the deadline timer starts),
//! [`ListenerClosed`] (idle connections are closed after a short grace) and,
//! when a person insists, [`CutShort`]. The coordinator answers with two
//! [`DrainReport`]s: `WorkDone(outcome)` the moment the count reaches zero or
//! the drain is cut, and `Quiet` once the connections that carried the answers
//! have closed.

use std::collections::HashMap;
use std::fmt;
use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle,
};
use log::{debug, info};
use tokio::sync::{mpsc, oneshot, watch};

use crate::census;
use crate::lifecycle::StopActor;
use crate::metrics::{DrainStateValue, Metrics};

// ----------------------------------------------------------------------------
// Values
// ----------------------------------------------------------------------------

/// After a cut and the linger, how long cancelled work that had passed its
/// safe point still has to say how its cancel went — a database write is
/// cancelled in PostgreSQL at the end of the linger, and its answer depends
/// on whether the cancel is confirmed — before the coordinator gives up on it.
pub const CANCEL_ALLOWANCE: Duration = Duration::from_millis(500);

/// Identifies one admitted request inside the coordinator.
pub type RequestId = u64;

/// Identifies one open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

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

/// What transports may read about the drain: a published copy of the
/// coordinator's state, used for `/health` and `Connection: close`. Admission
/// itself is always decided by [`Admit`], never by this copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving normally.
    Active,
    /// A drain has begun; `admitting` is true during the shutdown delay.
    Draining {
        /// Whether new work is still admitted.
        admitting: bool,
        /// Set once the drain is cut short: why. Transports that hold their
        /// permits themselves (stdin) answer and drop them on seeing it.
        cut: Option<CancelReason>,
    },
    /// The drain is over.
    Stopped,
}

impl Phase {
    /// True only before any drain has begun.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Active)
    }

    /// Whether new work would (probably) be admitted.
    pub fn admitting(self) -> bool {
        matches!(
            self,
            Phase::Active
                | Phase::Draining {
                    admitting: true,
                    ..
                }
        )
    }
}

/// The answer to an [`Admit`] once the drain no longer takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server_shutting_down")]
pub struct ShuttingDown;

/// What the coordinator asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Close it unless a request on it still awaits its response: the idle
    /// sweep after the listener closed. A busy connection closes itself after
    /// its answer, which carries `Connection: close`.
    IfIdle,
    /// Close it now: the hard deadline, or a forced shutdown.
    Now,
}

/// The coordinator's reports to whoever sequences the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum DrainReport {
    /// The in-flight work is over: its count reached zero, or the drain was cut.
    WorkDone(Outcome),
    /// The work is over, the listener is closed and every connection is gone.
    Quiet,
}

// ----------------------------------------------------------------------------
// Messages
// ----------------------------------------------------------------------------

/// Asks to start one unit of work; `conn` is the connection it arrived on.
#[derive(Debug, Message)]
#[rtype(result = "Result<Permit, ShuttingDown>")]
pub struct Admit {
    /// The connection carrying the request, if the transport has connections.
    pub conn: Option<ConnId>,
}

/// Sent by [`Permit`]'s `Drop`: one unit of work is over.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RequestFinished {
    id: RequestId,
    cancelled: bool,
    answered: bool,
}

/// Sent by [`ConnGuard::register`]: a connection was accepted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConnectionOpened {
    id: ConnId,
    close: mpsc::UnboundedSender<Close>,
}

/// Sent by [`ConnGuard`]'s `Drop`: a connection is gone.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    id: ConnId,
}

/// Begins the drain: health turns 503; work is still admitted until
/// [`StopAdmitting`]. Answers the number of requests in flight. Idempotent.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct BeginDrain;

/// Stops admitting work and starts the drain deadline.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopAdmitting {
    /// How long in-flight work may still run before it is cancelled.
    pub drain_timeout: Duration,
}

/// The transport has closed its listener: no new connection will come.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ListenerClosed {
    /// Connections with no request in flight are closed after this grace.
    pub idle_grace: Duration,
}

/// Cuts the drain short: every request in flight is cancelled now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CutShort {
    /// Why; this is what the cancelled requests are answered with.
    pub reason: CancelReason,
}

/// Asks for the current phase and in-flight count (for tests and status).
#[derive(Debug, Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// The answer to [`GetSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The current phase.
    pub phase: Phase,
    /// Requests in flight.
    pub in_flight: usize,
    /// Connections open.
    pub connections: usize,
    /// Requests that finished with their real result since the drain began
    /// (see [`Permit::mark_answered`]).
    pub completed_in_drain: usize,
    /// How the drain ended, once it has.
    pub outcome: Option<Outcome>,
}

// ----------------------------------------------------------------------------
// Permit and ConnGuard
// ----------------------------------------------------------------------------

/// The right to run one unit of work. Dropping it counts the request down.
pub struct Permit {
    id: RequestId,
    /// Fires if the coordinator cancels this request.
    cancel: oneshot::Receiver<CancelReason>,
    /// Where `Drop` reports completion.
    finished: Recipient<RequestFinished>,
    /// Set when the work honoured a cancellation instead of finishing.
    cancelled: bool,
    /// Set when the work's real result was given (counted in the report).
    answered: bool,
    /// Once cancelled, how long work past its safe point may still run.
    grace: Duration,
}

impl Permit {
    /// Once the request is cancelled, how long work already past its safe
    /// point (a write begun) may still run before it must be stopped: the
    /// coordinator's linger. The coordinator gives up on the work
    /// [`CANCEL_ALLOWANCE`] after that.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Resolves when the coordinator cancels this request (at the drain
    /// deadline, or when the drain is cut short); never resolves otherwise.
    pub async fn cancelled(&mut self) -> CancelReason {
        match (&mut self.cancel).await {
            Ok(reason) => reason,
            Err(_) => pending().await,
        }
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

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("id", &self.id).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // This is the count-down: it runs on success, error, panic and when a
        // client's disconnect drops the work.
        self.finished.do_send(RequestFinished {
            id: self.id,
            cancelled: self.cancelled,
            answered: self.answered,
        });
    }
}

/// Held by a transport for as long as one connection lives.
pub struct ConnGuard {
    id: ConnId,
    closed: Recipient<ConnectionClosed>,
}

impl ConnGuard {
    /// Registers a new connection. The receiver tells the transport when the
    /// coordinator wants the connection closed (see [`Close`]); the transport
    /// then drops the socket, and the guard with it.
    pub fn register(
        coordinator: &Addr<DrainCoordinator>,
    ) -> (ConnGuard, mpsc::UnboundedReceiver<Close>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = ConnId(NEXT.fetch_add(1, Ordering::Relaxed));
        let (close, close_rx) = mpsc::unbounded_channel();
        coordinator.do_send(ConnectionOpened { id, close });
        let guard = ConnGuard {
            id,
            closed: coordinator.clone().recipient(),
        };
        (guard, close_rx)
    }

    /// The connection's id, to pass along with [`Admit`].
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnGuard").field(&self.id).finish()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.closed.do_send(ConnectionClosed { id: self.id });
    }
}

// ----------------------------------------------------------------------------
// The actor
// ----------------------------------------------------------------------------

/// The drain state machine. Each variant owns what only it needs.
#[derive(Debug)]
enum DrainState {
    Active,
    Draining(Drain),
    Stopped(Outcome),
}

#[derive(Debug)]
struct Drain {
    /// When the drain began (for the log).
    since: Instant,
    /// True during the shutdown delay: work is still admitted.
    admitting: bool,
    /// The drain deadline, armed when admission stops.
    deadline: Option<SpawnHandle>,
    /// Set once the drain has been cut short.
    cut: Option<Cut>,
}

#[derive(Debug)]
struct Cut {
    reason: CancelReason,
    /// In flight when the cut came.
    remaining: usize,
    /// Cancelled requests that have reported back.
    cancelled: usize,
    /// Gives up on work that does not stop (a write that hangs).
    give_up: SpawnHandle,
}

/// One admitted request.
#[derive(Debug)]
struct InFlight {
    conn: Option<ConnId>,
    /// Taken when the request is cancelled.
    cancel: Option<oneshot::Sender<CancelReason>>,
}

/// One open connection.
#[derive(Debug)]
struct Connection {
    /// Requests admitted on it and not yet finished.
    requests: usize,
    /// Tells the transport to close it.
    close: mpsc::UnboundedSender<Close>,
}

/// See the module documentation.
pub struct DrainCoordinator {
    state: DrainState,
    /// The in-flight work. Its length is *the* in-flight count.
    requests: HashMap<RequestId, InFlight>,
    /// The open connections.
    connections: HashMap<ConnId, Connection>,
    next_request: RequestId,
    /// Whether the transport has closed its listener.
    listener_closed: bool,
    /// Whether `Quiet` has been reported (it is reported once).
    quiet: bool,
    /// Set by a cut: idle connections are closed without the grace.
    hurry: bool,
    /// How long, after the work is done, connections may take to close before
    /// they are closed for them (a client that will not read its answer).
    linger: Duration,
    /// The hard deadline for connections, armed when the work is done.
    linger_timer: Option<SpawnHandle>,
    /// The published copy of the phase.
    phase: watch::Sender<Phase>,
    /// Who sequences the shutdown.
    report_to: Recipient<DrainReport>,
    /// Requests that finished with their real answer since the drain began.
    completed_in_drain: usize,
    /// Where the in-flight count and the state are published for `/metrics`.
    metrics: Option<Metrics>,
}

impl DrainCoordinator {
    /// A coordinator that reports to `report_to` and gives connections `linger`
    /// to close once the work is done.
    pub fn new(report_to: Recipient<DrainReport>, linger: Duration) -> Self {
        let (phase, _) = watch::channel(Phase::Active);
        DrainCoordinator {
            state: DrainState::Active,
            requests: HashMap::new(),
            connections: HashMap::new(),
            next_request: 1,
            listener_closed: false,
            quiet: false,
            hurry: false,
            linger,
            linger_timer: None,
            phase,
            report_to,
            completed_in_drain: 0,
            metrics: None,
        }
    }

    /// Publishes the in-flight gauge, the drain state and the forced closes to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn publish_in_flight(&self) {
        if let Some(m) = &self.metrics {
            m.set_in_flight(self.requests.len());
        }
    }

    /// A receiver of the published phase; take it before starting the actor.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    fn current_phase(&self) -> Phase {
        match &self.state {
            DrainState::Active => Phase::Active,
            DrainState::Draining(d) => Phase::Draining {
                admitting: d.admitting,
                cut: d.cut.as_ref().map(|c| c.reason),
            },
            DrainState::Stopped(_) => Phase::Stopped,
        }
    }

    fn publish(&self) {
        let phase = self.current_phase();
        if let Some(m) = &self.metrics {
            m.set_drain_state(match phase {
                Phase::Active => DrainStateValue::Active,
                Phase::Draining { .. } => DrainStateValue::Draining,
                Phase::Stopped => DrainStateValue::Stopped,
            });
        }
        self.phase.send_replace(phase);
    }

    /// Active → Draining (admitting). Does nothing in any other state.
    fn begin(&mut self) {
        if let DrainState::Active = self.state {
            info!("drain begun with {} in flight", self.requests.len());
            self.state = DrainState::Draining(Drain {
                since: Instant::now(),
                admitting: true,
                deadline: None,
                cut: None,
            });
            self.publish();
        }
    }

    /// Stops admission and arms the deadline (once).
    fn stop_admitting(&mut self, drain_timeout: Duration, ctx: &mut Context<Self>) {
        self.begin();
        if let DrainState::Draining(d) = &mut self.state {
            if d.admitting {
                d.admitting = false;
                // A zero timeout cuts right here, before anyone is answered,
                // so the cut is visible to whoever asked for the drain.
                if !drain_timeout.is_zero() {
                    d.deadline = Some(ctx.run_later(drain_timeout, |act, ctx| {
                        act.cut_short(CancelReason::DrainTimeout, ctx)
                    }));
                }
                info!(
                    "no longer admitting; {} in flight, deadline in {} ms",
                    self.requests.len(),
                    drain_timeout.as_millis()
                );
                self.publish();
                if drain_timeout.is_zero() {
                    self.cut_short(CancelReason::DrainTimeout, ctx);
                    return;
                }
            }
        }
        self.check_work_done(ctx);
    }

    /// Cancels every request in flight (once). With nothing in flight there
    /// is nothing to cut: the drain simply completes.
    fn cut_short(&mut self, reason: CancelReason, ctx: &mut Context<Self>) {
        if let DrainState::Stopped(_) = self.state {
            // The work is over; only connections remain: close them now.
            if !self.quiet {
                info!("cut short while connections close: closing them now");
                self.force_quiet(ctx);
            }
            return;
        }
        self.begin();
        let remaining = self.requests.len();
        // Whatever the work, a cut means no grace for idle connections.
        self.hurry = true;
        if remaining == 0 {
            if let DrainState::Draining(d) = &mut self.state {
                d.admitting = false;
            }
            self.publish();
            if self.listener_closed {
                self.close_idle();
            }
            self.check_work_done(ctx);
            return;
        }
        if let DrainState::Draining(d) = &mut self.state {
            if d.cut.is_some() {
                return;
            }
            d.admitting = false;
            if let Some(deadline) = d.deadline.take() {
                ctx.cancel_future(deadline);
            }
            let give_up =
                ctx.run_later(self.linger + CANCEL_ALLOWANCE, |act, ctx| act.give_up(ctx));
            d.cut = Some(Cut {
                reason,
                remaining,
                cancelled: 0,
                give_up,
            });
            info!("drain cut short ({reason}): cancelling {remaining} in flight");
            for request in self.requests.values_mut() {
                if let Some(cancel) = request.cancel.take() {
                    let _ = cancel.send(reason);
                }
            }
            self.publish();
            if self.listener_closed {
                self.close_idle();
            }
        }
        self.check_work_done(ctx);
    }

    /// Work that ignored its cancellation for `linger` and the allowance is abandoned.
    fn give_up(&mut self, ctx: &mut Context<Self>) {
        if let DrainState::Draining(Drain { cut: Some(cut), .. }) = &self.state {
            let outcome = Outcome::CutShort {
                reason: cut.reason,
                remaining: cut.remaining,
                cancelled: cut.cancelled,
            };
            info!(
                "giving up on {} request(s) that did not stop",
                self.requests.len()
            );
            self.finish(outcome, ctx);
        }
    }

    /// Draining with admission stopped and nothing in flight → Stopped.
    fn check_work_done(&mut self, ctx: &mut Context<Self>) {
        let outcome = match &self.state {
            DrainState::Draining(d) if !d.admitting && self.requests.is_empty() => match &d.cut {
                None => Outcome::Drained,
                Some(cut) => Outcome::CutShort {
                    reason: cut.reason,
                    remaining: cut.remaining,
                    cancelled: cut.cancelled,
                },
            },
            _ => return,
        };
        self.finish(outcome, ctx);
    }

    fn finish(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        let old = std::mem::replace(&mut self.state, DrainState::Stopped(outcome));
        if let DrainState::Draining(d) = old {
            if let Some(deadline) = d.deadline {
                ctx.cancel_future(deadline);
            }
            if let Some(cut) = d.cut {
                ctx.cancel_future(cut.give_up);
            }
            info!(
                "drain over after {} ms: {outcome:?}",
                d.since.elapsed().as_millis()
            );
            if let Some(m) = &self.metrics {
                m.set_drain_duration(d.since.elapsed());
            }
        }
        self.publish();
        self.report_to.do_send(DrainReport::WorkDone(outcome));
        self.linger_timer = Some(ctx.run_later(self.linger, |act, ctx| act.force_quiet(ctx)));
        self.check_quiet(ctx);
    }

    /// Past the hard deadline: close whatever is still open and report.
    fn force_quiet(&mut self, ctx: &mut Context<Self>) {
        self.linger_timer = None;
        if !self.connections.is_empty() {
            info!(
                "closing {} connection(s) still open past the deadline",
                self.connections.len()
            );
        }
        for conn in self.connections.values() {
            let _ = conn.close.send(Close::Now);
        }
        if let Some(m) = &self.metrics {
            m.force_closed(self.connections.len());
        }
        self.listener_closed = true;
        self.report_quiet(ctx);
    }

    fn check_quiet(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.state, DrainState::Stopped(_))
            && self.listener_closed
            && self.connections.is_empty()
        {
            self.report_quiet(ctx);
        }
    }

    fn report_quiet(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.linger_timer.take() {
            ctx.cancel_future(timer);
        }
        if !self.quiet {
            self.quiet = true;
            self.report_to.do_send(DrainReport::Quiet);
        }
    }

    /// Asks every connection with no request in flight to close if idle.
    fn close_idle(&mut self) {
        let mut asked = 0;
        for conn in self.connections.values() {
            if conn.requests == 0 {
                let _ = conn.close.send(Close::IfIdle);
                asked += 1;
            }
        }
        if asked > 0 {
            info!("closing {asked} idle connection(s)");
        }
    }
}

impl Actor for DrainCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        census::actor_started();
        // Every request asks to be admitted: give bursts room.
        ctx.set_mailbox_capacity(4096);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        census::actor_stopped();
    }
}

// ----------------------------------------------------------------------------
// Handlers
// ----------------------------------------------------------------------------

impl Handler<Admit> for DrainCoordinator {
    type Result = Result<Permit, ShuttingDown>;

    /// Admits while active or during the shutdown delay; never after.
    fn handle(&mut self, msg: Admit, ctx: &mut Context<Self>) -> Self::Result {
        if !self.current_phase().admitting() {
            return Err(ShuttingDown);
        }
        let id = self.next_request;
        self.next_request += 1;
        let (cancel, cancel_rx) = oneshot::channel();
        self.requests.insert(
            id,
            InFlight {
                conn: msg.conn,
                cancel: Some(cancel),
            },
        );
        if let Some(conn) = msg.conn.and_then(|c| self.connections.get_mut(&c)) {
            conn.requests += 1;
        }
        debug!("admitted request {id}; {} in flight", self.requests.len());
        self.publish_in_flight();
        Ok(Permit {
            id,
            cancel: cancel_rx,
            finished: ctx.address().recipient(),
            cancelled: false,
            answered: false,
            grace: self.linger,
        })
    }
}

impl Handler<RequestFinished> for DrainCoordinator {
    type Result = ();

    /// Counts one request down; the last one ends the drain.
    fn handle(&mut self, msg: RequestFinished, ctx: &mut Context<Self>) {
        let Some(request) = self.requests.remove(&msg.id) else {
            return;
        };
        if let Some(conn) = request.conn.and_then(|c| self.connections.get_mut(&c)) {
            conn.requests = conn.requests.saturating_sub(1);
        }
        if msg.cancelled {
            if let DrainState::Draining(Drain { cut: Some(cut), .. }) = &mut self.state {
                cut.cancelled += 1;
            }
        } else if msg.answered && !matches!(self.state, DrainState::Active) {
            self.completed_in_drain += 1;
        }
        self.publish_in_flight();
        self.check_work_done(ctx);
    }
}

impl Handler<ConnectionOpened> for DrainCoordinator {
    type Result = ();

    /// Remembers a connection (and how to close it).
    fn handle(&mut self, msg: ConnectionOpened, _: &mut Context<Self>) {
        self.connections.insert(
            msg.id,
            Connection {
                requests: 0,
                close: msg.close,
            },
        );
    }
}

impl Handler<ConnectionClosed> for DrainCoordinator {
    type Result = ();

    /// Forgets a connection; the last one may make the service quiet.
    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Context<Self>) {
        self.connections.remove(&msg.id);
        self.check_quiet(ctx);
    }
}

impl Handler<BeginDrain> for DrainCoordinator {
    type Result = usize;

    /// Active → Draining; later calls change nothing.
    fn handle(&mut self, _: BeginDrain, _: &mut Context<Self>) -> usize {
        self.begin();
        self.requests.len()
    }
}

impl Handler<StopAdmitting> for DrainCoordinator {
    type Result = ();

    /// Ends admission and arms the deadline.
    fn handle(&mut self, msg: StopAdmitting, ctx: &mut Context<Self>) {
        self.stop_admitting(msg.drain_timeout, ctx);
    }
}

impl Handler<ListenerClosed> for DrainCoordinator {
    type Result = ();

    /// Arms the idle-connection grace.
    fn handle(&mut self, msg: ListenerClosed, ctx: &mut Context<Self>) {
        if self.listener_closed {
            return;
        }
        self.listener_closed = true;
        if self.hurry {
            // Cut short: no grace for idle connections.
            self.close_idle();
        } else {
            ctx.run_later(msg.idle_grace, |act, _| act.close_idle());
        }
        self.check_quiet(ctx);
    }
}

impl Handler<CutShort> for DrainCoordinator {
    type Result = ();

    /// Cancels everything in flight now.
    fn handle(&mut self, msg: CutShort, ctx: &mut Context<Self>) {
        self.cut_short(msg.reason, ctx);
    }
}

impl Handler<StopActor> for DrainCoordinator {
    type Result = ();

    /// The process is exiting: stop.
    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<GetSnapshot> for DrainCoordinator {
    type Result = actix::MessageResult<GetSnapshot>;

    /// Reports the phase and counts.
    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(Snapshot {
            phase: self.current_phase(),
            in_flight: self.requests.len(),
            connections: self.connections.len(),
            completed_in_drain: self.completed_in_drain,
            outcome: match self.state {
                DrainState::Stopped(outcome) => Some(outcome),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the coordinator's reports.
    struct Recorder(Arc<Mutex<Vec<DrainReport>>>);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<DrainReport> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: DrainReport, _: &mut Context<Self>) {
            self.0.lock().expect("recorder lock").push(msg);
        }
    }

    struct Harness {
        coordinator: Addr<DrainCoordinator>,
        reports: Arc<Mutex<Vec<DrainReport>>>,
        phase: watch::Receiver<Phase>,
    }

    const LINGER: Duration = Duration::from_millis(1000);

    fn start() -> Harness {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder(reports.clone()).start();
        let coordinator = DrainCoordinator::new(recorder.recipient(), LINGER);
        let phase = coordinator.subscribe();
        Harness {
            coordinator: coordinator.start(),
            reports,
            phase,
        }
    }

    impl Harness {
        async fn admit(&self) -> Result<Permit, ShuttingDown> {
            self.coordinator
                .send(Admit { conn: None })
                .await
                .expect("coordinator alive")
        }
        async fn snapshot(&self) -> Snapshot {
            self.coordinator
                .send(GetSnapshot)
                .await
                .expect("coordinator alive")
        }
        /// Lets queued messages (permit drops, reports) be handled.
        async fn settle(&self) {
            for _ in 0..3 {
                self.snapshot().await;
                tokio::task::yield_now().await;
            }
        }
        fn reports(&self) -> Vec<DrainReport> {
            self.reports.lock().expect("recorder lock").clone()
        }
        async fn begin_drain(&self) -> usize {
            self.coordinator
                .send(BeginDrain)
                .await
                .expect("coordinator alive")
        }
        async fn stop_admitting(&self, drain_timeout: Duration) {
            self.coordinator
                .send(StopAdmitting { drain_timeout })
                .await
                .expect("coordinator alive")
        }
        async fn cut(&self, reason: CancelReason) {
            self.coordinator
                .send(CutShort { reason })
                .await
                .expect("coordinator alive")
        }
        async fn listener_closed(&self, idle_grace: Duration) {
            self.coordinator
                .send(ListenerClosed { idle_grace })
                .await
                .expect("coordinator alive")
        }
    }

    #[actix_rt::test]
    async fn admits_while_active_and_counts_permits() {
        let h = start();
        let a = h.admit().await.expect("admitted");
        let b = h.admit().await.expect("admitted");
        assert_eq!(h.snapshot().await.in_flight, 2);
        drop(a);
        h.settle().await;
        assert_eq!(h.snapshot().await.in_flight, 1);
        drop(b);
        h.settle().await;
        assert_eq!(h.snapshot().await.in_flight, 0);
        assert_eq!(h.snapshot().await.phase, Phase::Active);
        assert!(h.reports().is_empty());
    }

    #[actix_rt::test]
    async fn admits_during_delay_rejects_after() {
        let h = start();
        assert_eq!(h.begin_drain().await, 0);
        assert_eq!(
            *h.phase.borrow(),
            Phase::Draining {
                admitting: true,
                cut: None
            }
        );
        let during_delay = h.admit().await.expect("admitted during the delay");
        h.stop_admitting(Duration::from_secs(30)).await;
        assert_eq!(
            *h.phase.borrow(),
            Phase::Draining {
                admitting: false,
                cut: None
            }
        );
        assert_eq!(h.admit().await.unwrap_err(), ShuttingDown);
        assert!(h.reports().is_empty(), "work still in flight");
        drop(during_delay);
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
        assert_eq!(*h.phase.borrow(), Phase::Stopped);
        assert_eq!(h.admit().await.unwrap_err(), ShuttingDown);
    }

    #[actix_rt::test]
    async fn finishes_on_last_permit_drop_then_quiet_when_listener_closed() {
        let h = start();
        let a = h.admit().await.unwrap();
        let b = h.admit().await.unwrap();
        h.begin_drain().await;
        h.stop_admitting(Duration::from_secs(30)).await;
        drop(a);
        h.settle().await;
        assert!(h.reports().is_empty(), "one request still in flight");
        drop(b);
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
        h.listener_closed(Duration::from_millis(100)).await;
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::Drained), DrainReport::Quiet]
        );
    }

    #[actix_rt::test]
    async fn empty_drain_finishes_at_once() {
        let h = start();
        h.begin_drain().await;
        h.stop_admitting(Duration::from_secs(30)).await;
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
    }

    #[actix_rt::test]
    async fn deadline_cancels_stragglers() {
        tokio::time::pause();
        let h = start();
        let mut straggler = h.admit().await.unwrap();
        let mut writer = h.admit().await.unwrap();
        h.begin_drain().await;
        h.stop_admitting(Duration::from_millis(500)).await;
        let started = tokio::time::Instant::now();
        // The straggler waits for its cancellation; the writer "has begun its
        // write" and finishes anyway.
        let reason = straggler.cancelled().await;
        assert_eq!(reason, CancelReason::DrainTimeout);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_millis(510),
            "cancelled after {waited:?}"
        );
        assert_eq!(writer.cancelled().await, CancelReason::DrainTimeout);
        straggler.mark_cancelled();
        drop(straggler);
        h.settle().await;
        assert!(h.reports().is_empty(), "the writer is still in flight");
        drop(writer);
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::CutShort {
                reason: CancelReason::DrainTimeout,
                remaining: 2,
                cancelled: 1,
            })]
        );
    }

    #[actix_rt::test]
    async fn deadline_does_not_fire_when_work_finishes_first() {
        tokio::time::pause();
        let h = start();
        let permit = h.admit().await.unwrap();
        h.stop_admitting(Duration::from_millis(500)).await;
        drop(permit);
        h.settle().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.settle().await;
        // Drained, not cut: the deadline timer was disarmed. (Quiet comes from
        // the hard deadline for connections, as no listener was closed here.)
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::Drained), DrainReport::Quiet]
        );
    }

    #[actix_rt::test]
    async fn second_begin_drain_changes_nothing() {
        tokio::time::pause();
        let h = start();
        let permit = h.admit().await.unwrap();
        assert_eq!(h.begin_drain().await, 1);
        h.stop_admitting(Duration::from_millis(500)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A second BeginDrain and a second StopAdmitting neither reopen
        // admission nor push the deadline back.
        assert_eq!(h.begin_drain().await, 1);
        h.stop_admitting(Duration::from_secs(60)).await;
        assert_eq!(
            *h.phase.borrow(),
            Phase::Draining {
                admitting: false,
                cut: None
            }
        );
        let mut permit = permit;
        let t = tokio::time::Instant::now();
        assert_eq!(permit.cancelled().await, CancelReason::DrainTimeout);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(210),
            "cancelled after {waited:?}: the deadline moved"
        );
    }

    #[actix_rt::test]
    async fn cut_short_cancels_at_once_with_forced() {
        let h = start();
        let mut permit = h.admit().await.unwrap();
        h.begin_drain().await;
        h.cut(CancelReason::ShutdownForced).await;
        assert_eq!(permit.cancelled().await, CancelReason::ShutdownForced);
        assert_eq!(h.admit().await.unwrap_err(), ShuttingDown);
        permit.mark_cancelled();
        drop(permit);
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::CutShort {
                reason: CancelReason::ShutdownForced,
                remaining: 1,
                cancelled: 1,
            })]
        );
    }

    #[actix_rt::test]
    async fn work_that_ignores_cancel_is_abandoned_after_linger_and_allowance() {
        tokio::time::pause();
        let h = start();
        let stuck = h.admit().await.unwrap();
        assert_eq!(stuck.grace(), LINGER, "a begun write may run the linger");
        h.cut(CancelReason::ShutdownForced).await;
        h.settle().await;
        assert!(h.reports().is_empty());
        // A write cancelled at the end of the linger still has the allowance
        // to say how its cancel went.
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        h.settle().await;
        assert!(h.reports().is_empty());
        tokio::time::sleep(CANCEL_ALLOWANCE).await;
        h.settle().await;
        assert_eq!(
            h.reports()[0],
            DrainReport::WorkDone(Outcome::CutShort {
                reason: CancelReason::ShutdownForced,
                remaining: 1,
                cancelled: 0,
            })
        );
    }

    #[actix_rt::test]
    async fn idle_connections_close_after_grace_busy_ones_do_not() {
        tokio::time::pause();
        let h = start();
        let (idle, mut idle_close) = ConnGuard::register(&h.coordinator);
        let (busy, mut busy_close) = ConnGuard::register(&h.coordinator);
        let permit = h
            .coordinator
            .send(Admit {
                conn: Some(busy.id()),
            })
            .await
            .unwrap()
            .unwrap();
        h.begin_drain().await;
        h.stop_admitting(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(99)).await;
        h.settle().await;
        assert!(idle_close.try_recv().is_err(), "closed before the grace");
        tokio::time::sleep(Duration::from_millis(2)).await;
        h.settle().await;
        assert_eq!(
            idle_close.try_recv(),
            Ok(Close::IfIdle),
            "idle connection closed"
        );
        assert!(busy_close.try_recv().is_err(), "busy connection left alone");
        drop(idle);
        drop(permit);
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
        // The busy connection closes itself after its answer.
        drop(busy);
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::Drained), DrainReport::Quiet]
        );
    }

    #[actix_rt::test]
    async fn a_zero_drain_timeout_cuts_before_the_answer() {
        let h = start();
        let mut permit = h.admit().await.unwrap();
        h.stop_admitting(Duration::ZERO).await;
        // Already published when StopAdmitting has been handled.
        assert_eq!(
            *h.phase.borrow(),
            Phase::Draining {
                admitting: false,
                cut: Some(CancelReason::DrainTimeout)
            }
        );
        assert_eq!(permit.cancelled().await, CancelReason::DrainTimeout);
    }

    #[actix_rt::test]
    async fn a_cut_with_nothing_in_flight_is_a_completed_drain() {
        let h = start();
        h.cut(CancelReason::ShutdownForced).await;
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
    }

    #[actix_rt::test]
    async fn a_cut_closes_idle_connections_without_the_grace() {
        tokio::time::pause();
        let h = start();
        let (_idle, mut idle_close) = ConnGuard::register(&h.coordinator);
        h.begin_drain().await;
        h.cut(CancelReason::ShutdownForced).await;
        h.listener_closed(Duration::from_secs(60)).await;
        h.settle().await;
        assert_eq!(idle_close.try_recv(), Ok(Close::IfIdle));
    }

    #[actix_rt::test]
    async fn a_cut_after_the_work_is_done_closes_what_is_left_now() {
        tokio::time::pause();
        let h = start();
        let (_slow_reader, mut close) = ConnGuard::register(&h.coordinator);
        h.stop_admitting(Duration::from_secs(30)).await;
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
        h.cut(CancelReason::ShutdownForced).await;
        h.settle().await;
        assert_eq!(close.try_recv(), Ok(Close::Now));
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::Drained), DrainReport::Quiet]
        );
    }

    #[actix_rt::test]
    async fn connection_that_never_closes_is_closed_at_the_hard_deadline() {
        tokio::time::pause();
        let h = start();
        let (_guard, mut close) = ConnGuard::register(&h.coordinator);
        let permit = h.admit().await.unwrap();
        h.stop_admitting(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_secs(60)).await;
        drop(permit);
        h.settle().await;
        assert_eq!(h.reports(), vec![DrainReport::WorkDone(Outcome::Drained)]);
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        h.settle().await;
        assert_eq!(close.try_recv(), Ok(Close::Now));
        assert_eq!(
            h.reports(),
            vec![DrainReport::WorkDone(Outcome::Drained), DrainReport::Quiet]
        );
    }
}
