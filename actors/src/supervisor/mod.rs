//! The Supervisor: the one owner of shutdown.
//!
//! - `settings` — [`ShutdownSettings`] and the one [`StopPlan`].
//! - `trigger` — what can begin a shutdown ([`Trigger`]) and the one
//!   table of what each request does ([`command_for`]).
//! - `state` — the shutdown's state, one enum (`ShutdownState`), and the
//!   milestones the phases publish.
//! - `phases` — the engine's own phases: `delay`, `stop_accepting`, `drain`,
//!   `close_persistent`.
//! - `report` — the [`Report`] a run answers with.
//!
//! `Supervisor::launch` starts the DrainCoordinator, lets the caller build
//! its transport from the resulting [`Core`], builds the phases from the plan
//! (the engine's, then the application's stop hooks, last registered first),
//! and subscribes to the triggers. A trigger begins the drain (probes 503,
//! `Connection: close`, the drain-begin hooks) and runs the phases:
//!
//! | phase | what it does | its own deadline |
//! |---|---|---|
//! | `delay` | keeps serving until the delay since the drain began is over | the delay |
//! | `stop_accepting` | starts the drain deadline, closes the listener, says goodbye to persistent connections | phase timeout |
//! | `drain` | waits for the work and the connections that carry it | drain timeout + 2 × linger + 500 ms |
//! | `close_persistent` | waits for the persistent connections, closes those left `WS_CLOSE_TIMEOUT_MS` after the goodbyes | `WS_CLOSE_TIMEOUT_MS` + 100 ms |
//! | `stop_admin` | stops the admin listener (when there is one) | phase timeout |
//! | the stop hooks | whatever the application registered | their own |
//!
//! A prestop holds the phases after `delay`, and a protocol drain those after
//! `drain`, until something asks the process to exit. The budget
//! (`SHUTDOWN_TIMEOUT_MS`) runs from the prestop or the first trigger that
//! ends the process. A forced shutdown (a second SIGINT, or SIGQUIT) cuts the
//! drain and skips the waits that remain; the hooks still run. At the end: one
//! report line, the transport, the coordinator and every owned component
//! stopped, and the [`Report`] handed back. The Supervisor never stops the
//! System: whoever ran the engine decides what the process does next.

mod phases;
pub(crate) mod report;
mod settings;
mod state;
pub(crate) mod trigger;

use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Recipient,
    ResponseFuture, StreamHandler, WrapFuture,
};
use futures_util::future::LocalBoxFuture;
use futures_util::stream::LocalBoxStream;
use log::{info, warn};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::census::Census;
use crate::drain::{BeginDrain, CancelReason, CutDrain, DrainCoordinator, DrainReport, Outcome};
use crate::lifecycle::{Control, Lifecycle, PhaseCtx, StopActor};
use crate::metrics::Metrics;
use crate::persistent::settings::Tally;
use crate::transport::{Core, PreStop, StopTransport, Transport, TransportDrain, TransportEnded};

pub use report::{PhaseRecord, PhaseResult, Report};
pub use settings::{defaults, phase, BadSetting, PlannedPhase, ShutdownSettings, StopPlan};
use state::Milestones;
pub(crate) use state::ShutdownState;
pub use trigger::{command_for, Ask, Command, ExitRule, ShutdownOrder, Trigger};

#[cfg(test)]
mod tests;

/// How long an actor may take to answer at the exit (they answer at once).
const STOP_ACTOR_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the exit waits for the actors and tasks to end by themselves.
const SETTLE_TIMEOUT: Duration = Duration::from_millis(300);

/// The work a stop hook does.
pub(crate) type StopFn = Box<dyn FnOnce(PhaseCtx) -> LocalBoxFuture<'static, Result<(), String>>>;

/// One registered stop hook.
pub(crate) struct StopHook {
    pub name: &'static str,
    /// Its own deadline; `None`: the phase timeout.
    pub timeout: Option<Duration>,
    pub run: StopFn,
}

/// Told the number in flight when the drain begins.
pub(crate) type DrainBeginFn = Box<dyn FnOnce(DrainBegun)>;

/// What a drain-begin hook ([`crate::Engine::on_drain_begin`]) is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainBegun {
    /// Requests in flight when admission of new ones began to end.
    pub in_flight: usize,
    /// What began the drain.
    pub trigger: Trigger,
}

