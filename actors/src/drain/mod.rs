//! The DrainCoordinator: the one place that knows how much work is in flight,
//! which connections are open, and whether the service is Active, Draining or
//! Stopped.
//!
//! - `state` — what it publishes: [`DrainState`], [`CancelReason`], [`Outcome`].
//! - `gate` — admission without a mailbox: the [`Admission`] handle hands
//!   out [`Permit`]s; dropping one counts the request down, so an error, a
//!   panic or a vanished client can never leave the count stuck.
//! - `connections` — the open connections, each held by a [`ConnGuard`].
//!
//! The drain itself is a sequence of messages from the Supervisor:
//! [`BeginDrain`] (probes turn 503, requests still admitted during the
//! shutdown delay), [`ArmDeadline`] (the deadline timer starts, the listener
//! is about to close), [`ListenerClosed`] (persistent connections are told
//! goodbye, idle connections are closed after a short grace),
//! [`ClosePersistent`] (the persistent connections left are closed) and,
//! when a person insists, [`CutDrain`].
//!
//! Requests on connections already open are admitted until no connection
//! that could carry one is open (each is answered with `Connection: close`,
//! so each carries at most one more); only then, or at the deadline or a
//! cut, does the gate close. The coordinator answers with three
//! [`DrainReport`]s: `WorkDone` the moment the count is zero with no such
//! connection left, or the drain is cut; `Quiet` once the connections that
//! carried the answers have closed; `Settled` once the persistent ones have
//! too.

mod connections;
mod gate;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle,
    StreamHandler,
};
use log::info;
use tokio::sync::{mpsc, watch};

use crate::census::Census;
use crate::lifecycle::StopActor;
use crate::metrics::Metrics;
pub use connections::{
    Class, ClassFigures, Close, ConnGuard, ConnId, ConnIds, ConnKind, ConnectionChanged,
};
use connections::{ConnectionClosed, ConnectionOpened, Registry};
use gate::Gate;
pub(crate) use gate::Parked;
pub use gate::{Admission, Permit};
pub use state::{CancelReason, DrainState, Farewell, NotAdmitted, Outcome};

/// After a cut and the linger, how long cancelled work that had passed its
/// safe point still has to say how its cancel went — a database write is
/// cancelled at the end of the linger, and its answer depends on whether the
/// cancel is confirmed — before the coordinator gives up on it.
pub const CANCEL_ALLOWANCE: Duration = Duration::from_millis(500);

/// What the coordinator reports once the work is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkDone {
    /// How the drain ended.
    pub outcome: Outcome,
    /// Requests answered with their real result since the drain began.
    pub completed: usize,
}

/// The coordinator's reports to whoever sequences the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum DrainReport {
    /// The in-flight work is over: its count reached zero, or the drain was cut.
    WorkDone(WorkDone),
    /// The work is over, the listener is closed and every connection but
    /// the persistent ones is gone.
    Quiet,
    /// Quiet, and the persistent connections are gone too.
    Settled,
}

// ----------------------------------------------------------------------------
// Messages
// ----------------------------------------------------------------------------

/// Begins the drain: probes turn 503; work is still admitted until
/// [`ArmDeadline`]. Answers the number of requests in flight. Idempotent.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct BeginDrain;

/// Starts the drain deadline: the listener is about to close. From now on
/// admission ends as soon as no connection that could carry a request is
/// left (or at the deadline). Answers the number of requests in flight.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct ArmDeadline {
    /// How long in-flight work may still run before it is cancelled.
    pub drain_timeout: Duration,
}

/// The transport has closed its listener: no new connection will come.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ListenerClosed {
    /// Connections are asked to close if idle after this grace.
    pub idle_grace: Duration,
}

/// Closes the persistent connections still open (`close_persistent`'s end):
/// they are told [`Farewell::Forced`] and their connections closed now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ClosePersistent;

/// Cuts the drain: every request in flight is cancelled now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CutDrain {
    /// Why; this is what the cancelled requests are answered with.
    pub reason: CancelReason,
}

/// Asks for the current state and counts (for tests and status).
#[derive(Debug, Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// The answer to [`GetSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The current state.
    pub state: DrainState,
    /// Requests in flight.
    pub in_flight: usize,
    /// Connections open (persistent ones included).
    pub connections: usize,
    /// Of those, the persistent ones.
    pub persistent: usize,
    /// Requests that finished with their real result since the drain began
    /// (see [`Permit::mark_answered`]).
    pub completed_in_drain: usize,
    /// How the drain ended, once it has.
    pub outcome: Option<Outcome>,
}

