//! The jobs service's own resources, built on the engine's public API like
//! any adopter's: the DbActor, the RequestActor, the Heartbeat, and their
//! part in the shutdown.
//!
//! - [`db`] — the **DbActor**: the PostgreSQL pool, the schema, this
//!   instance's records, the jobs (batched, every write bounded and answered
//!   truthfully whatever the database does); closes the pool last.
//! - [`request`] — the **RequestActor**: one per admitted `POST /work`; does
//!   the simulated work, shields itself before its write, writes through the
//!   DbActor, replies.
//! - [`downstream`] — the service `POST /work` calls before it writes
//!   (`DOWNSTREAM_URL`), bounded by `DOWNSTREAM_TIMEOUT_MS`.
//! - [`feed`] — the **Feed**: committed jobs, for SSE streams and long-polls.
//! - [`lease`] — the **Lease** in Redis (`REDIS_URL`): who runs the relay.
//! - [`relay`] — the **Relay**: the outbox, published to the Redis stream
//!   `drainer:jobs` by the lease holder.
//! - [`heartbeat`] — the **Heartbeat**: stamps `last_seen_at` every
//!   `HEARTBEAT_MS`; stops between two beats.
//!
//! Their stop hooks, registered on the engine in this order (they run last
//! registered first, after the engine's own phases):
//!
//! | hook | what it does |
//! |---|---|
//! | `close_database` | writes `drain_complete` with the report's figures, closes the pool |
//! | (`flush_telemetry`, registered by start-up between the two) | exports the spans so far |
//! | `stop_background` | stops the heartbeat between two beats |
//!
//! The `drain_begin` record is written when the drain begins (a drain-begin
//! hook); `close_database` waits for it first.

pub mod db;
pub mod downstream;
pub mod feed;
pub mod heartbeat;
pub mod lease;
pub mod relay;
pub mod request;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, AsyncContext, Context};
use drainer_engine::{Engine, Outcome, PhaseCtx, StopActor};
use log::{info, warn};
use tokio::sync::oneshot;
use tokio::time::Instant;

use db::{ClosePool, DbActor, RecordDrainBegin, RecordDrainComplete};
use heartbeat::Heartbeat;

/// The longest the `drain_begin` record may take.
const BEGIN_RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers the records and the pool's close: `drain_begin` as the drain
/// begins, and the `close_database` hook (register it first: it runs last).
pub fn register_database(engine: &mut Engine, db: Addr<DbActor>) {
    let (begun_tx, begun) = oneshot::channel::<()>();
    let (writer, census) = (db.clone(), engine.census().clone());
    engine.on_drain_begin(move |begun| {
        census.spawn(async move {
            let write = writer.send(RecordDrainBegin {
                in_flight: begun.in_flight,
                successor: begun.trigger.successor(),
            });
            match tokio::time::timeout(BEGIN_RECORD_TIMEOUT, write).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!("drain_begin record skipped: {e}"),
                Ok(Err(_)) => warn!("drain_begin record skipped: the database actor is gone"),
                Err(_) => warn!("drain_begin record skipped: the database did not answer in time"),
            }
            let _ = begun_tx.send(());
        });
    });
    let census = engine.census().clone();
    engine.on_stop("close_database", move |ctx| {
        close_database(db, begun, census, ctx)
    });
}

/// Registers the heartbeat, owned by the Supervisor, with its
/// `stop_background` hook (register it after `flush_telemetry`: it runs
/// before); answers the context to run the heartbeat in once the database
/// is open.
pub fn register_heartbeat(engine: &mut Engine) -> Context<Heartbeat> {
    let context = Context::<Heartbeat>::new();
    let heartbeat = context.address();
    engine.own(heartbeat.clone());
    engine.on_stop("stop_background", move |ctx| async move {
        // `do_send`: delivered however this phase ends (a dropped `send` is
        // never handled). Then wait until the beat in progress, if any, is over.
        heartbeat.do_send(StopActor);
        let stopped = heartbeat.send(StopActor);
        let _ = tokio::time::timeout_at(ctx.deadline, stopped).await;
        Ok(())
    });
    context
}

