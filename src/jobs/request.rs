//! The RequestActor: one per admitted unit of work.
//!
//! It is started with the request's [`Work`] — the engine's middleware admitted
//! the request and holds its permit, so however the request ends it is
//! counted down — runs the simulated work (`latency`), writes the job through
//! the DbActor and replies. Before the write it shields itself: from then on
//! the engine does not drop the request at the cut, and the RequestActor
//! answers by what the DbActor knows.
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

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, Context, Handler, Message, Recipient, WrapFuture,
};
use drainer_engine::{CancelReason, Census, Work};
use tokio::time::Instant;

use super::db::{CallOff, CancelWrite, DbActor, DbError, InsertJob, Job, WithdrawJob};
use super::feed::Committed;

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
    /// The job's id (chosen by the caller: a downstream may have heard of it).
    pub id: uuid::Uuid,
    /// The job's name.
    pub name: String,
    /// The simulated processing time.
    pub latency: Duration,
    /// The request's own deadline: past it, the work stops at its next safe point.
    pub deadline: Option<Instant>,
    /// Cancellable work declines at its next safe point once a drain has begun.
    pub declines_on_drain: bool,
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

/// Resolves once a drain has begun; never for work that does not decline.
async fn drain_begun(work: &Work, declines: bool) {
    if declines {
        work.drain_begun().await
    } else {
        pending().await
    }
}

/// Resolves when the work should stop at its next safe point.
async fn stop_signal(work: &Work, deadline: Option<Instant>, declines: bool) -> Stop {
    tokio::select! {
        biased;
        reason = work.cancelled() => Stop::Cancelled(reason),
        _ = passed(deadline) => Stop::TimedOut,
        _ = drain_begun(work, declines) => Stop::Declined,
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
    fn into_error(self, work: &Work) -> WorkError {
        match self {
            Stop::Cancelled(reason) => {
                work.mark_cancelled();
                WorkError::Cancelled(reason)
            }
            Stop::TimedOut => WorkError::TimedOut,
            Stop::Declined => WorkError::Declined,
        }
    }
}

/// See the module documentation.
pub struct RequestActor {
    /// The request's admission, as the engine's middleware holds it.
    work: Work,
    /// Where the job is written.
    db: Addr<DbActor>,
    census: Census,
    /// Told of the job once it is committed (the HTTP service's feed).
    announce: Option<Recipient<Committed>>,
}

impl RequestActor {
    /// An actor that will do one unit of work for the admitted request `work`.
    pub fn new(work: Work, db: Addr<DbActor>, census: Census) -> Self {
        RequestActor {
            work,
            db,
            census,
            announce: None,
        }
    }

    /// Announces the job to `feed` once it is committed.
    pub fn announcing_to(mut self, feed: Recipient<Committed>) -> Self {
        self.announce = Some(feed);
        self
    }
}

impl Actor for RequestActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.census.actor_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
    }
}

impl Handler<Process> for RequestActor {
    type Result = actix::ResponseActFuture<Self, Result<Job, WorkError>>;

    /// Simulated work, the safe point, the write, the answer; then the actor stops.
    fn handle(&mut self, msg: Process, _: &mut Context<Self>) -> Self::Result {
        let work = self.work.clone();
        let db = self.db.clone();
        let announce = self.announce.clone();
        let job = async move {
            let (deadline, declines) = (msg.deadline, msg.declines_on_drain);
            if !msg.latency.is_zero() {
                tokio::select! {
                    biased;
                    stop = stop_signal(&work, deadline, declines) => {
                        return Err(stop.into_error(&work));
                    }
                    _ = tokio::time::sleep(msg.latency) => {}
                }
            }
            // From here the write may begin: the engine must not drop this
            // request at the cut any more (it answers by what the DbActor
            // knows). Shielding fails only if the engine dropped it already.
            if !work.try_shield() {
                return Err(WorkError::Mailbox);
            }
            // A cut that came just now is still a safe point.
            if let Some(reason) = work.is_cancelled() {
                return Err(Stop::Cancelled(reason).into_error(&work));
            }
            // Queued for the next batch. Until the batch begins this is still
            // a safe point: a cancelled job is answered without being written.
            // Once its batch has begun, the DbActor bounds the write.
            let (id, name) = (msg.id, msg.name);
            let mut write = Box::pin(db.send(InsertJob { id, name, deadline }));
            let (mut cut_sent, mut timeout_sent) = (false, deadline.is_none());
            let mut declines = declines;
            let written = loop {
                let timed_out = passed(deadline.filter(|_| !timeout_sent));
                tokio::select! {
                    biased;
                    written = &mut write => break written?,
                    reason = work.cancelled(), if !cut_sent => {
                        cut_sent = true;
                        let why = CallOff::Cut(reason);
                        let at = Instant::now() + work.grace();
                        db.do_send(CancelWrite { id, why, at });
                    }
                    _ = timed_out => {
                        timeout_sent = true;
                        let why = CallOff::RequestTimeout;
                        db.do_send(CancelWrite { id, why, at: Instant::now() });
                    }
                    _ = drain_begun(&work, declines) => {
                        // Cancellable work is declined only before its write.
                        if db.send(WithdrawJob { id }).await? {
                            return Err(WorkError::Declined);
                        }
                        declines = false;
                    }
                }
            };
            let job = match written {
                Ok(job) => job,
                Err(DbError::CalledOff(why)) => {
                    return Err(Stop::from(why).into_error(&work));
                }
                Err(e) => return Err(WorkError::Db(e)),
            };
            // Committed: the feed hears of it now, never before.
            if let Some(feed) = &announce {
                feed.do_send(Committed(job.clone()));
            }
            work.mark_answered();
            Ok(job)
        };
        Box::pin(job.into_actor(self).map(|result, _, ctx| {
            ctx.stop();
            result
        }))
    }
}
