//! [`Work`]: a handler's view of its own admission — the drain's cut, the
//! drain's beginning, and the shield for work that must not be dropped midway.

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use tokio::sync::watch;

use super::error::EngineError;
use crate::drain::{CancelReason, DrainState, Permit};

const SHIELDED: u8 = 1;
const DROPPED: u8 = 2;
const ANSWERED: u8 = 4;
const CANCELLED: u8 = 8;

/// Every admitted request's handle on its own admission; extract it in a
/// handler (`work: Work`). Clones share it. Handlers that do not ask for it
/// drain all the same: the engine counts every request.
#[derive(Clone)]
pub struct Work {
    flags: Arc<AtomicU8>,
    state: watch::Receiver<DrainState>,
    grace: Duration,
}

impl Work {
    pub(crate) fn new(permit: &Permit, state: watch::Receiver<DrainState>) -> Work {
        Work {
            flags: Arc::new(AtomicU8::new(0)),
            state,
            grace: permit.grace(),
        }
    }

    /// Resolves when the drain is cut (its deadline, a second Ctrl+C,
    /// SIGQUIT); never otherwise. Unshielded work is dropped at that moment
    /// anyway; shielded work sees it here and must answer by [`Work::grace`].
    pub async fn cancelled(&self) -> CancelReason {
        let mut state = self.state.clone();
        let cut = state
            .wait_for(|s| s.cut().is_some())
            .await
            .ok()
            .and_then(|s| s.cut());
        match cut {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// The cut, if it has come.
    pub fn is_cancelled(&self) -> Option<CancelReason> {
        self.state.borrow().cut()
    }

    /// Resolves once a drain has begun (work that may be declined stops here).
    pub async fn drain_begun(&self) {
        let mut state = self.state.clone();
        if state.wait_for(|s| !s.is_active()).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        !self.state.borrow().is_active()
    }

    /// After a cut, how long shielded work may still run before it must answer.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Asks not to be dropped at the cut from now on. False when the engine
    /// has already dropped this request (the caller is being dropped too).
    pub fn try_shield(&self) -> bool {
        let before = self.flags.fetch_or(SHIELDED, Ordering::AcqRel);
        before & DROPPED == 0
    }

    /// The handler produced its real result: counted as completed.
    pub fn mark_answered(&self) {
        self.flags.fetch_or(ANSWERED, Ordering::AcqRel);
    }

    /// The handler stopped at a safe point because of the cut: counted as cut short.
    pub fn mark_cancelled(&self) {
        self.flags.fetch_or(CANCELLED, Ordering::AcqRel);
    }

    /// For the engine at the cut: drops the request unless it is shielded.
    pub(crate) fn try_drop(&self) -> bool {
        self.flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                (f & SHIELDED == 0).then_some(f | DROPPED)
            })
            .is_ok()
    }

    /// Puts what the handler marked on the permit; `ok`: it answered
    /// without a server error, which counts as completed when unmarked.
    pub(crate) fn settle(&self, permit: &mut Permit, ok: bool) {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & CANCELLED != 0 {
            permit.mark_cancelled();
        } else if flags & ANSWERED != 0 || ok {
            permit.mark_answered();
        }
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("flags", &self.flags.load(Ordering::Relaxed))
            .finish()
    }
}

impl FromRequest for Work {
    type Error = EngineError;
    type Future = Ready<Result<Work, EngineError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Work>()
                .cloned()
                .ok_or(EngineError::NotServed),
        )
    }
}