/// A closed gate's count reached zero.
struct GateEmptied;

// ----------------------------------------------------------------------------
// The actor
// ----------------------------------------------------------------------------

/// The drain state machine. Each variant owns what only it needs.
#[derive(Debug)]
enum State {
    Active,
    Draining(Drain),
    Stopped(Outcome),
}

#[derive(Debug)]
struct Drain {
    /// When the drain began (for the log).
    since: Instant,
    /// True while the gate is open: during the shutdown delay, and after it
    /// for requests on connections already open.
    admitting: bool,
    /// The deadline is armed: the drain may end (once no connection could
    /// carry another request).
    ending: bool,
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
    /// Gives up on work that does not stop (a write that hangs).
    give_up: SpawnHandle,
}

/// See the module documentation.
pub struct DrainCoordinator {
    state: State,
    /// The in-flight count (the only one) and the drain's counters.
    gate: Arc<Gate>,
    /// Taken by `started`: where the gate says it emptied.
    emptied: Option<mpsc::UnboundedReceiver<()>>,
    /// The open connections, what each carries, and how to ask each to close.
    connections: Registry,
    /// Whether the transport has closed its listener.
    listener_closed: bool,
    /// Whether `Quiet` has been reported (it is reported once).
    quiet: bool,
    /// Whether `Settled` has been reported (once).
    settled: bool,
    /// What persistent connections are told.
    farewell: watch::Sender<Farewell>,
    /// Set by a cut: idle connections are closed without the grace.
    hurry: bool,
    /// How long, after the work is done, connections may take to close before
    /// they are closed for them (a client that will not read its answer).
    linger: Duration,
    /// The hard deadline for connections, armed when the work is done.
    linger_timer: Option<SpawnHandle>,
    /// The published copy of the state.
    published: watch::Sender<DrainState>,
    /// Who sequences the shutdown.
    report_to: Recipient<DrainReport>,
    /// Where the drain state and the forced closes are published for `/metrics`.
    metrics: Option<Metrics>,
    census: Option<Census>,
}

impl DrainCoordinator {
    /// A coordinator that reports to `report_to` and gives connections `linger`
    /// to close once the work is done; `metrics` receives the in-flight gauge,
    /// the drain state and the forced closes.
    pub fn new(
        report_to: Recipient<DrainReport>,
        linger: Duration,
        metrics: Option<Metrics>,
    ) -> Self {
        let (published, state) = watch::channel(DrainState::Active);
        let (farewell, _) = watch::channel(Farewell::Serving);
        let (emptied_tx, emptied) = mpsc::unbounded_channel();
        let gate = Gate::new(state, emptied_tx, linger);
        if let Some(m) = &metrics {
            // Read at each scrape: counting stays one atomic word.
            let admission = Admission(gate.clone());
            m.read_in_flight_from(move || admission.in_flight());
        }
        DrainCoordinator {
            state: State::Active,
            gate,
            emptied: Some(emptied),
            connections: Registry::default(),
            listener_closed: false,
            quiet: false,
            settled: false,
            farewell,
            hurry: false,
            linger,
            linger_timer: None,
            published,
            report_to,
            metrics,
            census: None,
        }
    }

    /// Counts this actor in `census` (the leak check).
    pub fn counted_in(mut self, census: Census) -> Self {
        self.census = Some(census);
        self
    }

    /// A receiver of the published state; take it before starting the actor.
    pub fn subscribe(&self) -> watch::Receiver<DrainState> {
        self.published.subscribe()
    }

    /// A receiver of what persistent connections are told; take it before
    /// starting the actor.
    pub fn farewell(&self) -> watch::Receiver<Farewell> {
        self.farewell.subscribe()
    }

    /// Tells the persistent connections `to` (a goodbye is said once; a
    /// force overrides it).
    fn bid_farewell(&self, to: Farewell) {
        self.farewell.send_if_modified(|now| {
            let change = match to {
                Farewell::Serving => false,
                Farewell::Goodbye => *now == Farewell::Serving,
                Farewell::Forced => *now != Farewell::Forced,
            };
            if change {
                *now = to;
            }
            change
        });
    }

