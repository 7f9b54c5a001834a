//! Pooled connections that know their server process.
//!
//! A connection lost under a write leaves a question: did the `INSERT`
//! commit? The server process (backend) that ran it may even still be
//! running it — waiting on a lock, say — after the client side is gone. So
//! every connection records its backend's `pg_backend_pid()` and start time
//! when it is opened ([`Backend`]); after a loss the writer can end that exact
//! backend and wait until it is gone before it looks its jobs up.
//!
//! Each new session also gets the second line of defence against writes that
//! hang: a `statement_timeout`, and (PostgreSQL 14 and later) a
//! `client_connection_check_interval`, so a backend whose client has gone
//! stops instead of committing later.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::error::SqlState;

/// One server process, as `pg_stat_activity` names it. The start time tells
/// it apart from a later process that reuses the pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backend {
    /// `pg_backend_pid()`.
    pub pid: i32,
    /// `pg_stat_activity.backend_start`, as text ('' if unknown).
    pub started: String,
    /// Which server: its address, port and start time. A fresh connection
    /// to another one (after a failover) cannot see the lost backend.
    pub server: String,
}

/// A pooled connection: the client and the backend it talks to.
pub(crate) struct PgConn {
    client: ClientWrapper,
    /// Recorded when the connection was opened: after a loss, the connection
    /// can no longer be asked.
    pub backend: Backend,
}

impl Deref for PgConn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }
}

/// deadpool-postgres' manager, plus the session set-up and the backend.
pub(crate) struct PgManager {
    inner: deadpool_postgres::Manager,
    /// `SET statement_timeout = …`, run on every new session.
    statement_timeout: Duration,
}

impl PgManager {
    pub fn new(inner: deadpool_postgres::Manager, statement_timeout: Duration) -> Self {
        PgManager {
            inner,
            statement_timeout,
        }
    }
}

/// How often a busy backend checks that its client is still there.
const CLIENT_CHECK: &str = "SET client_connection_check_interval = '1s'";

impl managed::Manager for PgManager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        let client = self.inner.create().await?;
        let ms = self.statement_timeout.as_millis().max(1);
        client
            .batch_execute(&format!("SET statement_timeout = {ms}"))
            .await?;
        match client.batch_execute(CLIENT_CHECK).await {
            Ok(()) => {}
            // Before PostgreSQL 14 there is no such setting: the statement
            // timeout alone bounds a backend whose client has gone.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => return Err(e),
        }
        let row = client
            .query_one(
                "SELECT pg_backend_pid(), \
                 (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()), \
                 concat_ws(' ', inet_server_addr(), inet_server_port(), pg_postmaster_start_time())",
                &[],
            )
            .await?;
        let backend = Backend {
            pid: row.get(0),
            started: row.get::<_, Option<String>>(1).unwrap_or_default(),
            server: row.get::<_, Option<String>>(2).unwrap_or_default(),
        };
        Ok(PgConn { client, backend })
    }

    async fn recycle(&self, conn: &mut PgConn, metrics: &Metrics) -> RecycleResult<Self::Error> {
        managed::Manager::recycle(&self.inner, &mut conn.client, metrics).await
    }

    fn detach(&self, conn: &mut PgConn) {
        managed::Manager::detach(&self.inner, &mut conn.client);
    }
}

/// The pool of [`PgConn`]s.
pub(crate) type Pool = managed::Pool<PgManager>;
/// A connection taken from the [`Pool`].
pub(crate) type Object = managed::Object<PgManager>;
/// Why the [`Pool`] gave no connection.
pub(crate) type PoolError = managed::PoolError<tokio_postgres::Error>;

/// Detaches a connection from the pool and closes it, so that it is not
/// handed out again: it died, or it is in a state nobody can trust.
pub(crate) fn discard(conn: Object) {
    drop(Object::take(conn));
}
