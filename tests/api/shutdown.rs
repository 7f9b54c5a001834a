//! The shutdown sequence, through real signals to the real binary.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Connecting now is refused (not accepted, not hanging).
fn assert_refused(port: u16) {
    match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted during the drain"),
    }
}

/// The events with their core details (the shutdown report's figures,
/// also in `drain_complete`, are checked in lifecycle.rs).
fn drain_events(db: &TestDb) -> Vec<(String, String)> {
    db.rows(
        "SELECT event_type, (details - ARRAY['trigger', 'phases', 'completed', 'cut_short', \
         'in_flight_at_cut', 'exit_code', 'persistent'])::text FROM drainevent ORDER BY id",
    )
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect()
}

#[test]
fn sigterm_mid_request_answers_stores_refuses_and_exits_at_once() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let pending = post_work_async(server.port, r#"{"name":"mid","latency_ms":800}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGTERM);
    server.wait_for_log("listener closed");
    assert_refused(server.port);

    let res = pending
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(res.status, 201, "{res:?}");
    assert!(
        res.closes(),
        "answers during the drain carry Connection: close"
    );
    let id = res.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        db.value(&format!("SELECT name FROM jobs WHERE id = '{id}'")),
        Some("mid".into())
    );

    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0);
    let after = exited.saturating_duration_since(res.at);
    assert!(
        after < Duration::from_millis(500),
        "exited {after:?} after the last response: it should be milliseconds"
    );
    assert_eq!(
        db.rows("SELECT status, inflight_count::text, (drain_started_at IS NOT NULL)::text, (drained_at IS NOT NULL)::text FROM serverinstance"),
        vec![vec![Some("stopped".into()), Some("0".into()), Some("true".into()), Some("true".into())]]
    );
    assert_eq!(
        drain_events(&db),
        vec![
            ("drain_begin".into(), r#"{"in_flight": 1}"#.into()),
            (
                "drain_complete".into(),
                r#"{"success": true, "remaining_inflight": 0}"#.into()
            ),
        ]
    );
}

#[test]
fn during_the_shutdown_delay_health_is_503_and_work_is_still_served() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("SHUTDOWN_DELAY_MS", "3000")]);
    let mut idle = Client::connect(server.port).expect("connect");
    assert_eq!(
        idle.request("GET", "/health", None, b"").unwrap().status,
        200
    );

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_for_log("draining server");
    let health = get(server.port, "/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.body, r#"{"status":"shutting_down"}"#);
    assert!(health.closes());
    // The connection opened before the drain sees it too.
    let health = idle.request("GET", "/health", None, b"").unwrap();
    assert_eq!((health.status, health.closes()), (503, true));

    let res = post_work(server.port, r#"{"name":"during-delay"}"#);
    assert_eq!(
        res.status, 201,
        "work is still served during the delay: {res:?}"
    );
    assert!(res.closes());
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'during-delay'"),
        1
    );
    assert!(
        !server.log().contains("listener closed"),
        "the listener stays open for the delay"
    );
    server.wait_for_log("listener closed");
    assert!(
        signalled.elapsed() >= Duration::from_millis(3000),
        "the listener closed before the delay was over: {:?}",
        signalled.elapsed()
    );
    assert_refused(server.port);
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0);
}

#[test]
fn drain_timeout_cancels_the_straggler_before_its_write_and_exits_1() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("DRAIN_TIMEOUT_MS", "300")]);
    let straggler = post_work_async(server.port, r#"{"name":"straggler","latency_ms":5000}"#);
    server.wait_admitted(1);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);

    let res = straggler
        .join()
        .unwrap()
        .expect("the straggler is answered");
    assert_eq!(res.status, 503);
    assert_eq!(res.body, r#"{"error":"drain_timeout"}"#);
    assert!(res.closes());
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 1);
    assert!(
        exited - signalled < Duration::from_millis(1500),
        "exit on time, long before the 5 s request would have ended: {:?}",
        exited - signalled
    );
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 0, "not stored");
    assert!(
        server.log().contains("1 request(s) cut short"),
        "{}",
        server.log()
    );
    assert_eq!(
        drain_events(&db)[1],
        (
            "drain_complete".into(),
            r#"{"success": false, "remaining_inflight": 1}"#.into()
        )
    );
}

#[test]
fn a_signal_storm_starts_one_drain() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let pending = post_work_async(server.port, r#"{"name":"storm","latency_ms":500}"#);
    server.wait_admitted(1);
    for _ in 0..100 {
        server.signal(libc::SIGTERM);
    }
    assert_eq!(pending.join().unwrap().expect("answered").status, 201);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    let events = drain_events(&db);
    assert_eq!(
        events.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        vec!["drain_begin", "drain_complete"]
    );
    assert_eq!(
        db.value("SELECT status FROM serverinstance"),
        Some("stopped".into())
    );
    assert_eq!(server.log().matches("draining server").count(), 1);
}

