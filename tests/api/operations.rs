//! The production lifecycle: the admin listener, prestop, the ordered
//! phases and their budget, the heartbeat, metrics, the trace, the leak
//! check and the shutdown report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Every phase, in the order they run, with an admin listener and a database.
const PHASES: [&str; 8] = [
    "delay",
    "stop_accepting",
    "drain",
    "close_persistent",
    "stop_admin",
    "stop_background",
    "flush_telemetry",
    "close_database",
];

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

fn scrape(admin: u16) -> String {
    let res = get(admin, "/metrics");
    assert_eq!(res.status, 200, "{res:?}");
    res.body
}

/// The phases in the order the log says they began.
fn phases_begun(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("shutdown phase ").nth(1))
        .filter(|rest| rest.contains(": begun"))
        .filter_map(|rest| rest.split(':').next())
        .map(str::to_string)
        .collect()
}

/// The log's shutdown report line with every number replaced by `N`.
fn report_line(log: &str) -> String {
    let line = log
        .lines()
        .find_map(|l| l.split("shutdown report: ").nth(1))
        .unwrap_or_else(|| panic!("no shutdown report in\n{log}"));
    let mut out = String::new();
    let mut in_number = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn position(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in\n{log}"))
}

#[test]
fn admin_endpoints_live_only_on_the_admin_port_and_every_family_starts_at_zero() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("ADMIN_PORT", "0")]);
    let admin = server.admin_port();
    assert_ne!(admin, server.port);
    for (method, path) in [("GET", "/metrics"), ("POST", "/admin/prestop")] {
        let res = request(server.port, method, path, None, b"");
        assert_eq!(
            (res.status, res.body.as_str()),
            (404, r#"{"error":"not found"}"#),
            "{method} {path} on the public port"
        );
    }
    assert_eq!(get(server.port, "/health").status, 200, "still active");

    let res = get(admin, "/metrics");
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let m = res.body;
    for series in [
        "drainer_requests_in_flight",
        "drainer_drain_state",
        "drainer_force_close_total",
        "drainer_drain_duration_seconds",
    ] {
        assert_eq!(sample(&m, series), 0.0, "{series}");
    }
    for outcome in [
        "created",
        "rejected",
        "drain_timeout",
        "shutdown_forced",
        "request_timeout",
        "cancelled",
        "overloaded",
        "error",
    ] {
        let series = format!("drainer_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&m, &series), 0.0, "{series}");
    }
    for phase in PHASES {
        for family in [
            "shutdown_phase_duration_seconds",
            "shutdown_phase_started_total",
            "shutdown_phase_failed_total",
        ] {
            let series = format!("{family}{{phase=\"{phase}\"}}");
            assert_eq!(sample(&m, &series), 0.0, "{series}");
        }
    }
    let res = request(admin, "PUT", "/admin/prestop", None, b"");
    assert_eq!(
        (res.status, res.body.as_str()),
        (405, r#"{"error":"method not allowed"}"#)
    );
    // A stray GET (no header) is refused and drains nothing.
    let res = get(admin, "/admin/prestop");
    assert_eq!(
        (res.status, res.body.as_str()),
        (
            422,
            r#"{"error":"GET /admin/prestop needs the header x-drainer-prestop: true (or use POST)"}"#
        )
    );
    assert_eq!(get(server.port, "/readyz").status, 200, "still ready");
    assert_eq!(get(admin, "/nope").status, 404);

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn prestop_drains_after_its_delay_and_sigterm_continues_without_a_second_delay() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("ADMIN_PORT", "0"), ("SHUTDOWN_DELAY_MS", "1500")]);
    let admin = server.admin_port();
    let began = Instant::now();
    let prestop = thread::spawn(move || {
        let res = request(admin, "POST", "/admin/prestop", None, b"");
        (res, Instant::now())
    });
    server.wait_for_log("prestop received");
    let res = get(server.port, "/readyz");
    assert_eq!(
        (res.status, res.body.as_str()),
        (503, r#"{"status":"shutting_down"}"#)
    );
    // Still accepting during the delay; the answer says go elsewhere.
    let res = post_work(server.port, r#"{"name":"during prestop"}"#);
    assert_eq!(res.status, 201, "{res:?}");
    assert!(res.closes());

    let (res, answered) = prestop.join().expect("prestop thread");
    assert_eq!(
        (res.status, res.body.as_str()),
        (200, r#"{"status":"draining"}"#)
    );
    assert!(
        answered - began >= Duration::from_millis(1500),
        "answered after the delay: {:?}",
        answered - began
    );
    // Held until the signal: still serving after the delay.
    let res = post_work(server.port, r#"{"name":"after prestop"}"#);
    assert_eq!(res.status, 201, "{res:?}");
    // Kubernetes' preStop.httpGet sends GET, with the header; a second
    // prestop changes nothing.
    let again = Instant::now();
    let mut hook = Client::connect(admin).expect("connect");
    hook.send_with_headers("GET", "/admin/prestop", &[("X-Drainer-Prestop", "true")])
        .expect("send");
    let res = hook.read().expect("answered");
    assert_eq!(
        (res.status, res.body.as_str()),
        (200, r#"{"status":"draining"}"#)
    );
    assert!(
        again.elapsed() < Duration::from_millis(1000),
        "no second delay"
    );

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "{}", server.log());
    assert!(
        exited - signalled < Duration::from_millis(1000),
        "no second 1.5 s delay after SIGTERM: exited {:?} after it",
        exited - signalled
    );
    let log = server.log();
    assert!(log.contains("SIGTERM received: continuing the drain begun by the prestop"));
    assert_eq!(
        log.matches("shutdown phase delay: begun").count(),
        1,
        "{log}"
    );
    assert!(report_line(&log).starts_with("trigger prestop; "), "{log}");
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 2);
}

/// A SIGTERM during the prestop's wait continues the drain, and the prestop
/// still gets its 200 before the admin listener stops.
#[test]
fn sigterm_during_the_prestop_wait_still_answers_the_prestop() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("ADMIN_PORT", "0"), ("SHUTDOWN_DELAY_MS", "800")]);
    let admin = server.admin_port();
    let prestop = thread::spawn(move || request(admin, "POST", "/admin/prestop", None, b""));
    server.wait_for_log("serving for");
    server.signal(libc::SIGTERM);
    let res = prestop.join().expect("prestop thread");
    assert_eq!(
        (res.status, res.body.as_str()),
        (200, r#"{"status":"draining"}"#)
    );
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        server.log().matches("shutdown phase delay: begun").count(),
        1
    );
}

