//! Persistent connections drained on purpose, with real clients: WebSockets
//! (tungstenite, and a raw socket that never answers the close), SSE and
//! long-polls (raw sockets); requests on connections already open after the
//! listener closed; the lingering close.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::support::*;

const WS_HEAD: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn ws_connect(port: u16) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let (ws, res) = tungstenite::client::client(format!("ws://127.0.0.1:{port}/ws"), stream)
        .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
    assert_eq!(res.status(), 101);
    ws
}

fn assert_echoes(ws: &mut WebSocket<TcpStream>) {
    ws.send(Message::text("hello")).expect("send");
    assert_eq!(ws.read().expect("echo"), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .expect("send");
    assert_eq!(
        ws.read().expect("echo"),
        Message::binary(vec![0u8, 1, 2, 255])
    );
}

/// Reads the server's Close frame: its code.
fn read_close(ws: &mut WebSocket<TcpStream>) -> CloseCode {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("a Close without a code"),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => panic!("expected a Close, got {other:?}"),
            Err(e) => panic!("expected a Close, got {e}"),
        }
    }
}

/// After our Close reply: the server closes TCP, cleanly (no reset).
fn assert_closed_cleanly(ws: &mut WebSocket<TcpStream>) {
    loop {
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => return,
            // The server's answer to a Close the client began.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => {}
            other => panic!("expected a clean close after the handshake, got {other:?}"),
        }
    }
}

/// The report line's persistent fragment.
fn persistent_fragment(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("shutdown report: "))
        .unwrap_or_else(|| panic!("no report in\n{log}"));
    line.split("persistent: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .to_string()
}

/// A raw connection that reads a streamed (chunked) answer.
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Raw {
            stream: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).expect("write");
    }

    fn get(&mut self, path: &str) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
    }

    /// The status and the headers (lower-cased names).
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                return (status, headers);
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }

    /// The next chunk of a chunked body (empty: the terminator came).
    fn chunk(&mut self) -> String {
        let mut size = String::new();
        self.stream.read_line(&mut size).expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
        let mut data = vec![0; size + 2];
        self.stream.read_exact(&mut data).expect("chunk");
        assert_eq!(&data[size..], b"\r\n", "chunk framing");
        data.truncate(size);
        String::from_utf8(data).expect("utf-8")
    }

    /// Chunks until one contains `needle`.
    fn chunk_with(&mut self, needle: &str) -> String {
        loop {
            let chunk = self.chunk();
            assert!(!chunk.is_empty(), "the stream ended before {needle:?}");
            if chunk.contains(needle) {
                return chunk;
            }
        }
    }

    /// Reads past a Content-Length body.
    fn skip_body(&mut self, headers: &[(String, String)]) {
        let len = header(headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).expect("body");
    }

    /// True when the server closed the connection (EOF, not a reset).
    fn eof(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_websocket_gets_1001_and_the_close_handshake_completes_server_first() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let mut ws = ws_connect(server.port);
    assert_echoes(&mut ws);
    server.signal(libc::SIGTERM);
    assert_eq!(read_close(&mut ws), CloseCode::Away);
    // tungstenite replied to the Close; the server then closes TCP first.
    assert_closed_cleanly(&mut ws);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        persistent_fragment(&server.log()),
        "websocket 1 clean 0 forced, sse 0 clean 0 forced, long_poll 0 clean 0 forced"
    );
    assert_eq!(
        db.value(
            "SELECT (details->'persistent')::text FROM drainevent \
             WHERE event_type = 'drain_complete'"
        ),
        Some(
            r#"{"sse": {"clean": 0, "forced": 0}, "long_poll": {"clean": 0, "forced": 0}, "websocket": {"clean": 1, "forced": 0}}"#
                .into()
        )
    );
}