    /// Where requests are admitted; take it before starting the actor.
    pub fn admission(&self) -> Admission {
        Admission(self.gate.clone())
    }

    fn current(&self) -> DrainState {
        match &self.state {
            State::Active => DrainState::Active,
            State::Draining(d) => DrainState::Draining {
                admitting: d.admitting,
                cut: d.cut.as_ref().map(|c| c.reason),
            },
            State::Stopped(_) => DrainState::Stopped,
        }
    }

    fn publish(&self) {
        let state = self.current();
        if let Some(m) = &self.metrics {
            m.set_drain_state(match state {
                DrainState::Active => 0,
                DrainState::Draining { .. } => 1,
                DrainState::Stopped => 2,
            });
        }
        self.published.send_replace(state);
    }

    /// Active → Draining (admitting). Does nothing in any other state.
    fn begin(&mut self) {
        if let State::Active = self.state {
            self.gate.begin_drain();
            info!("drain begun with {} in flight", self.gate.in_flight());
            self.state = State::Draining(Drain {
                since: Instant::now(),
                admitting: true,
                ending: false,
                deadline: None,
                cut: None,
            });
            self.publish();
        }
    }

    /// Arms the deadline (once): from now on the drain may end. Answers the
    /// number in flight.
    fn arm_deadline(&mut self, drain_timeout: Duration, ctx: &mut Context<Self>) -> usize {
        self.begin();
        let in_flight = self.gate.watch();
        if let State::Draining(d) = &mut self.state {
            if !d.ending {
                d.ending = true;
                // A zero timeout cuts right here, before anyone is answered,
                // so the cut is visible to whoever asked for the drain.
                if !drain_timeout.is_zero() {
                    d.deadline = Some(ctx.run_later(drain_timeout, |act, ctx| {
                        act.cut(CancelReason::DrainTimeout, ctx)
                    }));
                }
                info!(
                    "drain deadline in {} ms; {in_flight} in flight",
                    drain_timeout.as_millis()
                );
                if drain_timeout.is_zero() {
                    self.cut(CancelReason::DrainTimeout, ctx);
                    return in_flight;
                }
            }
        }
        self.check_work_done(ctx);
        in_flight
    }

    /// Cancels every request in flight (once). With nothing in flight there
    /// is nothing to cut: the drain simply completes.
    fn cut(&mut self, reason: CancelReason, ctx: &mut Context<Self>) {
        if let State::Stopped(_) = self.state {
            // The work is over; only connections remain: close them now.
            if reason == CancelReason::ShutdownForced {
                self.bid_farewell(Farewell::Forced);
            }
            if !self.quiet {
                info!("cut short while connections close: closing them now");
                self.force_quiet(ctx);
            }
            return;
        }
        self.begin();
        if reason == CancelReason::ShutdownForced {
            // No goodbye is waited for: persistent connections say theirs
            // and close now (`close_persistent` closes what is left).
            self.bid_farewell(Farewell::Forced);
        }
        // Parked long-polls are not cut: told `Forced`, they answer "nothing
        // yet" at once.
        let remaining = self.gate.close().saturating_sub(self.gate.parked());
        // Whatever the work, a cut means no grace for idle connections.
        self.hurry = true;
        if remaining == 0 {
            if let State::Draining(d) = &mut self.state {
                d.admitting = false;
                d.ending = true;
            }
            self.publish();
            if self.listener_closed {
                self.close_idle();
            }
            self.check_work_done(ctx);
            return;
        }
        if let State::Draining(d) = &mut self.state {
            if d.cut.is_some() {
                return;
            }
            d.admitting = false;
            d.ending = true;
            if let Some(deadline) = d.deadline.take() {
                ctx.cancel_future(deadline);
            }
            let give_up =
                ctx.run_later(self.linger + CANCEL_ALLOWANCE, |act, ctx| act.give_up(ctx));
            d.cut = Some(Cut {
                reason,
                remaining,
                give_up,
            });
            info!("drain cut short ({reason}): cancelling {remaining} in flight");
            self.gate.record_cut(reason);
            self.publish();
            if self.listener_closed {
                self.close_idle();
            }
        }
        self.check_work_done(ctx);
    }

    fn cut_outcome(&self, cut: &Cut) -> Outcome {
        Outcome::CutShort {
            reason: cut.reason,
            remaining: cut.remaining,
            cancelled: self.gate.cancelled(),
        }
    }

