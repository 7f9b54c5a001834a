//! The DbActor's batched writes: one bad job does not fail its batch, a full
//! queue answers 503 overloaded, and a drain finishes the batch it has begun.
//!
//! Each test slows one job down inside PostgreSQL (a trigger on a job named
//! `opener`), so the jobs sent behind it are known to wait in the queue and
//! to form one batch when the single connection is free again.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Makes the insert of a job named `opener` take `seconds` inside PostgreSQL.
fn slow_opener(db: &TestDb, seconds: f64) {
    db.client()
        .batch_execute(&format!(
            "CREATE FUNCTION slow_opener() RETURNS trigger AS $$ \
             BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER slow_opener BEFORE INSERT ON jobs FOR EACH ROW \
             WHEN (NEW.name = 'opener') EXECUTE FUNCTION slow_opener();"
        ))
        .expect("install the trigger");
}

/// Waits (bounded) until the opener's insert is running in PostgreSQL.
fn wait_for_opener_write(db: &TestDb) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let running = db.count(
            "SELECT count(*)::text FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' \
             AND query LIKE 'INSERT INTO jobs%'",
        );
        if running == 1 {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("the opener's insert never started");
}

/// Sends `names` at once, each on its own connection; answers the responses in order.
fn post_all(port: u16, names: &[String]) -> Vec<Response> {
    let pending: Vec<_> = names
        .iter()
        .map(|n| post_work_async(port, &format!(r#"{{"name":"{n}"}}"#)))
        .collect();
    pending
        .into_iter()
        .map(|p| p.join().unwrap().expect("answered"))
        .collect()
}

#[test]
fn one_bad_job_does_not_fail_the_rest_of_its_batch() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("DB_POOL_SIZE", "1"),
            (
                "RUST_LOG",
                "info,drainer_engine::drain=debug,drainer::jobs::db=debug",
            ),
        ],
    );
    slow_opener(&db, 0.5);
    db.client()
        .batch_execute("ALTER TABLE jobs ADD CONSTRAINT no_poison CHECK (name <> 'poison')")
        .expect("add the constraint");
    let opener = post_work_async(server.port, r#"{"name":"opener"}"#);
    wait_for_opener_write(&db);
    let mut names: Vec<String> = (0..20).map(|i| format!("job{i}")).collect();
    names.insert(10, "poison".into());
    let answers = post_all(server.port, &names);

    assert_eq!(opener.join().unwrap().expect("answered").status, 201);
    for (name, res) in names.iter().zip(&answers) {
        if name == "poison" {
            assert_eq!(res.status, 500, "{res:?}");
            assert_eq!(
                res.body,
                r#"{"error":"internal error: the job was not stored"}"#
            );
        } else {
            assert_eq!(res.status, 201, "{name}: {res:?}");
            let id = res.json()["id"].as_str().unwrap().to_string();
            assert_eq!(
                db.value(&format!("SELECT name FROM jobs WHERE id = '{id}'")),
                Some(name.clone())
            );
        }
    }
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 21);
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'poison'"),
        0
    );
    server.wait_for_log("failed (");
    assert!(
        server.log().contains("writing its jobs one by one"),
        "the batch was retried job by job"
    );
}

#[test]
fn a_full_queue_answers_503_overloaded_at_once() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("DB_POOL_SIZE", "1"),
            ("DB_QUEUE_BOUND", "2"),
            ("ADMIN_PORT", "0"),
        ],
    );
    let admin = server.admin_port();
    slow_opener(&db, 1.0);
    let opener = post_work_async(server.port, r#"{"name":"opener"}"#);
    wait_for_opener_write(&db);
    let started = Instant::now();
    let names: Vec<String> = (0..10).map(|i| format!("flood{i}")).collect();
    // Sent one after another so the first two are known to be the queued ones.
    let mut answers = Vec::new();
    let mut queued = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let p = post_work_async(server.port, &format!(r#"{{"name":"{n}"}}"#));
        if i < 2 {
            // Admitted means queued a moment later: long before the next
            // request has crossed HTTP and been admitted in turn.
            server.wait_admitted(i + 2);
            queued.push(p);
        } else {
            answers.push(p.join().unwrap().expect("answered"));
        }
    }
    for res in &answers {
        assert_eq!(res.status, 503, "{res:?}");
        assert_eq!(res.body, r#"{"error":"overloaded"}"#);
        assert_eq!(res.header("retry-after"), Some("1"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "refused at once, not after the queue drained: {:?}",
        started.elapsed()
    );
    for p in queued {
        assert_eq!(p.join().unwrap().expect("answered").status, 201);
    }
    assert_eq!(opener.join().unwrap().expect("answered").status, 201);
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 3);
    // Counted in the metrics.
    let metrics = get(admin, "/metrics").body;
    for (outcome, n) in [("overloaded", 8), ("created", 3)] {
        let line = format!("drainer_requests_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn a_drain_finishes_the_batch_in_flight_and_cuts_the_queued_jobs() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("DB_POOL_SIZE", "1"), ("DRAIN_TIMEOUT_MS", "100")]);
    slow_opener(&db, 1.0);
    let opener = post_work_async(server.port, r#"{"name":"opener"}"#);
    wait_for_opener_write(&db);
    let queued: Vec<_> = (0..3)
        .map(|i| post_work_async(server.port, &format!(r#"{{"name":"queued{i}"}}"#)))
        .collect();
    server.wait_admitted(4);
    server.signal(libc::SIGTERM);
    for q in queued {
        let res = q.join().unwrap().expect("answered");
        assert_eq!(res.status, 503, "{res:?}");
        assert_eq!(res.body, r#"{"error":"drain_timeout"}"#);
    }
    // The write already begun finishes past the deadline, and is answered.
    let res = opener.join().unwrap().expect("answered");
    assert_eq!(res.status, 201, "{res:?}");
    assert_eq!(server.wait_exit(PATIENCE).0, 1, "the drain was cut short");
    assert_eq!(
        db.rows("SELECT name FROM jobs"),
        vec![vec![Some("opener".into())]]
    );
}

#[test]
fn a_write_whose_connection_dies_is_retried_on_a_fresh_one() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("DB_POOL_SIZE", "1")]);
    slow_opener(&db, 1.0);
    let opener = post_work_async(server.port, r#"{"name":"opener"}"#);
    wait_for_opener_write(&db);
    let killed = db.count(
        "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'active' \
         AND query LIKE 'INSERT INTO jobs%'",
    );
    assert_eq!(killed, 1, "the write's connection was killed");
    let res = opener.join().unwrap().expect("answered");
    assert_eq!(res.status, 201, "{res:?}");
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'opener'"),
        1,
        "stored exactly once"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}