#[test]
fn a_second_ctrl_c_cuts_the_drain_short() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let pending = post_work_async(server.port, r#"{"name":"cut","latency_ms":10000}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGINT);
    server.wait_for_log("draining server");
    let second = Instant::now();
    server.signal(libc::SIGINT);

    let res = pending
        .join()
        .unwrap()
        .expect("the cut request is answered");
    assert_eq!(res.status, 503);
    assert_eq!(res.body, r#"{"error":"shutdown_forced"}"#);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 1);
    assert!(
        exited - second < Duration::from_millis(800),
        "exit within moments of the second Ctrl+C: {:?}",
        exited - second
    );
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 0);
}

#[test]
fn sigquit_cuts_short_at_once() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let pending = post_work_async(server.port, r#"{"name":"quit","latency_ms":10000}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGQUIT);
    let res = pending.join().unwrap().expect("answered");
    assert_eq!(res.body, r#"{"error":"shutdown_forced"}"#);
    assert_eq!(server.wait_exit(PATIENCE).0, 1);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_grace_and_does_not_hold_the_exit() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("IDLE_CLOSE_GRACE_MS", "300")]);
    let mut idle = Client::connect(server.port).expect("connect");
    assert_eq!(idle.post_work(r#"{"name":"before"}"#).unwrap().status, 201);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(
        idle.closed_by_server(Duration::from_secs(5)),
        "the idle connection is closed by the server"
    );
    let closed = signalled.elapsed();
    // After the grace, and well before the one-second hard deadline.
    assert!(
        closed >= Duration::from_millis(300) && closed < Duration::from_millis(900),
        "closed {closed:?} after SIGTERM"
    );
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0);
    assert!(exited - signalled < Duration::from_millis(900));
}

/// Admission goes on for connections already open after the listener closed
/// (issue 11): each carries one more request, served for real with
/// `Connection: close`.
#[test]
fn a_request_on_an_open_connection_during_the_drain_is_served_with_connection_close() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("IDLE_CLOSE_GRACE_MS", "5000"),
            // Its lingers (2 × 5 s) need a larger budget than the default.
            ("SHUTDOWN_TIMEOUT_MS", "60000"),
        ],
    );
    let mut open = Client::connect(server.port).expect("connect");
    assert_eq!(
        open.request("GET", "/health", None, b"").unwrap().status,
        200
    );
    let mut other = Client::connect(server.port).expect("connect");
    assert_eq!(
        other.request("GET", "/health", None, b"").unwrap().status,
        200
    );
    let pending = post_work_async(server.port, r#"{"name":"keeps","latency_ms":1000}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGTERM);
    server.wait_for_log("listener closed");
    let res = open.post_work(r#"{"name":"late"}"#).expect("answered");
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(res.json()["name"], "late");
    assert!(res.closes());
    assert!(open.closed_by_server(PATIENCE), "its answer closed it");
    // Only GET /health is answered as health; any other method is 405.
    let res = other
        .request("POST", "/health", None, b"")
        .expect("answered");
    assert_eq!(res.status, 405);
    assert_eq!(res.body, r#"{"error":"method not allowed"}"#);
    assert!(res.closes());
    assert_eq!(pending.join().unwrap().expect("answered").status, 201);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        db.rows("SELECT name FROM jobs ORDER BY name"),
        vec![vec![Some("keeps".into())], vec![Some("late".into())]]
    );
}

/// Sixteen busy keep-alive clients, then SIGTERM: every 201 is stored, and no
/// request ends in a reset, a timeout, or a 5xx other than 503.
#[test]
fn load_then_sigterm_loses_nothing() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let port = server.port;
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let rejected = Arc::new(Mutex::new(0usize));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (ids, failures, rejected) = (ids.clone(), failures.clone(), rejected.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + PATIENCE;
                let mut n = 0;
                'connections: while Instant::now() < deadline {
                    let mut client = match Client::connect(port) {
                        Ok(c) => c,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
                        Err(e) => {
                            failures.lock().unwrap().push(format!("connect: {e}"));
                            return;
                        }
                    };
                    loop {
                        n += 1;
                        let body = format!(r#"{{"name":"c{c}-{n}","latency_ms":{}}}"#, n % 40);
                        match client.post_work(&body) {
                            Ok(res) if res.status == 201 => {
                                ids.lock()
                                    .unwrap()
                                    .push(res.json()["id"].as_str().unwrap().into());
                                if res.closes() {
                                    continue 'connections;
                                }
                            }
                            Ok(res) if res.status == 503 => {
                                *rejected.lock().unwrap() += 1;
                                continue 'connections;
                            }
                            Ok(res) => {
                                failures.lock().unwrap().push(format!("{res:?}"));
                                return;
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("request: {e}"));
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Let the load run, then drain under it.
    let started = Instant::now();
    while ids.lock().unwrap().len() < 300 && started.elapsed() < PATIENCE {
        thread::sleep(Duration::from_millis(20));
    }
    server.signal(libc::SIGTERM);
    for c in clients {
        c.join().unwrap();
    }
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "log:\n{}", server.log());
    assert_eq!(failures.lock().unwrap().clone(), Vec::<String>::new());
    let ids = ids.lock().unwrap().clone();
    assert!(ids.len() >= 300, "only {} answered", ids.len());
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "every answer has its own id");
    let stored: HashSet<String> = db
        .rows("SELECT id::text FROM jobs")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    assert_eq!(
        stored.len(),
        ids.len(),
        "every stored job was acknowledged once"
    );
}
