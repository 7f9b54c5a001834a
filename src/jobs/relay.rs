//! The **Relay**: publishes the outbox to the Redis stream `drainer:jobs`,
//! while this instance holds the [lease](super::lease).
//!
//! Every [`TICK`] it reads the oldest [`BATCH`] outbox rows, adds each to the
//! stream (fields `id`, `name`, `created_at`) and deletes them only once
//! Redis has acknowledged them. A re-sent event is harmless: a Lua script
//! adds the entry only when `SET drainer:jobs:published:<job id> 1 NX PX
//! <RETENTION>` succeeds, so the stream holds each job once even when the
//! relay dies between the add and the delete. (Publishing is idempotent by
//! job id, not by outbox sequence: a lower sequence can commit after a
//! higher one was published.) A Redis that fails is retried with a backoff
//! (from [`TICK`], doubling to [`MAX_BACKOFF`]); the outbox keeps what it
//! cannot publish, for whoever holds the lease next.
//!
//! At shutdown the `flush_events` phase publishes what is left (everything
//! committed before the drain ended) and says how many were flushed and how
//! many stay in the outbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message,
    ResponseActFuture, WrapFuture,
};
use drainer_engine::{Census, StopActor};
use log::{info, warn};
use prometheus::{IntCounter, IntGauge};
use redis::aio::MultiplexedConnection;

use super::db::Pool;

/// How often the relay looks at the outbox.
pub const TICK: Duration = Duration::from_millis(100);
/// The most rows one round publishes.
pub const BATCH: i64 = 500;
/// The longest wait between tries while Redis fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a job's "published" marker lives: longer than any outbox wait
/// worth deduplicating (a relay that died mid-round is replaced within the
/// lease's TTL).
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The stream.
pub const STREAM: &str = "drainer:jobs";

/// Adds each event of the batch unless its job was published already;
/// answers how many it added. KEYS: the stream, then one marker per event;
/// ARGV: the markers' lifetime in ms, then `id`, `name`, `created_at` per
/// event. One script per round: the batch costs one round trip and one call.
const PUBLISH: &str = r"local added = 0
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 3
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'id', ARGV[at], 'name', ARGV[at + 1], 'created_at', ARGV[at + 2])
    added = added + 1
  end
end
return added";

/// [`PUBLISH`], called by its SHA1 (loaded again if Redis lost it).
static PUBLISH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH));

/// Publishes what is left; answers (flushed, left in the outbox).
#[derive(Debug, Message)]
#[rtype(result = "Result<(usize, i64), String>")]
pub struct Flush {
    /// Stop trying by then.
    pub until: tokio::time::Instant,
}

/// The relay's metrics.
#[derive(Clone)]
pub struct RelayMetrics {
    /// `drainer_outbox_pending`.
    pub pending: IntGauge,
    /// `drainer_events_published_total`.
    pub published: IntCounter,
}

/// See the module documentation.
pub struct Relay {
    pool: Pool,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    /// Set by the Lease while this instance holds it.
    holds: Arc<AtomicBool>,
    busy: bool,
    /// While Redis fails: not before then.
    retry_at: Option<Instant>,
    backoff: Duration,
    metrics: RelayMetrics,
    census: Census,
}

/// One round: publish the oldest rows, delete them; answers the connection,
/// how many were added to the stream, and how many rows it took (fewer than
/// [`BATCH`]: the outbox is empty now, but for rows committed meanwhile).
async fn publish_round(
    pool: Pool,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
) -> Result<(MultiplexedConnection, usize, usize), String> {
    let db = pool.get().await.map_err(|e| e.to_string())?;
    let rows = db
        .query(
            "SELECT seq, job_id::text, name, created_at::text FROM outbox ORDER BY seq LIMIT $1",
            &[&BATCH],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = match conn {
        Some(conn) => conn,
        None => client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?,
    };
    if rows.is_empty() {
        return Ok((conn, 0, 0));
    }
    let taken = rows.len();
    let retention = u64::try_from(RETENTION.as_millis()).unwrap_or(u64::MAX);
    let mut call = PUBLISH_SCRIPT.key(STREAM);
    call.arg(retention);
    for row in &rows {
        let (id, name, at): (String, String, String) = (row.get(1), row.get(2), row.get(3));
        call.key(format!("{STREAM}:published:{id}"))
            .arg(id)
            .arg(name)
            .arg(at);
    }
    let added: usize = call
        .invoke_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    db.execute("DELETE FROM outbox WHERE seq = ANY($1)", &[&seqs])
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, added, taken))
}

