//! The Supervisor: the one owner of shutdown.
//!
//! [`Supervisor::launch`] starts the DrainCoordinator, the DbActor and the
//! Heartbeat (once), lets the caller build its transport from the resulting
//! [`Core`], registers every component's stop phase with the [`Lifecycle`]
//! as it starts, and subscribes to the shutdown triggers.
//!
//! A trigger — a signal, a prestop ([`PreStop`]), a protocol drain
//! ([`TransportDrain`]) or the end of input ([`TransportEnded`]) — begins the
//! drain (health and readiness 503, `Connection: close`, a `drain_begin`
//! record) and runs the phases, last registered first:
//!
//! | phase | what it does | its own deadline |
//! |---|---|---|
//! | `delay` | keeps serving until the delay since the drain began is over | the delay |
//! | `stop_accepting` | stops admission (the drain deadline starts), closes the listener | phase timeout |
//! | `drain` | waits for the work and the connections | drain timeout + 2 × linger + 500 ms |
//! | `stop_admin` | stops the admin listener (registered by the binary) | phase timeout |
//! | `stop_background` | stops the heartbeat between two beats | phase timeout |
//! | `flush_telemetry` | exports the spans so far | phase timeout |
//! | `close_database` | writes `drain_complete` with the report, closes the pool | phase timeout, within the reserve |
//!
//! A prestop holds the phases after `delay`, and a protocol drain those after
//! `drain`, until something asks the process to exit. The budget
//! (`SHUTDOWN_TIMEOUT_MS`) runs from the prestop or the first trigger that
//! ends the process. A forced shutdown (a second SIGINT, or SIGQUIT) cuts the
//! drain and skips the waits that remain, but still writes the records and
//! closes the pool. At the end: one report line, the transport and every
//! actor stopped, and the System stopped with the exit code.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient,
    ResponseFuture, StreamHandler, WrapFuture,
};
use futures_util::Stream;
use log::{info, warn};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::census;
use crate::db::{ClosePool, DbActor, RecordDrainBegin, RecordDrainComplete};
use crate::drain::{
    BeginDrain, CancelReason, CutShort, DrainCoordinator, DrainReport, GetSnapshot, ListenerClosed,
    Outcome, Phase, StopAdmitting, CANCEL_ALLOWANCE,
};
use crate::heartbeat::Heartbeat;
use crate::lifecycle::{BudgetShort, Control, Lifecycle, PhaseCtx, PhaseRecord, StopActor};
use crate::metrics::Metrics;
use crate::signals::ShutdownSignal;

/// The shortest time connections get to close once the work is done, before
/// they are closed for them.
const MIN_LINGER: Duration = Duration::from_secs(1);

/// The phase names, in the order they run.
pub mod phase {
    /// Keeps serving (readiness 503) so load balancers notice.
    pub const DELAY: &str = "delay";
    /// Stops admission and closes the listener.
    pub const STOP_ACCEPTING: &str = "stop_accepting";
    /// Waits for the work in flight and the connections.
    pub const DRAIN: &str = "drain";
    /// Stops the admin listener.
    pub const STOP_ADMIN: &str = "stop_admin";
    /// Stops the background workers (the heartbeat).
    pub const STOP_BACKGROUND: &str = "stop_background";
    /// Exports the telemetry gathered so far.
    pub const FLUSH_TELEMETRY: &str = "flush_telemetry";
    /// Writes the final records and closes the database pool.
    pub const CLOSE_DATABASE: &str = "close_database";
    /// Every phase, in the order they run.
    pub const ALL: [&str; 7] = [
        DELAY,
        STOP_ACCEPTING,
        DRAIN,
        STOP_ADMIN,
        STOP_BACKGROUND,
        FLUSH_TELEMETRY,
        CLOSE_DATABASE,
    ];
}