#[test]
fn a_websocket_that_never_answers_the_close_is_cut_at_its_timeout() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("WS_CLOSE_TIMEOUT_MS", "1000")]);
    let mut raw = Raw::connect(server.port);
    raw.send(WS_HEAD.as_bytes());
    let (status, headers) = raw.head();
    assert_eq!(status, 101);
    assert_eq!(header(&headers, "upgrade"), Some("websocket"));
    server.signal(libc::SIGTERM);
    // The Close frame: FIN + opcode 8, unmasked, code 1001.
    let mut frame = [0u8; 4];
    raw.stream.read_exact(&mut frame).expect("a close frame");
    assert_eq!(
        (frame[0], frame[1] & 0x80),
        (0x88, 0),
        "a server Close frame"
    );
    let mut rest = vec![0u8; usize::from(frame[1] & 0x7f) - 2];
    raw.stream.read_exact(&mut rest).expect("its reason");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1001);
    let goodbye = Instant::now();
    // Never answered: closed by the server at the timeout.
    assert!(raw.eof(), "closed by the server");
    let waited = goodbye.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before WS_CLOSE_TIMEOUT_MS"
    );
    assert_eq!(
        server.wait_exit(PATIENCE).0,
        0,
        "no admitted request was cut"
    );
    assert_eq!(
        persistent_fragment(&server.log()),
        "websocket 0 clean 1 forced, sse 0 clean 0 forced, long_poll 0 clean 0 forced"
    );
}

#[test]
fn a_websocket_idle_past_the_keep_alive_and_the_client_timeout_still_echoes() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("KEEP_ALIVE_MS", "200"),
            ("CLIENT_REQUEST_TIMEOUT_MS", "300"),
            ("ADMIN_PORT", "0"),
        ],
    );
    let admin = server.admin_port();
    let mut ws = ws_connect(server.port);
    assert_echoes(&mut ws);
    // Both timers would have closed an HTTP connection by now.
    thread::sleep(Duration::from_millis(900));
    assert_echoes(&mut ws);
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "drainer_persistent_connections{class=\"websocket\"} 1"),
        "{metrics}"
    );
    ws.close(None).expect("close");
    assert_closed_cleanly(&mut ws);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_websocket_opened_during_the_delay_works_and_gets_1001_when_it_ends() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("SHUTDOWN_DELAY_MS", "1500")]);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_for_log("serving for");
    let mut ws = ws_connect(server.port);
    assert_echoes(&mut ws);
    assert_eq!(read_close(&mut ws), CloseCode::Away);
    assert!(
        signalled.elapsed() >= Duration::from_millis(1400),
        "the goodbye came before the delay ended"
    );
    assert_closed_cleanly(&mut ws);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_forced_cut_says_goodbye_without_waiting() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("SHUTDOWN_DELAY_MS", "10000"),
            ("WS_CLOSE_TIMEOUT_MS", "10000"),
            ("SHUTDOWN_TIMEOUT_MS", "120000"),
            ("ADMIN_PORT", "0"),
        ],
    );
    let (port, admin) = (server.port, server.admin_port());
    let mut ws = ws_connect(port);
    let pending = thread::spawn(move || get(port, "/poll?timeout_ms=30000"));
    wait_gauge(admin, "long_poll", 1);
    server.signal(libc::SIGINT);
    server.wait_for_log("serving for");
    server.signal(libc::SIGINT);
    assert_eq!(read_close(&mut ws), CloseCode::Away);
    let told = pending.join().expect("thread");
    assert_eq!(told.status, 204, "a pending poll is told to go, not cut");
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "no admitted request was cut: {}", server.log());
    assert_eq!(
        persistent_fragment(&server.log()),
        "websocket 0 clean 1 forced, sse 0 clean 0 forced, long_poll 0 clean 1 forced"
    );
}

