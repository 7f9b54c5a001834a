//! The lifecycle registry: named stop phases, run last-registered-first under
//! one shutdown budget.
//!
//! Components register a stop phase as they start ([`Lifecycle::register`]);
//! at shutdown [`Lifecycle::run`] runs them in reverse order of registration
//! (LIFO), so what started last stops first and the database, which starts
//! first, closes last. Each phase gets the smaller of its own deadline and
//! what is left of the budget, less a [`RESERVE`] kept for the last phase (the
//! database close) and the exit. A phase that fails or overruns is logged,
//! counted and traced, and the rest still run.
//!
//! The budget starts at the prestop or at the first trigger that ends the
//! process; [`Control`] carries it, whether the process is to exit at all (a
//! prestop or a protocol drain holds the phases after it until it is), and
//! whether the shutdown has been forced (a second SIGINT, or SIGQUIT), which
//! phases observe through [`PhaseCtx`] to skip the waits that remain.
//!
//! Each run emits one trace: a root span `shutdown` with one child span per
//! phase (its name, duration and error), through the global OpenTelemetry
//! tracer — the binary decides where it goes.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use actix::Message;
use futures_util::future::LocalBoxFuture;
use log::{info, warn};
use opentelemetry::trace::{Span, Status, TraceContextExt, Tracer};
use opentelemetry::KeyValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::supervisor::report::Report;
pub use crate::supervisor::report::{PhaseRecord, PhaseResult};
use crate::supervisor::trigger::{ExitRule, ShutdownOrder};

/// Kept back from every phase but the last, so the database close and the
/// exit always happen inside the budget.
pub const RESERVE: Duration = Duration::from_millis(1000);

/// Of the reserve, what the exit itself keeps (stopping the actors, the
/// final trace export): the last phase gets the rest.
pub const EXIT_ALLOWANCE: Duration = Duration::from_millis(500);

/// Tells an actor the process is exiting: stop now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopActor;

/// What the shutdown runner is told as the shutdown goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    /// The end of the shutdown budget, once it has started.
    pub budget_end: Option<Instant>,
    /// Whether the process is to exit (a signal, or the end of input), and
    /// how its code is decided.
    pub exit: Option<ExitRule>,
    /// Whether the shutdown was forced: waits that remain are skipped.
    pub forced: bool,
}

/// What a stop phase is handed when it runs.
pub struct PhaseCtx {
    /// When the phase must be done (its own deadline, within the budget).
    pub deadline: Instant,
    /// What this shutdown was asked to do.
    pub order: ShutdownOrder,
    /// The shutdown's figures so far: the phases that have ended, the
    /// drain's outcome once it has one, the exit code it will give.
    pub report: Report,
    control: watch::Receiver<Control>,
    /// What the phase says of itself in the report (see [`PhaseCtx::note`]).
    note: Rc<RefCell<Option<String>>>,
}

impl PhaseCtx {
    /// A few words the report shows beside this phase's outcome, and the
    /// records as the phase's `note` ("released", "flushed 12, left 0").
    pub fn note(&self, note: impl Into<String>) {
        *self.note.borrow_mut() = Some(note.into());
    }

    /// The end of the shutdown budget, if it has started.
    pub fn budget_end(&self) -> Option<Instant> {
        self.control.borrow().budget_end
    }

    /// Whether the shutdown has been forced.
    pub fn is_forced(&self) -> bool {
        self.control.borrow().forced
    }

    /// Resolves once the shutdown is forced (never, if it is not).
    pub async fn forced(&mut self) {
        if self.control.wait_for(|c| c.forced).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until `until`, or until the shutdown is forced.
    pub async fn wait_until(&mut self, until: Instant) {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.forced() => {}
        }
    }
}

type StopFn = Box<dyn FnOnce(PhaseCtx) -> LocalBoxFuture<'static, Result<(), String>>>;

struct StopPhase {
    name: &'static str,
    timeout: Duration,
    stop: StopFn,
}

/// The budget cannot hold the phases: by how much it is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "SHUTDOWN_TIMEOUT_MS is {budget} ms but the shutdown phases need {needed} ms \
     ({detail}): the budget is {short} ms short",
    budget = .budget.as_millis(),
    needed = .needed.as_millis(),
    short = (.needed.saturating_sub(*.budget)).as_millis(),
    detail = "the delay, the drain timeout, every other phase's deadline and the 1000 ms reserve"
)]
pub struct BudgetShort {
    /// What the phases need.
    pub needed: Duration,
    /// What the budget is.
    pub budget: Duration,
}

/// See the module documentation.
#[derive(Default)]
pub struct Lifecycle {
    /// In order of registration.
    phases: Vec<StopPhase>,
    /// Test-only: this phase does its work, then hangs until its deadline.
    stalled: Option<String>,
}

