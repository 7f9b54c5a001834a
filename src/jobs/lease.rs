//! The **Lease**: `drainer:lock:<LOCK_NAME>` in Redis (`REDIS_URL`), which
//! decides which instance runs the event relay — not which one serves: every
//! instance serves HTTP whether it holds the lease or not.
//!
//! - **Taking it.** `SET key <token> NX PX <LOCK_TTL_MS>`, with a random token
//!   of this process's own. An instance without the lease is a standby: it
//!   tries again every [`STANDBY_RETRY`], so it takes a released lease within
//!   a second and an expired one within the TTL.
//! - **Keeping it.** Every third of the TTL a compare-and-extend (a Lua
//!   script: only while the key still holds our token). A renewal that finds
//!   the key gone or another token means the lease is lost: logged as an
//!   error, and the instance is a standby again. So is a holder whose last
//!   successful renewal is older than the TTL minus one renewal interval
//!   (Redis unreachable, a partition): two holders never overlap.
//! - **Giving it back.** The `release_lease` stop hook: a compare-and-delete
//!   (only our own token), so a standby takes over at once instead of waiting
//!   for the TTL. After a SIGKILL the lease expires by itself.
//!
//! `drainer_lease_held` is 1 while this instance holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message,
    ResponseActFuture, WrapFuture,
};
use drainer_engine::{Census, StopActor};
use log::{error, info, warn};
use prometheus::IntGauge;
use redis::aio::MultiplexedConnection;

/// How often a standby tries to take the lease.
pub const STANDBY_RETRY: Duration = Duration::from_millis(250);

/// Extends the lease only while it holds our token; answers 1 if it did.
const EXTEND: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return 0
end";

/// Deletes the lease only while it holds our token; answers 1 if it did.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end";

/// Where the lease is kept, what it is called, how long it lives.
#[derive(Clone)]
pub struct LeaseSettings {
    /// The Redis connection (its URL may carry a password: never printed).
    pub client: redis::Client,
    /// `LOCK_NAME`: the key is `drainer:lock:<name>`.
    pub name: String,
    /// `LOCK_TTL_MS`.
    pub ttl: Duration,
}

/// Where the lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Not ours: try to take it.
    Standby,
    /// Ours since the last successful renewal at `renewed`.
    Held { renewed: Instant },
    /// Given back at shutdown (or never to be taken again).
    Released,
}

/// Gives the lease back: answers whether this instance held it and released it.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, String>")]
pub struct Release;

/// See the module documentation.
pub struct Lease {
    settings: LeaseSettings,
    key: String,
    token: String,
    conn: Option<MultiplexedConnection>,
    holding: Holding,
    /// A Redis round trip is under way (one at a time).
    busy: bool,
    held: IntGauge,
    /// Read by the relay: set while this instance holds the lease.
    holds: Arc<AtomicBool>,
    census: Census,
}

impl Lease {
    /// A lease for `settings`; `held` is `drainer_lease_held`.
    /// `holds` is set while the lease is held (the relay reads it).
    pub fn new(
        settings: LeaseSettings,
        held: IntGauge,
        holds: Arc<AtomicBool>,
        census: Census,
    ) -> Lease {
        let key = format!("drainer:lock:{}", settings.name);
        Lease {
            settings,
            key,
            token: uuid::Uuid::new_v4().to_string(),
            conn: None,
            holding: Holding::Standby,
            busy: false,
            held,
            holds,
            census,
        }
    }

    /// The renewal interval: a third of the TTL.
    fn renew_every(&self) -> Duration {
        self.settings.ttl / 3
    }

    fn set(&mut self, holding: Holding) {
        self.holding = holding;
        let held = matches!(holding, Holding::Held { .. });
        self.holds.store(held, Ordering::Release);
        self.held.set(i64::from(held));
    }