    /// Work that ignored its cancellation for `linger` and the allowance is abandoned.
    fn give_up(&mut self, ctx: &mut Context<Self>) {
        if let State::Draining(Drain { cut: Some(cut), .. }) = &self.state {
            let outcome = self.cut_outcome(cut);
            info!(
                "giving up on {} request(s) that did not stop",
                self.gate.in_flight()
            );
            self.finish(outcome, ctx);
        }
    }

    /// Draining with the deadline armed, nothing in flight and no connection
    /// that could carry another request (or a cut) → Stopped. Admission ends
    /// on the way: closing the gate reads the count in the same step.
    fn check_work_done(&mut self, ctx: &mut Context<Self>) {
        let (ending, admitting) = match &self.state {
            State::Draining(d) => (d.ending, d.admitting),
            _ => return,
        };
        if !ending {
            return;
        }
        if admitting {
            if !self.listener_closed
                || self.connections.exchanges() > 0
                || self.gate.in_flight() > 0
            {
                return;
            }
            if let State::Draining(d) = &mut self.state {
                d.admitting = false;
            }
            let in_flight = self.gate.close();
            info!("no connection can carry another request: admission ended");
            self.publish();
            if in_flight > 0 {
                return;
            }
        }
        if self.gate.in_flight() > 0 {
            return;
        }
        let outcome = match &self.state {
            State::Draining(Drain { cut: Some(cut), .. }) => self.cut_outcome(cut),
            _ => Outcome::Drained,
        };
        self.finish(outcome, ctx);
    }

    fn finish(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        let old = std::mem::replace(&mut self.state, State::Stopped(outcome));
        if let State::Draining(d) = old {
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
        self.report_to.do_send(DrainReport::WorkDone(WorkDone {
            outcome,
            completed: self.gate.completed_in_drain(),
        }));
        self.linger_timer = Some(ctx.run_later(self.linger, |act, ctx| act.force_quiet(ctx)));
        self.check_quiet(ctx);
    }

    /// Past the hard deadline: close whatever is still open and report.
    /// (The persistent connections are `close_persistent`'s.)
    fn force_quiet(&mut self, ctx: &mut Context<Self>) {
        self.linger_timer = None;
        let forced = self.connections.tell(false, Close::Now);
        if forced > 0 {
            info!("closing {forced} connection(s) still open past the deadline");
        }
        if let Some(m) = &self.metrics {
            m.force_closed(forced);
        }
        self.listener_closed = true;
        self.report_quiet(ctx);
    }

    fn check_quiet(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Stopped(_))
            && self.listener_closed
            && self.connections.len() == self.connections.persistent()
        {
            self.report_quiet(ctx);
        }
    }

    /// Quiet and no persistent connection left: `Settled` (once).
    fn check_settled(&mut self) {
        if self.quiet && !self.settled && self.connections.persistent() == 0 {
            self.settled = true;
            self.report_to.do_send(DrainReport::Settled);
        }
    }

    /// Closes every persistent connection now.
    fn close_persistent(&mut self) {
        let closed = self.connections.tell(true, Close::Now);
        if closed > 0 {
            info!("closing {closed} persistent connection(s) now");
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
        self.check_settled();
    }

    /// Asks every connection to close if idle: a connection whose request
    /// still awaits its response keeps serving it, and closes after it.
    /// (A persistent connection is never idle: it has had its goodbye.)
    fn close_idle(&mut self) {
        let asked = self.connections.tell(false, Close::IfIdle);
        if asked > 0 {
            info!("asking {asked} connection(s) to close once idle");
        }
    }
}

impl Actor for DrainCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(census) = &self.census {
            census.actor_started();
        }
        if let Some(emptied) = self.emptied.take() {
            ctx.add_stream(futures_util::stream::unfold(emptied, |mut rx| async move {
                rx.recv().await.map(|()| (GateEmptied, rx))
            }));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(census) = &self.census {
            census.actor_stopped();
        }
    }
}

// ----------------------------------------------------------------------------
// Handlers
// ----------------------------------------------------------------------------

impl StreamHandler<GateEmptied> for DrainCoordinator {
    /// The last permit of a closed gate is gone: the drain may be over.
    fn handle(&mut self, _: GateEmptied, ctx: &mut Context<Self>) {
        self.check_work_done(ctx);
    }

