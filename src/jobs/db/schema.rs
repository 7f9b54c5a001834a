//! The schema, applied step by step: only what the catalog says is missing.
//!
//! `CREATE TABLE IF NOT EXISTS` is harmless on an existing table, but
//! `ALTER TABLE … ADD COLUMN IF NOT EXISTS` takes its ACCESS EXCLUSIVE lock
//! *before* it checks, and `CREATE INDEX IF NOT EXISTS` its SHARE lock: run at
//! every start, they wait behind any open transaction that read the table, and
//! everything else then queues behind them. So each step of `sql/schema.sql`
//! names its object, the catalog is asked first, and an up-to-date database
//! takes no lock. Steps that must run take an advisory lock (instances starting
//! at once take turns), are checked again under it, and run with a
//! `lock_timeout`: a table held by someone else stops start-up with one clear
//! line instead of a hang.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use super::conn::PgConn;
use super::error::{DbError, Redactor};

/// The schema.
const SCHEMA: &str = include_str!("../../../sql/schema.sql");

/// Serialises schema changes between instances starting at once.
const SCHEMA_LOCK: i64 = 0x0064_7261_696e_6572; // "drainer"

/// What one step creates.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Object {
    Table(String),
    Index(String),
    Column { table: String, column: String },
}

/// One step of the schema: the object it creates and the SQL that does it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    object: Object,
    /// How the step names itself in errors (`column serverinstance.last_seen_at`).
    label: String,
    sql: String,
}

/// The steps of `text`, in order. A malformed step line is a bug in the
/// schema file, found by this module's tests.
fn steps(text: &str) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = Vec::new();
    for line in text.lines() {
        if let Some(label) = line.strip_prefix("-- step: ") {
            let label = label.trim().to_string();
            let object = match label.split_once(' ') {
                Some(("table", name)) => Object::Table(name.to_string()),
                Some(("index", name)) => Object::Index(name.to_string()),
                Some(("column", name)) => match name.split_once('.') {
                    Some((table, column)) => Object::Column {
                        table: table.to_string(),
                        column: column.to_string(),
                    },
                    None => return Err(format!("bad column step: {label}")),
                },
                _ => return Err(format!("bad step: {label}")),
            };
            steps.push(Step {
                object,
                label,
                sql: String::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            if !line.trim_start().starts_with("--") {
                step.sql.push_str(line);
                step.sql.push('\n');
            }
        }
    }
    match steps.iter().find(|s| s.sql.trim().is_empty()) {
        Some(empty) => Err(format!("step without SQL: {}", empty.label)),
        None => Ok(steps),
    }
}

/// The steps of `steps` whose object is missing.
async fn missing<C: GenericClient>(
    client: &C,
    steps: &[Step],
    redactor: &Redactor,
) -> Result<Vec<Step>, DbError> {
    let mut todo = Vec::new();
    for step in steps {
        let row = match &step.object {
            Object::Table(name) | Object::Index(name) => {
                client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[name])
                    .await
            }
            Object::Column { table, column } => {
                client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_attribute \
                         WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped)",
                        &[table, column],
                    )
                    .await
            }
        };
        if !row
            .map(|r| r.get::<_, bool>(0))
            .map_err(|e| redactor.query(&e))?
        {
            todo.push(step.clone());
        }
    }
    Ok(todo)
}

/// Brings the schema up to date; with nothing missing, takes no lock.
pub(crate) async fn apply(
    client: &mut PgConn,
    redactor: &Redactor,
    lock_timeout: Duration,
) -> Result<(), DbError> {
    let all = steps(SCHEMA).map_err(DbError::Query)?;
    if missing(&***client, &all, redactor).await?.is_empty() {
        return Ok(());
    }
    let locked = |step: &str| DbError::SchemaLocked {
        step: step.to_string(),
        timeout_ms: lock_timeout.as_millis(),
    };
    let tx = client.transaction().await.map_err(|e| redactor.query(&e))?;
    tx.batch_execute(&format!(
        // The lock timeout bounds the waits; the session's statement timeout
        // (made for job writes) must not cut the DDL itself.
        "SET LOCAL client_min_messages = warning; SET LOCAL statement_timeout = 0; \
         SET LOCAL lock_timeout = {}",
        lock_timeout.as_millis().max(1)
    ))
    .await
    .map_err(|e| redactor.query(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(|e| match e.code() {
            Some(&SqlState::LOCK_NOT_AVAILABLE) => locked("the schema lock (another instance)"),
            _ => redactor.query(&e),
        })?;
    // Each step is looked up again just before it runs: another instance
    // may have run it while this one waited, or an earlier step made it.
    for step in &all {
        if missing(&*tx, std::slice::from_ref(step), redactor)
            .await?
            .is_empty()
        {
            continue;
        }
        log::info!("schema: creating {}", step.label);
        tx.batch_execute(&step.sql)
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::LOCK_NOT_AVAILABLE) => locked(&step.label),
                _ => redactor.query(&e),
            })?;
    }
    tx.commit().await.map_err(|e| redactor.query(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_parses_into_named_steps() {
        let steps = steps(SCHEMA).expect("sql/schema.sql parses");
        let labels: Vec<&str> = steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "table jobs",
                "table serverinstance",
                "table drainevent",
                "index idx_drain_instance",
                "column serverinstance.last_seen_at",
                "table outbox"
            ]
        );
        assert!(steps[4]
            .sql
            .starts_with("ALTER TABLE ServerInstance ADD COLUMN"));
        assert_eq!(
            steps[4].object,
            Object::Column {
                table: "serverinstance".into(),
                column: "last_seen_at".into()
            }
        );
    }

    #[test]
    fn a_malformed_step_is_refused() {
        assert_eq!(
            steps("-- step: view v\nSELECT 1;\n"),
            Err("bad step: view v".into())
        );
        assert_eq!(
            steps("-- step: table t\n-- nothing\n"),
            Err("step without SQL: table t".into())
        );
    }
}