    /// A connection (made once, made again after an error), bounded by a
    /// renewal interval.
    fn connection(
        &self,
    ) -> impl std::future::Future<Output = Result<MultiplexedConnection, String>> {
        let (cached, client, limit) = (
            self.conn.clone(),
            self.settings.client.clone(),
            self.renew_every(),
        );
        async move {
            if let Some(conn) = cached {
                return Ok(conn);
            }
            match tokio::time::timeout(limit, client.get_multiplexed_async_connection()).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("Redis did not answer in time".into()),
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        match self.holding {
            Holding::Released => {}
            Holding::Standby => self.try_take(ctx),
            Holding::Held { renewed } => {
                let since = renewed.elapsed();
                if since > self.settings.ttl.saturating_sub(self.renew_every()) {
                    error!(
                        "lease lost: not renewed for {} ms (Redis unreachable?); the relay stops",
                        since.as_millis()
                    );
                    self.set(Holding::Standby);
                } else if since >= self.renew_every() {
                    self.renew(ctx);
                }
            }
        }
    }

    /// One command on the lease's connection with (key, token, TTL in ms),
    /// bounded by a renewal interval; answers the connection to keep and
    /// what the command said.
    fn round_trip<T, F, Fut>(
        &self,
        command: F,
    ) -> impl std::future::Future<Output = Result<(MultiplexedConnection, T), String>>
    where
        F: FnOnce(MultiplexedConnection, String, String, u64) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<(MultiplexedConnection, T)>>,
    {
        let (key, token, ttl, limit) = (
            self.key.clone(),
            self.token.clone(),
            u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX),
            self.renew_every(),
        );
        let connecting = self.connection();
        async move {
            let conn = connecting.await?;
            match tokio::time::timeout(limit, command(conn, key, token, ttl)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("Redis did not answer in time".into()),
            }
        }
    }

    fn try_take(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let take = self.round_trip(|mut conn, key, token, ttl| async move {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(&token).arg("NX").arg("PX").arg(ttl);
            let answer = set.query_async::<Option<String>>(&mut conn).await?;
            Ok((conn, answer.is_some()))
        });
        ctx.spawn(take.into_actor(self).map(|taken, act, _| {
            act.busy = false;
            match taken {
                Ok((conn, taken)) => {
                    act.conn = Some(conn);
                    if taken && act.holding == Holding::Standby {
                        info!("lease {} taken: this instance runs the relay", act.key);
                        act.set(Holding::Held {
                            renewed: Instant::now(),
                        });
                    }
                }
                Err(e) => {
                    act.conn = None;
                    log::debug!("lease: cannot reach Redis to take it: {e}");
                }
            }
        }));
    }

    fn renew(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let started = Instant::now();
        let renew = self.round_trip(|mut conn, key, token, ttl| async move {
            let script = redis::Script::new(EXTEND);
            let mut extend = script.key(&key);
            extend.arg(&token).arg(ttl);
            let extended = extend.invoke_async::<i64>(&mut conn).await?;
            Ok((conn, extended == 1))
        });
        ctx.spawn(renew.into_actor(self).map(move |renewed, act, _| {
            act.busy = false;
            if !matches!(act.holding, Holding::Held { .. }) {
                return;
            }
            match renewed {
                Ok((conn, true)) => {
                    act.conn = Some(conn);
                    act.set(Holding::Held { renewed: started });
                }
                Ok((conn, false)) => {
                    act.conn = Some(conn);
                    error!(
                        "lease {} lost: the key is gone or holds another token; the relay stops",
                        act.key
                    );
                    act.set(Holding::Standby);
                }
                Err(e) => {
                    act.conn = None;
                    warn!("lease: renewal failed ({e}); retrying");
                }
            }
        }));
    }
}

impl Actor for Lease {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.census.actor_started();
        self.set(Holding::Standby);
        let every = STANDBY_RETRY.min(self.renew_every());
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
        self.tick(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
    }
}

impl Handler<Release> for Lease {
    type Result = ResponseActFuture<Self, Result<bool, String>>;

    /// Compare-and-delete, if held; no more takes either way.
    fn handle(&mut self, _: Release, _: &mut Context<Self>) -> Self::Result {
        let held = matches!(self.holding, Holding::Held { .. });
        self.set(Holding::Released);
        let release = self.round_trip(|mut conn, key, token, _| async move {
            let script = redis::Script::new(RELEASE);
            let mut delete = script.key(&key);
            delete.arg(&token);
            let deleted = delete.invoke_async::<i64>(&mut conn).await?;
            Ok((conn, deleted == 1))
        });
        let release = async move {
            if !held {
                return Ok(false);
            }
            release.await.map(|(_, released)| released)
        };
        Box::pin(release.into_actor(self))
    }
}

impl Handler<StopActor> for Lease {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
