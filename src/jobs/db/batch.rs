//! Writing one batch, with every answer true.
//!
//! A batch is one multi-row `INSERT`. Its jobs are answered by what is known,
//! never by a guess:
//!
//! - **committed** — 201 for each job;
//! - **refused** by the database — nothing was written: a lone job is
//!   answered "not stored", a larger batch goes back to the queue job by job
//!   (one bad job never fails its neighbours);
//! - **called off** (a job's `REQUEST_TIMEOUT_MS` deadline, or the drain cut
//!   plus its grace) — the statement is cancelled in PostgreSQL. Once the
//!   cancel is confirmed nothing was written: the called-off jobs are answered
//!   so, the others go back to the front of the queue. A cancel not confirmed
//!   within [`CANCEL_CONFIRM`] leaves the called-off jobs' outcome unknown:
//!   they get the "may or may not" answer, and the rest keep waiting;
//! - **connection lost** after the statement was sent — the outcome is
//!   unknown, and the lost backend may even still be running the statement.
//!   So the batch gets a fresh connection, ends that exact backend (its pid and
//!   start time were recorded when the connection opened) and waits until it
//!   is gone, and only then looks its jobs' ids up: found is committed, missing
//!   is not written. A job whose time runs out before that is known gets the
//!   "may or may not" answer.
//!
//! Before the statement is sent — while the batch waits for a connection — a
//! called-off job is simply answered: nothing was sent.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::conn::{discard, Backend, Object, PgConn, Pool};
use super::error::{describe, CallOff, DbError, Redactor};
use super::Job;

/// How long a cancel sent to PostgreSQL has to be confirmed (the statement
/// ends with `query_canceled`) before the jobs it was for are answered
/// "may or may not have been stored". It fits inside the coordinator's
/// allowance for cancelled work ([`drainer_engine::drain::CANCEL_ALLOWANCE`]).
pub const CANCEL_CONFIRM: Duration = Duration::from_millis(300);

const _: () =
    assert!(CANCEL_CONFIRM.as_millis() < drainer_engine::drain::CANCEL_ALLOWANCE.as_millis());

/// How long a batch that lost its connection waits between two tries to get
/// a new one.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// How often a batch checks whether a lost backend has ended.
const GONE_CHECK: Duration = Duration::from_millis(20);

/// A job waiting for a batch.
pub(super) struct Queued {
    pub job: Job,
    pub reply: oneshot::Sender<Result<Job, DbError>>,
    /// The request's own deadline: past it the write is called off.
    pub deadline: Option<Instant>,
    /// Set when a batch it was in was refused as a whole: it is written alone.
    pub alone: bool,
}

/// A call-off sent to the batch a job is in.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallOffAt {
    pub id: Uuid,
    pub why: CallOff,
    /// When the statement is cancelled for it, unless it commits first.
    pub at: Instant,
}

/// What a batch hands back to the actor when it is over.
pub(super) struct BatchEnd {
    /// Every job it held.
    pub ids: Vec<Uuid>,
    /// Jobs known not to be written whose time has not run out: back to the
    /// front of the queue, in order.
    pub requeue: Vec<Queued>,
}

/// One job of the batch.
struct Entry {
    job: Job,
    /// Taken when the job is answered.
    reply: Option<oneshot::Sender<Result<Job, DbError>>>,
    deadline: Option<Instant>,
    alone: bool,
    /// A call-off from the drain or the request, and when it takes effect.
    call_off: Option<(CallOff, Instant)>,
}

impl Entry {
    fn open(&self) -> bool {
        self.reply.is_some()
    }

    /// When, and why, this job's write is to be cancelled.
    fn due(&self) -> Option<(Instant, CallOff)> {
        let timeout = self.deadline.map(|at| (at, CallOff::RequestTimeout));
        let cut = self.call_off.map(|(why, at)| (at, why));
        [timeout, cut]
            .into_iter()
            .flatten()
            .min_by_key(|&(at, _)| at)
    }

    /// Why this job is called off before its write — at once, whatever the
    /// grace, since nothing was sent — or `None` if it may still be written.
    fn called_off_before_write(&self, now: Instant) -> Option<CallOff> {
        match (self.call_off, self.deadline) {
            (_, Some(at)) if at <= now => Some(CallOff::RequestTimeout),
            (Some((why, _)), _) => Some(why),
            _ => None,
        }
    }

    fn answer(&mut self, answer: Result<(), DbError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer.map(|()| self.job.clone()));
        }
    }
}

