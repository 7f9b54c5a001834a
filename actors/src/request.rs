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
//! for the coordinator's cancellation and stops there without writing. Once
//! its batch has begun it is finished and answered, cancelled or not.

use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, Addr, Context, Handler, Message, WrapFuture};

use crate::db::{DbActor, DbError, InsertJob, Job, WithdrawJob};
use crate::drain::{CancelReason, Permit};

/// Why a unit of work did not produce a job.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// Cancelled at its safe point; nothing was written.
    #[error("cancelled: {0}")]
    Cancelled(CancelReason),
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
            if !msg.latency.is_zero() {
                tokio::select! {
                    biased;
                    reason = permit.cancelled() => {
                        permit.mark_cancelled();
                        return Err(WorkError::Cancelled(reason));
                    }
                    _ = tokio::time::sleep(msg.latency) => {}
                }
            }
            // Queued for the next batch. Until the batch begins this is still
            // a safe point: a cancelled job is withdrawn, not written. Once
            // its batch has begun, the write runs to completion and is answered.
            let id = uuid::Uuid::new_v4();
            let mut write = Box::pin(db.send(InsertJob { id, name: msg.name }));
            let job = tokio::select! {
                biased;
                written = &mut write => written??,
                reason = permit.cancelled() => {
                    if db.send(WithdrawJob { id }).await? {
                        permit.mark_cancelled();
                        return Err(WorkError::Cancelled(reason));
                    }
                    write.await??
                }
            };
            drop(permit);
            Ok(job)
        };
        Box::pin(work.into_actor(self).map(|result, _, ctx| {
            ctx.stop();
            result
        }))
    }
}
