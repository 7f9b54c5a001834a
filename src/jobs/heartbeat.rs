//! The Heartbeat: a background worker owned by the Supervisor.
//!
//! Every `HEARTBEAT_MS` it asks the DbActor to stamp this instance's
//! `ServerInstance.last_seen_at`, so a row whose heartbeat stopped without a
//! `drain_complete` tells an operator the process died. Each beat is awaited
//! with `ctx.wait`, which holds the mailbox: a [`StopActor`] is handled only
//! once the beat in progress has ended, so once the stop is answered no beat
//! is running and none will run — the pool may close.

use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, WrapFuture,
};
use log::{debug, info, warn};

use drainer_engine::{Census, StopActor};

use super::db::{Beat, DbActor};

/// See the module documentation.
pub struct Heartbeat {
    db: Addr<DbActor>,
    every: Duration,
    census: Census,
}

impl Heartbeat {
    /// A heartbeat that writes through `db` every `every`, counted in `census`.
    pub fn new(db: Addr<DbActor>, every: Duration, census: Census) -> Self {
        Heartbeat { db, every, census }
    }
}

impl Actor for Heartbeat {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.census.actor_started();
        ctx.run_interval(self.every, |act, ctx| {
            let beat = act.db.send(Beat);
            ctx.wait(beat.into_actor(act).map(|answer, _, _| match answer {
                Ok(Ok(())) => debug!("heartbeat"),
                Ok(Err(e)) => warn!("heartbeat skipped: {e}"),
                Err(_) => warn!("heartbeat skipped: the database actor is gone"),
            }));
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
    }
}

impl Handler<StopActor> for Heartbeat {
    type Result = ();

    /// Handled only between beats (see the module documentation).
    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        info!("heartbeat stopped");
        ctx.stop();
    }
}