#[test]
fn an_in_flight_post_gets_its_201_while_websockets_are_told_to_go() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let mut ws = ws_connect(server.port);
    let pending = post_work_async(server.port, r#"{"name":"slow","latency_ms":1500}"#);
    server.wait_admitted(1);
    server.signal(libc::SIGTERM);
    assert_eq!(read_close(&mut ws), CloseCode::Away);
    assert_closed_cleanly(&mut ws);
    let answer = pending.join().expect("thread").expect("answered");
    assert_eq!(answer.status, 201);
    assert!(answer.closes());
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'slow'"),
        1
    );
}

/// After the listener closed, a connection already open carries one more
/// request, served for real with `Connection: close` — or, for a request
/// that would open a persistent connection, the answer that tells it to go.
#[test]
fn after_the_listener_closed_open_connections_are_served_with_connection_close() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[
            ("IDLE_CLOSE_GRACE_MS", "10000"),
            ("SHUTDOWN_TIMEOUT_MS", "120000"),
        ],
    );
    let mut clients: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::connect(server.port).expect("connect");
            let ready = c.request("GET", "/livez", None, b"").expect("livez");
            assert_eq!(ready.status, 200);
            c
        })
        .collect();
    let mut events = Raw::connect(server.port);
    events.get("/livez");
    let (status, headers) = events.head();
    assert_eq!(status, 200);
    events.skip_body(&headers);
    server.signal(libc::SIGTERM);
    server.wait_for_log("listener closed");
    assert!(
        TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "new connections are refused"
    );

    let created = clients[0]
        .post_work(r#"{"name":"late"}"#)
        .expect("answered");
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(created.closes());
    assert!(clients[0].closed_by_server(PATIENCE));

    clients[1].send_raw(WS_HEAD.as_bytes()).expect("sent");
    let refused = clients[1].read().expect("answered");
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.json(),
        serde_json::json!({"error": "server_shutting_down"})
    );
    assert!(refused.closes());

    let poll = clients[2]
        .request("GET", "/poll", None, b"")
        .expect("answered");
    assert_eq!(poll.status, 204);
    assert!(poll.closes());

    let ready = clients[3]
        .request("GET", "/readyz", None, b"")
        .expect("answered");
    assert_eq!(ready.status, 503);
    let live = clients[4]
        .request("GET", "/livez", None, b"")
        .expect("answered");
    assert_eq!(live.status, 200);

    events.get("/events");
    let (status, headers) = events.head();
    assert_eq!(status, 200, "never 503: an EventSource would give up");
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    assert_eq!(
        events.chunk(),
        "retry: 1000\nevent: reconnect\ndata: {}\n\n"
    );
    assert_eq!(events.chunk(), "", "ended at once");
    assert!(events.eof());

    drop(clients);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name = 'late'"),
        1
    );
}

#[test]
fn sse_streams_carry_jobs_and_end_with_reconnect_at_the_drain() {
    let db = TestDb::create();
    let mut server = Server::start(
        &db,
        &[("SSE_RETRY_MS", "2500"), ("SSE_KEEPALIVE_MS", "100")],
    );
    let mut sse = Raw::connect(server.port);
    sse.get("/events");
    let (status, headers) = sse.head();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    // Proxies see bytes while nothing happens.
    assert_eq!(sse.chunk(), ": keepalive\n\n");
    // Subscribed once the head is out; the job is committed after.
    let created = post_work(server.port, r#"{"name":"streamed"}"#);
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().expect("id").to_string();
    let event = sse.chunk_with("event: job");
    assert_eq!(
        event,
        format!("id: 1\nevent: job\ndata: {{\"id\":\"{id}\",\"name\":\"streamed\"}}\n\n")
    );
    server.signal(libc::SIGTERM);
    assert_eq!(
        sse.chunk_with("reconnect"),
        "retry: 2500\nevent: reconnect\ndata: {}\n\n"
    );
    assert_eq!(sse.chunk(), "", "the chunked terminator");
    assert!(sse.eof(), "then the server closes the connection");
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        persistent_fragment(&server.log()),
        "websocket 0 clean 0 forced, sse 1 clean 0 forced, long_poll 0 clean 0 forced"
    );
}

