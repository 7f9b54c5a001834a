//! The promise under faults: a database that loses replies, cuts connections,
//! refuses them or holds a lock; a database not accepting connections yet or
//! a reader holding a table at start-up; a name PostgreSQL cannot store; and
//! stray signals. Every answer is checked against the table afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::faultproxy::{upstream_of, FaultProxy, Mode};
use crate::support::*;

/// What one request was answered.
#[derive(Debug, Clone)]
enum Answer {
    Created(String),
    NotStored,
    Maybe,
    /// Answered with an error that says nothing was processed.
    NothingWritten(u16, String),
    /// The connection ended without an answer (the rule: nothing was processed).
    Unanswered,
}

fn classify(response: std::io::Result<Response>) -> Answer {
    let Ok(r) = response else {
        return Answer::Unanswered;
    };
    let error = || r.json()["error"].as_str().unwrap_or_default().to_string();
    match r.status {
        201 => Answer::Created(r.json()["id"].as_str().expect("an id").to_string()),
        500 if error() == "internal error: the job was not stored" => Answer::NotStored,
        500 if error() == "internal error: the job may or may not have been stored" => {
            Answer::Maybe
        }
        503 | 504 => Answer::NothingWritten(r.status, error()),
        other => panic!("unexpected answer {other}: {}", r.body),
    }
}

/// Waits until no INSERT into jobs is running in PostgreSQL, so a count
/// afterwards is final.
fn no_insert_running(db: &TestDb) {
    let deadline = Instant::now() + PATIENCE;
    while db.count(
        "SELECT count(*)::text FROM pg_stat_activity \
         WHERE query LIKE 'INSERT INTO jobs%' AND state <> 'idle'",
    ) > 0
    {
        assert!(Instant::now() < deadline, "an INSERT is still running");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Checks every answer against the table: a 201 is stored with its id; "not
/// stored", a 503/504 and no answer at all are not stored; "may or may not"
/// is either. Answers the number of each kind.
fn check_against_table(
    db: &TestDb,
    answers: &HashMap<String, Answer>,
) -> HashMap<&'static str, usize> {
    no_insert_running(db);
    let stored: HashMap<String, String> = db
        .rows("SELECT name, id::text FROM jobs")
        .into_iter()
        .map(|r| (r[0].clone().expect("name"), r[1].clone().expect("id")))
        .collect();
    let mut kinds = HashMap::new();
    for (name, answer) in answers {
        let kind = match answer {
            Answer::Created(id) => {
                assert_eq!(stored.get(name), Some(id), "{name} was acknowledged");
                "created"
            }
            Answer::Maybe => "maybe",
            Answer::NotStored => {
                assert_eq!(stored.get(name), None, "{name} was answered not stored");
                "not_stored"
            }
            Answer::NothingWritten(status, error) => {
                assert_eq!(
                    stored.get(name),
                    None,
                    "{name} was answered {status} {error}"
                );
                "nothing_written"
            }
            Answer::Unanswered => {
                assert_eq!(stored.get(name), None, "{name} got no answer");
                "no_answer"
            }
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(
        stored.keys().filter(|n| !answers.contains_key(*n)).count(),
        0,
        "a job nobody asked for"
    );
    kinds
}

/// drainer reaching its database through a fault-injecting proxy.
fn behind_a_proxy(db: &TestDb, env: &[(&str, &str)]) -> (FaultProxy, Server) {
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let url = proxy.url(&db.url);
    let mut all = vec![("DATABASE_URL", url.as_str())];
    all.extend_from_slice(env);
    let server = Server::start(db, &all);
    (proxy, server)
}

#[test]
fn lost_replies_and_cut_connections_are_answered_by_what_committed() {
    let db = TestDb::create();
    let (proxy, mut server) = behind_a_proxy(
        &db,
        &[
            // Shorter than the outage: some requests run out of time in it.
            ("REQUEST_TIMEOUT_MS", "2500"),
            ("DB_CONNECT_TIMEOUT_MS", "1000"),
        ],
    );
    let port = server.port;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut answers = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("c{c}-{n}");
                    n += 1;
                    let answer = Client::connect(port).and_then(|mut client| {
                        client.post_work(&format!(r#"{{"name":"{name}"}}"#))
                    });
                    answers.push((name, classify(answer)));
                }
                answers
            })
        })
        .collect();
    // Normal traffic, then replies lost for a second, then every connection
    // cut and new ones refused for two seconds, then the database is back.
    thread::sleep(Duration::from_millis(500));
    proxy.set_mode(Mode::DropReplies);
    thread::sleep(Duration::from_millis(1000));
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    thread::sleep(Duration::from_millis(2000));
    proxy.set_mode(Mode::Pass);
    // Recovered by itself: a new job is stored.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = post_work(port, r#"{"name":"after"}"#);
        if r.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {r:?}");
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers: HashMap<String, Answer> = HashMap::new();
    for client in clients {
        answers.extend(client.join().expect("client"));
    }
    let after_id = db.value("SELECT id::text FROM jobs WHERE name = 'after'");
    answers.insert("after".into(), Answer::Created(after_id.expect("after")));
    let kinds = check_against_table(&db, &answers);
    assert!(kinds.get("created").copied().unwrap_or(0) > 16, "{kinds:?}");
    // The outage was seen, and the lost writes were found out, not guessed.
    server.wait_for_log("finding out what committed once its backend");
    eprintln!("answers through the outage: {kinds:?}");
}

