//! The engine's HTTP server in-process: an actix-web App on port 0, driven
//! through a Handle, read through its Report and the answers on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse};
use drainer_engine::{
    CancelReason, EngineError, Handle, Outcome, Probes, Report, Server, ShutdownSettings, Trigger,
    Work,
};

const PATIENCE: Duration = Duration::from_secs(20);

/// A server running on a thread of its own.
struct Running {
    addr: SocketAddr,
    handle: Handle,
    report: mpsc::Receiver<Report>,
}

impl Running {
    fn report(&self) -> Report {
        self.report
            .recv_timeout(PATIENCE)
            .expect("the server ended")
    }
}

/// Starts the server `build` makes (on its own thread, in its own System).
fn serve<B, F, T>(build: B) -> Running
where
    B: FnOnce() -> Server<F> + Send + 'static,
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: drainer_engine::http::AppService,
{
    let (started, ready) = mpsc::channel();
    let (done, report) = mpsc::channel();
    thread::spawn(move || {
        let system = actix_rt::System::new();
        let ran = system.block_on(async move {
            let server = build()
                .workers(1)
                .with_engine(|e| {
                    // No process-wide signal handlers in a test process.
                    e.signals(futures_util::stream::pending());
                })
                .bind("127.0.0.1:0")
                .expect("bound");
            let addr = server.local_addr().expect("an address");
            let handle = {
                let mut server = server;
                let handle = server.engine().handle();
                started.send((addr, handle)).expect("test alive");
                server
            };
            handle.run().await
        });
        let _ = done.send(ran.expect("the server ran"));
    });
    let (addr, handle) = ready.recv_timeout(PATIENCE).expect("server started");
    Running {
        addr,
        handle,
        report,
    }
}

/// One response as it came over the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn closes(&self) -> bool {
        self.head.to_ascii_lowercase().contains("connection: close")
    }
}

/// A keep-alive client.
struct Client(TcpStream);

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Client(stream)
    }

    /// A GET; without a host, an HTTP/1.0 one (HTTP/1.1 requires the header).
    fn get(&mut self, path: &str, host: Option<&str>) -> Answer {
        match host {
            Some(h) => write!(self.0, "GET {path} HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            None => write!(self.0, "GET {path} HTTP/1.0\r\n\r\n"),
        }
        .expect("write");
        self.read()
    }

    fn read(&mut self) -> Answer {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = self.0.read(&mut byte).expect("read the head");
            assert_eq!(
                n,
                1,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).expect("utf-8 head");
        let status = head[9..12].parse().expect("status");
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body).expect("read the body");
        Answer {
            status,
            head,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    Client::connect(addr).get(path, Some("test"))
}

/// A GET in the background; answers through the channel.
fn get_async(addr: SocketAddr, path: &str) -> mpsc::Receiver<Answer> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_string();
    thread::spawn(move || {
        let _ = tx.send(get(addr, &path));
    });
    rx
}

/// Tells the test a handler has begun.
#[derive(Clone)]
struct Begun(Arc<Mutex<mpsc::Sender<()>>>);

impl Begun {
    fn new() -> (Begun, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        (Begun(Arc::new(Mutex::new(tx))), rx)
    }
    fn tell(&self) {
        let _ = self.0.lock().expect("lock").send(());
    }
}

fn quick(drain_timeout: Duration) -> ShutdownSettings {
    ShutdownSettings::default()
        .drain_timeout(drain_timeout)
        .idle_grace(Duration::from_secs(2))
}

#[test]
fn every_request_is_admitted_and_answered_before_the_run_ends() {
    let (begun, started) = Begun::new();
    let running = serve(move || {
        Server::new(move || {
            let begun = begun.clone();
            App::new().route(
                "/slow",
                web::get().to(move || {
                    let begun = begun.clone();
                    async move {
                        begun.tell();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        "done"
                    }
                }),
            )
        })
        .shutdown(quick(Duration::from_secs(30)))
    });
    let answer = get_async(running.addr, "/slow");
    started.recv_timeout(PATIENCE).expect("the handler began");
    running.handle.drain();
    let answer = answer.recv_timeout(PATIENCE).expect("answered");
    assert_eq!((answer.status, answer.body.as_str()), (200, "done"));
    assert!(answer.closes(), "Connection: close during the drain");
    let report = running.report();
    assert_eq!(report.trigger, Some(Trigger::Requested));
    assert_eq!(report.outcome, Some(Outcome::Drained));
    assert_eq!((report.exit_code, report.completed), (0, 1));
    assert!(
        TcpStream::connect(running.addr).is_err(),
        "the listener is closed"
    );
}