/// A forced shutdown skips the waits that remain — here the prestop's
/// delay — but still writes the records and closes the pool.
#[test]
fn sigquit_during_a_prestop_skips_the_delay_but_writes_the_records() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("ADMIN_PORT", "0"),
            ("SHUTDOWN_DELAY_MS", "10000"),
            ("DRAIN_TIMEOUT_MS", "5000"),
        ],
    );
    let admin = server.admin_port();
    let prestop = thread::spawn(move || request(admin, "POST", "/admin/prestop", None, b""));
    server.wait_for_log("serving for");
    let signalled = Instant::now();
    server.signal(libc::SIGQUIT);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert!(
        exited - signalled < Duration::from_millis(2000),
        "the 10 s delay was skipped: {:?}",
        exited - signalled
    );
    assert_eq!(code, 0, "a cut with nothing in flight is a completed drain");
    let res = prestop.join().expect("prestop thread");
    assert_eq!(
        res.status, 200,
        "the prestop is answered when its delay ends"
    );
    assert_eq!(
        db.value("SELECT status FROM serverinstance"),
        Some("stopped".into())
    );
    assert_eq!(
        db.value("SELECT details->>'trigger' FROM drainevent WHERE event_type = 'drain_complete'"),
        Some("prestop".into())
    );
    assert!(server.log().contains("closing DB"));
}

#[test]
fn phases_run_in_lifo_order_and_a_stalled_phase_is_cut_at_its_deadline() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("ADMIN_PORT", "0"),
            ("SHUTDOWN_PHASE_TIMEOUT_MS", "300"),
            ("DRAINER_TEST_STALL_PHASE", "stop_admin"),
        ],
    );
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "a failed phase does not change the outcome");
    let log = server.log();
    assert_eq!(phases_begun(&log), PHASES, "{log}");
    assert!(
        log.contains("shutdown phase stop_admin: overran its 300 ms deadline"),
        "{log}"
    );
    assert_eq!(
        report_line(&log),
        "trigger SIGTERM; phases: delay N ms ok, stop_accepting N ms ok, drain N ms ok, \
         close_persistent N ms ok, stop_admin N ms overran its N ms deadline, \
         stop_background N ms ok, flush_telemetry N ms ok, close_database N ms ok; \
         persistent: websocket N clean N forced, sse N clean N forced, long_poll N clean N \
         forced; completed during the drain: N; cut short: N (of N in flight at the cut); \
         exit code N"
    );
    // The phases after the stalled one still ran: the records and the pool.
    assert_eq!(
        db.value("SELECT status FROM serverinstance"),
        Some("stopped".into())
    );
    let phases = db.value(
        "SELECT details->'phases'->4->>'outcome' FROM drainevent \
         WHERE event_type = 'drain_complete'",
    );
    assert_eq!(phases, Some("overran its 300 ms deadline".into()));
}

