//! What can go wrong with the database, and how it is told.
//!
//! Every message built here goes through [`Redactor`], so error text that
//! reaches a log never carries the password from `DATABASE_URL`; and a
//! statement's error is told by PostgreSQL's own message and SQLSTATE code
//! ([`describe`]) — never its detail, which can quote the client's data.

use std::fmt;

use super::conn::PoolError;
use drainer_engine::CancelReason;

/// Why a job's write was called off before it committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOff {
    /// The request ran past `REQUEST_TIMEOUT_MS`.
    RequestTimeout,
    /// The drain was cut short (its deadline, or a forced shutdown).
    Cut(CancelReason),
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
    /// A schema step could not take its lock in time: someone holds the table.
    #[error(
        "cannot apply the schema: {step} waited {timeout_ms} ms for a lock \
         (an open transaction holds the table; DB_CONNECT_TIMEOUT_MS bounds the wait)"
    )]
    SchemaLocked {
        /// The step (`column serverinstance.last_seen_at`).
        step: String,
        /// The lock timeout it had.
        timeout_ms: u128,
    },
    /// The database refused a statement: nothing it would have written was.
    #[error("database error: {0}")]
    Query(String),
    /// The write's outcome is unknown: the connection failed (or a cancel
    /// went unconfirmed) after the statement was sent, and it could not be
    /// found out in time whether the row committed.
    #[error("the outcome of a write is unknown: {0}")]
    Indeterminate(String),
    /// The write was called off before it committed, and it is certain that
    /// nothing was written.
    #[error("the write was called off ({0:?}); nothing was written")]
    CalledOff(CallOff),
    /// The pool is closed (the service is shutting down).
    #[error("the database pool is closed")]
    Closed,
    /// The write queue is full: the job was refused, not written.
    #[error("the write queue is full")]
    Overloaded,
}

/// A statement's error as PostgreSQL told it: its message and SQLSTATE; for
/// an error on the client side (a lost connection), tokio-postgres' words and
/// their cause.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Removes the `DATABASE_URL` password from any text before it is shown.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    password: Option<String>,
}

impl Redactor {
    pub fn new(pg: &tokio_postgres::Config) -> Self {
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        Redactor { password }
    }

    pub fn clean(&self, text: impl fmt::Display) -> String {
        let text = text.to_string();
        match &self.password {
            Some(p) => text.replace(p.as_str(), "<redacted>"),
            None => text,
        }
    }

    /// A refused statement.
    pub fn query(&self, e: &tokio_postgres::Error) -> DbError {
        DbError::Query(self.clean(describe(e)))
    }

    /// A write whose outcome is unknown.
    pub fn indeterminate(&self, why: impl fmt::Display) -> DbError {
        DbError::Indeterminate(self.clean(why))
    }

    pub fn pool(&self, e: PoolError) -> DbError {
        match e {
            PoolError::Closed => DbError::Closed,
            PoolError::Backend(e) => self.query(&e),
            other => DbError::Query(self.clean(other)),
        }
    }
}
