//! The downstream POST /work calls before it writes (`DOWNSTREAM_URL`): a
//! dead one answered 502, a slow one 504, a hanging one cut at the drain
//! deadline — nothing written in each case — and a live one told the job.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::support::*;

/// A downstream on a free port. `answer`: the response it writes to each
/// request (after reading it whole), or `None` to hold every connection
/// open without answering. What each request's body was goes to the channel.
struct Downstream {
    url: String,
    bodies: mpsc::Receiver<String>,
}

impl Downstream {
    fn start(answer: Option<&'static str>) -> Downstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/jobs", listener.local_addr().expect("addr"));
        let (tx, bodies) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                thread::spawn(move || serve(stream, answer, tx));
            }
        });
        Downstream { url, bodies }
    }
}

fn serve(stream: TcpStream, answer: Option<&str>, bodies: mpsc::Sender<String>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = bodies.send(String::from_utf8_lossy(&body).into_owned());
        match answer {
            Some(answer) => {
                if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            // Hold it: read until the caller goes away.
            None => {
                let mut sink = [0u8; 64];
                while matches!(reader.get_mut().read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
const FAILS: &str = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";

fn jobs(db: &TestDb) -> i64 {
    db.count("SELECT count(*)::text FROM jobs")
}

#[test]
fn a_live_downstream_is_told_the_job_before_it_is_written() {
    let db = TestDb::create();
    let downstream = Downstream::start(Some(OK));
    let mut server = Server::start(&db, &[("DOWNSTREAM_URL", &downstream.url)]);
    let res = post_work(server.port, r#"{"name":"told"}"#);
    assert_eq!(res.status, 201, "{}", res.body);
    let id = res.json()["id"].as_str().expect("id").to_string();
    let told: serde_json::Value =
        serde_json::from_str(&downstream.bodies.recv_timeout(PATIENCE).expect("called"))
            .expect("JSON");
    assert_eq!(told, serde_json::json!({"id": id, "name": "told"}));
    assert_eq!(
        db.value(&format!("SELECT name FROM jobs WHERE id = '{id}'")),
        Some("told".into())
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_dead_or_failing_downstream_is_answered_502_and_nothing_is_written() {
    let db = TestDb::create();
    let dead = format!("http://127.0.0.1:{}/jobs", closed_port());
    let mut server = Server::start(&db, &[("DOWNSTREAM_URL", &dead), ("ADMIN_PORT", "0")]);
    let res = post_work(server.port, r#"{"name":"refused"}"#);
    assert_eq!(
        (res.status, res.body.as_str()),
        (502, r#"{"error":"downstream_failed"}"#)
    );
    let metrics = get(server.admin_port(), "/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "drainer_requests_total{outcome=\"downstream_failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|l| l == "drainer_requests_total{outcome=\"downstream_timeout\"} 0"));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);

    let failing = Downstream::start(Some(FAILS));
    let mut server = Server::start(&db, &[("DOWNSTREAM_URL", &failing.url)]);
    let res = post_work(server.port, r#"{"name":"failed"}"#);
    assert_eq!(
        (res.status, res.body.as_str()),
        (502, r#"{"error":"downstream_failed"}"#)
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(jobs(&db), 0, "nothing written");
}

#[test]
fn a_slow_downstream_is_answered_504_and_nothing_is_written() {
    let db = TestDb::create();
    let hangs = Downstream::start(None);
    let mut server = Server::start(
        &db,
        &[
            ("DOWNSTREAM_URL", &hangs.url),
            ("DOWNSTREAM_TIMEOUT_MS", "300"),
        ],
    );
    let res = post_work(server.port, r#"{"name":"slow"}"#);
    assert_eq!(
        (res.status, res.body.as_str()),
        (504, r#"{"error":"downstream_timeout"}"#)
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(jobs(&db), 0, "nothing written");
}

/// A downstream that hangs (here: for good) does not hold the drain: at
/// `DRAIN_TIMEOUT_MS` the request is answered 503 `drain_timeout`, its call
/// abandoned, nothing written, and the exit code is 1.
#[test]
fn a_hanging_downstream_is_cut_at_the_drain_deadline() {
    let db = TestDb::create();
    let hangs = Downstream::start(None);
    let mut server = Server::start(
        &db,
        &[
            ("DOWNSTREAM_URL", &hangs.url),
            ("DOWNSTREAM_TIMEOUT_MS", "20000"),
            ("DRAIN_TIMEOUT_MS", "1000"),
        ],
    );
    let pending = post_work_async(server.port, r#"{"name":"stuck"}"#);
    hangs
        .bodies
        .recv_timeout(PATIENCE)
        .expect("the call is under way");
    server.signal(libc::SIGTERM);
    let res = pending.join().expect("thread").expect("answered");
    assert_eq!(
        (res.status, res.body.as_str()),
        (503, r#"{"error":"drain_timeout"}"#)
    );
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 1, "the drain was cut");
    assert!(
        server
            .log()
            .contains("cut short: 1 (of 1 in flight at the cut); exit code 1"),
        "{}",
        server.log()
    );
    assert_eq!(jobs(&db), 0, "nothing written");
}