/// The budget counts from the prestop: a SIGTERM long after it finds the
/// budget spent. The phases get no time, but what they start still happens
/// — the listener closes, the record is written, the pool closes — and the
/// exit is prompt.
#[test]
fn a_prestop_held_past_the_budget_still_closes_records_and_exits() {
    let db = TestDb::create();
    // 200 delay + 100 + (100 + 2 × 1000 + 500) drain + (0 + 100) close_persistent
    // + 3 × 100 + 1000 reserve.
    let mut server = Server::start(
        &db,
        &[
            ("ADMIN_PORT", "0"),
            ("SHUTDOWN_DELAY_MS", "200"),
            ("DRAIN_TIMEOUT_MS", "100"),
            ("SHUTDOWN_PHASE_TIMEOUT_MS", "100"),
            ("WS_CLOSE_TIMEOUT_MS", "0"),
            ("SHUTDOWN_TIMEOUT_MS", "4300"),
        ],
    );
    let admin = server.admin_port();
    assert_eq!(
        request(admin, "POST", "/admin/prestop", None, b"").status,
        200
    );
    thread::sleep(Duration::from_millis(4500));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "nothing was in flight: {}", server.log());
    assert!(exited - signalled < Duration::from_millis(1500));
    let log = server.log();
    // The budget is spent: every phase but the last gets nothing, the last
    // its floor (the reserve less the exit's allowance, here its own 100 ms).
    assert!(
        log.contains("shutdown phase stop_accepting: begun (0 ms allowed)"),
        "{log}"
    );
    assert!(
        log.contains("shutdown phase close_database: begun (100 ms allowed)"),
        "{log}"
    );
    assert!(log.contains("listener closed"), "{log}");
    assert!(log.contains("closing DB"), "{log}");
    assert_eq!(
        db.value("SELECT status FROM serverinstance"),
        Some("stopped".into())
    );
    assert_eq!(
        db.count("SELECT count(*)::text FROM drainevent WHERE event_type = 'drain_complete'"),
        1
    );
}

#[test]
fn a_budget_that_cannot_hold_the_phases_is_refused_at_start_up() {
    let db = TestDb::create();
    let mut server = spawn(&[
        ("DATABASE_URL", db.url.as_str()),
        ("SHUTDOWN_TIMEOUT_MS", "10000"),
    ]);
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 2);
    // 1500 stop_accepting + 32500 drain (30 s + 2 × 1 s linger + 500 ms cancel allowance)
    // + 1500 stop_background + 1500 flush_telemetry + 1000 reserve.
    assert_eq!(
        server.log().trim_end(),
        "drainer: invalid configuration: SHUTDOWN_TIMEOUT_MS is 10000 ms but the shutdown \
         phases need 43100 ms (the delay, the drain timeout, every other phase's deadline \
         and the 1000 ms reserve): the budget is 33100 ms short"
    );
    assert_eq!(
        db.count("SELECT count(*)::text FROM pg_tables WHERE tablename = 'serverinstance'"),
        0,
        "refused before touching the database"
    );
}

#[test]
fn an_admin_port_in_use_is_named() {
    let db = TestDb::create();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let mut server = spawn(&[
        ("DATABASE_URL", db.url.as_str()),
        ("ADMIN_PORT", port.as_str()),
    ]);
    assert_eq!(server.wait_exit(PATIENCE).0, 2);
    assert_eq!(
        server.log().trim_end(),
        format!("drainer: admin port {port} is already in use (ADMIN_PORT)")
    );
}