    /// The gate lives as long as this actor: nothing to do.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<ConnectionOpened> for DrainCoordinator {
    type Result = ();

    /// Remembers a connection (and how to close it).
    fn handle(&mut self, msg: ConnectionOpened, _: &mut Context<Self>) {
        self.connections.opened(msg.id, msg.close);
    }
}

impl Handler<ConnectionChanged> for DrainCoordinator {
    type Result = ();

    /// A connection now carries something else: a persistent one no longer
    /// holds the drain; a closing one carries no other request.
    fn handle(&mut self, msg: ConnectionChanged, ctx: &mut Context<Self>) {
        // (A persistent connection stays persistent.)
        let forced = *self.farewell.borrow() == Farewell::Forced;
        let Some(close) = self.connections.change(msg.id, msg.kind) else {
            return;
        };
        if matches!(msg.kind, ConnKind::Persistent(_)) && forced {
            let _ = close.send(Close::Now);
        }
        self.check_work_done(ctx);
        self.check_quiet(ctx);
    }
}

impl Handler<ClosePersistent> for DrainCoordinator {
    type Result = ();

    /// `close_persistent` is over: whatever persistent connection is left is closed.
    fn handle(&mut self, _: ClosePersistent, _: &mut Context<Self>) {
        self.bid_farewell(Farewell::Forced);
        self.close_persistent();
        self.check_settled();
    }
}

impl Handler<ConnectionClosed> for DrainCoordinator {
    type Result = ();

    /// Forgets a connection; the last one may make the service quiet.
    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Context<Self>) {
        self.connections.closed(msg.id);
        self.check_work_done(ctx);
        self.check_quiet(ctx);
        self.check_settled();
    }
}

impl Handler<BeginDrain> for DrainCoordinator {
    type Result = usize;

    /// Active → Draining; later calls change nothing.
    fn handle(&mut self, _: BeginDrain, _: &mut Context<Self>) -> usize {
        self.begin();
        self.gate.in_flight()
    }
}

impl Handler<ArmDeadline> for DrainCoordinator {
    type Result = usize;

    /// Arms the deadline; answers the count in flight.
    fn handle(&mut self, msg: ArmDeadline, ctx: &mut Context<Self>) -> usize {
        self.arm_deadline(msg.drain_timeout, ctx)
    }
}

impl Handler<ListenerClosed> for DrainCoordinator {
    type Result = ();

    /// Says goodbye to the persistent connections and arms the
    /// idle-connection grace; the drain may be over already.
    fn handle(&mut self, msg: ListenerClosed, ctx: &mut Context<Self>) {
        if self.listener_closed {
            return;
        }
        self.listener_closed = true;
        self.bid_farewell(Farewell::Goodbye);
        if self.hurry {
            // Cut short: no grace for idle connections.
            self.close_idle();
        } else {
            ctx.run_later(msg.idle_grace, |act, _| act.close_idle());
        }
        self.check_work_done(ctx);
        self.check_quiet(ctx);
    }
}

impl Handler<CutDrain> for DrainCoordinator {
    type Result = ();

