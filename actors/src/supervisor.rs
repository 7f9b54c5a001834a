//! The Supervisor: the one owner of shutdown.
//!
//! [`Supervisor::launch`] starts the DrainCoordinator and the DbActor (once),
//! lets the caller build its transport from the resulting [`Core`], and
//! subscribes to the shutdown triggers. From then on the shutdown runs here:
//!
//! 1. a trigger arrives → "draining server": the coordinator begins the drain
//!    (health 503, responses carry `Connection: close`), a `drain_begin`
//!    record is written in the background;
//! 2. after `SHUTDOWN_DELAY_MS` → admission stops (the deadline starts) and the
//!    transport closes its listener; the coordinator closes idle connections
//!    after a short grace;
//! 3. the coordinator reports `WorkDone(outcome)` → the `drain_complete` record
//!    is written; then `Quiet` (every connection closed) → "closing DB": the
//!    transport is stopped, the pool closed, and the System stops with
//!    [`Outcome::exit_code`] → "exited".
//!
//! A transport with a protocol of its own (stdin's node protocol) can also
//! start a drain with [`TransportDrain`], which does not end the process, and
//! report the end of its input with [`TransportEnded`], which drains (if no
//! drain is running) and exits 0. The process exits only once something asked
//! it to: a signal, or the end of input.

use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle,
    StreamHandler, WrapFuture,
};
use futures_util::Stream;
use log::{info, warn};
use tokio::sync::watch;

use crate::db::{ClosePool, DbActor, RecordDrainBegin, RecordDrainComplete};
use crate::drain::{
    BeginDrain, CancelReason, CutShort, DrainCoordinator, DrainReport, ListenerClosed, Outcome,
    Phase, StopAdmitting,
};
use crate::signals::ShutdownSignal;

/// The longest the drain records may hold up the exit.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// The shortest time connections get to close once the work is done, before
/// they are closed for them.
const MIN_LINGER: Duration = Duration::from_secs(1);

/// Timings of the shutdown sequence.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownSettings {
    /// How long the service keeps serving (with health 503) before it stops
    /// accepting: the load balancer's time to notice.
    pub shutdown_delay: Duration,
    /// How long in-flight work may run once admission has stopped.
    pub drain_timeout: Duration,
    /// How long connections may stay open, idle, after the listener closed.
    pub idle_grace: Duration,
}

impl ShutdownSettings {
    /// The hard deadline for connections once the work is done.
    fn linger(&self) -> Duration {
        MIN_LINGER.max(self.idle_grace)
    }
}

/// What a transport needs from the core.
#[derive(Clone)]
pub struct Core {
    /// Admission, permits, connection guards.
    pub coordinator: Addr<DrainCoordinator>,
    /// Where jobs are written (the HTTP service has a database; stdin mode has none).
    pub db: Option<Addr<DbActor>>,
    /// The published phase, for health answers and `Connection: close`.
    pub phase: watch::Receiver<Phase>,
    /// Where a transport's own protocol asks for a drain.
    pub drain: Recipient<TransportDrain>,
    /// Where a transport reports the end of its input.
    pub ended: Recipient<TransportEnded>,
}

/// Tells the transport to stop accepting: close the listening socket, serving
/// what had already reached it. Answers how many queued connections it took.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseListener;

/// Tells the transport to stop serving altogether (the work is over).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopTransport;

/// The transport's own protocol asks for a drain (stdin's `tcp_shutdown`): it
/// runs like a signal's drain, without a shutdown delay, but it does not end
/// the process. Answers the number of requests in flight.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct TransportDrain {
    /// How long in-flight work may run before it is cancelled.
    pub drain_timeout: Duration,
}

/// The transport's input has ended (stdin closed): drain if no drain is
/// running, then exit 0 — the replies already said what was cut short.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TransportEnded;

/// When the process exits once the drain is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitRule {
    /// A signal asked: the outcome decides the code.
    Outcome,
    /// The input ended: always 0.
    Zero,
}

/// How the Supervisor reaches the transport it runs.
pub struct Transport {
    /// Closes the listener.
    pub close_listener: Recipient<CloseListener>,
    /// Stops the transport.
    pub stop: Recipient<StopTransport>,
}

/// What a shutdown trigger asks for, given the current stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Drain,
    CutShort,
    Ignore,
}

/// The one place that maps a signal to what it does (the README's table).
fn command_for(signal: ShutdownSignal, draining: bool) -> Command {
    match (signal, draining) {
        (ShutdownSignal::Terminate | ShutdownSignal::Interrupt, false) => Command::Drain,
        (ShutdownSignal::Terminate, true) => Command::Ignore,
        (ShutdownSignal::Interrupt, true) | (ShutdownSignal::Quit, _) => Command::CutShort,
    }
}