/// A request to stop from a [`crate::Handle`] or a signal.
pub(crate) struct Asked {
    pub ask: Ask,
    pub trigger: Trigger,
}

/// Starts the admin listener on the engine's core; answers its stop step.
pub(crate) type AdminStart = Box<dyn FnOnce(&Core) -> StopFn>;

/// Everything [`Supervisor::launch`] starts from.
pub(crate) struct Launch {
    pub settings: ShutdownSettings,
    pub plan: StopPlan,
    pub hooks: Vec<StopHook>,
    pub drain_begin: Vec<DrainBeginFn>,
    pub owned: Vec<Recipient<StopActor>>,
    pub metrics: Metrics,
    pub census: Census,
    /// The admin listener's stop step, once it is serving.
    pub admin: Option<AdminStart>,
    /// The accept loops' gate.
    pub handover: crate::handoff::Handover,
    pub asks: LocalBoxStream<'static, Asked>,
    pub prestops: LocalBoxStream<'static, oneshot::Sender<()>>,
}

/// See the module documentation.
pub struct Supervisor {
    settings: ShutdownSettings,
    coordinator: Addr<DrainCoordinator>,
    /// Stops the transport at the exit (stdin keeps reading until then).
    transport: Recipient<StopTransport>,
    /// Components the application handed over: stopped at the exit.
    owned: Vec<Recipient<StopActor>>,
    metrics: Metrics,
    census: Census,
    /// The budget, the exit request and the force, for the runner and the phases.
    control: watch::Sender<Control>,
    milestones: watch::Sender<Milestones>,
    state: ShutdownState,
    drain_begin: Vec<DrainBeginFn>,
    /// How the persistent connections ended.
    tally: Arc<Tally>,
    /// Where the report goes once everything has stopped.
    done: Option<oneshot::Sender<Report>>,
}