    /// Cancels everything in flight now.
    fn handle(&mut self, msg: CutDrain, ctx: &mut Context<Self>) {
        self.cut(msg.reason, ctx);
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

    /// Reports the state and counts (a gate that emptied since the last
    /// message is seen first: the answer never lags the count).
    fn handle(&mut self, _: GetSnapshot, ctx: &mut Context<Self>) -> Self::Result {
        self.check_work_done(ctx);
        actix::MessageResult(Snapshot {
            state: self.current(),
            in_flight: self.gate.in_flight(),
            connections: self.connections.len(),
            persistent: self.connections.persistent(),
            completed_in_drain: self.gate.completed_in_drain(),
            outcome: match self.state {
                State::Stopped(outcome) => Some(outcome),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Addr;
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
        admission: Admission,
        reports: Arc<Mutex<Vec<DrainReport>>>,
        phase: watch::Receiver<DrainState>,
        farewell: watch::Receiver<Farewell>,
        ids: std::cell::RefCell<ConnIds>,
    }

    const LINGER: Duration = Duration::from_millis(1000);

    fn start() -> Harness {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder(reports.clone()).start();
        let coordinator = DrainCoordinator::new(recorder.recipient(), LINGER, None);
        let admission = coordinator.admission();
        let phase = coordinator.subscribe();
        let farewell = coordinator.farewell();
        Harness {
            coordinator: coordinator.start(),
            admission,
            reports,
            phase,
            farewell,
            ids: std::cell::RefCell::new(ConnIds::default()),
        }
    }

    impl Harness {
        async fn admit(&self) -> Result<Permit, NotAdmitted> {
            self.admission.admit()
        }
        fn connect(&self) -> (ConnGuard, mpsc::UnboundedReceiver<Close>) {
            let id = self.ids.borrow_mut().next_id();
            ConnGuard::register(&self.coordinator, id)
        }
        /// Every report of a drain that completed and whose connections all closed.
        fn settled() -> Vec<DrainReport> {
            vec![
                Harness::done(Outcome::Drained, 0),
                DrainReport::Quiet,
                DrainReport::Settled,
            ]
        }
        /// The drain's end as the coordinator reports it.
        fn done(outcome: Outcome, completed: usize) -> DrainReport {
            DrainReport::WorkDone(WorkDone { outcome, completed })
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
        async fn arm_deadline(&self, drain_timeout: Duration) -> usize {
            self.coordinator
                .send(ArmDeadline { drain_timeout })
                .await
                .expect("coordinator alive")
        }
        async fn cut(&self, reason: CancelReason) {
            self.coordinator
                .send(CutDrain { reason })
                .await
                .expect("coordinator alive")
        }
        /// The connection `guard` now carries `kind`.
        async fn change(&self, guard: &ConnGuard, kind: ConnKind) {
            self.coordinator
                .send(ConnectionChanged {
                    id: guard.id(),
                    kind,
                })
                .await
                .expect("coordinator alive")
        }
        async fn close_persistent(&self) {
            self.coordinator
                .send(ClosePersistent)
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
        assert_eq!(h.snapshot().await.state, DrainState::Active);
        assert!(h.reports().is_empty());
    }

    /// Admission goes on after the deadline is armed and after the listener
    /// closed, for requests on connections already open; it ends once none
    /// is left that could carry one.
    #[actix_rt::test]
    async fn admits_on_open_connections_until_none_is_left() {
        let h = start();
        assert_eq!(h.begin_drain().await, 0);
        let open = DrainState::Draining {
            admitting: true,
            cut: None,
        };
        assert_eq!(*h.phase.borrow(), open);
        let during_delay = h.admit().await.expect("admitted during the delay");
        let (kept_alive, _close) = h.connect();
        h.arm_deadline(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_secs(60)).await;
        assert_eq!(*h.phase.borrow(), open);
        let on_open_connection = h.admit().await.expect("a request on an open connection");
        drop(during_delay);
        drop(on_open_connection);
        h.settle().await;
        assert!(
            h.reports().is_empty(),
            "a connection could carry another request"
        );
        h.change(&kept_alive, ConnKind::Closing).await;
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![Harness::done(Outcome::Drained, 0)],
            "a closing connection carries no other request"
        );
        assert_eq!(*h.phase.borrow(), DrainState::Stopped);
        assert_eq!(h.admit().await.unwrap_err(), NotAdmitted);
        drop(kept_alive);
        h.settle().await;
        assert_eq!(h.reports(), Harness::settled());
    }

    /// Persistent connections never hold the drain: they are told goodbye as
    /// the listener closes, `Settled` comes once they are gone, and
    /// `ClosePersistent` closes those left.
    #[actix_rt::test]
    async fn persistent_connections_are_told_goodbye_and_closed_apart() {
        let h = start();
        let farewell = h.farewell.clone();
        let (socket, mut socket_close) = h.connect();
        let (stream, mut stream_close) = h.connect();
        h.change(&socket, ConnKind::Persistent(Class::WebSocket))
            .await;
        h.change(&stream, ConnKind::Persistent(Class::Sse)).await;
        h.begin_drain().await;
        h.arm_deadline(Duration::from_secs(30)).await;
        assert_eq!(
            *farewell.borrow(),
            Farewell::Serving,
            "not before the listener closes"
        );
        h.listener_closed(Duration::from_millis(100)).await;
        assert_eq!(*farewell.borrow(), Farewell::Goodbye);
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![Harness::done(Outcome::Drained, 0), DrainReport::Quiet]
        );
        assert_eq!(h.snapshot().await.persistent, 2);
        drop(stream);
        h.settle().await;
        assert!(!h.reports().contains(&DrainReport::Settled));
        h.close_persistent().await;
        assert_eq!(*farewell.borrow(), Farewell::Forced);
        assert_eq!(socket_close.try_recv(), Ok(Close::Now));
        assert!(
            stream_close.try_recv().is_err(),
            "the idle sweep leaves them alone"
        );
        drop(socket);
        h.settle().await;
        assert_eq!(h.reports().last(), Some(&DrainReport::Settled));
    }

    #[actix_rt::test]
    async fn finishes_on_last_permit_drop_then_quiet_when_listener_closed() {
        let h = start();
        let a = h.admit().await.unwrap();
        let b = h.admit().await.unwrap();
        h.begin_drain().await;
        h.arm_deadline(Duration::from_secs(30)).await;
        drop(a);
        h.settle().await;
        assert!(h.reports().is_empty(), "one request still in flight");
        drop(b);
        h.settle().await;
        assert!(
            h.reports().is_empty(),
            "the listener may still hand over connections"
        );
        h.listener_closed(Duration::from_millis(100)).await;
        h.settle().await;
        assert_eq!(h.reports(), Harness::settled());
    }

    #[actix_rt::test]
    async fn empty_drain_finishes_at_once() {
        let h = start();
        h.begin_drain().await;
        h.arm_deadline(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_millis(100)).await;
        h.settle().await;
        assert_eq!(h.reports(), Harness::settled());
    }

    #[actix_rt::test]
    async fn deadline_cancels_stragglers() {
        tokio::time::pause();
        let h = start();
        let mut straggler = h.admit().await.unwrap();
        let writer = h.admit().await.unwrap();
        h.begin_drain().await;
        h.arm_deadline(Duration::from_millis(500)).await;
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
            vec![Harness::done(
                Outcome::CutShort {
                    reason: CancelReason::DrainTimeout,
                    remaining: 2,
                    cancelled: 1,
                },
                0
            )]
        );
    }

    #[actix_rt::test]
    async fn deadline_does_not_fire_when_work_finishes_first() {
        tokio::time::pause();
        let h = start();
        let permit = h.admit().await.unwrap();
        h.arm_deadline(Duration::from_millis(500)).await;
        h.listener_closed(Duration::from_millis(100)).await;
        drop(permit);
        h.settle().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.settle().await;
        // Drained, not cut: the deadline timer was disarmed.
        assert_eq!(h.reports(), Harness::settled());
    }

    #[actix_rt::test]
    async fn second_begin_drain_changes_nothing() {
        tokio::time::pause();
        let h = start();
        let permit = h.admit().await.unwrap();
        assert_eq!(h.begin_drain().await, 1);
        h.arm_deadline(Duration::from_millis(500)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A second BeginDrain and a second ArmDeadline neither change the
        // state nor push the deadline back.
        assert_eq!(h.begin_drain().await, 1);
        h.arm_deadline(Duration::from_secs(60)).await;
        assert_eq!(
            *h.phase.borrow(),
            DrainState::Draining {
                admitting: true,
                cut: None
            }
        );
        let permit = permit;
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
        assert_eq!(h.admit().await.unwrap_err(), NotAdmitted);
        permit.mark_cancelled();
        drop(permit);
        h.settle().await;
        assert_eq!(
            h.reports(),
            vec![Harness::done(
                Outcome::CutShort {
                    reason: CancelReason::ShutdownForced,
                    remaining: 1,
                    cancelled: 1,
                },
                0
            )]
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
            Harness::done(
                Outcome::CutShort {
                    reason: CancelReason::ShutdownForced,
                    remaining: 1,
                    cancelled: 0,
                },
                0
            )
        );
    }

    /// The sweep asks every connection; one whose request still awaits its
    /// answer keeps serving it (the serve loop decides, it knows), then
    /// closes by itself.
    #[actix_rt::test]
    async fn connections_are_asked_to_close_if_idle_after_the_grace() {
        tokio::time::pause();
        let h = start();
        let (idle, mut idle_close) = h.connect();
        let (busy, mut busy_close) = h.connect();
        let permit = h.admit().await.unwrap();
        h.begin_drain().await;
        assert_eq!(h.arm_deadline(Duration::from_secs(30)).await, 1);
        h.listener_closed(Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(99)).await;
        h.settle().await;
        assert!(idle_close.try_recv().is_err(), "asked before the grace");
        tokio::time::sleep(Duration::from_millis(2)).await;
        h.settle().await;
        assert_eq!(idle_close.try_recv(), Ok(Close::IfIdle));
        assert_eq!(busy_close.try_recv(), Ok(Close::IfIdle));
        drop(idle);
        // The busy connection's answer carries `Connection: close`.
        h.change(&busy, ConnKind::Closing).await;
        drop(permit);
        h.settle().await;
        assert_eq!(h.reports(), vec![Harness::done(Outcome::Drained, 0)]);
        assert!(busy_close.try_recv().is_err(), "never told to close now");
        // The busy connection closes itself after its answer.
        drop(busy);
        h.settle().await;
        assert_eq!(h.reports(), Harness::settled());
    }

    #[actix_rt::test]
    async fn answered_work_during_the_drain_is_counted_as_completed() {
        let h = start();
        let mut before = h.admit().await.unwrap();
        before.mark_answered();
        drop(before);
        let mut during = h.admit().await.unwrap();
        let unanswered = h.admit().await.unwrap();
        assert_eq!(h.begin_drain().await, 2);
        during.mark_answered();
        drop(during);
        drop(unanswered);
        h.arm_deadline(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_millis(100)).await;
        h.settle().await;
        assert_eq!(h.reports()[0], Harness::done(Outcome::Drained, 1));
        assert_eq!(h.snapshot().await.completed_in_drain, 1);
    }

    /// The gate: no permit once closed, and the last drop of a watched gate
    /// ends the drain even when it happens on another thread.
    #[actix_rt::test]
    async fn a_permit_dropped_on_another_thread_ends_the_drain() {
        let h = start();
        let permit = h.admit().await.unwrap();
        h.arm_deadline(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_millis(100)).await;
        std::thread::spawn(move || drop(permit))
            .join()
            .expect("thread ran");
        for _ in 0..50 {
            if !h.reports().is_empty() {
                break;
            }
            h.settle().await;
        }
        assert_eq!(h.reports()[0], Harness::done(Outcome::Drained, 0));
        assert_eq!(h.admission.in_flight(), 0);
        assert_eq!(h.admit().await.unwrap_err(), NotAdmitted);
    }

    #[actix_rt::test]
    async fn a_zero_drain_timeout_cuts_before_the_answer() {
        let h = start();
        let permit = h.admit().await.unwrap();
        h.arm_deadline(Duration::ZERO).await;
        // Already published when ArmDeadline has been handled.
        assert_eq!(
            *h.phase.borrow(),
            DrainState::Draining {
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
        assert_eq!(h.reports(), vec![Harness::done(Outcome::Drained, 0)]);
    }

    #[actix_rt::test]
    async fn a_cut_closes_idle_connections_without_the_grace() {
        tokio::time::pause();
        let h = start();
        let (_idle, mut idle_close) = h.connect();
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
        let (slow_reader, mut close) = h.connect();
        h.change(&slow_reader, ConnKind::Closing).await;
        h.arm_deadline(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_secs(60)).await;
        h.settle().await;
        assert_eq!(h.reports(), vec![Harness::done(Outcome::Drained, 0)]);
        h.cut(CancelReason::ShutdownForced).await;
        h.settle().await;
        assert_eq!(close.try_recv(), Ok(Close::Now));
        assert_eq!(h.reports(), Harness::settled());
    }

    /// Its answer was written with `Connection: close`, and its client reads
    /// none of it.
    #[actix_rt::test]
    async fn connection_that_never_closes_is_closed_at_the_hard_deadline() {
        tokio::time::pause();
        let h = start();
        let (guard, mut close) = h.connect();
        let permit = h.admit().await.unwrap();
        h.change(&guard, ConnKind::Closing).await;
        h.arm_deadline(Duration::from_secs(30)).await;
        h.listener_closed(Duration::from_secs(60)).await;
        drop(permit);
        h.settle().await;
        assert_eq!(h.reports(), vec![Harness::done(Outcome::Drained, 0)]);
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        h.settle().await;
        assert_eq!(close.try_recv(), Ok(Close::Now));
        assert_eq!(h.reports(), Harness::settled());
    }
}
