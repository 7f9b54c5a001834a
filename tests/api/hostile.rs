//! Hostile clients: slow bodies, slow heads (first and later), a pipelining
//! client that never reads, and the protocol errors actix-http answers itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Everything the server sends until it closes the connection (bounded).
fn read_to_close(stream: &mut TcpStream) -> (String, Instant) {
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    (String::from_utf8_lossy(&all).into_owned(), Instant::now())
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

const TIMED_OUT: &str = "HTTP/1.1 408 Request Timeout";

/// The 408 with its JSON body, closed about a second (the timeout) after `sent`.
fn assert_timed_out_after_a_second(answer: &str, sent: Instant, closed: Instant) {
    assert!(answer.starts_with(TIMED_OUT), "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"client_request_timeout"}"#),
        "{answer}"
    );
    let took = closed - sent;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_millis(5000), "{took:?}");
}

/// A server with a one-second client timeout and an admin listener.
fn one_second_server(db: &TestDb) -> Server {
    Server::start(
        db,
        &[("CLIENT_REQUEST_TIMEOUT_MS", "1000"), ("ADMIN_PORT", "0")],
    )
}

#[test]
fn a_body_that_stalls_is_answered_408_and_closed() {
    let db = TestDb::create();
    let mut server = one_second_server(&db);
    let mut s = connect(server.port);
    let sent = Instant::now();
    s.write_all(
        b"POST /work HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"name\":\"",
    )
    .expect("send");
    let (answer, closed) = read_to_close(&mut s);
    assert_timed_out_after_a_second(&answer, sent, closed);
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 0);
    assert_eq!(
        client_timeouts(&mut server),
        [0, 1, 0],
        "head, body, writes"
    );
}

/// `drainer_client_timeouts_total` for head, body and writes.
fn client_timeouts(server: &mut Server) -> [u64; 3] {
    let metrics = get(server.admin_port(), "/metrics").body;
    ["head", "body", "writes"].map(|reason| {
        let prefix = format!("drainer_client_timeouts_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    })
}

#[test]
fn a_second_head_that_stalls_is_answered_408_and_closed() {
    let db = TestDb::create();
    let mut server = one_second_server(&db);
    let mut s = connect(server.port);
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut first = [0u8; 512];
    let n = s.read(&mut first).expect("first answer");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200 OK"));
    let sent = Instant::now();
    s.write_all(b"GET /livez HTTP/1.1\r\nHo")
        .expect("part of a second head");
    let (answer, closed) = read_to_close(&mut s);
    assert_timed_out_after_a_second(&answer, sent, closed);
    server.wait_for_log("a request head took longer than CLIENT_REQUEST_TIMEOUT_MS");
    assert_eq!(
        client_timeouts(&mut server),
        [1, 0, 0],
        "head, body, writes"
    );
}

#[test]
fn a_first_head_that_stalls_gets_the_same_json_408() {
    let db = TestDb::create();
    let server = Server::start(&db, &[("CLIENT_REQUEST_TIMEOUT_MS", "800")]);
    let mut s = connect(server.port);
    s.write_all(b"GET /li").expect("part of a head");
    let (answer, _) = read_to_close(&mut s);
    assert_eq!(
        answer,
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: 34\r\nconnection: close\r\n\r\n{\"error\":\"client_request_timeout\"}"
    );
}

#[test]
fn a_slow_but_steady_request_within_the_timeout_is_served() {
    let db = TestDb::create();
    let server = Server::start(&db, &[("CLIENT_REQUEST_TIMEOUT_MS", "2000")]);
    let mut s = connect(server.port);
    let body = br#"{"name":"slow"}"#;
    let head = format!(
        "POST /work HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    for part in [head.as_bytes(), &body[..5], &body[5..]] {
        s.write_all(part).expect("send");
        thread::sleep(Duration::from_millis(300));
    }
    let mut answer = [0u8; 512];
    let n = s.read(&mut answer).expect("answer");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 201 Created"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[test]
fn a_request_with_bare_lf_line_ends_is_not_timed_out_while_it_is_handled() {
    let db = TestDb::create();
    let server = Server::start(&db, &[("CLIENT_REQUEST_TIMEOUT_MS", "500")]);
    let mut s = connect(server.port);
    let body = br#"{"name":"lf","latency_ms":1200}"#;
    let head = format!(
        "POST /work HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {}\n\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let mut answer = [0u8; 512];
    let n = s.read(&mut answer).expect("answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 201 Created"), "{answer}");
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'lf'"),
        1
    );
}

#[test]
fn blank_lines_that_never_become_a_head_are_answered_408() {
    let db = TestDb::create();
    let server = Server::start(&db, &[("CLIENT_REQUEST_TIMEOUT_MS", "500")]);
    let mut s = connect(server.port);
    s.write_all(b"\r\n\r\n").expect("blank lines");
    let (answer, _) = read_to_close(&mut s);
    assert!(answer.starts_with(TIMED_OUT), "{answer:?}");
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from 1 with pid first.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// CPU seconds the process uses over the next `window`.
fn cpu_over(pid: i32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    thread::sleep(window);
    cpu_seconds(pid) - before
}

#[test]
fn a_pipelining_client_that_never_reads_burns_no_cpu_and_is_closed() {
    let db = TestDb::create();
    // Long enough that the CPU is measured before the connection is closed
    // for making no progress (which would end a busy-wait too).
    let mut server = Server::start(
        &db,
        &[("CLIENT_REQUEST_TIMEOUT_MS", "9000"), ("ADMIN_PORT", "0")],
    );
    let rss_before = rss_kib(server.pid);
    // A small receive window, so the server's writes block soon.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], server.port).into();
    socket.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("write timeout");
    let request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    // Write until the server stops reading (a write times out).
    let writing = Instant::now();
    while s.write_all(&request).is_ok() {
        assert!(
            writing.elapsed() < PATIENCE,
            "the server never stopped reading"
        );
    }
    // What had reached the server is answered into its buffers, then it
    // rests: a busy-waiting dispatcher never would.
    let settling = Instant::now();
    while cpu_over(server.pid, Duration::from_millis(500)) > 0.05 {
        assert!(
            settling.elapsed() < Duration::from_secs(4),
            "the server keeps burning CPU with nothing it can do"
        );
    }
    let cpu = cpu_over(server.pid, Duration::from_millis(1500));
    assert!(cpu < 0.3, "{cpu:.2} s of CPU in 1.5 s: busy-waiting");
    let grew = rss_kib(server.pid).saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "memory grew by {grew} KiB");
    // No write progress for CLIENT_REQUEST_TIMEOUT_MS: the connection is closed.
    server.wait_for_log("its client read none of its answers for CLIENT_REQUEST_TIMEOUT_MS");
    assert_eq!(
        client_timeouts(&mut server),
        [0, 0, 1],
        "head, body, writes"
    );
    // The server still serves others.
    assert_eq!(get(server.port, "/livez").status, 200);
}

#[test]
fn protocol_errors_are_answered_by_actix_http_itself() {
    let db = TestDb::create();
    let server = Server::start(&db, &[]);
    let mut s = connect(server.port);
    s.write_all(
        b"POST /work HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .expect("send");
    let (answer, _) = read_to_close(&mut s);
    // The library answers before any of drainer's code runs (docs/operations.md).
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    assert_eq!(db.count("SELECT count(*)::text FROM jobs"), 0);
}