#[test]
fn a_lost_write_is_looked_up_once_its_backend_has_ended() {
    let db = TestDb::create();
    let (proxy, mut server) = behind_a_proxy(
        &db,
        &[("REQUEST_TIMEOUT_MS", "10000"), ("DB_POOL_SIZE", "1")],
    );
    // The INSERT reaches PostgreSQL and commits; its reply is lost; then the
    // connection is cut. The job is stored, so the answer must be 201.
    assert_eq!(post_work(server.port, r#"{"name":"warm"}"#).status, 201);
    proxy.set_mode(Mode::DropReplies);
    let pending = post_work_async(server.port, r#"{"name":"lost-reply"}"#);
    let deadline = Instant::now() + PATIENCE;
    while db.count("SELECT count(*)::text FROM jobs WHERE name = 'lost-reply'") == 0 {
        assert!(
            Instant::now() < deadline,
            "the INSERT never reached PostgreSQL"
        );
        thread::sleep(Duration::from_millis(10));
    }
    proxy.cut_all();
    proxy.set_mode(Mode::Pass);
    let answer = pending.join().expect("thread").expect("an answer");
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        db.value("SELECT id::text FROM jobs WHERE name = 'lost-reply'"),
        answer.json()["id"].as_str().map(String::from)
    );
    server.wait_for_log("finding out what committed once its backend");
}

#[test]
fn a_write_waiting_on_a_lock_is_cancelled_at_the_request_timeout() {
    let db = TestDb::create();
    let server = Server::start(&db, &[("REQUEST_TIMEOUT_MS", "3000")]);
    let mut locker = db.client();
    let mut lock = locker.transaction().expect("begin");
    lock.batch_execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let sent = Instant::now();
    let answer = post_work(server.port, r#"{"name":"locked-out"}"#);
    let took = answer.at - sent;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.body, r#"{"error":"request_timeout"}"#);
    assert!(
        took >= Duration::from_millis(2900),
        "answered early: {took:?}"
    );
    assert!(took < Duration::from_millis(6000), "not bounded: {took:?}");
    lock.commit().expect("release the lock");
    no_insert_running(&db);
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'locked-out'"),
        0,
        "a 504 said nothing was written"
    );
    // The connection is healthy after the cancel.
    assert_eq!(post_work(server.port, r#"{"name":"next"}"#).status, 201);
}

#[test]
fn a_write_waiting_on_a_lock_at_the_drain_deadline_is_cancelled_and_answered() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("DRAIN_TIMEOUT_MS", "2000")]);
    let mut locker = db.client();
    let mut lock = locker.transaction().expect("begin");
    lock.batch_execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let pending = post_work_async(server.port, r#"{"name":"held"}"#);
    server.wait_admitted(1);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let answer = pending
        .join()
        .expect("thread")
        .expect("an answer, not an empty reply");
    // The deadline, then the linger for the write to finish, then the cancel.
    let took = answer.at - signalled;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.body, r#"{"error":"drain_timeout"}"#);
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert!(took < Duration::from_millis(6000), "{took:?}");
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 1, "a cut drain");
    lock.commit().expect("release the lock");
    no_insert_running(&db);
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'held'"),
        0,
        "a 503 drain_timeout said nothing was written"
    );
}