impl Lifecycle {
    /// An empty registry.
    pub fn new() -> Self {
        Lifecycle::default()
    }

    /// Registers a stop phase: `stop` runs at shutdown, before every phase
    /// registered earlier, bounded by `timeout` (and the budget).
    pub fn register<F, Fut>(&mut self, name: &'static str, timeout: Duration, stop: F)
    where
        F: FnOnce(PhaseCtx) -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        self.phases.push(StopPhase {
            name,
            timeout,
            stop: Box::new(move |ctx| Box::pin(stop(ctx))),
        });
    }

    /// Changes a registered phase's own deadline (the drain's, once a
    /// trigger has said how long the drain may take).
    pub fn set_timeout(&mut self, name: &str, timeout: Duration) {
        for phase in self.phases.iter_mut().filter(|p| p.name == name) {
            phase.timeout = timeout;
        }
    }

    /// Test-only: makes phase `name` hang after its work until it is cut at
    /// its deadline, to show the phases after it still run.
    pub fn stall(&mut self, name: Option<String>) {
        self.stalled = name;
    }

    /// The phase names in the order they will run.
    pub fn stop_order(&self) -> Vec<&'static str> {
        self.phases.iter().rev().map(|p| p.name).collect()
    }

    /// The budget the phases need: every deadline but the last phase's (it
    /// runs in the reserve), plus the reserve.
    pub fn budget_needed(&self) -> Duration {
        budget_needed(&self.timeouts())
    }

    /// Refuses a budget that cannot hold the phases.
    pub fn check_budget(&self, budget: Duration) -> Result<(), BudgetShort> {
        check_budget(&self.timeouts(), budget)
    }

    /// The phases' own deadlines, in order of registration.
    fn timeouts(&self) -> Vec<Duration> {
        self.phases.iter().map(|p| p.timeout).collect()
    }

    /// Runs the phases, last registered first. The phases up to and including
    /// `before_exit` run at once; the rest wait until [`Control::exit`].
    /// Tells `on_phase` as each phase ends; answers what each phase did.
    /// `report` gives each phase the figures so far.
    pub async fn run(
        self,
        order: ShutdownOrder,
        mut control: watch::Receiver<Control>,
        before_exit: Option<&'static str>,
        metrics: Option<Metrics>,
        report: impl Fn(&[PhaseRecord]) -> Report,
    ) -> Vec<PhaseRecord> {
        let tracer = opentelemetry::global::tracer("drainer");
        let mut root = tracer.start("shutdown");
        root.set_attribute(KeyValue::new("shutdown.trigger", order.trigger.to_string()));
        let trace = opentelemetry::Context::current_with_span(root);
        let count = self.phases.len();
        let mut held = false;
        let mut records = Vec::with_capacity(count);
        for (i, phase) in self.phases.into_iter().rev().enumerate() {
            if held {
                wait_for_exit(&mut control).await;
                held = false;
            }
            let last = i + 1 == count;
            let allowed = allowed(phase.timeout, control.borrow().budget_end, last);
            let note = Rc::new(RefCell::new(None));
            let ctx = PhaseCtx {
                deadline: Instant::now() + allowed,
                order: order.clone(),
                report: report(&records),
                control: control.clone(),
                note: note.clone(),
            };
            let mut span = tracer.start_with_context(phase.name, &trace);
            span.set_attribute(KeyValue::new("shutdown.phase", phase.name));
            if let Some(m) = &metrics {
                m.phase_started(phase.name);
            }
            info!(
                "shutdown phase {}: begun ({} ms allowed)",
                phase.name,
                allowed.as_millis()
            );
            let began = Instant::now();
            let stalled = self.stalled.as_deref() == Some(phase.name);
            let work = (phase.stop)(ctx);
            let work = async move {
                let result = work.await;
                if stalled {
                    std::future::pending::<()>().await;
                }
                result
            };
            let result = match tokio::time::timeout(allowed, work).await {
                Ok(Ok(())) => PhaseResult::Done,
                Ok(Err(e)) => PhaseResult::Failed(e),
                Err(_) => PhaseResult::Overran(allowed),
            };
            let took = began.elapsed();
            let failed = result != PhaseResult::Done;
            if let Some(m) = &metrics {
                m.phase_ended(phase.name, took, failed);
            }
            span.set_attribute(KeyValue::new(
                "shutdown.phase.duration_ms",
                i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
            ));
            if failed {
                warn!(
                    "shutdown phase {}: {result} after {} ms; going on",
                    phase.name,
                    took.as_millis()
                );
                span.set_status(Status::error(result.to_string()));
            } else {
                info!(
                    "shutdown phase {}: done in {} ms",
                    phase.name,
                    took.as_millis()
                );
            }
            span.end();
            let record = PhaseRecord {
                name: phase.name,
                took,
                result,
                note: note.borrow_mut().take(),
            };
            records.push(record);
            if before_exit == Some(phase.name) {
                held = true;
            }
        }
        if held {
            wait_for_exit(&mut control).await;
        }
        // How the persistent connections ended, per class.
        for p in report(&records).persistent {
            let class = p.class.as_str();
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            let span = trace.span();
            span.set_attribute(KeyValue::new(
                format!("shutdown.persistent.{class}.clean"),
                count(p.clean),
            ));
            span.set_attribute(KeyValue::new(
                format!("shutdown.persistent.{class}.forced"),
                count(p.forced),
            ));
        }
        trace.span().end();
        records
    }
}

