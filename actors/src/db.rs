//! The DbActor: owns the PostgreSQL pool.
//!
//! [`DbActor::open`] runs before anything is served: it connects (retrying
//! until `DB_CONNECT_TIMEOUT_MS`), applies `sql/schema.sql` and registers this
//! instance, so a database that cannot be reached is a start-up failure.
//! After that every handler returns a future over the pool: nothing blocks the
//! actor, and concurrent writes use concurrent connections.
//!
//! Error text that reaches a client or a log never carries the password from
//! `DATABASE_URL`: every message built here goes through [`Redactor`].

use std::fmt;
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use log::{debug, info};
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The schema, applied at every start.
const SCHEMA: &str = include_str!("../../sql/schema.sql");

/// Serialises schema creation between instances starting at once.
const SCHEMA_LOCK: i64 = 0x0064_7261_696e_6572; // "drainer"

/// How to reach the database.
pub struct DbSettings {
    /// The `DATABASE_URL`; it holds a password, so it is never printed.
    pub url: String,
    /// How long start-up keeps trying to reach the database.
    pub connect_timeout: Duration,
    /// The most connections the pool opens.
    pub pool_size: usize,
}

impl DbSettings {
    /// Checks that the URL parses, without connecting.
    pub fn check(&self) -> Result<(), DbError> {
        self.url
            .parse::<tokio_postgres::Config>()
            .map(|_| ())
            .map_err(|_| DbError::InvalidUrl)
    }
}

impl fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbSettings")
            .field("url", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its primary key.
    pub id: Uuid,
    /// Its name, as given.
    pub name: String,
}

/// What can go wrong with the database. Messages are already redacted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` could not be parsed (the URL itself is not repeated).
    #[error("DATABASE_URL is not a valid PostgreSQL connection URL")]
    InvalidUrl,
    /// Start-up could not reach the database in time.
    #[error("cannot reach the database at {target} within {timeout_ms} ms: {cause}")]
    Unreachable {
        /// host:port, never the credentials.
        target: String,
        /// The configured `DB_CONNECT_TIMEOUT_MS`.
        timeout_ms: u128,
        /// The last error seen.
        cause: String,
    },
    /// The database answered, but refused (bad credentials, no such database…).
    #[error("the database at {target} refused the connection: {cause}")]
    Refused {
        /// host:port.
        target: String,
        /// What it said.
        cause: String,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Query(String),
    /// The pool is closed (the service is shutting down).
    #[error("the database pool is closed")]
    Closed,
}

/// Removes the `DATABASE_URL` password from any text before it is shown.
#[derive(Clone, Default)]
struct Redactor {
    password: Option<String>,
}

impl Redactor {
    fn new(pg: &tokio_postgres::Config) -> Self {
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        Redactor { password }
    }

    fn clean(&self, text: impl fmt::Display) -> String {
        let text = text.to_string();
        match &self.password {
            Some(p) => text.replace(p.as_str(), "<redacted>"),
            None => text,
        }
    }

    fn query(&self, e: impl fmt::Display) -> DbError {
        DbError::Query(self.clean(e))
    }

    fn pool(&self, e: PoolError) -> DbError {
        match e {
            PoolError::Closed => DbError::Closed,
            other => self.query(other),
        }
    }
}

/// Where this instance is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceId(pub i32);

// ----------------------------------------------------------------------------
// Messages
// ----------------------------------------------------------------------------

/// Inserts one job and answers it once committed.
#[derive(Debug, Message)]
#[rtype(result = "Result<Job, DbError>")]
pub struct InsertJob {
    /// The job's name.
    pub name: String,
}

/// Marks the instance draining and records `drain_begin`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct RecordDrainBegin {
    /// Requests in flight when the drain began.
    pub in_flight: usize,
}

/// Marks the instance stopped and records `drain_complete`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct RecordDrainComplete {
    /// Whether every request got its real answer.
    pub success: bool,
    /// Requests still in flight when the drain was cut short (0 on success).
    pub remaining: usize,
}

/// Closes the pool. Sent once, after the drain.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ClosePool;

// ----------------------------------------------------------------------------
// The actor
// ----------------------------------------------------------------------------

/// See the module documentation.
pub struct DbActor {
    pool: Pool,
    /// This instance's ServerInstance row.
    instance: InstanceId,
    redactor: Redactor,
}