/// Timings of the shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownSettings {
    /// After a signal: how long the service keeps serving (readiness 503)
    /// before it stops accepting — the load balancer's time to notice.
    pub shutdown_delay: Duration,
    /// The same for a prestop (`SHUTDOWN_DELAY_MS`, or 5000 ms when that is 0).
    pub prestop_delay: Duration,
    /// How long in-flight work may run once admission has stopped.
    pub drain_timeout: Duration,
    /// How long connections may stay open, idle, after the listener closed.
    pub idle_grace: Duration,
    /// The whole shutdown's budget (`SHUTDOWN_TIMEOUT_MS`); `None` in stdin
    /// mode, where the drain deadline alone bounds the work.
    pub budget: Option<Duration>,
    /// The own deadline of every phase but the delay and the drain.
    pub phase_timeout: Duration,
    /// How often the heartbeat stamps `last_seen_at`.
    pub heartbeat: Duration,
    /// Test-only: a phase that hangs after its work until its deadline.
    pub stalled_phase: Option<String>,
}

impl ShutdownSettings {
    /// The hard deadline for connections once the work is done.
    fn linger(&self) -> Duration {
        MIN_LINGER.max(self.idle_grace)
    }

    /// The drain phase's own deadline for a drain of `drain_timeout`: the
    /// deadline, then the linger for cancelled work and the allowance for
    /// cancels to be confirmed, then the linger for connections.
    fn drain_phase(&self, drain_timeout: Duration) -> Duration {
        drain_timeout + 2 * self.linger() + CANCEL_ALLOWANCE
    }

    /// Each phase's own deadline. `admin` says whether prestop exists.
    fn timeout(&self, name: &str, admin: bool) -> Duration {
        match name {
            phase::DELAY if admin => self.shutdown_delay.max(self.prestop_delay),
            phase::DELAY => self.shutdown_delay,
            phase::DRAIN => self.drain_phase(self.drain_timeout),
            _ => self.phase_timeout,
        }
    }

    /// The phases a service with (or without) a database and an admin
    /// listener registers, in order of registration, with their deadlines.
    pub fn plan(&self, db: bool, admin: bool) -> Vec<(&'static str, Duration)> {
        phase::ALL
            .iter()
            .rev()
            .filter(|&&p| match p {
                phase::CLOSE_DATABASE | phase::STOP_BACKGROUND => db,
                phase::STOP_ADMIN => admin,
                _ => true,
            })
            .map(|&p| (p, self.timeout(p, admin)))
            .collect()
    }

    /// Refuses a budget that cannot hold the phases of [`ShutdownSettings::plan`].
    pub fn check_budget(&self, db: bool, admin: bool) -> Result<(), BudgetShort> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let timeouts: Vec<Duration> = self.plan(db, admin).into_iter().map(|(_, t)| t).collect();
        crate::lifecycle::check_budget(&timeouts, budget)
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
    /// The metrics registry.
    pub metrics: Metrics,
    /// Where a transport's own protocol asks for a drain.
    pub drain: Recipient<TransportDrain>,
    /// Where a transport reports the end of its input.
    pub ended: Recipient<TransportEnded>,
    /// Where the admin listener asks for a prestop drain.
    pub prestop: Recipient<PreStop>,
}

/// Tells the transport to stop accepting: close the listening socket, serving
/// what had already reached it. Answers how many queued connections it took.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseListener;

/// Tells the transport to stop serving altogether (the work is over); it
/// answers once it has stopped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopTransport;

/// The transport's own protocol asks for a drain (stdin's `tcp_shutdown`): it
/// runs like a signal's drain, without a shutdown delay, but it does not end
/// the process. Answers the number of requests in flight once admission stopped.
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

/// A prestop hook (`POST /admin/prestop`): begin the drain's first phase and
/// answer once the delay is over. The phases after it wait for a signal.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PreStop;

/// When the process exits once the shutdown is over.
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
/// `exiting`: a signal has already asked the process to exit.
fn command_for(signal: ShutdownSignal, exiting: bool) -> Command {
    match (signal, exiting) {
        (ShutdownSignal::Terminate | ShutdownSignal::Interrupt, false) => Command::Drain,
        (ShutdownSignal::Terminate, true) => Command::Ignore,
        (ShutdownSignal::Interrupt, true) | (ShutdownSignal::Quit, _) => Command::CutShort,
    }
}

/// What one shutdown is asked to do; fixed by its first trigger.
#[derive(Debug, Clone)]
struct Plan {
    /// What began it.
    trigger: String,
    /// When the drain began.
    began: Instant,
    /// How long to keep serving from `began`.
    delay: Duration,
    /// How long in-flight work may run once admission stops.
    drain_timeout: Duration,
}