/// How many rows the outbox holds.
async fn outbox_left(pool: &Pool) -> Result<i64, String> {
    let db = pool.get().await.map_err(|e| e.to_string())?;
    let row = db
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

impl Relay {
    /// A relay over `pool`'s outbox to `client`'s Redis, publishing while
    /// `holds` is set.
    pub(crate) fn new(
        pool: Pool,
        client: redis::Client,
        holds: Arc<AtomicBool>,
        metrics: RelayMetrics,
        census: Census,
    ) -> Relay {
        Relay {
            pool,
            client,
            conn: None,
            holds,
            busy: false,
            retry_at: None,
            backoff: TICK,
            metrics,
            census,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy || !self.holds.load(Ordering::Acquire) {
            return;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.busy = true;
        let round = publish_round(self.pool.clone(), self.client.clone(), self.conn.take());
        ctx.spawn(round.into_actor(self).map(|done, act, ctx| {
            act.busy = false;
            match done {
                Ok((conn, added, taken)) => {
                    act.conn = Some(conn);
                    act.retry_at = None;
                    act.backoff = TICK;
                    act.metrics.published.inc_by(added as u64);
                    if i64::try_from(taken).unwrap_or(BATCH) == BATCH {
                        // More waiting: go on at once.
                        act.tick(ctx);
                    } else {
                        act.metrics.pending.set(0);
                    }
                }
                Err(e) => {
                    act.count_pending(ctx);
                    warn!(
                        "relay: cannot publish ({e}); retrying in {} ms",
                        act.backoff.as_millis()
                    );
                    act.retry_at = Some(Instant::now() + act.backoff);
                    act.backoff = (act.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }));
    }
}

impl Relay {
    /// Counts the outbox for `drainer_outbox_pending` (while Redis fails, the
    /// outbox grows; while it works, a round that takes fewer than a batch
    /// has emptied it).
    fn count_pending(&mut self, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        ctx.spawn(
            async move { outbox_left(&pool).await }
                .into_actor(self)
                .map(|left, act, _| {
                    if let Ok(left) = left {
                        act.metrics.pending.set(left);
                    }
                }),
        );
    }
}

impl Actor for Relay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.census.actor_started();
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
    }
}

impl Handler<Flush> for Relay {
    type Result = ResponseActFuture<Self, Result<(usize, i64), String>>;

    /// Rounds until the outbox is empty, Redis fails, or `until`.
    fn handle(&mut self, msg: Flush, _: &mut Context<Self>) -> Self::Result {
        let holds = self.holds.load(Ordering::Acquire);
        let (pool, client, conn) = (self.pool.clone(), self.client.clone(), self.conn.take());
        let flush = async move {
            if !holds {
                return Ok((None, 0, outbox_left(&pool).await?));
            }
            let (mut conn, mut flushed) = (conn, 0);
            loop {
                let round = publish_round(pool.clone(), client.clone(), conn.take());
                match tokio::time::timeout_at(msg.until, round).await {
                    Ok(Ok((c, added, taken))) => {
                        flushed += added;
                        conn = Some(c);
                        if i64::try_from(taken).unwrap_or(BATCH) < BATCH {
                            return Ok((conn, flushed, outbox_left(&pool).await?));
                        }
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok((None, flushed, outbox_left(&pool).await?)),
                }
            }
        };
        Box::pin(flush.into_actor(self).map(|done, act, _| match done {
            Ok((conn, flushed, left)) => {
                act.conn = conn;
                act.metrics.published.inc_by(flushed as u64);
                act.metrics.pending.set(left);
                Ok((flushed, left))
            }
            Err(e) => Err(e),
        }))
    }
}

impl Handler<StopActor> for Relay {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        info!("relay stopped");
        ctx.stop();
    }
}
