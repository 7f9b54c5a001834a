//! Shared helpers for the integration tests: a throwaway database per test,
//! the real `drainer` binary on a free port, a small HTTP/1.1 client that
//! shows exactly what came over the wire, and bounded waits.
//!
//! The tests need `DATABASE_URL` to point at a PostgreSQL server where they may
//! create databases; `make test` starts a throwaway cluster and sets it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

// ----------------------------------------------------------------------------
// Database
// ----------------------------------------------------------------------------

/// The server the tests create their databases in.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests with `make test`, which starts a throwaway PostgreSQL",
    )
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "drainer_t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .expect("connect to the test PostgreSQL (DATABASE_URL)");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        let url = with_database(&admin, &name);
        TestDb { name, url }
    }

    /// The URL with a password added (trust auth ignores it).
    pub fn url_with_password(&self, password: &str) -> String {
        self.url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{password}@"),
            1,
        )
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to the test database")
    }

    /// Rows of a query whose columns are all cast to text.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut client = self.client();
        client
            .query(sql, &[])
            .expect("query")
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect()
    }

    /// A single text value.
    pub fn value(&self, sql: &str) -> Option<String> {
        let rows = self.rows(sql);
        assert_eq!(rows.len(), 1, "expected one row from {sql}, got {rows:?}");
        rows[0][0].clone()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.value(sql).expect("a count").parse().expect("a number")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

// ----------------------------------------------------------------------------
// The server process
// ----------------------------------------------------------------------------

/// The real binary, started on a free port.
pub struct Server {
    child: Option<Child>,
    /// For reading /proc only: signals go through `pidfd`, never by pid.
    pub pid: i32,
    /// The process itself, not its number: a signal sent through it can
    /// never reach another process, even once this one is reaped and its pid
    /// reused (and a reaped pid of -1 would have signalled every process).
    pidfd: Pidfd,
    pub port: u16,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    exit: Option<mpsc::Receiver<(io::Result<ExitStatus>, Instant)>>,
    /// Reads stderr until the process closes it.
    reader: Option<thread::JoinHandle<()>>,
}

/// Starts `drainer` with `env` (plus PORT=0 and RUST_LOG) without waiting.
pub fn spawn(env: &[(&str, &str)]) -> Server {
    spawn_with(&[], env, Stdio::null(), Stdio::null()).0
}

/// Starts `drainer` with `args` and `env` (plus PORT=0 and RUST_LOG)
/// without waiting.
pub fn spawn_args(args: &[&str], env: &[(&str, &str)]) -> Server {
    spawn_with(args, env, Stdio::null(), Stdio::null()).0
}

/// A `drainer --stdin` node: its stdin to write lines to, its stdout lines
/// (with the time each arrived) to read.
pub struct Node {
    pub server: Server,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<(String, Instant)>,
}

/// Starts `drainer --stdin` with `env`.
pub fn node(env: &[(&str, &str)]) -> Node {
    let (mut server, stdin, stdout) = spawn_with(&["--stdin"], env, Stdio::piped(), Stdio::piped());
    let (tx, out) = mpsc::channel();
    let stdout = stdout.expect("piped stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    server.wait_for_log("speaking the node protocol");
    Node { server, stdin, out }
}

impl Node {
    /// Writes `lines` in one write, each followed by a newline.
    pub fn send(&mut self, lines: &[String]) -> Instant {
        let mut text = lines.join("\n");
        text.push('\n');
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).expect("write to the node");
        stdin.flush().expect("flush to the node");
        Instant::now()
    }

    /// The next line the node wrote, and when it arrived.
    pub fn recv(&mut self) -> (String, Instant) {
        self.out
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no reply within {PATIENCE:?}; log:\n{}", self.server.log()))
    }

    /// The next line, parsed.
    pub fn recv_json(&mut self) -> serde_json::Value {
        let (line, _) = self.recv();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// True if the node writes nothing for `quiet`.
    pub fn silent_for(&mut self, quiet: Duration) -> bool {
        match self.out.recv_timeout(quiet) {
            Ok((line, _)) => panic!("unexpected line: {line}"),
            Err(_) => true,
        }
    }

    /// Ends the node's input.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

/// A protocol line from c1 to n1.
pub fn msg(kind: &str, msg_id: u64, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        r#"{{"src": "c1", "dest": "n1", "body": {{"type": "{kind}", "msg_id": {msg_id}{extra}}}}}"#
    )
}

fn spawn_with(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Stdio,
    stdout: Stdio,
) -> (Server, Option<ChildStdin>, Option<ChildStdout>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drainer"));
    cmd.args(args);
    // Redis only for the tests that ask for it (the lease adds a phase).
    cmd.env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("RUST_LOG", "info,drainer_engine::drain=debug")
        .env("INSTANCE_HOST", "test-host")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the drainer binary");
    let pid = child.id() as i32;
    // Opened before anything can reap the child.
    let pidfd = Pidfd::open(pid);
    let child_stdin = child.stdin.take();
    let child_stdout = child.stdout.take();
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    let sink = log.clone();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
            let _ = tx.send(line);
        }
    });
    let server = Server {
        child: Some(child),
        pid,
        pidfd,
        port: 0,
        log,
        lines,
        exit: None,
        reader: Some(reader),
    };
    (server, child_stdin, child_stdout)
}