#[test]
fn start_up_waits_for_a_database_that_is_starting_up() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    proxy.set_mode(Mode::StartingUp);
    let url = proxy.url(&db.url);
    let mut server = spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "10000"),
    ]);
    thread::sleep(Duration::from_millis(800));
    proxy.set_mode(Mode::Pass);
    let line = server.wait_for_log("listening on");
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert_eq!(post_work(port, r#"{"name":"a"}"#).status, 201);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_database_that_never_finishes_starting_is_a_start_up_failure_at_the_timeout() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    proxy.set_mode(Mode::StartingUp);
    let url = proxy.url(&db.url);
    let started = Instant::now();
    let mut server = spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "1500"),
    ]);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 2);
    assert!(
        exited - started >= Duration::from_millis(1400),
        "gave up early"
    );
    let log = server.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("drainer: cannot reach the database at 127.0.0.1:")
            && last.contains("within 1500 ms")
            && last.contains("the database system is starting up"),
        "{log}"
    );
}

#[test]
fn a_reader_holding_serverinstance_does_not_hold_up_start_up() {
    let db = TestDb::create();
    // The schema, applied once.
    let mut first = Server::start(&db, &[]);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(PATIENCE).0, 0);
    let mut reader = db.client();
    let mut tx = reader.transaction().expect("begin");
    tx.batch_execute("SELECT * FROM serverinstance")
        .expect("read");
    let server = Server::start(&db, &[("INSTANCE_HOST", "second")]);
    assert_eq!(post_work(server.port, r#"{"name":"a"}"#).status, 201);
    assert!(
        !server.log().contains("schema: creating"),
        "an up-to-date schema runs no DDL"
    );
    tx.commit().expect("end the read");
}

#[test]
fn a_schema_step_blocked_by_a_reader_stops_start_up_with_one_line() {
    let db = TestDb::create();
    let mut first = Server::start(&db, &[]);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(PATIENCE).0, 0);
    // An older database: the heartbeat's column is missing.
    db.client()
        .batch_execute("ALTER TABLE serverinstance DROP COLUMN last_seen_at")
        .expect("drop the column");
    let mut reader = db.client();
    let mut tx = reader.transaction().expect("begin");
    tx.batch_execute("SELECT * FROM serverinstance")
        .expect("read");
    let started = Instant::now();
    let mut server = spawn(&[
        ("DATABASE_URL", db.url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
    ]);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 2);
    assert!(exited - started < Duration::from_millis(8000));
    let log = server.log();
    assert_eq!(
        log.lines().last(),
        Some(
            "drainer: cannot apply the schema: column serverinstance.last_seen_at waited 1000 ms \
             for a lock (an open transaction holds the table; DB_CONNECT_TIMEOUT_MS bounds the wait)"
        ),
        "{log}"
    );
    tx.commit().expect("end the read");
    // Without the reader, the same start adds the column.
    let server = Server::start(&db, &[]);
    assert!(server
        .log()
        .contains("schema: creating column serverinstance.last_seen_at"));
    assert_eq!(
        db.count(
            "SELECT count(*)::text FROM information_schema.columns \
             WHERE table_name = 'serverinstance' AND column_name = 'last_seen_at'"
        ),
        1
    );
}

#[test]
fn a_nul_in_the_name_is_the_clients_mistake() {
    let db = TestDb::create();
    let server = Server::start(&db, &[]);
    let r = post_work(server.port, r#"{"name":"a\u0000b"}"#);
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body,
        r#"{"error":"name must not contain NUL characters"}"#
    );
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 0);
    assert!(!server.log().contains("database error"), "{}", server.log());
}

#[test]
fn a_database_error_is_logged_with_its_message_and_code_not_the_data() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    db.client()
        .batch_execute("ALTER TABLE jobs ADD CONSTRAINT short_names CHECK (length(name) < 20)")
        .expect("constraint");
    let r = post_work(server.port, r#"{"name":"a-secret-name-that-is-too-long"}"#);
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        r#"{"error":"internal error: the job was not stored"}"#
    );
    let line = server.wait_for_log("POST /work failed");
    assert!(
        line.ends_with(
            "POST /work failed: database error: new row for relation \"jobs\" violates \
             check constraint \"short_names\" (SQLSTATE 23514)"
        ),
        "{line}"
    );
    assert!(!server.log().contains("a-secret-name"), "{}", server.log());
}

#[test]
fn sighup_with_work_in_flight_is_logged_and_ignored() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let pending = post_work_async(server.port, r#"{"name":"through","latency_ms":800}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP received: ignored, the process keeps serving");
    let r = pending.join().expect("thread").expect("an answer");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(get(server.port, "/readyz").status, 200);
    assert_eq!(
        db.value("SELECT status FROM serverinstance"),
        Some("active".into())
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn every_stray_signal_is_logged_and_ignored() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let stray = [
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
    ];
    for (number, name) in stray {
        server.signal(number);
        server.wait_for_log(&format!("{name} received: ignored"));
    }
    assert_eq!(post_work(server.port, r#"{"name":"still"}"#).status, 201);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}