impl DbActor {
    /// Connects, applies the schema and registers `host:port` as active.
    /// Call it before serving: its errors are start-up failures.
    pub async fn open(settings: &DbSettings, host: &str, port: u16) -> Result<DbActor, DbError> {
        let mut pg: tokio_postgres::Config =
            settings.url.parse().map_err(|_| DbError::InvalidUrl)?;
        pg.connect_timeout(settings.connect_timeout);
        let redactor = Redactor::new(&pg);
        let target = describe_target(&pg);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .create_timeout(Some(settings.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| redactor.query(e))?;

        debug!("connecting to the database at {target}");
        let mut client =
            first_connection(&pool, &redactor, &target, settings.connect_timeout).await?;
        let tx = client.transaction().await.map_err(|e| redactor.query(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(|e| redactor.query(e))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(|e| redactor.query(e))?;
        tx.commit().await.map_err(|e| redactor.query(e))?;

        let port = i32::from(port);
        let row = client
            .query_one(
                "INSERT INTO ServerInstance (host, port) VALUES ($1, $2) \
                 ON CONFLICT (host, port) DO UPDATE SET status = 'active', inflight_count = 0, \
                 drain_started_at = NULL, drained_at = NULL \
                 RETURNING id",
                &[&host, &port],
            )
            .await
            .map_err(|e| redactor.query(e))?;
        let instance = InstanceId(row.get(0));
        info!(
            "database ready at {target}; registered instance {} as {host}:{port}",
            instance.0
        );
        Ok(DbActor {
            pool,
            instance,
            redactor,
        })
    }

    /// This instance's ServerInstance id.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }
}

/// Gets the first connection, retrying while the database is unreachable.
async fn first_connection(
    pool: &Pool,
    redactor: &Redactor,
    target: &str,
    timeout: Duration,
) -> Result<deadpool_postgres::Object, DbError> {
    let deadline = Instant::now() + timeout;
    let unreachable = |cause: String| DbError::Unreachable {
        target: target.to_string(),
        timeout_ms: timeout.as_millis(),
        cause,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(left, pool.get()).await {
            Ok(Ok(client)) => return Ok(client),
            Err(_) => return Err(unreachable("timed out".into())),
            Ok(Err(PoolError::Backend(e))) if e.code().is_some() => {
                // The server answered with an SQLSTATE: retrying will not help.
                let cause = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                return Err(DbError::Refused {
                    target: target.to_string(),
                    cause: redactor.clean(cause),
                });
            }
            Ok(Err(e)) => e,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unreachable(redactor.clean(describe_pool_error(&err))));
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    }
}

fn describe_pool_error(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => {
            // tokio-postgres says "error connecting to server"; the cause is
            // the useful part ("Connection refused").
            match std::error::Error::source(e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// "host:port" (or the socket directory) of the first configured host.
fn describe_target(pg: &tokio_postgres::Config) -> String {
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(p)) => format!("{}:{port}", p.display()),
        None => format!("localhost:{port}"),
    }
}

impl Actor for DbActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Every POST /work writes through here: give bursts room.
        ctx.set_mailbox_capacity(4096);
    }
}

// ----------------------------------------------------------------------------
// Handlers
// ----------------------------------------------------------------------------

impl Handler<InsertJob> for DbActor {
    type Result = ResponseFuture<Result<Job, DbError>>;

    /// One INSERT on a pooled connection; answered after the commit.
    fn handle(&mut self, msg: InsertJob, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        let redactor = self.redactor.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(|e| redactor.pool(e))?;
            let stmt = client
                .prepare_cached("INSERT INTO jobs (name) VALUES ($1) RETURNING id")
                .await
                .map_err(|e| redactor.query(e))?;
            let row = client
                .query_one(&stmt, &[&msg.name])
                .await
                .map_err(|e| redactor.query(e))?;
            Ok(Job {
                id: row.get(0),
                name: msg.name,
            })
        })
    }
}

impl Handler<RecordDrainBegin> for DbActor {
    type Result = ResponseFuture<Result<(), DbError>>;

    /// status = draining, drain_started_at, inflight_count; a `drain_begin` event.
    fn handle(&mut self, msg: RecordDrainBegin, _: &mut Context<Self>) -> Self::Result {
        let details = serde_json::json!({ "in_flight": msg.in_flight });
        self.record(
            "UPDATE ServerInstance SET status = 'draining', drain_started_at = now(), \
             inflight_count = $2 WHERE id = $1",
            msg.in_flight,
            "drain_begin",
            details,
        )
    }
}

impl Handler<RecordDrainComplete> for DbActor {
    type Result = ResponseFuture<Result<(), DbError>>;

    /// status = stopped, drained_at, inflight_count; a `drain_complete` event.
    fn handle(&mut self, msg: RecordDrainComplete, _: &mut Context<Self>) -> Self::Result {
        let details = serde_json::json!({
            "success": msg.success,
            "remaining_inflight": msg.remaining,
        });
        self.record(
            "UPDATE ServerInstance SET status = 'stopped', drained_at = now(), \
             inflight_count = $2 WHERE id = $1",
            msg.remaining,
            "drain_complete",
            details,
        )
    }
}

impl DbActor {
    /// One instance update and one event, in one transaction.
    fn record(
        &self,
        update: &'static str,
        inflight: usize,
        event: &'static str,
        details: serde_json::Value,
    ) -> ResponseFuture<Result<(), DbError>> {
        let pool = self.pool.clone();
        let redactor = self.redactor.clone();
        let instance = self.instance.0;
        let inflight = i32::try_from(inflight).unwrap_or(i32::MAX);
        Box::pin(async move {
            let mut client = pool.get().await.map_err(|e| redactor.pool(e))?;
            let tx = client.transaction().await.map_err(|e| redactor.query(e))?;
            tx.execute(update, &[&instance, &inflight])
                .await
                .map_err(|e| redactor.query(e))?;
            tx.execute(
                "INSERT INTO DrainEvent (instance_id, event_type, details) VALUES ($1, $2, $3)",
                &[&instance, &event, &details],
            )
            .await
            .map_err(|e| redactor.query(e))?;
            tx.commit().await.map_err(|e| redactor.query(e))
        })
    }
}

impl Handler<ClosePool> for DbActor {
    type Result = ();

    /// Closes the pool: idle connections are dropped, new gets fail.
    fn handle(&mut self, _: ClosePool, _: &mut Context<Self>) {
        self.pool.close();
    }
}
