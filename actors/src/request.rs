//! The RequestActor: one per admitted unit of work.
//!
//! It is started with the [`Permit`] the DrainCoordinator handed out, runs the
//! simulated work (`latency`), writes the job through the DbActor and replies.
//! The permit lives inside the work's future, so however that future ends —
//! an answer, an error, a panic — the permit is dropped and the request is
//! counted down.
//!
//! The safe point: until its write begins — during the simulated work, and
//! while the job waits in the DbActor's queue for a batch — the work listens
//! for the coordinator's cancellation and stops there without writing. A
//! write already begun is bounded too: past the request's deadline it is
//! cancelled at once, and after a drain cut it gets the permit's grace (the
//! hard linger) to commit before it is cancelled ([`CancelWrite`]). Either
//! way it is answered by what the DbActor knows: stored, not written, or —
//! when a cancel could not be confirmed — "may or may not have been stored".

use std::future::pending;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, Addr, Context, Handler, Message, WrapFuture};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::db::{CallOff, CancelWrite, DbActor, DbError, InsertJob, Job, WithdrawJob};
use crate::drain::{CancelReason, Permit, Phase};

/// Why a unit of work did not produce a job.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// Cancelled at its safe point; nothing was written.
    #[error("cancelled: {0}")]
    Cancelled(CancelReason),
    /// Cancellable work declined at its safe point because a drain began;
    /// nothing was written.
    #[error("declined: a drain has begun")]
    Declined,
    /// The request's own deadline passed at a safe point; nothing was written.
    #[error("the request deadline passed")]
    TimedOut,
    /// The database refused or failed the write.
    #[error(transparent)]
    Db(#[from] DbError),
    /// An actor this work depends on has stopped.
    #[error("actor mailbox closed")]
    Mailbox,
}

impl From<actix::MailboxError> for WorkError {
    fn from(_: actix::MailboxError) -> Self {
        WorkError::Mailbox
    }
}

/// Runs the work: wait `latency`, then insert a job named `name`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Job, WorkError>")]
pub struct Process {
    /// The job's name.
    pub name: String,
    /// The simulated processing time.
    pub latency: Duration,
    /// The request's own deadline: past it, the work stops at its next safe point.
    pub deadline: Option<Instant>,
    /// For cancellable work: the published phase. The work declines at its
    /// next safe point once a drain has begun.
    pub declines_on_drain: Option<watch::Receiver<Phase>>,
}

/// Why work stopped at a safe point.
enum Stop {
    Cancelled(CancelReason),
    TimedOut,
    Declined,
}

/// Resolves at `deadline`; never without one.
async fn passed(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}

/// Resolves once a drain has begun; never without a phase to watch.
async fn drain_begun(drain: Option<&mut watch::Receiver<Phase>>) {
    match drain {
        Some(phase) => {
            if phase.wait_for(|p| !p.is_active()).await.is_err() {
                pending::<()>().await;
            }
        }
        None => pending().await,
    }
}

/// Resolves when the work should stop at its next safe point.
async fn stop_signal(
    permit: &mut Permit,
    deadline: Option<Instant>,
    mut drain: Option<watch::Receiver<Phase>>,
) -> Stop {
    tokio::select! {
        biased;
        reason = permit.cancelled() => Stop::Cancelled(reason),
        _ = passed(deadline) => Stop::TimedOut,
        _ = drain_begun(drain.as_mut()) => Stop::Declined,
    }
}

impl From<CallOff> for Stop {
    /// A write called off stopped where a safe point would have.
    fn from(why: CallOff) -> Self {
        match why {
            CallOff::Cut(reason) => Stop::Cancelled(reason),
            CallOff::RequestTimeout => Stop::TimedOut,
        }
    }
}

impl Stop {
    /// The error it answers with; only a drain's cancellation counts as cut.
    fn into_error(self, permit: &mut Permit) -> WorkError {
        match self {
            Stop::Cancelled(reason) => {
                permit.mark_cancelled();
                WorkError::Cancelled(reason)
            }
            Stop::TimedOut => WorkError::TimedOut,
            Stop::Declined => WorkError::Declined,
        }
    }
}

/// See the module documentation.
pub struct RequestActor {
    /// Taken by the one `Process` this actor runs.
    permit: Option<Permit>,
    /// Where the job is written.
    db: Addr<DbActor>,
}

impl RequestActor {
    /// An actor that will do one unit of work under `permit`.
    pub fn new(permit: Permit, db: Addr<DbActor>) -> Self {
        RequestActor {
            permit: Some(permit),
            db,
        }
    }
}

impl Actor for RequestActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        crate::census::actor_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        crate::census::actor_stopped();
    }
}

impl Handler<Process> for RequestActor {
    type Result = actix::ResponseActFuture<Self, Result<Job, WorkError>>;

    /// Simulated work, the safe point, the write, the answer; then the actor stops.
    fn handle(&mut self, msg: Process, _: &mut Context<Self>) -> Self::Result {
        let permit = self.permit.take();
        let db = self.db.clone();
        let work = async move {
            let Some(mut permit) = permit else {
                return Err(WorkError::Mailbox);
            };
            let (deadline, drain) = (msg.deadline, msg.declines_on_drain);
            if !msg.latency.is_zero() {
                tokio::select! {
                    biased;
                    stop = stop_signal(&mut permit, deadline, drain.clone()) => {
                        return Err(stop.into_error(&mut permit));
                    }
                    _ = tokio::time::sleep(msg.latency) => {}
                }
            }
            // Queued for the next batch. Until the batch begins this is still
            // a safe point: a cancelled job is answered without being written.
            // Once its batch has begun, the DbActor bounds the write.
            let id = uuid::Uuid::new_v4();
            let name = msg.name;
            let mut write = Box::pin(db.send(InsertJob { id, name, deadline }));
            let (mut cut_sent, mut timeout_sent) = (false, deadline.is_none());
            let mut drain = drain;
            let written = loop {
                let timed_out = passed(deadline.filter(|_| !timeout_sent));
                tokio::select! {
                    biased;
                    written = &mut write => break written?,
                    reason = permit.cancelled(), if !cut_sent => {
                        cut_sent = true;
                        let why = CallOff::Cut(reason);
                        let at = Instant::now() + permit.grace();
                        db.do_send(CancelWrite { id, why, at });
                    }
                    _ = timed_out => {
                        timeout_sent = true;
                        let why = CallOff::RequestTimeout;
                        db.do_send(CancelWrite { id, why, at: Instant::now() });
                    }
                    _ = drain_begun(drain.as_mut()) => {
                        // Cancellable work is declined only before its write.
                        if db.send(WithdrawJob { id }).await? {
                            return Err(WorkError::Declined);
                        }
                        drain = None;
                    }
                }
            };
            let job = match written {
                Ok(job) => job,
                Err(DbError::CalledOff(why)) => {
                    return Err(Stop::from(why).into_error(&mut permit));
                }
                Err(e) => return Err(WorkError::Db(e)),
            };
            permit.mark_answered();
            drop(permit);
            Ok(job)
        };
        Box::pin(work.into_actor(self).map(|result, _, ctx| {
            ctx.stop();
            result
        }))
    }
}