/// Where the shutdown is.
enum Stage {
    /// Serving; no trigger yet.
    Running,
    /// A drain is under way.
    Draining {
        /// How long in-flight work may run once admission stops.
        drain_timeout: Duration,
        /// The shutdown-delay timer, until the listener close begins.
        delay: Option<SpawnHandle>,
        /// Whether the listener close has begun.
        closing: bool,
    },
    /// The pool is closing and the System is about to stop.
    Exiting,
}

/// See the module documentation.
pub struct Supervisor {
    settings: ShutdownSettings,
    coordinator: Addr<DrainCoordinator>,
    db: Option<Addr<DbActor>>,
    transport: Transport,
    stage: Stage,
    /// Set once something asked for the process to end.
    exit: Option<ExitRule>,
    /// The work's outcome, once the coordinator has reported it.
    outcome: Option<Outcome>,
    /// Whether every connection has closed.
    quiet: bool,
    /// The drain records, written in the background, in order.
    records: Option<actix_rt::task::JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the Supervisor, the DrainCoordinator and the DbActor (if there is
    /// a database); builds the transport with `transport` from the [`Core`];
    /// listens to `triggers`.
    pub fn launch<S, F>(
        settings: ShutdownSettings,
        db: Option<DbActor>,
        triggers: S,
        transport: F,
    ) -> Addr<Supervisor>
    where
        S: Stream<Item = ShutdownSignal> + 'static,
        F: FnOnce(&Core) -> Transport,
    {
        Supervisor::create(move |ctx| {
            let coordinator = DrainCoordinator::new(ctx.address().recipient(), settings.linger());
            let phase = coordinator.subscribe();
            let core = Core {
                coordinator: coordinator.start(),
                db: db.map(Actor::start),
                phase,
                drain: ctx.address().recipient(),
                ended: ctx.address().recipient(),
            };
            let transport = transport(&core);
            ctx.add_stream(triggers);
            Supervisor {
                settings,
                coordinator: core.coordinator,
                db: core.db,
                transport,
                stage: Stage::Running,
                exit: None,
                outcome: None,
                quiet: false,
                records: None,
            }
        })
    }

    /// A signal's drain: the configured delay and timeout.
    fn begin_drain(&mut self, ctx: &mut Context<Self>) {
        let (delay, timeout) = (self.settings.shutdown_delay, self.settings.drain_timeout);
        self.begin_drain_with(delay, timeout, ctx);
    }

    fn begin_drain_with(
        &mut self,
        delay: Duration,
        drain_timeout: Duration,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.stage, Stage::Running) {
            return;
        }
        info!("draining server");
        // Sent now, so health turns 503 before anything else happens.
        let begun = self.coordinator.send(BeginDrain);
        if let Some(db) = self.db.clone() {
            self.records = Some(actix_rt::spawn(async move {
                let Ok(in_flight) = begun.await else { return };
                let deadline = tokio::time::Instant::now() + RECORD_TIMEOUT;
                record(
                    "drain_begin",
                    deadline,
                    db.send(RecordDrainBegin { in_flight }),
                )
                .await;
            }));
        }
        self.stage = Stage::Draining {
            drain_timeout,
            delay: None,
            closing: false,
        };
        if delay.is_zero() {
            self.close_listener(ctx);
        } else {
            info!(
                "serving for {} ms more before closing the listener",
                delay.as_millis()
            );
            let timer = ctx.run_later(delay, |act, ctx| act.close_listener(ctx));
            if let Stage::Draining { delay, .. } = &mut self.stage {
                *delay = Some(timer);
            }
        }
    }

    /// Stops admission and closes the listener (once).
    fn close_listener(&mut self, ctx: &mut Context<Self>) {
        let Stage::Draining {
            drain_timeout,
            delay,
            closing,
        } = &mut self.stage
        else {
            return;
        };
        if let Some(timer) = delay.take() {
            ctx.cancel_future(timer);
        }
        if *closing {
            return;
        }
        *closing = true;
        self.coordinator.do_send(StopAdmitting {
            drain_timeout: *drain_timeout,
        });
        let closed = self.transport.close_listener.send(CloseListener);
        let coordinator = self.coordinator.clone();
        let idle_grace = self.settings.idle_grace;
        ctx.spawn(
            async move {
                match closed.await {
                    Ok(0) => info!("listener closed"),
                    Ok(n) => {
                        info!("listener closed; {n} queued connection(s) accepted to be answered")
                    }
                    Err(_) => info!("listener already gone"),
                }
                coordinator.do_send(ListenerClosed { idle_grace });
            }
            .into_actor(self),
        );
    }

    /// Cuts the drain short; the coordinator ignores a second cut.
    fn cut_short(&mut self, ctx: &mut Context<Self>) {
        self.coordinator.do_send(CutShort {
            reason: CancelReason::ShutdownForced,
        });
        self.close_listener(ctx);
    }

