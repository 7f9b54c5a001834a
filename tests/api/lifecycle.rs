//! Probes, the per-request deadline, and cancellable work.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

fn admin() -> postgres::Client {
    postgres::Client::connect(&admin_url(), postgres::NoTls).expect("connect as admin")
}

#[test]
fn probes_answer_in_each_state_and_are_never_counted() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("SHUTDOWN_DELAY_MS", "3000")]);
    for path in ["/livez", "/healthz", "/readyz", "/health"] {
        let res = get(server.port, path);
        assert_eq!(
            (res.status, res.body.as_str()),
            (200, r#"{"status":"ok"}"#),
            "{path}"
        );
    }
    server.signal(libc::SIGTERM);
    server.wait_for_log("draining server");
    for (path, status, body) in [
        ("/livez", 200, r#"{"status":"ok"}"#),
        ("/healthz", 200, r#"{"status":"ok"}"#),
        ("/readyz", 503, r#"{"status":"shutting_down"}"#),
        ("/health", 503, r#"{"status":"shutting_down"}"#),
    ] {
        let res = get(server.port, path);
        assert_eq!(
            (res.status, res.body.as_str()),
            (status, body),
            "{path} while draining"
        );
        assert!(res.closes(), "{path}: Connection: close during the drain");
    }
    assert!(
        !server.log().contains("admitted request"),
        "probes never ask to be admitted"
    );
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn readyz_says_database_unavailable_when_the_pool_cannot_connect() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    assert_eq!(get(server.port, "/readyz").status, 200);
    let mut admin = admin();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
            db.name
        ))
        .expect("take the database away");
    let res = get(server.port, "/readyz");
    assert_eq!(res.status, 503);
    assert_eq!(res.body, r#"{"status":"database_unavailable"}"#);
    assert_eq!(get(server.port, "/livez").status, 200, "still alive");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .expect("give the database back");
    let deadline = Instant::now() + PATIENCE;
    while get(server.port, "/readyz").status != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        thread::sleep(Duration::from_millis(50));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_request_past_its_deadline_is_answered_504_and_not_written() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("REQUEST_TIMEOUT_MS", "300")]);
    let sent = Instant::now();
    let res = post_work(server.port, r#"{"name":"slow","latency_ms":5000}"#);
    assert_eq!(res.status, 504);
    assert_eq!(res.body, r#"{"error":"request_timeout"}"#);
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 0);
    assert_eq!(post_work(server.port, r#"{"name":"quick"}"#).status, 201);
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(PATIENCE).0,
        0,
        "a timed-out request does not cut the drain"
    );
}

#[test]
fn cancellable_work_is_declined_when_the_drain_begins_and_the_drain_is_clean() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let cancellable = post_work_async(
        server.port,
        r#"{"name":"optional","latency_ms":10000,"cancellable":true}"#,
    );
    let ordinary = post_work_async(server.port, r#"{"name":"needed","latency_ms":400}"#);
    server.wait_admitted(2);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);

    let res = cancellable.join().unwrap().expect("answered");
    assert_eq!(res.status, 503);
    assert_eq!(res.body, r#"{"error":"server_shutting_down"}"#);
    assert!(
        res.at - signalled < Duration::from_secs(1),
        "declined at once, not after its 10 s: {:?}",
        res.at - signalled
    );
    assert_eq!(ordinary.join().unwrap().expect("answered").status, 201);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "declining cancellable work is a clean drain");
    assert!(exited - signalled < Duration::from_secs(2));
    assert_eq!(
        db.rows("SELECT name FROM jobs"),
        vec![vec![Some("needed".into())]]
    );
}