impl Supervisor {
    /// Starts the Supervisor and the DrainCoordinator; builds the transport
    /// with `build` from the [`Core`]; builds the phases from the plan.
    /// Answers where the report will come.
    pub(crate) fn launch<F>(launch: Launch, build: F) -> oneshot::Receiver<Report>
    where
        F: FnOnce(&Core) -> Transport,
    {
        let (done, report) = oneshot::channel();
        Supervisor::create(move |ctx| {
            let Launch {
                settings,
                plan,
                hooks,
                drain_begin,
                owned,
                metrics,
                census,
                admin,
                handover,
                asks,
                prestops,
            } = launch;
            let coordinator = DrainCoordinator::new(
                ctx.address().recipient(),
                settings.linger(),
                Some(metrics.clone()),
            )
            .counted_in(census.clone());
            let state = coordinator.subscribe();
            let admission = coordinator.admission();
            let farewell = coordinator.farewell();
            let tally = Arc::new(Tally::default());
            let coordinator = coordinator.start();
            let core = Core {
                coordinator: coordinator.clone(),
                admission,
                state,
                metrics: metrics.clone(),
                census: census.clone(),
                linger: settings.linger(),
                supervisor: ctx.address(),
                farewell,
                tally: tally.clone(),
                persistent: settings.persistent,
                handover,
            };
            let transport = build(&core);
            let (control, _) = watch::channel(Control::default());
            let (milestones, _) = watch::channel(Milestones::default());

            // The steps, by name; the plan says in what order they run.
            let mut steps: Vec<(&'static str, StopFn)> = Vec::new();
            let marks = milestones.clone();
            steps.push((
                phase::DELAY,
                Box::new(move |ctx| Box::pin(phases::delay(marks, ctx))),
            ));
            let accepting = phases::StopAccepting {
                coordinator: coordinator.clone(),
                close_listener: transport.close_listener.clone(),
                milestones: milestones.clone(),
                linger: settings.linger(),
                idle_grace: settings.idle_grace,
                census: census.clone(),
            };
            steps.push((
                phase::STOP_ACCEPTING,
                Box::new(move |ctx| Box::pin(phases::stop_accepting(accepting, ctx))),
            ));
            let progress = milestones.subscribe();
            steps.push((
                phase::DRAIN,
                Box::new(move |_| Box::pin(phases::drain(progress))),
            ));
            let closing = phases::ClosingPersistent {
                coordinator: coordinator.clone(),
                progress: milestones.subscribe(),
                ws_close_timeout: settings.persistent.ws_close_timeout,
            };
            steps.push((
                phase::CLOSE_PERSISTENT,
                Box::new(move |ctx| Box::pin(phases::close_persistent(closing, ctx))),
            ));
            if let Some(admin) = admin {
                steps.push((phase::STOP_ADMIN, admin(&core)));
            }
            steps.extend(hooks.into_iter().map(|h| (h.name, h.run)));
            let mut lifecycle = Lifecycle::new();
            lifecycle.stall(settings.stalled_phase.clone());
            // Registered last-to-run first: the registry runs them in reverse.
            for planned in plan.phases().iter().rev() {
                match steps.iter().position(|(name, _)| *name == planned.name) {
                    Some(i) => {
                        let (_, run) = steps.swap_remove(i);
                        lifecycle.register(planned.name, planned.timeout, run);
                    }
                    None => warn!("shutdown phase {} has nothing to run", planned.name),
                }
            }

            ctx.add_stream(asks);
            ctx.add_stream(prestops);
            Supervisor {
                settings,
                coordinator,
                transport: transport.stop,
                owned,
                metrics,
                census,
                control,
                milestones,
                state: ShutdownState::Active { lifecycle },
                drain_begin,
                tally,
                done: Some(done),
            }
        });
        report
    }

    /// Begins the drain and runs the phases (once; later triggers only
    /// change the [`Control`]).
    fn start(
        &mut self,
        trigger: Trigger,
        delay: Duration,
        drain_timeout: Duration,
        before_exit: Option<&'static str>,
        ctx: &mut Context<Self>,
    ) {
        let order = ShutdownOrder {
            trigger,
            began: Instant::now(),
            delay,
            drain_timeout,
        };
        let previous = std::mem::replace(
            &mut self.state,
            ShutdownState::Draining {
                order: order.clone(),
            },
        );
        let ShutdownState::Active { mut lifecycle } = previous else {
            self.state = previous;
            return;
        };
        info!("draining server");
        // A handoff is not a stop: the service manager's main process is the successor now.
        if order.trigger.successor().is_none() {
            crate::notify::stopping();
        }
        // Sent now, so readiness turns 503 before anything else happens; its
        // answer (the count in flight) goes to the drain-begin hooks.
        let begun = self.coordinator.send(BeginDrain);
        let hooks = std::mem::take(&mut self.drain_begin);
        let trigger = order.trigger;
        self.census.spawn(async move {
            let Ok(in_flight) = begun.await else { return };
            for hook in hooks {
                hook(DrainBegun { in_flight, trigger });
            }
        });
        // The order says how long the delay and the work may run (a prestop's
        // delay, a protocol drain's timeout).
        lifecycle.set_timeout(phase::DELAY, delay);
        lifecycle.set_timeout(phase::DRAIN, self.settings.drain_phase(drain_timeout));
        let control = self.control.subscribe();
        let metrics = self.metrics.clone();
        let milestones = self.milestones.subscribe();
        let exit_zero = self.control.subscribe();
        let tally = self.tally.clone();
        let run = async move {
            lifecycle
                .run(
                    order.clone(),
                    control,
                    before_exit,
                    Some(metrics),
                    move |phases| {
                        let zero = exit_zero.borrow().exit == Some(ExitRule::Zero);
                        let work = milestones.borrow().work;
                        Report::new(Some(order.trigger), phases.to_vec(), work, zero)
                            .with_persistent(tally.figures())
                    },
                )
                .await
        };
        ctx.spawn(
            run.into_actor(self)
                .map(|phases, act, ctx| act.finish(phases, ctx)),
        );
    }

    /// Something asked the process to exit: the phases held go on, and the
    /// budget starts (if a prestop has not started it).
    fn request_exit(&mut self, rule: ExitRule) {
        let budget = self.settings.budget;
        self.control.send_modify(|c| {
            c.exit.get_or_insert(rule);
            if let Some(budget) = budget {
                c.budget_end.get_or_insert(Instant::now() + budget);
            }
        });
    }

    fn exiting(&self) -> bool {
        self.control.borrow().exit.is_some()
    }

    /// Forces the shutdown: the drain is cut and the waits that remain are skipped.
    fn force(&mut self) {
        self.control.send_modify(|c| c.forced = true);
        self.coordinator.do_send(CutDrain {
            reason: CancelReason::ShutdownForced,
        });
    }

    /// The phases are over: the report, then every actor stops, then this one.
    /// (Spawned, not waited: the mailbox stays open for late messages.)
    fn finish(&mut self, phases: Vec<PhaseRecord>, ctx: &mut Context<Self>) {
        let zero = self.control.borrow().exit == Some(ExitRule::Zero);
        let trigger = self.state.trigger();
        let work = self.milestones.borrow().work;
        let coordinator = self.coordinator.clone();
        let transport = self.transport.clone();
        let owned = std::mem::take(&mut self.owned);
        let census = self.census.clone();
        let tally = self.tally.clone();
        let stop_all = async move {
            // The coordinator's report carries the figures; without one (the
            // drain phase was cut before the work ended) its state has them.
            let mut report =
                Report::new(trigger, phases, work, zero).with_persistent(tally.figures());
            if work.is_none() {
                let snapshot = coordinator.send(crate::drain::GetSnapshot);
                if let Ok(Ok(s)) = tokio::time::timeout(STOP_ACTOR_TIMEOUT, snapshot).await {
                    report.completed = s.completed_in_drain;
                }
            }
            report.census = Some(census.clone());
            info!("{report}");
            // `do_send`: every stop is delivered, however long an actor takes.
            transport.do_send(StopTransport);
            coordinator.do_send(StopActor);
            for component in owned {
                component.do_send(StopActor);
            }
            // Every actor but this one, and every task, ends by itself now:
            // wait for that (an event), within the exit's allowance.
            let _ = tokio::time::timeout(SETTLE_TIMEOUT, census.settled(1, 0)).await;
            report
        };
        ctx.spawn(stop_all.into_actor(self).map(|report, act, ctx| {
            act.state = ShutdownState::Stopped { report };
            ctx.stop();
        }));
    }

    /// A request to stop: drain, cut short, or log and ignore.
    fn asked(&mut self, ask: Ask, trigger: Trigger, ctx: &mut Context<Self>) {
        if matches!(self.state, ShutdownState::Stopped { .. }) {
            return;
        }
        // A drain started by the transport's protocol counts as a signal's
        // drain (a SIGINT then cuts it); a prestop does not (a SIGTERM or a
        // SIGINT then continues it).
        let active = matches!(self.state, ShutdownState::Active { .. });
        let prestop = self.state.trigger() == Some(Trigger::PreStop);
        let exiting_before = self.exiting();
        let draining = exiting_before || (!active && !prestop);
        self.request_exit(ExitRule::Outcome);
        let (mut delay, timeout) = (self.settings.shutdown_delay, self.settings.drain_timeout);
        if trigger.successor().is_some() {
            // No load balancer to tell: the successor accepts already.
            delay = Duration::ZERO;
        }
        match command_for(ask, draining) {
            Command::Drain => {
                if active {
                    info!("{trigger} received: starting the graceful drain");
                } else {
                    info!("{trigger} received: continuing the drain begun by the prestop");
                }
                self.start(trigger, delay, timeout, None, ctx);
            }
            Command::Force => {
                info!("{trigger} received: cutting the drain short");
                self.start(trigger, delay, timeout, None, ctx);
                self.force();
            }
            Command::Ignore if exiting_before => {
                info!("{trigger} received: a drain is already under way")
            }
            Command::Ignore => {
                info!("{trigger} received: a drain is already under way; exiting once it is over")
            }
        }
    }

    /// Begins the drain's first phase (once); resolves when the delay is over.
    fn prestop(&mut self, ctx: &mut Context<Self>) -> impl std::future::Future<Output = ()> {
        if matches!(self.state, ShutdownState::Active { .. }) {
            info!(
                "prestop received: draining; serving for {} ms before answering",
                self.settings.prestop_delay.as_millis()
            );
            if let Some(budget) = self.settings.budget {
                self.control.send_modify(|c| {
                    c.budget_end.get_or_insert(Instant::now() + budget);
                });
            }
            let (delay, timeout) = (self.settings.prestop_delay, self.settings.drain_timeout);
            self.start(Trigger::PreStop, delay, timeout, Some(phase::DELAY), ctx);
        } else {
            info!("prestop received: a drain is already under way");
        }
        let mut milestones = self.milestones.subscribe();
        async move {
            let _ = milestones.wait_for(|m| m.delay_over).await;
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.census.actor_started();
    }

    /// The last actor to stop: it hands the report back.
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
        let report = match &self.state {
            ShutdownState::Stopped { report } => report.clone(),
            // Stopped before the shutdown ended (the System went away).
            other => Report::new(other.trigger(), Vec::new(), None, false),
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(report);
        }
    }
}

impl StreamHandler<Asked> for Supervisor {
    /// A signal, or a [`crate::Handle`]'s request.
    fn handle(&mut self, asked: Asked, ctx: &mut Context<Self>) {
        self.asked(asked.ask, asked.trigger, ctx);
    }