    fn work_done(&mut self, outcome: Outcome) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(outcome);
        let (success, remaining) = match outcome {
            Outcome::Drained => {
                info!("drain complete: every request answered");
                (true, 0)
            }
            Outcome::CutShort {
                reason,
                remaining,
                cancelled,
            } => {
                warn!(
                    "drain cut short ({reason}): {cancelled} request(s) cut short \
                     of {remaining} in flight"
                );
                (false, remaining)
            }
        };
        let earlier = self.records.take();
        let Some(db) = self.db.clone() else { return };
        // One deadline for whatever is left of the records: the exit waits
        // for them at most RECORD_TIMEOUT from here.
        let deadline = tokio::time::Instant::now() + RECORD_TIMEOUT;
        self.records = Some(actix_rt::spawn(async move {
            if let Some(earlier) = earlier {
                if tokio::time::timeout_at(deadline, earlier).await.is_err() {
                    return;
                }
            }
            let complete = db.send(RecordDrainComplete { success, remaining });
            record("drain_complete", deadline, complete).await;
        }));
    }

    /// Once the work is done and the connections are gone: close the pool, exit.
    fn maybe_exit(&mut self, ctx: &mut Context<Self>) {
        let (Some(outcome), true, Some(rule)) = (self.outcome, self.quiet, self.exit) else {
            return;
        };
        if matches!(self.stage, Stage::Exiting) {
            return;
        }
        self.stage = Stage::Exiting;
        self.transport.stop.do_send(StopTransport);
        if self.db.is_some() {
            info!("closing DB");
        }
        let records = self.records.take();
        let db = self.db.clone();
        let code = match rule {
            ExitRule::Outcome => outcome.exit_code(),
            ExitRule::Zero => 0,
        };
        ctx.spawn(
            async move {
                if let Some(records) = records {
                    let _ = records.await;
                }
                if let Some(db) = db {
                    let _ = db.send(ClosePool).await;
                }
            }
            .into_actor(self)
            .map(move |_, _, _| {
                info!("exited with code {code}");
                actix_rt::System::current().stop_with_code(code);
            }),
        );
    }
}