#[test]
fn probes_answer_by_default_and_readiness_checks_by_name() {
    let running = serve(|| {
        Server::new(|| App::new().route("/", web::get().to(|| async { "app" })))
            .readiness("cache", || Box::pin(async { Err("down".to_string()) }))
    });
    for (path, status, body) in [
        ("/livez", 200, r#"{"status":"ok"}"#),
        ("/healthz", 200, r#"{"status":"ok"}"#),
        ("/health", 200, r#"{"status":"ok"}"#),
        ("/readyz", 503, r#"{"status":"cache_unavailable"}"#),
        ("/", 200, "app"),
    ] {
        let answer = get(running.addr, path);
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (status, body),
            "{path}"
        );
    }
    running.handle.drain();
    assert_eq!(running.report().exit_code, 0);
}

#[test]
fn probe_paths_are_configurable() {
    let running = serve(|| {
        let probes = Probes {
            health: None,
            live: vec!["/alive".into()],
            ready: Some("/ready".into()),
        };
        Server::new(App::new).probes(probes)
    });
    assert_eq!(get(running.addr, "/alive").status, 200);
    assert_eq!(get(running.addr, "/ready").body, r#"{"status":"ok"}"#);
    assert_eq!(get(running.addr, "/readyz").status, 404, "the app's now");
    running.handle.drain();
    running.report();
}

#[test]
fn readiness_turns_503_once_a_drain_begins_while_work_is_still_served() {
    let running = serve(|| {
        Server::new(|| App::new().route("/", web::get().to(|| async { "app" })))
            .shutdown(quick(Duration::from_secs(30)).shutdown_delay(Duration::from_millis(1500)))
    });
    let mut client = Client::connect(running.addr);
    assert_eq!(client.get("/readyz", Some("t")).status, 200);
    running.handle.drain();
    // During the delay: not ready, still serving.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let ready = get(running.addr, "/readyz");
        if ready.status == 503 {
            assert_eq!(ready.body, r#"{"status":"shutting_down"}"#);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never turned 503");
        thread::sleep(Duration::from_millis(10));
    }
    let answer = get(running.addr, "/");
    assert_eq!((answer.status, answer.body.as_str()), (200, "app"));
    assert!(answer.closes());
    assert_eq!(running.report().exit_code, 0);
}

#[test]
fn at_the_cut_an_unshielded_handler_is_dropped_and_answered_503() {
    let (begun, started) = Begun::new();
    let told = Arc::new(Mutex::new(Vec::new()));
    let seen = told.clone();
    let running = serve(move || {
        Server::new(move || {
            let begun = begun.clone();
            App::new().route(
                "/stuck",
                web::get().to(move || {
                    let begun = begun.clone();
                    async move {
                        begun.tell();
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        "never"
                    }
                }),
            )
        })
        .shutdown(quick(Duration::from_millis(200)))
        .on_engine_answer(move |_, path, answer| {
            seen.lock().expect("lock").push((path.to_string(), answer))
        })
    });
    let answer = get_async(running.addr, "/stuck");
    started.recv_timeout(PATIENCE).expect("the handler began");
    running.handle.drain();
    let answer = answer.recv_timeout(PATIENCE).expect("answered");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (503, r#"{"error":"drain_timeout"}"#)
    );
    assert!(answer.closes());
    let report = running.report();
    assert_eq!(report.exit_code, 1);
    assert_eq!((report.cut_short, report.in_flight_at_cut), (1, 1));
    assert_eq!(
        *told.lock().expect("lock"),
        [(
            "/stuck".to_string(),
            EngineError::Cut(CancelReason::DrainTimeout)
        )]
    );
}

#[test]
fn a_shielded_handler_sees_the_cut_and_answers_itself() {
    let (begun, started) = Begun::new();
    let running = serve(move || {
        Server::new(move || {
            let begun = begun.clone();
            App::new().route(
                "/careful",
                web::get().to(move |work: Work| {
                    let begun = begun.clone();
                    async move {
                        assert!(work.try_shield(), "not dropped yet");
                        begun.tell();
                        let reason = work.cancelled().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        work.mark_cancelled();
                        HttpResponse::Ok().body(format!("stopped safely: {reason}"))
                    }
                }),
            )
        })
        .shutdown(quick(Duration::from_millis(200)))
    });
    let answer = get_async(running.addr, "/careful");
    started.recv_timeout(PATIENCE).expect("the handler began");
    running.handle.drain();
    let answer = answer.recv_timeout(PATIENCE).expect("answered");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "stopped safely: drain_timeout")
    );
    let report = running.report();
    assert_eq!(report.exit_code, 1, "the drain was cut");
    assert_eq!((report.cut_short, report.in_flight_at_cut), (1, 1));
}

/// A connection already open when the listener closes carries one more
/// request, served for real with `Connection: close` (lib.rs, rule 2).
#[test]
fn a_request_on_a_kept_connection_after_the_listener_closed_is_served_with_connection_close() {
    let (begun, started) = Begun::new();
    let processed = Arc::new(Mutex::new(0));
    let count = processed.clone();
    let running = serve(move || {
        Server::new(move || {
            let (begun, count) = (begun.clone(), count.clone());
            App::new()
                .route(
                    "/slow",
                    web::get().to(move || {
                        let begun = begun.clone();
                        async move {
                            begun.tell();
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            "slow"
                        }
                    }),
                )
                .route(
                    "/count",
                    web::get().to(move || {
                        *count.lock().expect("lock") += 1;
                        async { "counted" }
                    }),
                )
        })
        .shutdown(quick(Duration::from_secs(30)))
    });
    let mut kept = Client::connect(running.addr);
    assert_eq!(kept.get("/count", Some("t")).status, 200);
    let slow = get_async(running.addr, "/slow");
    started.recv_timeout(PATIENCE).expect("the handler began");
    running.handle.drain();
    // The listener closes at once (no delay); the kept connection is still open.
    let deadline = std::time::Instant::now() + PATIENCE;
    while TcpStream::connect(running.addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "never closed");
        thread::sleep(Duration::from_millis(5));
    }
    let served = kept.get("/count", Some("t"));
    assert_eq!((served.status, served.body.as_str()), (200, "counted"));
    assert!(served.closes(), "its answer closes the connection");
    assert_eq!(slow.recv_timeout(PATIENCE).expect("answered").body, "slow");
    assert_eq!(
        *processed.lock().expect("lock"),
        2,
        "served for real on the connection already open"
    );
    assert_eq!(running.report().exit_code, 0);
}

/// `req.peer_addr()`, the host and the local address are the listener's,
/// as `HttpServer` gives them (the engine builds actix-web's AppConfig).
#[test]
fn a_handler_sees_its_peer_host_and_local_address() {
    let running = serve(|| {
        Server::new(|| {
            App::new().route(
                "/who",
                web::get().to(|req: HttpRequest| async move {
                    let info = req.connection_info().clone();
                    format!(
                        "{} {} {} {}",
                        req.peer_addr().map_or("none".into(), |a| a.to_string()),
                        info.host(),
                        info.scheme(),
                        req.app_config().local_addr()
                    )
                }),
            )
        })
    });
    let mut client = Client::connect(running.addr);
    let me = client.0.local_addr().expect("local");
    let with_host = client.get("/who", Some("example.test"));
    assert_eq!(
        with_host.body,
        format!("{me} example.test http {}", running.addr)
    );
    let mut once = Client::connect(running.addr);
    let me = once.0.local_addr().expect("local");
    let without = once.get("/who", None);
    assert_eq!(
        without.body,
        format!("{me} {} http {}", running.addr, running.addr),
        "no Host header: the listener's address"
    );
    running.handle.drain();
    running.report();
}

/// An SSE stream whose events fell too far behind is ended (the chunked
/// terminator, then the connection closes) and counted; what came before
/// the lag was sent.
#[test]
fn an_sse_stream_that_lagged_is_dropped_and_counted() {
    use drainer_engine::persistent::sse::{self, Event, Lagged};
    let (metrics_tx, metrics_rx) = mpsc::channel();
    let running = serve(move || {
        let mut server = Server::new(|| {
            App::new().route(
                "/events",
                web::get().to(|req: actix_web::HttpRequest| async move {
                    let events = futures_util::stream::iter([
                        Ok(Event::new(Some("1"), Some("tick"), "{}")),
                        Ok(Event::new(Some("2"), None, "two\nlines")),
                        Err(Lagged),
                    ]);
                    sse::stream(&req, events)
                }),
            )
        });
        metrics_tx
            .send(server.engine().metrics().clone())
            .expect("test alive");
        server
    });
    let metrics = metrics_rx.recv_timeout(PATIENCE).expect("metrics");
    let mut stream = TcpStream::connect(running.addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(stream, "GET /events HTTP/1.1\r\nHost: test\r\n\r\n").expect("write");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("read until the server closes");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    assert!(
        body.contains("id: 1\nevent: tick\ndata: {}\n\n")
            && body.contains("id: 2\ndata: two\ndata: lines\n\n"),
        "{body}"
    );
    assert!(
        body.ends_with("0\r\n\r\n"),
        "the chunked terminator: {body:?}"
    );
    let text = metrics.render();
    assert!(
        text.lines()
            .any(|l| l == "drainer_persistent_dropped_total{class=\"sse\"} 1"),
        "{text}"
    );
    running.handle.drain();
    assert_eq!(running.report().exit_code, 0);
}