/// What the shutdown has learned so far, shared by the Supervisor and the
/// stop phases it registered (one thread, the Supervisor's).
#[derive(Default)]
struct Journal {
    plan: Option<Plan>,
    /// The work's outcome, once the coordinator reported it.
    outcome: Option<Outcome>,
    /// Requests answered with their real result during the drain.
    completed: usize,
    /// The phases that have ended, in order.
    phases: Vec<PhaseRecord>,
    /// The `drain_begin` record, written in the background.
    begin_record: Option<actix_rt::task::JoinHandle<()>>,
}

/// Milestones the phases publish for the messages that wait on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Milestones {
    /// The delay is over (a prestop answers).
    delay_over: bool,
    /// Admission has stopped (a protocol drain answers).
    admission_stopped: bool,
    /// The coordinator reported the work's outcome.
    work_done: bool,
    /// Every connection has closed.
    quiet: bool,
}

/// Where the shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Serving; no trigger yet.
    Running,
    /// The phases are running.
    ShuttingDown,
    /// The phases are over; the actors are stopping.
    Exiting,
}

/// See the module documentation.
pub struct Supervisor {
    settings: ShutdownSettings,
    coordinator: Addr<DrainCoordinator>,
    db: Option<Addr<DbActor>>,
    heartbeat: Option<Addr<Heartbeat>>,
    /// Stops the transport at the exit (stdin keeps reading until then).
    transport: Recipient<StopTransport>,
    metrics: Metrics,
    /// Taken by the first trigger.
    lifecycle: Option<Lifecycle>,
    /// The budget, the exit request and the force, for the runner and the phases.
    control: watch::Sender<Control>,
    milestones: watch::Sender<Milestones>,
    journal: Rc<RefCell<Journal>>,
    stage: Stage,
    /// Set once something asked for the process to end.
    exit: Option<ExitRule>,
    /// The code the System stops with.
    code: i32,
}