/// Awaits one drain record until `deadline`; a failure is a warning, never a hold-up.
async fn record<F, E>(what: &str, deadline: tokio::time::Instant, write: F)
where
    F: std::future::Future<Output = Result<Result<(), crate::db::DbError>, E>>,
{
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!("{what} record skipped: {e}"),
        Ok(Err(_)) => warn!("{what} record skipped: the database actor is gone"),
        Err(_) => warn!(
            "{what} record skipped: the database did not answer in time ({} ms)",
            RECORD_TIMEOUT.as_millis()
        ),
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl StreamHandler<ShutdownSignal> for Supervisor {
    /// A shutdown trigger: drain, cut short, or log and ignore.
    fn handle(&mut self, signal: ShutdownSignal, ctx: &mut Context<Self>) {
        // A signal always means: exit once the drain is over.
        self.exit.get_or_insert(ExitRule::Outcome);
        let draining = !matches!(self.stage, Stage::Running);
        match command_for(signal, draining) {
            Command::Drain => {
                info!("{signal} received: starting the graceful drain");
                self.begin_drain(ctx);
            }
            Command::CutShort => {
                info!("{signal} received: cutting the drain short");
                self.begin_drain(ctx);
                self.cut_short(ctx);
            }
            Command::Ignore => info!("{signal} received: a drain is already under way"),
        }
        self.maybe_exit(ctx);
    }

    /// The triggers never end the Supervisor; only the drain does.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<DrainReport> for Supervisor {
    type Result = ();

    /// The coordinator's progress: the work's outcome, then quiet.
    fn handle(&mut self, report: DrainReport, ctx: &mut Context<Self>) {
        match report {
            DrainReport::WorkDone(outcome) => self.work_done(outcome),
            DrainReport::Quiet => self.quiet = true,
        }
        self.maybe_exit(ctx);
    }
}

impl Handler<TransportDrain> for Supervisor {
    type Result = actix::ResponseFuture<usize>;

    /// Starts a drain (once) without ending the process; answers the in-flight count.
    fn handle(&mut self, msg: TransportDrain, ctx: &mut Context<Self>) -> Self::Result {
        self.begin_drain_with(Duration::ZERO, msg.drain_timeout, ctx);
        // Idempotent: answers the count as it stands after admission stopped.
        let count = self.coordinator.send(BeginDrain);
        Box::pin(async move { count.await.unwrap_or(0) })
    }
}

impl Handler<TransportEnded> for Supervisor {
    type Result = ();

    /// Drains (if not yet) with the configured timeout, then exits 0.
    fn handle(&mut self, _: TransportEnded, ctx: &mut Context<Self>) {
        info!("end of input");
        self.exit.get_or_insert(ExitRule::Zero);
        let timeout = self.settings.drain_timeout;
        self.begin_drain_with(Duration::ZERO, timeout, ctx);
        self.maybe_exit(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::drain::{Admit, GetSnapshot, Permit};
    use tokio::sync::mpsc;

    /// A transport with nothing to close.
    struct NoListener;

    impl Actor for NoListener {
        type Context = Context<Self>;
    }

    impl Handler<CloseListener> for NoListener {
        type Result = usize;
        fn handle(&mut self, _: CloseListener, _: &mut Context<Self>) -> usize {
            0
        }
    }

    impl Handler<StopTransport> for NoListener {
        type Result = ();
        fn handle(&mut self, _: StopTransport, _: &mut Context<Self>) {}
    }

    const SETTINGS: ShutdownSettings = ShutdownSettings {
        shutdown_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(30),
        idle_grace: Duration::from_millis(100),
    };

    /// Runs a Supervisor without a database; `script` drives it. Answers the
    /// exit code the System stopped with.
    fn run_supervisor<F, Fut>(script: F) -> i32
    where
        F: FnOnce(Addr<Supervisor>, Core, mpsc::UnboundedSender<ShutdownSignal>) -> Fut + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let system = actix_rt::System::new();
        system.block_on(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let triggers = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|s| (s, rx))
            });
            let mut core = None;
            let supervisor = Supervisor::launch(SETTINGS, None, triggers, |c| {
                core = Some(c.clone());
                let t = NoListener.start();
                Transport {
                    close_listener: t.clone().recipient(),
                    stop: t.recipient(),
                }
            });
            let core = core.expect("transport built");
            actix_rt::spawn(script(supervisor, core, tx));
        });
        system.run_with_code().expect("system ran")
    }

    async fn admit(core: &Core) -> Permit {
        core.coordinator
            .send(Admit { conn: None })
            .await
            .expect("alive")
            .expect("admitted")
    }

    async fn outcome(core: &Core) -> Outcome {
        loop {
            let snap = core.coordinator.send(GetSnapshot).await.expect("alive");
            if let Some(outcome) = snap.outcome {
                return outcome;
            }
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_signal_on_an_idle_service_exits_0() {
        let code = run_supervisor(|_, _, signals| async move {
            let _ = signals.send(ShutdownSignal::Terminate);
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn sigquit_cuts_the_work_and_exits_1() {
        let code = run_supervisor(|_, core, signals| async move {
            let mut permit = admit(&core).await;
            let _ = signals.send(ShutdownSignal::Quit);
            assert_eq!(permit.cancelled().await, CancelReason::ShutdownForced);
            permit.mark_cancelled();
        });
        assert_eq!(code, 1);
    }

    /// A protocol drain (tcp_shutdown) that is cut at its deadline does not end
    /// the process; the end of input does, with 0.
    #[test]
    fn a_transport_drain_keeps_running_until_the_input_ends() {
        let code = run_supervisor(|supervisor, core, _signals| async move {
            let mut permit = admit(&core).await;
            let in_flight = supervisor
                .send(TransportDrain {
                    drain_timeout: Duration::ZERO,
                })
                .await
                .expect("alive");
            assert_eq!(in_flight, 1);
            assert_eq!(permit.cancelled().await, CancelReason::DrainTimeout);
            permit.mark_cancelled();
            drop(permit);
            assert!(matches!(outcome(&core).await, Outcome::CutShort { .. }));
            // Still running: a second drain request answers, changing nothing.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let again = supervisor
                .send(TransportDrain {
                    drain_timeout: Duration::from_secs(60),
                })
                .await
                .expect("the supervisor is still running");
            assert_eq!(again, 0);
            supervisor.do_send(TransportEnded);
        });
        assert_eq!(code, 0, "end of input exits 0 even after a cut drain");
    }

    #[test]
    fn a_signal_after_a_finished_transport_drain_exits_with_its_outcome() {
        let code = run_supervisor(|supervisor, core, signals| async move {
            let in_flight = supervisor
                .send(TransportDrain {
                    drain_timeout: Duration::from_secs(5),
                })
                .await
                .expect("alive");
            assert_eq!(in_flight, 0);
            assert_eq!(outcome(&core).await, Outcome::Drained);
            let _ = signals.send(ShutdownSignal::Terminate);
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn signal_table() {
        use ShutdownSignal::*;
        assert_eq!(command_for(Terminate, false), Command::Drain);
        assert_eq!(command_for(Interrupt, false), Command::Drain);
        assert_eq!(command_for(Quit, false), Command::CutShort);
        assert_eq!(command_for(Terminate, true), Command::Ignore);
        assert_eq!(command_for(Interrupt, true), Command::CutShort);
        assert_eq!(command_for(Quit, true), Command::CutShort);
    }
}