/// Waits until the admin listener's gauge for `class` reads `n`.
fn wait_gauge(admin: u16, class: &str, n: usize) {
    let line = format!("drainer_persistent_connections{{class=\"{class}\"}} {n}");
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if get(admin, "/metrics").body.lines().any(|l| l == line) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{line} never seen");
}

#[test]
fn polls_are_answered_with_jobs_at_their_timeout_and_at_the_drain() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("ADMIN_PORT", "0")]);
    let (port, admin) = (server.port, server.admin_port());
    for bad in [
        "/poll?timeout_ms=60001",
        "/poll?timeout_ms=soon",
        "/poll?since=-1",
    ] {
        let res = get(port, bad);
        assert_eq!(res.status, 422, "{bad}");
        assert!(res.json()["error"].is_string(), "{bad}: {}", res.body);
    }
    let timed_out = get(port, "/poll?timeout_ms=100");
    assert_eq!((timed_out.status, timed_out.body.as_str()), (204, ""));

    let waiting = thread::spawn(move || get(port, "/poll?timeout_ms=20000"));
    wait_gauge(admin, "long_poll", 1);
    let created = post_work(port, r#"{"name":"polled"}"#).json();
    let answered = waiting.join().expect("thread");
    assert_eq!(answered.status, 200);
    assert_eq!(
        answered.json(),
        serde_json::json!({"events": [{"seq": 1, "id": created["id"], "name": "polled"}]})
    );
    // A client that re-polls with its last seq misses nothing.
    let since = get(port, "/poll?since=0&timeout_ms=20000");
    assert_eq!(since.status, 200);
    assert_eq!(since.json()["events"][0]["seq"], 1);

    let pending = thread::spawn(move || get(port, "/poll?timeout_ms=20000"));
    wait_gauge(admin, "long_poll", 1);
    server.signal(libc::SIGTERM);
    let told = pending.join().expect("thread");
    assert_eq!(told.status, 204, "nothing yet: re-poll elsewhere");
    assert!(told.closes());
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        persistent_fragment(&server.log()),
        "websocket 0 clean 0 forced, sse 0 clean 0 forced, long_poll 1 clean 0 forced"
    );
}

/// A client that writes its whole body before reading (Python's
/// http.client, many libraries) reads the 413 instead of a broken pipe.
#[test]
fn an_8_mib_body_is_read_back_as_a_413_by_a_client_that_writes_first() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    let body = vec![b'x'; 8 << 20];
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.set_write_timeout(Some(PATIENCE)).expect("timeout");
    let head = format!(
        "POST /work HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    let written: io::Result<()> = stream.write_all(&body);
    assert!(written.is_ok(), "the body was not read: {written:?}");
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    assert!(read.is_ok(), "{read:?}");
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.ends_with(r#"{"error":"request body is larger than 65536 bytes"}"#));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_websocket_peer_that_never_answers_pings_is_closed_with_1011() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("WS_PING_MS", "200")]);
    let mut raw = Raw::connect(server.port);
    raw.send(WS_HEAD.as_bytes());
    assert_eq!(raw.head().0, 101);
    // A ping (FIN + opcode 9, empty), never answered…
    let mut ping = [0u8; 2];
    raw.stream.read_exact(&mut ping).expect("a ping");
    assert_eq!(ping, [0x89, 0x00]);
    let pinged = Instant::now();
    // …then, twice the ping interval later, Close 1011.
    let mut close = [0u8; 4];
    raw.stream.read_exact(&mut close).expect("a close frame");
    assert_eq!((close[0], close[1]), (0x88, 0x02));
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1011);
    assert!(
        pinged.elapsed() >= Duration::from_millis(350),
        "{:?}",
        pinged.elapsed()
    );
    assert!(raw.eof(), "then the server closes");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}
