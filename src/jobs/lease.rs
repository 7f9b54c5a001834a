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
    census: Census,
}

impl Lease {
    /// A lease for `settings`; `held` is `drainer_lease_held`.
    pub fn new(settings: LeaseSettings, held: IntGauge, census: Census) -> Lease {
        let key = format!("drainer:lock:{}", settings.name);
        Lease {
            settings,
            key,
            token: uuid::Uuid::new_v4().to_string(),
            conn: None,
            holding: Holding::Standby,
            busy: false,
            held,
            census,
        }
    }

    /// The renewal interval: a third of the TTL.
    fn renew_every(&self) -> Duration {
        self.settings.ttl / 3
    }

    fn set(&mut self, holding: Holding) {
        self.holding = holding;
        self.held
            .set(i64::from(matches!(holding, Holding::Held { .. })));
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

    fn try_take(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let (key, token, ttl, limit) = (
            self.key.clone(),
            self.token.clone(),
            self.settings.ttl.as_millis() as u64,
            self.renew_every(),
        );
        let connecting = self.connection();
        let take = async move {
            let mut conn = connecting.await?;
            let mut command = redis::cmd("SET");
            command.arg(&key).arg(&token).arg("NX").arg("PX").arg(ttl);
            let set = command.query_async::<Option<String>>(&mut conn);
            let taken = match tokio::time::timeout(limit, set).await {
                Ok(Ok(answer)) => answer.is_some(),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("Redis did not answer in time".into()),
            };
            Ok((conn, taken))
        };
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
        let (key, token, ttl, limit) = (
            self.key.clone(),
            self.token.clone(),
            self.settings.ttl.as_millis() as u64,
            self.renew_every(),
        );
        let connecting = self.connection();
        let renew = async move {
            let mut conn = connecting.await?;
            let script = redis::Script::new(EXTEND);
            let mut invocation = script.key(&key);
            invocation.arg(&token).arg(ttl);
            let extend = invocation.invoke_async::<i64>(&mut conn);
            match tokio::time::timeout(limit, extend).await {
                Ok(Ok(extended)) => Ok((conn, extended == 1)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("Redis did not answer in time".into()),
            }
        };
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
        let (key, token, connecting) = (self.key.clone(), self.token.clone(), self.connection());
        let release = async move {
            if !held {
                return Ok(false);
            }
            let mut conn = connecting.await?;
            let deleted = redis::Script::new(RELEASE)
                .key(&key)
                .arg(&token)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(deleted == 1)
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