    /// The triggers never end the Supervisor; only the shutdown does.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// The handoff's drain: the listeners were handed to a successor.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub(crate) struct HandedOver {
    /// The successor's pid.
    pub successor: u32,
}

impl Handler<HandedOver> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: HandedOver, ctx: &mut Context<Self>) {
        let trigger = Trigger::Takeover {
            successor: msg.successor,
        };
        self.asked(Ask::Drain, trigger, ctx);
    }
}

impl StreamHandler<oneshot::Sender<()>> for Supervisor {
    /// A [`crate::Handle::prestop`]: answered once the delay is over.
    fn handle(&mut self, reply: oneshot::Sender<()>, ctx: &mut Context<Self>) {
        let over = self.prestop(ctx);
        ctx.spawn(
            async move {
                over.await;
                let _ = reply.send(());
            }
            .into_actor(self),
        );
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<DrainReport> for Supervisor {
    type Result = ();

    /// The coordinator's progress: the work's end, then quiet.
    fn handle(&mut self, report: DrainReport, _: &mut Context<Self>) {
        match report {
            DrainReport::WorkDone(work) => {
                match work.outcome {
                    Outcome::Drained => info!("drain complete: every request answered"),
                    Outcome::CutShort {
                        reason,
                        remaining,
                        cancelled,
                    } => warn!(
                        "drain cut short ({reason}): {cancelled} request(s) cut short \
                         of {remaining} in flight"
                    ),
                }
                self.milestones.send_modify(|m| {
                    m.work.get_or_insert(work);
                });
            }
            DrainReport::Quiet => self.milestones.send_modify(|m| m.quiet = true),
            DrainReport::Settled => self.milestones.send_modify(|m| m.settled = true),
        }
    }
}

impl Handler<PreStop> for Supervisor {
    type Result = ResponseFuture<()>;

    /// Begins the drain's first phase (once); answers when the delay is over.
    fn handle(&mut self, _: PreStop, ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(self.prestop(ctx))
    }
}

impl Handler<TransportDrain> for Supervisor {
    type Result = ResponseFuture<usize>;

    /// Starts a drain (once) without ending the process; answers the
    /// in-flight count once admission has stopped.
    fn handle(&mut self, msg: TransportDrain, ctx: &mut Context<Self>) -> Self::Result {
        let first = matches!(self.state, ShutdownState::Active { .. });
        self.start(
            Trigger::ProtocolDrain,
            Duration::ZERO,
            msg.drain_timeout,
            Some(phase::DRAIN),
            ctx,
        );
        let mut milestones = self.milestones.subscribe();
        let coordinator = self.coordinator.clone();
        Box::pin(async move {
            let stopped = milestones
                .wait_for(|m| m.admission_stopped.is_some())
                .await
                .ok()
                .and_then(|m| m.admission_stopped);
            match stopped {
                // The count the gate closed on.
                Some(in_flight) if first => in_flight,
                // A later protocol drain: what is in flight now.
                _ => coordinator.send(BeginDrain).await.unwrap_or(0),
            }
        })
    }
}

impl Handler<TransportEnded> for Supervisor {
    type Result = ();

    /// Drains (if not yet) with the configured timeout, then exits 0.
    fn handle(&mut self, _: TransportEnded, ctx: &mut Context<Self>) {
        info!("end of input");
        self.request_exit(ExitRule::Zero);
        let timeout = self.settings.drain_timeout;
        self.start(Trigger::EndOfInput, Duration::ZERO, timeout, None, ctx);
    }
}