#[test]
fn the_heartbeat_stamps_last_seen_and_stops_before_the_pool_closes() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("HEARTBEAT_MS", "50")]);
    let first = db
        .value("SELECT last_seen_at::text FROM serverinstance")
        .expect("stamped at registration");
    let deadline = Instant::now() + PATIENCE;
    while db.value("SELECT last_seen_at::text FROM serverinstance") == Some(first.clone()) {
        assert!(
            Instant::now() < deadline,
            "no heartbeat within {PATIENCE:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    let log = server.log();
    assert!(
        position(&log, "heartbeat stopped") < position(&log, "closing DB"),
        "{log}"
    );
    assert!(warnings(&log).is_empty(), "no beat failed: {log}");
    assert_eq!(
        db.value("SELECT (last_seen_at <= drained_at)::text FROM serverinstance"),
        Some("true".into()),
        "no beat after the drain was recorded"
    );
}

#[test]
fn metrics_before_during_and_after_a_drain() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("ADMIN_PORT", "0"),
            // Long enough to scrape during the drain on a loaded machine.
            ("DRAIN_TIMEOUT_MS", "2000"),
            // Holds the drain phase after its work, so the state after the
            // drain can be scraped before the admin listener stops.
            ("DRAINER_TEST_STALL_PHASE", "drain"),
        ],
    );
    let admin = server.admin_port();
    assert_eq!(post_work(server.port, r#"{"name":"one"}"#).status, 201);
    let m = scrape(admin);
    assert_eq!(
        sample(&m, r#"drainer_requests_total{outcome="created"}"#),
        1.0
    );
    assert_eq!(sample(&m, "drainer_requests_in_flight"), 0.0);
    assert_eq!(sample(&m, "drainer_drain_state"), 0.0);

    let straggler = post_work_async(server.port, r#"{"name":"slow","latency_ms":5000}"#);
    server.wait_admitted(2);
    assert_eq!(sample(&scrape(admin), "drainer_requests_in_flight"), 1.0);

    server.signal(libc::SIGTERM);
    server.wait_for_log("shutdown phase drain: begun");
    let m = scrape(admin);
    assert_eq!(sample(&m, "drainer_drain_state"), 1.0, "draining");
    assert_eq!(sample(&m, "drainer_requests_in_flight"), 1.0);
    assert_eq!(
        sample(&m, r#"shutdown_phase_started_total{phase="drain"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"shutdown_phase_started_total{phase="close_database"}"#
        ),
        0.0
    );

    let res = straggler.join().expect("thread").expect("answered");
    assert_eq!(res.status, 503);
    server.wait_for_log("drain over after");
    let m = scrape(admin);
    assert_eq!(sample(&m, "drainer_drain_state"), 2.0, "stopped");
    assert_eq!(sample(&m, "drainer_requests_in_flight"), 0.0);
    assert_eq!(
        sample(&m, r#"drainer_requests_total{outcome="drain_timeout"}"#),
        1.0
    );
    assert_eq!(
        sample(&m, r#"drainer_requests_total{outcome="created"}"#),
        1.0
    );
    assert!(sample(&m, "drainer_drain_duration_seconds") >= 2.0, "{m}");
    assert!(
        sample(
            &m,
            r#"shutdown_phase_duration_seconds{phase="stop_accepting"}"#
        ) > 0.0
    );
    assert_eq!(
        sample(&m, r#"shutdown_phase_failed_total{phase="stop_accepting"}"#),
        0.0
    );
    assert_eq!(server.wait_exit(PATIENCE).0, 1, "the drain was cut");
}

/// A minimal OTLP/HTTP receiver: answers 200 to every request and keeps
/// each request's path and body.
/// The requests an [`otlp_receiver`] got: path and body.
type Exported = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn otlp_receiver() -> (u16, Exported) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header.trim().is_empty() {
                            break;
                        }
                        let lower = header.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    keep.lock().unwrap().push((path, body));
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn each_shutdown_exports_one_trace_with_a_span_per_phase() {
    let (otlp, seen) = otlp_receiver();
    let db = TestDb::create();
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let mut server = Server::start(
        &db,
        &[
            ("ADMIN_PORT", "0"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0, "{}", server.log());
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "nothing exported; log:\n{}", server.log());
    assert!(
        seen.iter().all(|(path, _)| path == "/v1/traces"),
        "{seen:?}"
    );
    // Protobuf keeps strings as they are. A span's name is field 5 of
    // `Span` (tag 0x2a) followed by its length: one root span `shutdown`, one
    // span per phase.
    let bytes: Vec<u8> = seen.into_iter().flat_map(|(_, body)| body).collect();
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| w == &needle).count();
    let span_name = |name: &str| {
        let mut field = vec![0x2a, u8::try_from(name.len()).expect("short name")];
        field.extend_from_slice(name.as_bytes());
        field
    };
    assert_eq!(count(&span_name("shutdown")), 1, "one root span");
    for phase in PHASES {
        assert_eq!(count(&span_name(phase)), 1, "one {phase:?} span");
    }
    for attribute in ["shutdown.trigger", "SIGTERM", "drainer"] {
        assert!(
            count(attribute.as_bytes()) >= 1,
            "{attribute:?} not exported"
        );
    }
}

/// Leak check: `census` in the actors crate counts actors not stopped and
/// tasks not finished when the System stops.
#[test]
fn no_actor_or_task_is_left_running_after_a_clean_drain_a_drain_timeout_and_sigquit() {
    const CLEAN: &str = "leak check: 0 actor(s) and 0 task(s) left running";
    let db = TestDb::create();
    // (case, environment, signal, exit code)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], i32, i32);
    let cases: [Case; 3] = [
        ("clean", &[("ADMIN_PORT", "0")], libc::SIGTERM, 0),
        (
            "drain timeout",
            &[("ADMIN_PORT", "0"), ("DRAIN_TIMEOUT_MS", "200")],
            libc::SIGTERM,
            1,
        ),
        ("SIGQUIT", &[("ADMIN_PORT", "0")], libc::SIGQUIT, 1),
    ];
    for (case, env, signal, expected) in cases {
        let mut server = Server::start(&db, env);
        let admin = server.admin_port();
        // An idle keep-alive connection on each listener, and work in flight.
        let mut idle = Client::connect(server.port).expect("connect");
        assert_eq!(
            idle.request("GET", "/livez", None, b"").unwrap().status,
            200
        );
        let mut scraper = Client::connect(admin).expect("connect");
        assert_eq!(
            scraper
                .request("GET", "/metrics", None, b"")
                .unwrap()
                .status,
            200
        );
        let latency = if expected == 0 { 300 } else { 5000 };
        let body = format!(r#"{{"name":"{case}","latency_ms":{latency}}}"#);
        let pending = post_work_async(server.port, &body);
        let admitted = server.log().matches("admitted request").count() + 1;
        server.wait_admitted(admitted);
        server.signal(signal);
        let (code, _) = server.wait_exit(PATIENCE);
        assert_eq!(code, expected, "{case}: {}", server.log());
        let _ = pending.join();
        let log = server.log();
        assert!(log.contains(CLEAN), "{case}:\n{log}");
        let expected_report = if expected == 0 {
            "completed during the drain: 1; cut short: 0 (of 0 in flight at the cut); exit code 0"
        } else {
            "completed during the drain: 0; cut short: 1 (of 1 in flight at the cut); exit code 1"
        };
        let line = log
            .lines()
            .find(|l| l.contains("shutdown report: "))
            .unwrap_or("");
        assert!(line.ends_with(expected_report), "{case}: {line}");
    }
}

#[test]
fn the_report_is_logged_once_and_written_to_drain_complete() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let pending = post_work_async(server.port, r#"{"name":"r","latency_ms":300}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        pending.join().expect("thread").expect("answered").status,
        201
    );
    let log = server.log();
    assert_eq!(log.matches("shutdown report: ").count(), 1);
    assert_eq!(
        report_line(&log),
        "trigger SIGTERM; phases: delay N ms ok, stop_accepting N ms ok, drain N ms ok, \
         close_persistent N ms ok, stop_background N ms ok, flush_telemetry N ms ok, \
         close_database N ms ok; persistent: websocket N clean N forced, sse N clean N forced, \
         long_poll N clean N forced; completed during the drain: N; cut short: N (of N in \
         flight at the cut); exit code N"
    );
    assert!(log.contains(
        "completed during the drain: 1; cut short: 0 (of 0 in flight at the cut); exit code 0"
    ));
    let details = db.rows(
        "SELECT details->>'trigger', details->>'completed', details->>'cut_short', \
         details->>'exit_code', \
         (SELECT string_agg(p->>'phase' || ':' || (p->>'outcome'), ',') \
            FROM jsonb_array_elements(details->'phases') p) \
         FROM drainevent WHERE event_type = 'drain_complete'",
    );
    assert_eq!(
        details,
        vec![vec![
            Some("SIGTERM".into()),
            Some("1".into()),
            Some("0".into()),
            Some("0".into()),
            Some(
                "delay:ok,stop_accepting:ok,drain:ok,close_persistent:ok,stop_background:ok,flush_telemetry:ok".into()
            ),
        ]]
    );
}