/// How the statement ended.
enum Ran {
    Committed,
    /// Refused by the database: nothing was written.
    Refused(tokio_postgres::Error),
    /// Cancelled (by a call-off, or the session's statement timeout):
    /// nothing was written.
    Cancelled,
    /// The connection failed after the statement was sent.
    Lost(String),
    /// Every job was answered while the statement still ran (cancels that
    /// went unconfirmed): the connection cannot be trusted.
    Abandoned,
}

struct Batch {
    entries: Vec<Entry>,
    calls: mpsc::UnboundedReceiver<CallOffAt>,
    redactor: Redactor,
    /// A cancel was sent on the statement's connection. A cancel that lands
    /// late would cancel whatever runs there next, so the connection is not
    /// given back to the pool.
    cancel_sent: bool,
    /// Each job also writes its event to the outbox, in the same statement.
    outbox: bool,
}

/// Writes one batch and answers each of its jobs (or hands them back).
pub(super) async fn write_batch(
    pool: Pool,
    redactor: Redactor,
    batch: Vec<Queued>,
    calls: mpsc::UnboundedReceiver<CallOffAt>,
    outbox: bool,
) -> BatchEnd {
    let ids = batch.iter().map(|q| q.job.id).collect();
    let entries = batch
        .into_iter()
        .map(|q| Entry {
            job: q.job,
            reply: Some(q.reply),
            deadline: q.deadline,
            alone: q.alone,
            call_off: None,
        })
        .collect();
    let mut batch = Batch {
        entries,
        calls,
        redactor,
        cancel_sent: false,
        outbox,
    };
    batch.write(&pool).await;
    // Call-offs still on their way: a job going back to the queue is before
    // its write again, so a called-off one is answered now, not requeued.
    while let Ok(call) = batch.calls.try_recv() {
        batch.apply(call);
    }
    batch.settle_unwritten(Instant::now());
    BatchEnd {
        ids,
        requeue: batch.requeue(),
    }
}