/// Holds the phases after a prestop's or a protocol drain's until something
/// asks the process to exit.
async fn wait_for_exit(control: &mut watch::Receiver<Control>) {
    if control.wait_for(|c| c.exit.is_some()).await.is_err() {
        warn!("shutdown: nobody can ask for the exit any more; going on");
    }
}

/// What phases with these own deadlines (in order of registration) need:
/// every deadline but the first registered's — that phase runs last, in the
/// reserve — plus the reserve.
pub fn budget_needed(timeouts: &[Duration]) -> Duration {
    timeouts.iter().skip(1).sum::<Duration>() + RESERVE
}

/// Refuses a budget that cannot hold phases with these own deadlines (in
/// order of registration).
pub fn check_budget(timeouts: &[Duration], budget: Duration) -> Result<(), BudgetShort> {
    let needed = budget_needed(timeouts);
    if needed > budget {
        return Err(BudgetShort { needed, budget });
    }
    Ok(())
}

/// The time a phase gets: its own deadline, within what is left of the budget
/// less the reserve. The last phase runs in the reserve, less what the exit
/// keeps — and gets that much even when a prestop held the shutdown past its
/// budget, so the records are written and the pool closed whatever happened.
fn allowed(own: Duration, budget_end: Option<Instant>, last: bool) -> Duration {
    let Some(end) = budget_end else {
        return own;
    };
    let left = end.saturating_duration_since(Instant::now());
    if last {
        own.min(left.max(RESERVE) - EXIT_ALLOWANCE)
    } else {
        own.min(left.saturating_sub(RESERVE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn control(c: Control) -> (watch::Sender<Control>, watch::Receiver<Control>) {
        watch::channel(c)
    }

    fn order(trigger: &str) -> ShutdownOrder {
        use crate::signals::ShutdownSignal;
        use crate::supervisor::Trigger;
        let trigger = match trigger {
            "prestop" => Trigger::PreStop,
            "SIGTERM" => Trigger::Signal(ShutdownSignal::Terminate),
            _ => Trigger::Requested,
        };
        ShutdownOrder {
            trigger,
            began: Instant::now(),
            delay: Duration::ZERO,
            drain_timeout: Duration::ZERO,
        }
    }

    fn no_report(phases: &[PhaseRecord]) -> Report {
        Report::new(None, phases.to_vec(), None, false)
    }

    fn exiting() -> Control {
        Control {
            exit: Some(ExitRule::Outcome),
            ..Control::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_run_last_registered_first_and_a_slow_one_is_cut() {
        let ran = Rc::new(RefCell::new(Vec::new()));
        let mut lc = Lifecycle::new();
        for name in ["database", "slow", "listener"] {
            let ran = ran.clone();
            lc.register(name, Duration::from_millis(500), move |_| async move {
                ran.borrow_mut().push(name);
                if name == "slow" {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(())
            });
        }
        assert_eq!(lc.stop_order(), ["listener", "slow", "database"]);
        let (_tx, rx) = control(exiting());
        let records = lc.run(order("test"), rx, None, None, no_report).await;
        assert_eq!(*ran.borrow(), ["listener", "slow", "database"]);
        let results: Vec<_> = records.iter().map(|r| (r.name, r.result.clone())).collect();
        assert_eq!(
            results,
            [
                ("listener", PhaseResult::Done),
                ("slow", PhaseResult::Overran(Duration::from_millis(500))),
                ("database", PhaseResult::Done),
            ]
        );
        assert_eq!(records[1].took, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_phase_is_reported_and_the_rest_run() {
        let mut lc = Lifecycle::new();
        lc.register("b", Duration::from_secs(1), |_| async { Ok(()) });
        lc.register("a", Duration::from_secs(1), |_| async {
            Err("boom".into())
        });
        let (_tx, rx) = control(exiting());
        let records = lc.run(order("test"), rx, None, None, no_report).await;
        assert_eq!(records[0].result, PhaseResult::Failed("boom".into()));
        assert_eq!(records[1].result, PhaseResult::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_clips_phases_but_keeps_the_reserve_for_the_last() {
        let mut lc = Lifecycle::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        for name in ["close", "drain"] {
            let seen = seen.clone();
            lc.register(name, Duration::from_secs(10), move |ctx| async move {
                let now = Instant::now();
                seen.borrow_mut().push(ctx.deadline - now);
                Ok(())
            });
        }
        let (_tx, rx) = control(Control {
            budget_end: Some(Instant::now() + Duration::from_secs(3)),
            exit: Some(ExitRule::Outcome),
            forced: false,
        });
        lc.run(order("test"), rx, None, None, no_report).await;
        // The last phase runs in the reserve, less the exit's allowance.
        assert_eq!(
            *seen.borrow(),
            [Duration::from_secs(2), Duration::from_millis(2500)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn phases_after_the_hold_wait_for_the_exit() {
        let ran = Rc::new(RefCell::new(Vec::new()));
        let mut lc = Lifecycle::new();
        for name in ["after", "delay"] {
            let ran = ran.clone();
            lc.register(name, Duration::from_secs(1), move |_| async move {
                ran.borrow_mut().push(name);
                Ok(())
            });
        }
        let (tx, rx) = control(Control::default());
        let local = tokio::task::LocalSet::new();
        let records = local
            .run_until(async {
                let run = tokio::task::spawn_local(lc.run(
                    order("prestop"),
                    rx,
                    Some("delay"),
                    None,
                    no_report,
                ));
                tokio::time::sleep(Duration::from_secs(30)).await;
                assert_eq!(*ran.borrow(), ["delay"]);
                tx.send_modify(|c| c.exit = Some(ExitRule::Outcome));
                run.await.expect("ran")
            })
            .await;
        assert_eq!(records.len(), 2);
        assert_eq!(*ran.borrow(), ["delay", "after"]);
    }

    /// The SDK's in-memory exporter sees one trace: a root `shutdown`
    /// span and a child per phase, in order, the failed one with its error.
    #[tokio::test]
    async fn each_run_emits_one_trace_with_a_span_per_phase() {
        use opentelemetry::trace::{SpanId, Status};
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());

        let mut lc = Lifecycle::new();
        lc.register("trace_close", Duration::from_secs(1), |_| async { Ok(()) });
        lc.register("trace_fails", Duration::from_secs(1), |_| async {
            Err("it broke".into())
        });
        lc.register("trace_first", Duration::from_secs(1), |_| async { Ok(()) });
        let (_tx, rx) = control(exiting());
        lc.run(order("SIGTERM"), rx, None, None, no_report).await;
        provider.force_flush().expect("flushed");

        // Other tests may run shutdowns too: follow this run's trace.
        let spans = exporter.get_finished_spans().expect("spans");
        let first = spans
            .iter()
            .find(|s| s.name == "trace_first")
            .expect("the first phase's span");
        let trace = first.span_context.trace_id();
        let ours: Vec<_> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        let root = ours
            .iter()
            .find(|s| s.name == "shutdown")
            .expect("a root span");
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert!(root
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "shutdown.trigger" && kv.value.as_str() == "SIGTERM"));
        // The persistent connections' figures, per class (all 0 here).
        for class in crate::metrics::PERSISTENT_CLASSES {
            for end in ["clean", "forced"] {
                let key = format!("shutdown.persistent.{class}.{end}");
                assert!(
                    root.attributes
                        .iter()
                        .any(|kv| kv.key.as_str() == key && kv.value == 0i64.into()),
                    "{key} missing"
                );
            }
        }
        let children: Vec<&str> = ours
            .iter()
            .filter(|s| s.parent_span_id == root.span_context.span_id())
            .map(|s| s.name.as_ref())
            .collect();
        assert_eq!(children, ["trace_first", "trace_fails", "trace_close"]);
        let failed = ours.iter().find(|s| s.name == "trace_fails").expect("span");
        assert_eq!(failed.status, Status::error("failed (it broke)"));
        assert!(failed
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "shutdown.phase.duration_ms"));
        assert_eq!(ours.len(), 4);
    }

    #[test]
    fn the_budget_check_names_the_setting_and_the_shortfall() {
        let mut lc = Lifecycle::new();
        lc.register("close_database", Duration::from_secs(2), |_| async {
            Ok(())
        });
        lc.register("drain", Duration::from_secs(30), |_| async { Ok(()) });
        lc.register("delay", Duration::from_secs(5), |_| async { Ok(()) });
        assert_eq!(lc.budget_needed(), Duration::from_secs(36));
        assert!(lc.check_budget(Duration::from_secs(36)).is_ok());
        let short = lc
            .check_budget(Duration::from_secs(30))
            .expect_err("too small");
        let text = short.to_string();
        assert!(
            text.starts_with("SHUTDOWN_TIMEOUT_MS is 30000 ms"),
            "{text}"
        );
        assert!(text.ends_with("the budget is 6000 ms short"), "{text}");
    }
}
