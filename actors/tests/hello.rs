//! The `hello` example as a user runs it: the real binary, real signals.
//! "curl gets hello; Ctrl+C; the server exits cleanly."

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

/// The example binary, built by `cargo test` beside this test.
fn example() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("examples").join("hello")
}

struct Hello {
    /// Never waited on before the last signal: its pid stays ours.
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Hello {
    fn start(env: &[(&str, &str)]) -> Hello {
        let mut cmd = Command::new(example());
        cmd.env("PORT", "0")
            .env("WORKERS", "1")
            .env("RUST_LOG", "info,drainer_engine::drain=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run the hello example");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut hello = Hello {
            child,
            port: 0,
            lines,
            log: Vec::new(),
        };
        let line = hello.wait_for("listening on");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("an address");
        hello.port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        hello
    }

    fn wait_for(&mut self, text: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no {text:?} in:\n{}", self.log.join("\n")),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which is not waited on (not reaped) yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits (bounded) for the exit; answers the code.
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().expect("exited, not killed");
            }
            assert!(Instant::now() < deadline, "hello did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a fresh connection: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    (head[9..12].parse().expect("status"), body.to_string())
}

fn get_async(port: u16, path: &str) -> mpsc::Receiver<(u16, String)> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_string();
    thread::spawn(move || {
        let _ = tx.send(get(port, &path));
    });
    rx
}

#[test]
fn curl_gets_hello_after_ctrl_c_and_the_process_exits_0_when_it_is_answered() {
    let mut hello = Hello::start(&[]);
    let answer = get_async(hello.port, "/?delay_ms=1000");
    hello.wait_for("admitted request 1;");
    hello.signal(libc::SIGINT);
    hello.wait_for("listener closed");
    assert!(
        TcpStream::connect(("127.0.0.1", hello.port)).is_err(),
        "new connections are refused"
    );
    let (status, body) = answer.recv_timeout(PATIENCE).expect("answered");
    assert_eq!((status, body.as_str()), (200, "hello"));
    let answered = Instant::now();
    let report = hello.wait_for("shutdown report:");
    assert!(report.contains("trigger SIGINT"), "{report}");
    assert!(report.contains("completed during the drain: 1"), "{report}");
    assert_eq!(hello.exit_code(), 0);
    // Generous: a hang or a once-a-second poll would show; speed is make bench's.
    assert!(answered.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_second_ctrl_c_cuts_it_short_503_and_exit_1() {
    let mut hello = Hello::start(&[]);
    let answer = get_async(hello.port, "/?delay_ms=60000");
    hello.wait_for("admitted request 1;");
    hello.signal(libc::SIGINT);
    hello.wait_for("draining server");
    hello.signal(libc::SIGINT);
    let (status, body) = answer.recv_timeout(PATIENCE).expect("answered");
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"error":"shutdown_forced"}"#)
    );
    assert_eq!(hello.exit_code(), 1);
}

#[test]
fn readyz_turns_503_during_the_shutdown_delay_while_hello_is_served() {
    let mut hello = Hello::start(&[("SHUTDOWN_DELAY_MS", "1500")]);
    assert_eq!(get(hello.port, "/readyz").0, 200);
    hello.signal(libc::SIGTERM);
    hello.wait_for("draining server");
    let (status, body) = get(hello.port, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"status":"shutting_down"}"#)
    );
    let (status, body) = get(hello.port, "/?delay_ms=0");
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(hello.exit_code(), 0);
}