impl Server {
    /// Starts `drainer` against `db` and waits until it listens.
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
        let mut all = vec![("DATABASE_URL", db.url.as_str())];
        all.extend_from_slice(env);
        let mut server = spawn(&all);
        let line = server.wait_for_log("listening on");
        let port = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        server.port = port;
        server
    }

    /// Waits for a log line containing `needle` (lines already seen count too).
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {PATIENCE:?}; log so far:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// The admin listener's port (started with `ADMIN_PORT`).
    pub fn admin_port(&mut self) -> u16 {
        let line = self.wait_for_log("admin listener on ");
        line.split("admin listener on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no admin port in {line:?}"))
    }

    /// Waits until the coordinator has admitted `n` requests in total.
    pub fn wait_admitted(&mut self, n: usize) {
        self.wait_for_log(&format!("admitted request {n};"));
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `sig` to this server's process, whatever became of its pid.
    pub fn try_signal(&self, sig: i32) -> io::Result<()> {
        self.pidfd.signal(sig)
    }

    /// Sends `sig` to the running server; it must not have exited yet.
    pub fn signal(&self, sig: i32) {
        if let Err(e) = self.pidfd.signal(sig) {
            panic!("signal {sig} to drainer (pid {}) failed: {e}", self.pid);
        }
    }

    fn exit_channel(&mut self) -> &mpsc::Receiver<(io::Result<ExitStatus>, Instant)> {
        if self.exit.is_none() {
            let mut child = self.child.take().expect("child still owned");
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let status = child.wait();
                let _ = tx.send((status, Instant::now()));
            });
            self.exit = Some(rx);
        }
        self.exit.as_ref().expect("exit channel")
    }

    /// Every line it wrote is in the log once stderr is closed — by it, and
    /// by a successor it started, which inherits its stderr and may outlive
    /// it (then the log is read on for a moment, not until that one exits).
    fn read_to_end(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        if let Some(reader) = self.reader.take() {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    /// Waits for a process killed by `signal` to be gone (bounded).
    pub fn wait_killed(&mut self, signal: i32, within: Duration) {
        use std::os::unix::process::ExitStatusExt;
        match self.exit_channel().recv_timeout(within) {
            Ok((Ok(status), _)) => assert_eq!(status.signal(), Some(signal), "{status:?}"),
            Ok((Err(e), _)) => panic!("waiting for drainer failed: {e}"),
            Err(_) => panic!("drainer did not exit within {within:?}"),
        }
        self.read_to_end();
    }

    /// Waits for the process to exit (bounded); answers its code and when it exited.
    pub fn wait_exit(&mut self, within: Duration) -> (i32, Instant) {
        match self.exit_channel().recv_timeout(within) {
            Ok((Ok(status), at)) => {
                let code = status
                    .code()
                    .unwrap_or_else(|| panic!("drainer died by a signal: {status:?}"));
                self.read_to_end();
                (code, at)
            }
            Ok((Err(e), _)) => panic!("waiting for drainer failed: {e}"),
            Err(_) => {
                let _ = self.pidfd.signal(libc::SIGKILL);
                panic!(
                    "drainer did not exit within {within:?}; log:\n{}",
                    self.log()
                )
            }
        }
    }
}

/// The jobs service built in this process (port 0, a fresh database), for
/// the HTTP contract: driven through its engine's Handle, read through its
/// report. Signals, exit codes and logs need the real binary ([`Server`]).
pub struct InProcess {
    pub port: u16,
    pub handle: drainer_engine::Handle,
    report: mpsc::Receiver<Result<drainer_engine::Report, String>>,
}

impl InProcess {
    /// Serves `db` with the flags `args` (on top of port 0 on loopback).
    pub fn start(db: &TestDb, args: &[&str]) -> InProcess {
        use clap::Parser;
        let mut argv = vec![
            "drainer",
            "--port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--instance-host",
            "test-host",
            "--database-url",
            db.url.as_str(),
        ];
        argv.extend_from_slice(args);
        let config = drainer::config::Config::try_parse_from(argv).expect("valid flags");
        let (started, ready) = mpsc::channel();
        let (done, report) = mpsc::channel();
        thread::spawn(move || {
            let system = actix_rt::System::new();
            let ran = system.block_on(drainer::startup::serve_in_process(
                config,
                futures_util::stream::pending(),
                move |addr, handle| {
                    let _ = started.send((addr.port(), handle));
                },
            ));
            let _ = done.send(ran.map_err(|e| e.to_string()));
        });
        let (port, handle) = match ready.recv_timeout(PATIENCE) {
            Ok(ready) => ready,
            Err(_) => panic!("did not start: {:?}", report.try_recv()),
        };
        InProcess {
            port,
            handle,
            report,
        }
    }

    /// Drains it (as SIGTERM does) and answers its report.
    pub fn drain(self) -> drainer_engine::Report {
        self.handle.drain();
        self.report
            .recv_timeout(PATIENCE)
            .expect("the run ended")
            .expect("it started")
    }
}

/// A pidfd (pidfd_open(2)): a handle on one process that signals only it.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    fn open(pid: i32) -> Pidfd {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open({pid}): {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor that nothing else owns.
        Pidfd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    /// pidfd_send_signal(2): fails with ESRCH once the process has exited.
    fn signal(&self, sig: i32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            // Already exited and reaped: this fails with ESRCH, harmlessly.
            let _ = self.pidfd.signal(libc::SIGKILL);
        }
    }
}

