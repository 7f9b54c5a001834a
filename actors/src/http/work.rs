//! [`Work`]: a handler's view of its own admission — the drain's cut, the
//! drain's beginning, and the shield for work that must not be dropped midway.

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::error::EngineError;
use crate::drain::{CancelReason, Permit};

const SHIELDED: u8 = 1;
const DROPPED: u8 = 2;
const ANSWERED: u8 = 4;
const CANCELLED: u8 = 8;
/// Answered without a server error (completed, unless marked otherwise).
const FINE: u8 = 16;

/// Every admitted request's handle on its own admission; extract it in a
/// handler (`work: Work`). Clones share it; the request is counted down when
/// the engine has answered it and no clone is left. Handlers that do not ask
/// for it drain all the same: the engine counts every request.
#[derive(Clone)]
pub struct Work(Arc<Admitted>);

/// The permit, and what the handler and the engine said of the work.
struct Admitted {
    flags: AtomicU8,
    permit: Permit,
}

impl Drop for Admitted {
    /// Puts what was said on the permit, which then counts the request down.
    fn drop(&mut self) {
        let flags = *self.flags.get_mut();
        if flags & CANCELLED != 0 {
            self.permit.mark_cancelled();
        } else if flags & (ANSWERED | FINE) != 0 {
            self.permit.mark_answered();
        }
    }
}

impl Work {
    pub(crate) fn new(permit: Permit) -> Work {
        Work(Arc::new(Admitted {
            flags: AtomicU8::new(0),
            permit,
        }))
    }

    fn set(&self, flag: u8) {
        self.0.flags.fetch_or(flag, Ordering::AcqRel);
    }

    /// Resolves when the drain is cut (its deadline, a second Ctrl+C,
    /// SIGQUIT); never otherwise. Unshielded work is dropped at that moment
    /// anyway; shielded work sees it here and must answer by [`Work::grace`].
    pub async fn cancelled(&self) -> CancelReason {
        self.0.permit.cancelled().await
    }

    /// The cut, if it has come.
    pub fn is_cancelled(&self) -> Option<CancelReason> {
        self.0.permit.is_cancelled()
    }

    /// Resolves once a drain has begun (work that may be declined stops here).
    pub async fn drain_begun(&self) {
        let mut state = self.0.permit.state();
        if state.wait_for(|s| !s.is_active()).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        !self.0.permit.state().borrow().is_active()
    }

    /// After a cut, how long shielded work may still run before it must answer.
    pub fn grace(&self) -> Duration {
        self.0.permit.grace()
    }

    /// Asks not to be dropped at the cut from now on. False when the engine
    /// has already dropped this request (the caller is being dropped too).
    pub fn try_shield(&self) -> bool {
        let before = self.0.flags.fetch_or(SHIELDED, Ordering::AcqRel);
        before & DROPPED == 0
    }

    /// The handler produced its real result: counted as completed.
    pub fn mark_answered(&self) {
        self.set(ANSWERED);
    }

    /// The handler stopped at a safe point because of the cut: counted as cut short.
    pub fn mark_cancelled(&self) {
        self.set(CANCELLED);
    }

    /// For a long-poll: shielded, and parked (not counted as cut) until the
    /// guard drops; `None` once the engine has dropped the request.
    pub(crate) fn park(&self) -> Option<crate::drain::Parked> {
        self.try_shield().then(|| self.0.permit.park())
    }

    /// For the engine at the cut: drops the request unless it is shielded.
    pub(crate) fn try_drop(&self) -> bool {
        let dropped = self
            .0
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                (f & SHIELDED == 0).then_some(f | DROPPED)
            })
            .is_ok();
        if dropped {
            self.set(CANCELLED);
        }
        dropped
    }

    /// For the engine once the handler answered: `ok`, it answered without
    /// a server error, which counts as completed unless it said otherwise.
    pub(crate) fn finished(&self, ok: bool) {
        if ok {
            self.set(FINE);
        }
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("flags", &self.0.flags.load(Ordering::Relaxed))
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