/// With `REDIS_URL`: the Lease and the Relay, owned by the engine, and
/// their stop hooks `flush_events` then `release_lease` (register them after
/// `flush_telemetry` and before `stop_background`: they run between them).
/// Answers what starts the relay once the database is open (over its pool).
pub(crate) fn register_relay(
    engine: &mut Engine,
    settings: lease::LeaseSettings,
) -> Result<impl FnOnce(db::Pool), prometheus::Error> {
    let registry = engine.metrics().registry();
    let held = prometheus::IntGauge::new(
        "drainer_lease_held",
        "1 while this instance holds the relay's lease in Redis.",
    )?;
    let metrics = relay::RelayMetrics {
        pending: prometheus::IntGauge::new(
            "drainer_outbox_pending",
            "Job events in the outbox not yet published: 0 once a round empties it; counted while Redis fails and at the flush.",
        )?,
        published: prometheus::IntCounter::new(
            "drainer_events_published_total",
            "Job events this instance added to the Redis stream drainer:jobs.",
        )?,
    };
    registry.register(Box::new(held.clone()))?;
    registry.register(Box::new(metrics.pending.clone()))?;
    registry.register(Box::new(metrics.published.clone()))?;
    let holds = Arc::new(AtomicBool::new(false));
    let client = settings.client.clone();
    let lease = actix::Actor::start(lease::Lease::new(
        settings,
        held,
        holds.clone(),
        engine.census().clone(),
    ));
    engine.own(lease.clone());
    engine.on_stop("release_lease", move |ctx| async move {
        match tokio::time::timeout_at(ctx.deadline, lease.send(lease::Release)).await {
            Ok(Ok(Ok(true))) => {
                info!("lease released: a standby takes it over now");
                ctx.note("released");
                Ok(())
            }
            Ok(Ok(Ok(false))) => {
                info!("lease not held (a standby): nothing to release");
                ctx.note("not held");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(format!("the lease was not released: {e}")),
            Ok(Err(_)) => Err("the lease actor is gone".into()),
            Err(_) => Err("Redis did not answer in time: the lease expires by itself".into()),
        }
    });
    let context = Context::<relay::Relay>::new();
    let relay = context.address();
    engine.own(relay.clone());
    engine.on_stop("flush_events", move |ctx| async move {
        let until = ctx.deadline - FLUSH_MARGIN;
        match tokio::time::timeout_at(ctx.deadline, relay.send(relay::Flush { until })).await {
            Ok(Ok(Ok((flushed, left)))) => {
                if left == 0 {
                    info!("events flushed: {flushed}; none left in the outbox");
                } else {
                    warn!(
                        "events flushed: {flushed}; {left} left in the outbox for the next holder"
                    );
                }
                ctx.note(format!("{flushed} flushed, {left} left"));
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(format!("events not flushed ({e}): they stay in the outbox")),
            Ok(Err(_)) => Err("the relay is gone".into()),
            Err(_) => Err("the flush did not end in time: what is left stays in the outbox".into()),
        }
    });
    let census = engine.census().clone();
    Ok(move |pool| {
        context.run(relay::Relay::new(pool, client, holds, metrics, census));
    })
}

/// What `flush_events` keeps of its deadline to count what is left.
const FLUSH_MARGIN: Duration = Duration::from_millis(200);

/// The `close_database` hook: the `drain_complete` record with the report's
/// figures (given three quarters of the phase's time), then the pool closes
/// whatever happened to the record.
async fn close_database(
    db: Addr<DbActor>,
    begun: oneshot::Receiver<()>,
    census: drainer_engine::Census,
    ctx: PhaseCtx,
) -> Result<(), String> {
    let now = Instant::now();
    let records_until = now + ctx.deadline.saturating_duration_since(now) * 3 / 4;
    let report = &ctx.report;
    let (success, remaining) = match report.outcome {
        Some(Outcome::Drained) => (true, 0),
        Some(Outcome::CutShort { remaining, .. }) => (false, remaining),
        None => (false, 0),
    };
    let complete = RecordDrainComplete {
        successor: ctx.order.trigger.successor(),
        success,
        remaining,
        report: report.fields(),
    };
    let writer = db.clone();
    // A task, so cutting this phase cannot cancel the write; bounded, so it
    // never outlives the phase.
    let records = census.spawn(tokio::time::timeout_at(records_until, async move {
        let _ = begun.await;
        writer.send(complete).await
    }));
    let written = records.await;
    info!("closing DB");
    // Not awaited: the pool closes even if this phase is cut right here.
    db.do_send(ClosePool);
    match written {
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(e)))) => Err(format!("drain_complete record skipped: {e}")),
        Ok(Err(_)) => {
            Err("drain_complete record skipped: the database did not answer in time".into())
        }
        _ => Err("drain_complete record skipped: the database actor is gone".into()),
    }
}
