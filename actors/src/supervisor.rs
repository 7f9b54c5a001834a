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
    /// Where jobs are written.
    pub db: Addr<DbActor>,
    /// The published phase, for health answers and `Connection: close`.
    pub phase: watch::Receiver<Phase>,
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
    db: Addr<DbActor>,
    transport: Transport,
    stage: Stage,
    /// The work's outcome, once the coordinator has reported it.
    outcome: Option<Outcome>,
    /// Whether every connection has closed.
    quiet: bool,
    /// The drain records, written in the background, in order.
    records: Option<actix_rt::task::JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the Supervisor, the DrainCoordinator and the DbActor; builds the
    /// transport with `transport` from the [`Core`]; listens to `triggers`.
    pub fn launch<S, F>(
        settings: ShutdownSettings,
        db: DbActor,
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
                db: db.start(),
                phase,
            };
            let transport = transport(&core);
            ctx.add_stream(triggers);
            Supervisor {
                settings,
                coordinator: core.coordinator,
                db: core.db,
                transport,
                stage: Stage::Running,
                outcome: None,
                quiet: false,
                records: None,
            }
        })
    }

    fn begin_drain(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.stage, Stage::Running) {
            return;
        }
        info!("draining server");
        // Sent now, so health turns 503 before anything else happens.
        let begun = self.coordinator.send(BeginDrain);
        let db = self.db.clone();
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
        self.stage = Stage::Draining {
            delay: None,
            closing: false,
        };
        let delay = self.settings.shutdown_delay;
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
        let Stage::Draining { delay, closing, .. } = &mut self.stage else {
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
            drain_timeout: self.settings.drain_timeout,
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
        let db = self.db.clone();
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
        let (Some(outcome), true) = (self.outcome, self.quiet) else {
            return;
        };
        if matches!(self.stage, Stage::Exiting) {
            return;
        }
        self.stage = Stage::Exiting;
        self.transport.stop.do_send(StopTransport);
        info!("closing DB");
        let records = self.records.take();
        let db = self.db.clone();
        let code = outcome.exit_code();
        ctx.spawn(
            async move {
                if let Some(records) = records {
                    let _ = records.await;
                }
                let _ = db.send(ClosePool).await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
