//! The engine's own stop phases: `delay`, `stop_accepting`, `drain`,
//! `close_persistent`. Each
//! gets what it needs from its [`PhaseCtx`] and its arguments; they share
//! nothing with the Supervisor but the milestones they publish.

use std::time::Duration;

use actix::{Addr, Recipient};
use log::info;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::census::Census;
use crate::drain::{
    ArmDeadline, ClosePersistent, DrainCoordinator, ListenerClosed, Outcome, CANCEL_ALLOWANCE,
};
use crate::lifecycle::{PhaseCtx, RESERVE};
use crate::transport::CloseListener;

use super::settings::CLOSE_MARGIN;
use super::state::{Mark, Milestones};

/// A drain timeout that leaves the budget room for the lingers and the
/// phases after the drain's reserve.
fn within_budget(drain_timeout: Duration, ctx: &PhaseCtx, lingers: Duration) -> Duration {
    match ctx.budget_end() {
        None => drain_timeout,
        Some(end) => {
            let left = end.saturating_duration_since(Instant::now());
            drain_timeout.min(left.saturating_sub(RESERVE + lingers))
        }
    }
}

/// The `delay` phase: serve until the delay since the drain began is over.
pub(super) async fn delay(
    milestones: watch::Sender<Milestones>,
    mut ctx: PhaseCtx,
) -> Result<(), String> {
    let _mark = Mark {
        milestones,
        set: |m| m.delay_over = true,
    };
    let until = ctx.order.began + ctx.order.delay;
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

/// What `stop_accepting` works with.
pub(super) struct StopAccepting {
    pub coordinator: Addr<DrainCoordinator>,
    pub close_listener: Recipient<CloseListener>,
    pub milestones: watch::Sender<Milestones>,
    pub linger: Duration,
    pub idle_grace: Duration,
    pub census: Census,
}

/// The `stop_accepting` phase: the drain deadline starts, the listener
/// closes, persistent connections are told goodbye, idle connections get
/// their grace (requests on open connections are still served, with
/// `Connection: close`).
pub(super) async fn stop_accepting(this: StopAccepting, ctx: PhaseCtx) -> Result<(), String> {
    let StopAccepting {
        coordinator,
        close_listener,
        milestones,
        linger,
        idle_grace,
        census,
    } = this;
    let _mark = Mark {
        milestones: milestones.clone(),
        set: |m| {
            m.admission_stopped.get_or_insert(0);
        },
    };
    let said = milestones.clone();
    let drain_timeout = within_budget(ctx.order.drain_timeout, &ctx, 2 * linger + CANCEL_ALLOWANCE);
    if let Ok(in_flight) = coordinator.send(ArmDeadline { drain_timeout }).await {
        milestones.send_modify(|m| m.admission_stopped = Some(in_flight));
    }
    // From a task: cut at the deadline, the listener still closes.
    let closed = census.spawn(async move {
        let closed = close_listener.send(CloseListener).await;
        coordinator.do_send(ListenerClosed { idle_grace });
        said.send_modify(|m| {
            m.goodbye_at.get_or_insert(Instant::now());
        });
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
/// drain cut short is a failed phase.
pub(super) async fn drain(mut progress: watch::Receiver<Milestones>) -> Result<(), String> {
    let done = progress
        .wait_for(|m| m.work.is_some() && m.quiet)
        .await
        .ok()
        .and_then(|m| m.work);
    match done.map(|w| w.outcome) {
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

/// What `close_persistent` works with.
pub(super) struct ClosingPersistent {
    pub coordinator: Addr<DrainCoordinator>,
    pub progress: watch::Receiver<Milestones>,
    pub ws_close_timeout: Duration,
}

/// The `close_persistent` phase: waits for the persistent connections to
/// close after their goodbyes, and closes those still open
/// `WS_CLOSE_TIMEOUT_MS` after the goodbyes.
/// A forced shutdown skips the wait: the sessions, told `Forced`, write
/// their Close and end at once; what is left after the margin is closed.
pub(super) async fn close_persistent(
    this: ClosingPersistent,
    mut ctx: PhaseCtx,
) -> Result<(), String> {
    let ClosingPersistent {
        coordinator,
        mut progress,
        ws_close_timeout,
    } = this;
    let goodbye_at = progress.borrow().goodbye_at.unwrap_or_else(Instant::now);
    // (Within the phase's own deadline, which leaves the margin for what is
    // closed then to be gone and counted.)
    let force_at = (goodbye_at + ws_close_timeout).min(ctx.deadline - CLOSE_MARGIN);
    let settled = tokio::select! {
        settled = progress.wait_for(|m| m.settled) => settled.is_ok(),
        () = ctx.wait_until(force_at) => false,
    };
    if settled {
        return Ok(());
    }
    if ctx.is_forced() {
        let margin = tokio::time::sleep(CLOSE_MARGIN);
        tokio::select! {
            settled = progress.wait_for(|m| m.settled) => if settled.is_ok() {
                return Ok(());
            },
            () = margin => {}
        }
    }
    info!("closing the persistent connections still open");
    coordinator.do_send(ClosePersistent);
    let settled = progress.wait_for(|m| m.settled).await.is_ok();
    if settled {
        Ok(())
    } else {
        Err("the coordinator is gone".into())
    }
}
