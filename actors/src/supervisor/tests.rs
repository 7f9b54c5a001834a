//! The Supervisor driven through the engine's public API, on paused time: a
//! transport with nothing to close, triggers from a channel and a [`Handle`].

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, ActorContext, Context, Handler};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::*;
use crate::drain::{CancelReason, Outcome, Permit};
use crate::engine::{Engine, Handle};
use crate::signals::ShutdownSignal;
use crate::transport::{CloseListener, Core, StopTransport, Transport, TransportDrain};

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

/// The transport of these tests.
fn no_listener() -> Transport {
    let t = NoListener.start();
    Transport {
        close_listener: t.clone().recipient(),
        stop: t.recipient(),
    }
}

fn settings() -> ShutdownSettings {
    ShutdownSettings {
        prestop_delay: Duration::from_millis(300),
        ..ShutdownSettings::default().idle_grace(Duration::from_millis(100))
    }
}

type Signals = mpsc::UnboundedSender<ShutdownSignal>;

/// Runs an engine on paused time; `script` drives it. Answers the report.
fn run_engine<F, Fut>(mut engine: Engine, script: F) -> Report
where
    F: FnOnce(Handle, Core, Signals) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let system = actix_rt::System::new();
    system.block_on(async move {
        tokio::time::pause();
        let (tx, rx) = mpsc::unbounded_channel();
        engine.signals(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (s, rx))
        }));
        let handle = engine.handle();
        let (core_tx, core_rx) = oneshot::channel::<Core>();
        actix_rt::spawn(async move {
            let core = core_rx.await.expect("transport built");
            let run = std::panic::AssertUnwindSafe(script(handle, core, tx));
            if run.catch_unwind().await.is_err() {
                // A failed assertion: end the test instead of hanging it.
                eprintln!("the script panicked");
                std::process::exit(101);
            }
        });
        engine
            .run(move |core| {
                let _ = core_tx.send(core.clone());
                no_listener()
            })
            .await
            .expect("the engine ran")
    })
}

fn admit(core: &Core) -> Permit {
    core.admission.admit().expect("admitted")
}

fn names(report: &Report) -> Vec<&'static str> {
    report.phases.iter().map(|p| p.name).collect()
}

#[test]
fn a_signal_on_an_idle_service_exits_0_with_the_engines_phases() {
    let report = run_engine(Engine::new(settings()), |_, _, signals| async move {
        let _ = signals.send(ShutdownSignal::Terminate);
    });
    assert_eq!(report.exit_code, 0);
    assert_eq!(
        report.trigger,
        Some(Trigger::Signal(ShutdownSignal::Terminate))
    );
    assert_eq!(
        names(&report),
        ["delay", "stop_accepting", "drain", "close_persistent"]
    );
    assert_eq!(report.outcome, Some(Outcome::Drained));
}

#[test]
fn sigquit_cuts_the_work_and_exits_1() {
    let report = run_engine(Engine::new(settings()), |_, core, signals| async move {
        let mut permit = admit(&core);
        let _ = signals.send(ShutdownSignal::Quit);
        assert_eq!(permit.cancelled().await, CancelReason::ShutdownForced);
        permit.mark_cancelled();
    });
    assert_eq!(report.exit_code, 1);
    assert_eq!((report.cut_short, report.in_flight_at_cut), (1, 1));
    assert!(report
        .to_string()
        .contains("cut short: 1 (of 1 in flight at the cut)"));
}

#[test]
fn a_handles_force_cuts_like_sigquit_and_its_drain_drains() {
    let report = run_engine(Engine::new(settings()), |handle, core, _| async move {
        let mut permit = admit(&core);
        handle.drain();
        handle.force();
        assert_eq!(permit.cancelled().await, CancelReason::ShutdownForced);
        permit.mark_cancelled();
    });
    assert_eq!(report.trigger, Some(Trigger::Requested));
    assert_eq!(report.exit_code, 1);
}

/// A protocol drain (tcp_shutdown) that is cut at its deadline does not end
/// the process; the end of input does, with 0.
#[test]
fn a_transport_drain_keeps_running_until_the_input_ends() {
    let report = run_engine(Engine::new(settings()), |_, core, _| async move {
        let mut permit = admit(&core);
        let in_flight = core
            .drain()
            .send(TransportDrain {
                drain_timeout: Duration::ZERO,
            })
            .await
            .expect("alive");
        assert_eq!(in_flight, 1);
        assert_eq!(permit.cancelled().await, CancelReason::DrainTimeout);
        permit.mark_cancelled();
        drop(permit);
        // Still running well after: a second drain request answers, changing nothing.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let again = core
            .drain()
            .send(TransportDrain {
                drain_timeout: Duration::from_secs(60),
            })
            .await
            .expect("the supervisor is still running");
        assert_eq!(again, 0);
        core.ended().do_send(crate::transport::TransportEnded);
    });
    assert_eq!(
        report.exit_code, 0,
        "end of input exits 0 even after a cut drain: {report:?}"
    );
    assert_eq!(report.trigger, Some(Trigger::ProtocolDrain));
    assert!(matches!(report.outcome, Some(Outcome::CutShort { .. })));
}

