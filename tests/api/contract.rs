//! The HTTP contract: health, POST /work, and every kind of bad input.
//! (The first two build the service in-process; the rest read its log.)

use crate::support::*;

#[test]
fn health_and_work_store_the_row_before_answering() {
    let db = TestDb::create();
    let server = InProcess::start(&db, &[]);

    let health = get(server.port, "/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, r#"{"status":"ok"}"#);
    assert!(!health.closes(), "no Connection: close while active");

    let res = post_work(server.port, r#"{"name":"first","latency_ms":50}"#);
    assert_eq!(res.status, 201, "{res:?}");
    let body = res.json();
    assert_eq!(body["name"], "first");
    let id = body["id"].as_str().expect("id is a string").to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // The 201 came after the commit: the row is there now.
    assert_eq!(
        db.value(&format!("SELECT name FROM jobs WHERE id = '{id}'")),
        Some("first".into())
    );
    assert_eq!(
        db.rows("SELECT host, port::text, status FROM serverinstance"),
        vec![vec![
            Some("test-host".into()),
            Some(server.port.to_string()),
            Some("active".into())
        ]]
    );

    let report = server.drain();
    assert_eq!((report.exit_code, report.completed), (0, 0));
    assert_eq!(
        db.rows("SELECT status FROM serverinstance"),
        vec![vec![Some("stopped".into())]]
    );
}

#[test]
fn keep_alive_connection_serves_many_requests_with_distinct_ids() {
    let db = TestDb::create();
    let server = InProcess::start(&db, &[]);
    let mut client = Client::connect(server.port).expect("connect");
    let mut ids = Vec::new();
    for i in 0..20 {
        let res = client
            .post_work(&format!(r#"{{"name":"k{i}"}}"#))
            .expect("answer");
        assert_eq!(res.status, 201);
        assert!(!res.closes());
        ids.push(res.json()["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 20);
    assert_eq!(server.drain().exit_code, 0);
}

/// Every bad input of the contract, with its exact status and body; the server
/// keeps serving after each.
#[test]
fn bad_input_gets_a_json_error_and_the_server_keeps_serving() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let port = server.port;
    let json = Some("application/json");
    let name_over = format!(r#"{{"name":"{}"}}"#, "n".repeat(1001));
    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(70 * 1024));
    let latency = r#"{"error":"latency_ms must be an integer from 0 to 600000"}"#;

    // (method, path, content type, body, status, exact body)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/work",
            json,
            b"{\"name\":",
            400,
            r#"{"error":"malformed JSON: EOF while parsing a value at line 1 column 8"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"not json",
            400,
            r#"{"error":"malformed JSON: expected ident at line 1 column 2"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"",
            400,
            r#"{"error":"malformed JSON: EOF while parsing a value at line 1 column 0"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"{}",
            422,
            r#"{"error":"name is required"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"{\"name\":\"\"}",
            422,
            r#"{"error":"name must not be empty"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"{\"name\":42}",
            422,
            r#"{"error":"name must be a string"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"[\"name\"]",
            422,
            r#"{"error":"the body must be a JSON object"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            b"{\"name\":\"a\",\"latency_ms\":-1}",
            422,
            latency,
        ),
        (
            "POST",
            "/work",
            json,
            b"{\"name\":\"a\",\"latency_ms\":2.5}",
            422,
            latency,
        ),
        (
            "POST",
            "/work",
            json,
            b"{\"name\":\"a\",\"latency_ms\":\"10\"}",
            422,
            latency,
        ),
        (
            "POST",
            "/work",
            json,
            b"{\"name\":\"a\",\"latency_ms\":600001}",
            422,
            latency,
        ),
        (
            "POST",
            "/work",
            json,
            name_over.as_bytes(),
            422,
            r#"{"error":"name must be at most 1000 characters"}"#,
        ),
        (
            "POST",
            "/work",
            json,
            huge.as_bytes(),
            413,
            r#"{"error":"request body is larger than 65536 bytes"}"#,
        ),
        (
            "POST",
            "/work",
            Some("text/plain"),
            b"{\"name\":\"a\"}",
            415,
            r#"{"error":"Content-Type must be application/json"}"#,
        ),
        (
            "POST",
            "/work",
            None,
            b"{\"name\":\"a\"}",
            415,
            r#"{"error":"Content-Type must be application/json"}"#,
        ),
        (
            "GET",
            "/nowhere",
            None,
            b"",
            404,
            r#"{"error":"not found"}"#,
        ),
        (
            "GET",
            "/work",
            None,
            b"",
            405,
            r#"{"error":"method not allowed"}"#,
        ),
        (
            "DELETE",
            "/health",
            None,
            b"",
            405,
            r#"{"error":"method not allowed"}"#,
        ),
    ];
    for (method, path, ct, body, status, expected) in cases {
        let res = request(port, method, path, ct, body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        assert_eq!(res.status, status, "{method} {path} {shown:?}: {res:?}");
        assert_eq!(res.body, expected, "{method} {path} {shown:?}");
        assert_eq!(res.header("content-type"), Some("application/json"));
        // Still serving.
        assert_eq!(get(port, "/health").status, 200);
    }
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs"),
        0,
        "nothing stored"
    );

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        warnings(&server.log()),
        Vec::<&str>::new(),
        "bad input is not a warning"
    );
}

#[test]
fn a_clean_run_logs_no_warning_or_error_and_says_each_phase_once() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    assert_eq!(post_work(server.port, r#"{"name":"clean"}"#).status, 201);
    assert_eq!(post_work(server.port, "{").status, 400);
    let slow = post_work_async(server.port, r#"{"name":"slow","latency_ms":300}"#);
    // The engine admits every request, the malformed one too: the slow one is the third.
    server.wait_admitted(3);
    server.signal(libc::SIGTERM);
    assert_eq!(slow.join().unwrap().expect("answer").status, 201);
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0);
    let log = server.log();
    assert_eq!(warnings(&log), Vec::<&str>::new(), "log:\n{log}");
    let phases: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            ["draining server", "closing DB", "exited with code 0"]
                .into_iter()
                .find(|p| l.ends_with(p))
        })
        .collect();
    assert_eq!(
        phases,
        vec!["draining server", "closing DB", "exited with code 0"],
        "log:\n{log}"
    );
}

#[test]
fn the_database_password_never_reaches_the_log() {
    let db = TestDb::create();
    let secret = "Sup3r-s3cret-pw";
    let url = db.url_with_password(secret);
    let mut server = crate::support::spawn(&[("DATABASE_URL", url.as_str())]);
    server.wait_for_log("listening on");
    let port: u16 = server
        .log()
        .lines()
        .find_map(|l| l.split("listening on 127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert_eq!(post_work(port, r#"{"name":"pw"}"#).status, 201);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert!(!server.log().contains(secret), "{}", server.log());

    // Nor an error message: the same password against a database that is not there.
    let gone = format!("postgres://postgres:{secret}@127.0.0.1:{}/x", closed_port());
    let mut failing = crate::support::spawn(&[
        ("DATABASE_URL", gone.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "300"),
    ]);
    assert_eq!(failing.wait_exit(PATIENCE).0, 2);
    let log = failing.log();
    assert!(log.contains("database"), "{log}");
    assert!(!log.contains(secret), "{log}");
}