// ----------------------------------------------------------------------------
// A small HTTP/1.1 client
// ----------------------------------------------------------------------------

/// A response as it came over the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// One keep-alive connection.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(stream),
        })
    }

    /// Sends a request; `content_type` None sends no Content-Type header.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<()> {
        let headers: &[(&str, &str)] = match content_type {
            Some(ct) => &[("Content-Type", ct)],
            None => &[],
        };
        self.send_full(method, path, headers, body)
    }

    /// A request without a body, with extra headers.
    pub fn send_with_headers(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<()> {
        self.send_full(method, path, headers, b"")
    }

    fn send_full(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    }

    /// Sends bytes as they are (a hand-made request).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads one response (Content-Length framed).
    pub fn read(&mut self) -> io::Result<Response> {
        let mut status_line = String::new();
        if self.stream.read_line(&mut status_line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.clone()))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        })
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<Response> {
        self.send(method, path, content_type, body)?;
        self.read()
    }

    pub fn post_work(&mut self, body: &str) -> io::Result<Response> {
        self.request("POST", "/work", Some("application/json"), body.as_bytes())
    }

    /// True when the server has closed the connection (EOF), within `within`.
    pub fn closed_by_server(&mut self, within: Duration) -> bool {
        let _ = self.stream.get_ref().set_read_timeout(Some(within));
        let mut byte = [0u8; 1];
        matches!(self.stream.get_mut().read(&mut byte), Ok(0))
    }
}

/// One request on a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let mut client = Client::connect(port).expect("connect");
    client
        .request(method, path, content_type, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn post_work(port: u16, body: &str) -> Response {
    request(
        port,
        "POST",
        "/work",
        Some("application/json"),
        body.as_bytes(),
    )
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, None, b"")
}

/// A POST /work sent now on its own connection, answered on a thread.
pub fn post_work_async(port: u16, body: &str) -> thread::JoinHandle<io::Result<Response>> {
    let mut client = Client::connect(port).expect("connect");
    client
        .send("POST", "/work", Some("application/json"), body.as_bytes())
        .expect("send");
    thread::spawn(move || client.read())
}

/// A free port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Lines at WARN or ERROR level in env_logger's format.
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}