impl Batch {
    async fn write(&mut self, pool: &Pool) {
        let Some(conn) = self.connect(pool).await else {
            return;
        };
        let jobs: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].open())
            .collect();
        let ran = self.run(&conn, &jobs).await;
        let lost = conn.backend.clone();
        // A connection whose statement was abandoned or lost, or that was
        // sent a cancel, is not given back to the pool.
        if self.cancel_sent || matches!(ran, Ran::Abandoned | Ran::Lost(_)) {
            discard(conn);
        } else {
            drop(conn);
        }
        match ran {
            Ran::Committed => self.answer(&jobs, || Ok(())),
            Ran::Refused(e) if jobs.len() == 1 => {
                let e = self.redactor.query(&e);
                self.answer(&jobs, || Err(e.clone()));
            }
            Ran::Refused(e) => {
                log::debug!(
                    "a batch of {} failed ({}); writing its jobs one by one",
                    jobs.len(),
                    describe(&e)
                );
                for &i in &jobs {
                    self.entries[i].alone = true;
                }
                self.settle_unwritten(Instant::now());
            }
            Ran::Cancelled => self.settle_unwritten(Instant::now()),
            Ran::Abandoned => {}
            Ran::Lost(why) => self.resolve(pool, &lost, &why).await,
        }
    }

    /// Gets a connection. Until it has one nothing is sent, so a job called
    /// off meanwhile is answered at once.
    async fn connect(&mut self, pool: &Pool) -> Option<Object> {
        let get = pool.get();
        tokio::pin!(get);
        loop {
            self.settle_unwritten(Instant::now());
            let due = self.next_due()?;
            tokio::select! {
                biased;
                got = &mut get => match got {
                    Ok(conn) => {
                        // Time may have run out while it waited.
                        self.settle_unwritten(Instant::now());
                        return self.entries.iter().any(Entry::open).then_some(conn);
                    }
                    Err(e) => {
                        let e = self.redactor.pool(e);
                        self.answer_open(&e);
                        return None;
                    }
                },
                Some(call) = self.calls.recv() => self.apply(call),
                _ = sleep_until(due) => {}
            }
        }
    }

    /// Runs the statement for `jobs`, cancelling it when one of them is due.
    async fn run(&mut self, conn: &PgConn, jobs: &[usize]) -> Ran {
        let rows: Vec<Job> = jobs.iter().map(|&i| self.entries[i].job.clone()).collect();
        let rows: Vec<&Job> = rows.iter().collect();
        let alone = rows.len() == 1;
        let statement = insert(conn, &rows, self.outbox);
        tokio::pin!(statement);
        // The open jobs are exactly the statement's `jobs`.
        loop {
            let due = self.next_due().flatten();
            tokio::select! {
                biased;
                result = &mut statement => break classify(result, alone),
                Some(call) = self.calls.recv() => self.apply(call),
                _ = sleep_until(due) => {
                    self.cancel_sent = true;
                    let confirm_by = Instant::now() + CANCEL_CONFIRM;
                    let token = conn.cancel_token();
                    let sent = tokio::time::timeout_at(confirm_by, token.cancel_query(NoTls)).await;
                    if let Ok(result) = tokio::time::timeout_at(confirm_by, &mut statement).await {
                        break classify(result, alone);
                    }
                    let why = match sent {
                        Ok(Ok(())) => "a cancel was sent but not confirmed in time".to_string(),
                        Ok(Err(e)) => format!("the cancel could not be sent: {}", describe(&e)),
                        Err(_) => "the cancel could not be sent in time".to_string(),
                    };
                    log::warn!("a write ran past its deadline and {why}");
                    let unknown = self.redactor.indeterminate(&why);
                    self.answer_due(Instant::now(), &unknown);
                    if !self.entries.iter().any(Entry::open) {
                        break Ran::Abandoned;
                    }
                }
            }
        }
    }

    /// The statement's connection was lost: find out, in time, what was written.
    async fn resolve(&mut self, pool: &Pool, lost: &Backend, why: &str) {
        log::warn!(
            "the connection was lost during a write ({why}); finding out what committed \
             once its backend (pid {}) has ended",
            lost.pid
        );
        let unknown = self
            .redactor
            .indeterminate(format!("connection lost during the write: {why}"));
        loop {
            let attempt = look_up(
                pool.clone(),
                lost.clone(),
                self.open_ids(),
                self.redactor.clone(),
            );
            tokio::pin!(attempt);
            // Call-offs and deadlines keep being heard while the attempt runs.
            let outcome = loop {
                self.answer_due(Instant::now(), &unknown);
                let Some(due) = self.next_due() else {
                    return;
                };
                tokio::select! {
                    biased;
                    outcome = &mut attempt => break outcome,
                    Some(call) = self.calls.recv() => self.apply(call),
                    _ = sleep_until(due) => {}
                }
            };
            match outcome {
                Ok(found) => {
                    for entry in self.entries.iter_mut().filter(|e| e.open()) {
                        if found.stored.contains(&entry.job.id) {
                            entry.answer(Ok(()));
                        }
                    }
                    if found.same_server {
                        self.settle_unwritten(Instant::now());
                    } else {
                        // Another server now (a failover): a row missing
                        // here may have committed on the old one and been lost.
                        let moved = self.redactor.indeterminate(
                            "the database server changed after the connection was lost",
                        );
                        self.answer_open(&moved);
                    }
                    return;
                }
                Err(e) => {
                    log::debug!("cannot find out yet what the lost write committed: {e}");
                    let due = self.next_due().flatten();
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                        _ = sleep_until(due) => {}
                    }
                }
            }
        }
    }

    /// Jobs known not to be written: a called-off one is answered so (it is
    /// before its write again), the others go back to the queue.
    fn settle_unwritten(&mut self, now: Instant) {
        for entry in self.entries.iter_mut().filter(|e| e.open()) {
            if let Some(why) = entry.called_off_before_write(now) {
                entry.answer(Err(DbError::CalledOff(why)));
            }
        }
    }

    /// The jobs still open, to go back to the front of the queue.
    fn requeue(self) -> Vec<Queued> {
        self.entries
            .into_iter()
            .filter_map(|e| {
                e.reply.map(|reply| Queued {
                    job: e.job,
                    reply,
                    deadline: e.deadline,
                    alone: e.alone,
                })
            })
            .collect()
    }

    fn apply(&mut self, call: CallOffAt) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.open() && e.job.id == call.id)
        {
            let earlier = entry.call_off.is_none_or(|(_, at)| call.at < at);
            if earlier {
                entry.call_off = Some((call.why, call.at));
            }
        }
    }

    fn answer(&mut self, which: &[usize], answer: impl Fn() -> Result<(), DbError>) {
        for &i in which {
            self.entries[i].answer(answer());
        }
    }

    /// Answers `error` to every open job.
    fn answer_open(&mut self, error: &DbError) {
        for entry in self.entries.iter_mut().filter(|e| e.open()) {
            entry.answer(Err(error.clone()));
        }
    }

    /// Answers `error` to every open job whose time has run out by `now`.
    fn answer_due(&mut self, now: Instant, error: &DbError) {
        for entry in self.entries.iter_mut().filter(|e| e.open()) {
            if entry.due().is_some_and(|(at, _)| at <= now) {
                entry.answer(Err(error.clone()));
            }
        }
    }

    fn open_ids(&self) -> Vec<Uuid> {
        self.entries
            .iter()
            .filter(|e| e.open())
            .map(|e| e.job.id)
            .collect()
    }

    /// The earliest due time among the open jobs; `None` when none is open.
    fn next_due(&self) -> Option<Option<Instant>> {
        let mut open = self.entries.iter().filter(|e| e.open()).peekable();
        open.peek()?;
        Some(open.filter_map(Entry::due).map(|(at, _)| at).min())
    }
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a look-up after a lost connection found.
struct Found {
    /// The ids that are stored.
    stored: Vec<Uuid>,
    /// Whether the fresh connection reached the server the lost one was on.
    same_server: bool,
}