/// What the caller hands to [`Supervisor::launch`] besides the settings.
pub struct Components {
    /// The database, opened (the HTTP service); `None` in stdin mode.
    pub db: Option<DbActor>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Exports the telemetry gathered so far (blocking; run off the actor thread).
    pub flush_telemetry: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

/// The longest the `drain_begin` record may take.
const BEGIN_RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an actor may take to answer at the exit (they answer at once).
const STOP_ACTOR_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the exit waits for the actors and tasks to end by themselves.
const SETTLE_TIMEOUT: Duration = Duration::from_millis(300);

/// Sets a milestone when dropped: whether its phase finished, failed or was
/// cut at its deadline, whoever waits on the milestone is answered.
struct Mark {
    milestones: watch::Sender<Milestones>,
    set: fn(&mut Milestones),
}

impl Drop for Mark {
    fn drop(&mut self) {
        self.milestones.send_modify(self.set);
    }
}

impl Supervisor {
    /// Starts the Supervisor, the DrainCoordinator, the DbActor and the
    /// Heartbeat (with a database); builds the transport with `build` from the
    /// [`Core`] (it may register phases of its own, such as the admin
    /// listener's); registers the stop phases; listens to `triggers`.
    pub fn launch<S, F>(
        settings: ShutdownSettings,
        components: Components,
        triggers: S,
        build: F,
    ) -> Addr<Supervisor>
    where
        S: Stream<Item = ShutdownSignal> + 'static,
        F: FnOnce(&Core, &mut Lifecycle) -> Transport,
    {
        Supervisor::create(move |ctx| {
            let Components {
                db,
                metrics,
                flush_telemetry,
            } = components;
            let me = ctx.address();
            let coordinator = DrainCoordinator::new(me.clone().recipient(), settings.linger())
                .with_metrics(metrics.clone());
            let phase = coordinator.subscribe();
            let core = Core {
                coordinator: coordinator.start(),
                db: db.map(Actor::start),
                phase,
                metrics: metrics.clone(),
                drain: me.clone().recipient(),
                ended: me.clone().recipient(),
                prestop: me.recipient(),
            };
            let journal = Rc::new(RefCell::new(Journal::default()));
            let (control, _) = watch::channel(Control::default());
            let (milestones, _) = watch::channel(Milestones::default());
            let mut lifecycle = Lifecycle::new();
            lifecycle.stall(settings.stalled_phase.clone());
            let timeout = |name| settings.timeout(name, false);

            // In order of start: the database first, so it closes last.
            if let Some(db) = core.db.clone() {
                let (journal, coordinator) = (journal.clone(), core.coordinator.clone());
                lifecycle.register(
                    phase::CLOSE_DATABASE,
                    timeout(phase::CLOSE_DATABASE),
                    |ctx| close_database(db, coordinator, journal, ctx),
                );
            }
            lifecycle.register(
                phase::FLUSH_TELEMETRY,
                timeout(phase::FLUSH_TELEMETRY),
                |_| async move {
                    // On a thread of its own: an exporter that hangs is cut
                    // at the deadline and cannot hold the exit.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    std::thread::spawn(move || {
                        let _ = tx.send(flush_telemetry());
                    });
                    rx.await
                        .unwrap_or_else(|_| Err("the exporter panicked".to_string()))
                },
            );
            let heartbeat = core
                .db
                .clone()
                .map(|db| Heartbeat::new(db, settings.heartbeat).start());
            if let Some(heartbeat) = heartbeat.clone() {
                lifecycle.register(
                    phase::STOP_BACKGROUND,
                    timeout(phase::STOP_BACKGROUND),
                    |ctx| async move {
                        // `do_send`: delivered however this phase ends (a
                        // dropped `send` is never handled). Then wait until
                        // the beat in progress, if any, is over.
                        heartbeat.do_send(StopActor);
                        let stopped = heartbeat.send(StopActor);
                        let _ = tokio::time::timeout_at(ctx.deadline, stopped).await;
                        Ok(())
                    },
                );
            }

            let transport = build(&core, &mut lifecycle);
            let admin = lifecycle.stop_order().contains(&phase::STOP_ADMIN);

            let coordinator = core.coordinator.clone();
            let marks = milestones.clone();
            let progress = milestones.subscribe();
            let drain_journal = journal.clone();
            lifecycle.register(phase::DRAIN, timeout(phase::DRAIN), move |_| {
                drain(progress, drain_journal)
            });
            let close_listener = transport.close_listener.clone();
            let (accept_journal, linger) = (journal.clone(), settings.linger());
            let idle_grace = settings.idle_grace;
            lifecycle.register(
                phase::STOP_ACCEPTING,
                timeout(phase::STOP_ACCEPTING),
                move |ctx| {
                    let plan = accept_journal.borrow().plan.clone();
                    let drain_timeout = plan.map_or(Duration::ZERO, |p| p.drain_timeout);
                    stop_accepting(
                        coordinator,
                        close_listener,
                        marks,
                        within_budget(drain_timeout, &ctx, 2 * linger + CANCEL_ALLOWANCE),
                        idle_grace,
                    )
                },
            );
            let (delay_journal, marks) = (journal.clone(), milestones.clone());
            lifecycle.register(
                phase::DELAY,
                settings.timeout(phase::DELAY, admin),
                move |ctx| {
                    let plan = delay_journal.borrow().plan.clone();
                    delay(plan, marks, ctx)
                },
            );

            ctx.add_stream(triggers);
            Supervisor {
                settings,
                coordinator: core.coordinator,
                db: core.db,
                heartbeat,
                transport: transport.stop,
                metrics,
                lifecycle: Some(lifecycle),
                control,
                milestones,
                journal,
                stage: Stage::Running,
                exit: None,
                code: 1,
            }
        })
    }

    /// Begins the drain and runs the phases (once; later triggers only
    /// change the [`Control`]).
    fn start(
        &mut self,
        trigger: String,
        delay: Duration,
        drain_timeout: Duration,
        before_exit: Option<&'static str>,
        ctx: &mut Context<Self>,
    ) {
        if self.stage != Stage::Running {
            return;
        }
        self.stage = Stage::ShuttingDown;
        info!("draining server");
        let began = Instant::now();
        // Sent now, so readiness turns 503 before anything else happens.
        // (`do_send`: a `send` whose answer nobody awaits is never handled.)
        self.coordinator.do_send(BeginDrain);
        let begin_record = self.db.clone().map(|db| {
            let begun = self.coordinator.send(BeginDrain);
            census::spawn(async move {
                let Ok(in_flight) = begun.await else { return };
                let write = db.send(RecordDrainBegin { in_flight });
                match tokio::time::timeout(BEGIN_RECORD_TIMEOUT, write).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => warn!("drain_begin record skipped: {e}"),
                    Ok(Err(_)) => warn!("drain_begin record skipped: the database actor is gone"),
                    Err(_) => {
                        warn!("drain_begin record skipped: the database did not answer in time")
                    }
                }
            })
        });
        {
            let mut journal = self.journal.borrow_mut();
            journal.plan = Some(Plan {
                trigger: trigger.clone(),
                began,
                delay,
                drain_timeout,
            });
            journal.begin_record = begin_record;
        }
        let Some(mut lifecycle) = self.lifecycle.take() else {
            return;
        };
        // A protocol drain says how long the work may run.
        lifecycle.set_timeout(phase::DRAIN, self.settings.drain_phase(drain_timeout));
        let control = self.control.subscribe();
        let metrics = self.metrics.clone();
        let journal = self.journal.clone();
        let run = async move {
            lifecycle
                .run(&trigger, control, before_exit, Some(metrics), |record| {
                    journal.borrow_mut().phases.push(record.clone());
                })
                .await
        };
        ctx.spawn(run.into_actor(self).map(|_, act, ctx| act.finish(ctx)));
    }

    /// Something asked the process to exit: the phases held go on, and the
    /// budget starts (if a prestop has not started it).
    fn request_exit(&mut self, rule: ExitRule) {
        self.exit.get_or_insert(rule);
        let budget = self.settings.budget;
        self.control.send_modify(|c| {
            c.exit = true;
            if let Some(budget) = budget {
                c.budget_end.get_or_insert(Instant::now() + budget);
            }
        });
    }

    /// Forces the shutdown: the drain is cut and the waits that remain are skipped.
    fn force(&mut self) {
        self.control.send_modify(|c| c.forced = true);
        self.coordinator.do_send(CutShort {
            reason: CancelReason::ShutdownForced,
        });
    }

    /// The phases are over: the report, then every actor stops, then the System.
    /// (Spawned, not waited: the mailbox stays open for late messages.)
    fn finish(&mut self, ctx: &mut Context<Self>) {
        self.stage = Stage::Exiting;
        self.code = match self.exit {
            Some(ExitRule::Zero) => 0,
            _ => self.journal.borrow().outcome.map_or(1, Outcome::exit_code),
        };
        let code = self.code;
        let coordinator = self.coordinator.clone();
        let db = self.db.clone();
        let heartbeat = self.heartbeat.clone();
        let transport = self.transport.clone();
        let journal = self.journal.clone();
        let stop_all = async move {
            count_completed(&coordinator, &journal).await;
            info!("{}", journal.borrow().report_line(code));
            // `do_send`: every stop is delivered, however long an actor takes.
            transport.do_send(StopTransport);
            coordinator.do_send(StopActor);
            if let Some(db) = db {
                db.do_send(StopActor);
            }
            if let Some(heartbeat) = heartbeat {
                heartbeat.do_send(StopActor);
            }
            // Every actor but this one, and every task, ends by itself now:
            // wait for that (an event), within the exit's allowance.
            let _ = tokio::time::timeout(SETTLE_TIMEOUT, census::settled(1, 0)).await;
        };
        ctx.spawn(stop_all.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

/// Reads how many requests were answered during the drain into the journal
/// (however the drain phase ended).
async fn count_completed(coordinator: &Addr<DrainCoordinator>, journal: &Rc<RefCell<Journal>>) {
    let snapshot = tokio::time::timeout(STOP_ACTOR_TIMEOUT, coordinator.send(GetSnapshot));
    if let Ok(Ok(snapshot)) = snapshot.await {
        journal.borrow_mut().completed = snapshot.completed_in_drain;
    }
}

impl Journal {
    /// Requests in flight when the drain was cut, and how many were cancelled.
    fn cut(&self) -> (usize, usize) {
        match self.outcome {
            Some(Outcome::CutShort {
                remaining,
                cancelled,
                ..
            }) => (remaining, cancelled),
            _ => (0, 0),
        }
    }

    /// The one line that sums the shutdown up.
    fn report_line(&self, code: i32) -> String {
        let trigger = self.plan.as_ref().map_or("none", |p| p.trigger.as_str());
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{} {} ms {}", p.name, p.took.as_millis(), p.result))
            .collect();
        let (in_flight_at_cut, cut_short) = self.cut();
        format!(
            "shutdown report: trigger {trigger}; phases: {}; completed during the drain: {}; \
             cut short: {cut_short} (of {in_flight_at_cut} in flight at the cut); exit code {code}",
            phases.join(", "),
            self.completed
        )
    }

    /// The same figures, for the `drain_complete` details (the phases that
    /// have ended by the time it is written: all but the database close).
    fn report_fields(&self, code: i32) -> serde_json::Map<String, serde_json::Value> {
        let (in_flight_at_cut, cut_short) = self.cut();
        let phases: Vec<serde_json::Value> = self
            .phases
            .iter()
            .map(|p| {
                serde_json::json!({
                    "phase": p.name,
                    "duration_ms": u64::try_from(p.took.as_millis()).unwrap_or(u64::MAX),
                    "outcome": p.result.to_string(),
                })
            })
            .collect();
        let report = serde_json::json!({
            "trigger": self.plan.as_ref().map(|p| p.trigger.clone()),
            "phases": phases,
            "completed": self.completed,
            "cut_short": cut_short,
            "in_flight_at_cut": in_flight_at_cut,
            "exit_code": code,
        });
        match report {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// A drain timeout that leaves the budget room for the lingers and the
/// phases after the drain's reserve.
fn within_budget(drain_timeout: Duration, ctx: &PhaseCtx, lingers: Duration) -> Duration {
    match ctx.budget_end() {
        None => drain_timeout,
        Some(end) => {
            let left = end.saturating_duration_since(Instant::now());
            drain_timeout.min(left.saturating_sub(crate::lifecycle::RESERVE + lingers))
        }
    }
}

/// The `delay` phase: serve until the delay since the drain began is over.
async fn delay(
    plan: Option<Plan>,
    milestones: watch::Sender<Milestones>,
    mut ctx: PhaseCtx,
) -> Result<(), String> {
    let _mark = Mark {
        milestones,
        set: |m| m.delay_over = true,
    };
    let Some(plan) = plan else { return Ok(()) };
    let until = plan.began + plan.delay;
    let left = until.saturating_duration_since(Instant::now());
    if !left.is_zero() && !ctx.is_forced() {
        info!(
            "serving for {} ms more before closing the listener",
            left.as_millis()
        );
        ctx.wait_until(until).await;
    }
    Ok(())
}

/// The `stop_accepting` phase: admission stops (the drain deadline starts),
/// the listener closes, idle connections get their grace.
async fn stop_accepting(
    coordinator: Addr<DrainCoordinator>,
    close_listener: Recipient<CloseListener>,
    milestones: watch::Sender<Milestones>,
    drain_timeout: Duration,
    idle_grace: Duration,
) -> Result<(), String> {
    coordinator.do_send(StopAdmitting { drain_timeout });
    milestones.send_modify(|m| m.admission_stopped = true);
    // From a task: cut at the deadline, the listener still closes.
    let closed = census::spawn(async move {
        let closed = close_listener.send(CloseListener).await;
        coordinator.do_send(ListenerClosed { idle_grace });
        closed
    });
    match closed.await {
        Ok(Ok(0)) => info!("listener closed"),
        Ok(Ok(n)) => info!("listener closed; {n} queued connection(s) accepted to be answered"),
        _ => return Err("the transport is gone".into()),
    }
    Ok(())
}

/// The `drain` phase: the work's outcome and every connection closed. A
/// drain cut short is a failed phase. (What was completed is read where it is
/// used: the record, and the report.)
async fn drain(
    mut progress: watch::Receiver<Milestones>,
    journal: Rc<RefCell<Journal>>,
) -> Result<(), String> {
    let _ = progress.wait_for(|m| m.work_done && m.quiet).await;
    let outcome = journal.borrow().outcome;
    match outcome {
        Some(Outcome::Drained) => Ok(()),
        Some(Outcome::CutShort {
            reason,
            remaining,
            cancelled,
        }) => Err(format!(
            "cut short ({reason}): {cancelled} of {remaining} request(s) cancelled"
        )),
        None => Err("the drain did not end".into()),
    }
}

/// The `close_database` phase: the `drain_complete` record with the report
/// (given three quarters of the phase's time), then the pool closes whatever
/// happened to the record.
async fn close_database(
    db: Addr<DbActor>,
    coordinator: Addr<DrainCoordinator>,
    journal: Rc<RefCell<Journal>>,
    ctx: PhaseCtx,
) -> Result<(), String> {
    let now = Instant::now();
    let records_until = now + ctx.deadline.saturating_duration_since(now) * 3 / 4;
    count_completed(&coordinator, &journal).await;
    let (begin_record, complete) = {
        let mut j = journal.borrow_mut();
        let code = j.outcome.map_or(1, Outcome::exit_code);
        let (success, remaining) = match j.outcome {
            Some(Outcome::Drained) => (true, 0),
            Some(Outcome::CutShort { remaining, .. }) => (false, remaining),
            None => (false, 0),
        };
        let complete = RecordDrainComplete {
            success,
            remaining,
            report: j.report_fields(code),
        };
        (j.begin_record.take(), complete)
    };
    let writer = db.clone();
    // A task, so cutting this phase cannot cancel the write; bounded, so it
    // never outlives the phase.
    let records = census::spawn(tokio::time::timeout_at(records_until, async move {
        if let Some(begin) = begin_record {
            let _ = begin.await;
        }
        writer.send(complete).await
    }));
    let written = records.await;
    info!("closing DB");
    // Not awaited: the pool closes even if this phase is cut right here.
    db.do_send(ClosePool);
    match written {
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(e)))) => Err(format!("drain_complete record skipped: {e}")),
        Ok(Err(_)) => {
            Err("drain_complete record skipped: the database did not answer in time".into())
        }
        _ => Err("drain_complete record skipped: the database actor is gone".into()),
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        census::actor_started();
    }

    /// The last actor to stop: it stops the System with the exit code.
    fn stopped(&mut self, _: &mut Context<Self>) {
        census::actor_stopped();
        actix_rt::System::current().stop_with_code(self.code);
    }
}

impl StreamHandler<ShutdownSignal> for Supervisor {
    /// A shutdown trigger: drain, cut short, or log and ignore.
    fn handle(&mut self, signal: ShutdownSignal, ctx: &mut Context<Self>) {
        if self.stage == Stage::Exiting {
            return;
        }
        // A drain started by the transport's protocol counts as a signal's
        // drain (a SIGINT then cuts it); a prestop does not (a SIGTERM or a
        // SIGINT then continues it).
        let prestop = self
            .journal
            .borrow()
            .plan
            .as_ref()
            .is_some_and(|p| p.trigger == "prestop");
        let exiting_before = self.exit.is_some();
        let draining = exiting_before || (self.stage != Stage::Running && !prestop);
        self.request_exit(ExitRule::Outcome);
        let (delay, timeout) = (self.settings.shutdown_delay, self.settings.drain_timeout);
        match command_for(signal, draining) {
            Command::Drain => {
                if self.stage == Stage::Running {
                    info!("{signal} received: starting the graceful drain");
                } else {
                    info!("{signal} received: continuing the drain begun by the prestop");
                }
                self.start(signal.to_string(), delay, timeout, None, ctx);
            }
            Command::CutShort => {
                info!("{signal} received: cutting the drain short");
                self.start(signal.to_string(), delay, timeout, None, ctx);
                self.force();
            }
            Command::Ignore if exiting_before => {
                info!("{signal} received: a drain is already under way")
            }
            Command::Ignore => {
                info!("{signal} received: a drain is already under way; exiting once it is over")
            }
        }
    }

    /// The triggers never end the Supervisor; only the shutdown does.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<DrainReport> for Supervisor {
    type Result = ();

    /// The coordinator's progress: the work's outcome, then quiet.
    fn handle(&mut self, report: DrainReport, _: &mut Context<Self>) {
        match report {
            DrainReport::WorkDone(outcome) => {
                match outcome {
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
                self.journal.borrow_mut().outcome.get_or_insert(outcome);
                self.milestones.send_modify(|m| m.work_done = true);
            }
            DrainReport::Quiet => self.milestones.send_modify(|m| m.quiet = true),
        }
    }
}

impl Handler<PreStop> for Supervisor {
    type Result = ResponseFuture<()>;

    /// Begins the drain's first phase (once); answers when the delay is over.
    fn handle(&mut self, _: PreStop, ctx: &mut Context<Self>) -> Self::Result {
        if self.stage == Stage::Running {
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
            self.start("prestop".into(), delay, timeout, Some(phase::DELAY), ctx);
        } else {
            info!("prestop received: a drain is already under way");
        }
        let mut milestones = self.milestones.subscribe();
        Box::pin(async move {
            let _ = milestones.wait_for(|m| m.delay_over).await;
        })
    }
}

impl Handler<TransportDrain> for Supervisor {
    type Result = ResponseFuture<usize>;

    /// Starts a drain (once) without ending the process; answers the
    /// in-flight count once admission has stopped.
    fn handle(&mut self, msg: TransportDrain, ctx: &mut Context<Self>) -> Self::Result {
        let trigger = "protocol drain".to_string();
        self.start(
            trigger,
            Duration::ZERO,
            msg.drain_timeout,
            Some(phase::DRAIN),
            ctx,
        );
        let mut milestones = self.milestones.subscribe();
        let coordinator = self.coordinator.clone();
        Box::pin(async move {
            let _ = milestones.wait_for(|m| m.admission_stopped).await;
            coordinator.send(BeginDrain).await.unwrap_or(0)
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
        self.start("end of input".into(), Duration::ZERO, timeout, None, ctx);
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
        fn handle(&mut self, _: StopTransport, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    fn settings() -> ShutdownSettings {
        ShutdownSettings {
            shutdown_delay: Duration::ZERO,
            prestop_delay: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(30),
            idle_grace: Duration::from_millis(100),
            budget: Some(Duration::from_secs(45)),
            phase_timeout: Duration::from_millis(1500),
            heartbeat: Duration::from_secs(5),
            stalled_phase: None,
        }
    }

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
            let components = Components {
                db: None,
                metrics: Metrics::new(&phase::ALL),
                flush_telemetry: Box::new(|| Ok(())),
            };
            let supervisor =
                Supervisor::launch(settings(), components, triggers, |c, lifecycle| {
                    core = Some(c.clone());
                    // As the admin listener does: a prestop is possible.
                    lifecycle.register(phase::STOP_ADMIN, Duration::from_secs(1), |_| async {
                        Ok(())
                    });
                    let t = NoListener.start();
                    Transport {
                        close_listener: t.clone().recipient(),
                        stop: t.recipient(),
                    }
                });
            let core = core.expect("transport built");
            actix_rt::spawn(async move {
                use futures_util::FutureExt;
                let run = std::panic::AssertUnwindSafe(script(supervisor, core, tx));
                if run.catch_unwind().await.is_err() {
                    // A failed assertion: end the test instead of hanging it.
                    actix_rt::System::current().stop_with_code(101);
                }
            });
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

    /// A prestop holds the drain after its delay until a signal; the signal
    /// does not wait the delay again.
    #[test]
    fn a_prestop_waits_its_delay_once_and_a_signal_continues_the_drain() {
        let code = run_supervisor(|supervisor, core, signals| async move {
            let began = std::time::Instant::now();
            supervisor.send(PreStop).await.expect("answered");
            let waited = began.elapsed();
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            let now = *core.phase.borrow();
            assert!(
                matches!(
                    now,
                    Phase::Draining {
                        admitting: true,
                        ..
                    }
                ),
                "{now:?}"
            );
            // Held: still admitting well after the delay.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let permit = admit(&core).await;
            drop(permit);
            let again = std::time::Instant::now();
            supervisor.send(PreStop).await.expect("answered");
            assert!(again.elapsed() < Duration::from_millis(100));
            let _ = signals.send(ShutdownSignal::Terminate);
            assert_eq!(outcome(&core).await, Outcome::Drained);
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn the_default_budget_holds_the_default_phases() {
        let s = settings();
        assert!(s.check_budget(true, true).is_ok());
        let plan: Vec<_> = s.plan(true, true).into_iter().map(|(p, _)| p).collect();
        let mut order = phase::ALL.to_vec();
        order.reverse();
        assert_eq!(plan, order);
        let tight = ShutdownSettings {
            budget: Some(Duration::from_secs(30)),
            ..s
        };
        let short = tight.check_budget(true, true).expect_err("too small");
        // 300 delay + 32500 drain + 4 × 1500 + 1000 reserve = 39800.
        assert_eq!(short.needed, Duration::from_millis(39_800));
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