#[test]
fn a_signal_after_a_finished_transport_drain_exits_with_its_outcome() {
    let report = run_engine(Engine::new(settings()), |_, core, signals| async move {
        let in_flight = core
            .drain()
            .send(TransportDrain {
                drain_timeout: Duration::from_secs(5),
            })
            .await
            .expect("alive");
        assert_eq!(in_flight, 0);
        let _ = signals.send(ShutdownSignal::Terminate);
    });
    assert_eq!(report.exit_code, 0);
    assert_eq!(report.outcome, Some(Outcome::Drained));
}

/// A prestop holds the drain after its delay until a signal; the signal
/// does not wait the delay again.
#[test]
fn a_prestop_waits_its_delay_once_and_a_signal_continues_the_drain() {
    let report = run_engine(
        Engine::new(settings()),
        |handle, core, signals| async move {
            let began = Instant::now();
            handle.prestop().await;
            // Paused time: the clock moves only to the next timer (to the millisecond).
            let waited = began.elapsed();
            assert!(
                waited >= Duration::from_millis(300) && waited <= Duration::from_millis(302),
                "{waited:?}"
            );
            let now = *core.state.borrow();
            assert!(
                matches!(
                    now,
                    crate::DrainState::Draining {
                        admitting: true,
                        ..
                    }
                ),
                "{now:?}"
            );
            // Held: still admitting long after the delay.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(admit(&core));
            let again = Instant::now();
            handle.prestop().await;
            assert!(
                again.elapsed() <= Duration::from_millis(1),
                "no second delay"
            );
            let _ = signals.send(ShutdownSignal::Terminate);
        },
    );
    assert_eq!(report.trigger, Some(Trigger::PreStop));
    assert_eq!(report.exit_code, 0);
    let delay = report.phases[0].took;
    assert!(
        delay >= Duration::from_millis(300) && delay <= Duration::from_millis(302),
        "{delay:?}"
    );
}

/// Stop hooks run after the engine's phases, last registered first, each
/// seeing the phases before it in its report; the drain-begin hook hears
/// the count in flight.
#[test]
fn hooks_run_last_registered_first_with_the_figures_so_far() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let mut engine = Engine::new(settings());
    engine.on_drain_begin(move |begun| s3.borrow_mut().push(format!("begun {}", begun.in_flight)));
    engine.on_stop("registered_first", move |ctx| async move {
        let before: Vec<_> = ctx.report.phases.iter().map(|p| p.name).collect();
        s1.borrow_mut().push(format!("first after {before:?}"));
        Ok(())
    });
    engine.on_stop_within(
        "registered_second",
        Duration::from_millis(50),
        move |_| async move {
            s2.borrow_mut().push("second".into());
            std::future::pending::<()>().await;
            Ok(())
        },
    );
    assert_eq!(
        engine.plan().names(),
        [
            "delay",
            "stop_accepting",
            "drain",
            "close_persistent",
            "registered_second",
            "registered_first"
        ]
    );
    let report = run_engine(engine, |_, core, signals| async move {
        let permit = admit(&core);
        let _ = signals.send(ShutdownSignal::Terminate);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(permit);
    });
    assert_eq!(
        *seen.borrow(),
        [
            "begun 1".to_string(),
            "second".into(),
            "first after [\"delay\", \"stop_accepting\", \"drain\", \"close_persistent\", \
             \"registered_second\"]"
                .into(),
        ]
    );
    assert_eq!(
        report.phases[4].result,
        crate::lifecycle::PhaseResult::Overran(Duration::from_millis(50))
    );
    assert_eq!(report.completed, 0, "a permit not marked answered");
}

#[test]
fn owned_components_are_stopped_at_the_exit() {
    struct Component(mpsc::UnboundedSender<&'static str>);
    impl Actor for Component {
        type Context = Context<Self>;
    }
    impl Handler<StopActor> for Component {
        type Result = ();
        fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
            let _ = self.0.send("stopped");
            ctx.stop();
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let system = actix_rt::System::new();
    let report = system.block_on(async move {
        let mut engine = Engine::new(settings());
        let _component = engine.start(Component(tx));
        let handle = engine.handle();
        handle.drain();
        engine.run(|_| no_listener()).await.expect("ran")
    });
    assert_eq!(report.exit_code, 0);
    assert_eq!(rx.try_recv(), Ok("stopped"));
}

/// Two engines in one System count apart: no process-wide state.
#[test]
fn two_engines_in_one_system_drain_apart() {
    let system = actix_rt::System::new();
    let (a, b) = system.block_on(async {
        let transport = |_: &Core| no_listener();
        let (first, second) = (Engine::new(settings()), Engine::new(settings()));
        let (h1, h2) = (first.handle(), second.handle());
        let busy = Rc::new(RefCell::new(None));
        let keep = busy.clone();
        let one = first.run(move |core| {
            *keep.borrow_mut() = Some(core.admission.admit().expect("admitted"));
            transport(core)
        });
        let two = second.run(transport);
        h1.drain();
        h2.drain();
        let release = async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(mut permit) = busy.borrow_mut().take() {
                permit.mark_answered();
            }
        };
        let (a, b, ()) = futures_util::join!(one, two, release);
        (a.expect("first ran"), b.expect("second ran"))
    });
    assert_eq!((a.exit_code, a.completed), (0, 1));
    assert_eq!((b.exit_code, b.completed), (0, 0));
}