/// On a fresh connection: ends the lost backend, waits until it is gone, and
/// answers which of `ids` are stored. A backend cut off from its client may
/// still be running the statement: a look-up before it has ended would prove
/// nothing. (Owns what it uses, so that it can run while call-offs are heard.)
async fn look_up(
    pool: Pool,
    lost: Backend,
    ids: Vec<Uuid>,
    redactor: Redactor,
) -> Result<Found, DbError> {
    let conn = pool.get().await.map_err(|e| redactor.pool(e))?;
    let same_server = conn.backend.server == lost.server;
    if same_server {
        // Matched by start time as well, so a new backend that reuses the
        // pid is left alone; without one, by pid.
        let same = "pid = $1 AND ($2 = '' OR backend_start::text = $2) \
                    AND pid <> pg_backend_pid()";
        conn.query(
            &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {same}"),
            &[&lost.pid, &lost.started],
        )
        .await
        .map_err(|e| redactor.query(&e))?;
        loop {
            let left: i64 = conn
                .query_one(
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE {same}"),
                    &[&lost.pid, &lost.started],
                )
                .await
                .map_err(|e| redactor.query(&e))?
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(GONE_CHECK).await;
        }
    }
    let rows = conn
        .query("SELECT id FROM jobs WHERE id = ANY($1)", &[&ids])
        .await
        .map_err(|e| redactor.query(&e))?;
    Ok(Found {
        stored: rows.iter().map(|r| r.get(0)).collect(),
        same_server,
    })
}

fn classify(result: Result<(), tokio_postgres::Error>, alone: bool) -> Ran {
    match result {
        Ok(()) => Ran::Committed,
        Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => Ran::Cancelled,
        // Our own random id already there: an earlier attempt committed it.
        Err(e) if alone && is_own_id_conflict(&e) => Ran::Committed,
        Err(e) if connection_lost(&e) => Ran::Lost(describe(&e)),
        Err(e) => Ran::Refused(e),
    }
}

/// The connection failed or was ended (rather than the statement refused).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        // 08: connection exception; 57P: the server is terminating the session.
        Some(d) => {
            let code = d.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// A unique violation on the jobs' primary key: the id (a random UUID made
/// here) is already stored, so an earlier attempt committed it. Only a batch
/// of one can say so: in a larger one, the conflict may be another job's.
fn is_own_id_conflict(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::UNIQUE_VIOLATION && d.constraint() == Some("jobs_pkey")
    })
}

/// One multi-row INSERT of `jobs`: one round trip, one commit. With
/// `outbox`, the same statement writes each job's event to the outbox, so an
/// event exists exactly when its job does.
async fn insert(conn: &PgConn, jobs: &[&Job], outbox: bool) -> Result<(), tokio_postgres::Error> {
    let mut sql = String::from(if outbox {
        "WITH j AS (INSERT INTO jobs (id, name) VALUES "
    } else {
        "INSERT INTO jobs (id, name) VALUES "
    });
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        Vec::with_capacity(jobs.len() * 2);
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
        params.push(&job.id);
        params.push(&job.name);
    }
    if outbox {
        sql.push_str(
            " RETURNING id, name, created_at) \
             INSERT INTO outbox (job_id, name, created_at) SELECT id, name, created_at FROM j",
        );
    }
    let stmt = conn.prepare_cached(&sql).await?;
    conn.execute(&stmt, &params).await.map(|_| ())
}
