//! The HTTP transport: the engine's own accept loop feeding actix-web workers.
//!
//! actix-web's `HttpServer` decides on its own when connections close and when
//! the process stops (its graceful stop polls once a second and closes idle
//! connections at once). drainer needs the DrainCoordinator to decide, so it
//! runs the same actix-web `App` through actix-http's `H1Service` on worker
//! threads of its own and keeps the socket-level decisions here:
//!
//! - the accept loop (on the System arbiter) registers each connection with
//!   the coordinator ([`ConnGuard`]) before handing it to a worker, so the
//!   coordinator knows every open connection;
//! - each worker serves its connections until the client or the server closes
//!   them, or until the coordinator asks for them to be closed;
//! - [`CloseListener`] closes the listener without resetting queued clients
//!   (see [`listener`]);
//! - each connection's [`Activity`] — fed by the stream under the dispatcher
//!   (`stream`), which follows the HTTP/1 framing (`framing`) — bounds its
//!   client: `CLIENT_REQUEST_TIMEOUT_MS` for every request and for write
//!   progress, reading paused while the client must read first, and the
//!   keep-alive.

mod activity;
mod builder;
mod framing;
pub mod listener;
mod stream;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, ActorContext, Addr, Context, Handler, ResponseFuture};
use actix_rt::Arbiter;
use actix_service::{map_config, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::{App, ResponseError};
use log::{error, info};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::census::Census;
use crate::drain::{Close, ConnGuard, ConnIds, DrainCoordinator};
use crate::http::{self, AppService, EngineData, EngineError};
use crate::metrics::Metrics;
use crate::persistent::Persistence;
use crate::transport::{CloseListener, Core, StopTransport, Transport};
pub use activity::Activity;
use activity::Expired;
pub use builder::{Server, StartError, KEEP_ALIVE};
use stream::TrackedStream;

/// actix-http's own keep-alive timer (which would also fire while answers
/// wait to be written) is set far beyond the connection's keep-alive
/// (`KEEP_ALIVE_MS`), which its Activity enforces.
const DISPATCHER_KEEP_ALIVE: Duration = Duration::from_secs(24 * 3600);

/// A lingering close reads and discards at most this much of a body the
/// answer did not wait for…
const LINGER_BYTES: usize = 16 << 20;
/// …for at most this long.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A connection on its way to a worker.
struct Conn {
    stream: std::net::TcpStream,
    guard: ConnGuard,
    /// Tells when the coordinator wants this connection closed.
    close: mpsc::UnboundedReceiver<Close>,
}

/// What every worker builds its service from.
#[derive(Clone)]
pub(crate) struct WorkerSetup<F> {
    pub factory: F,
    pub data: EngineData,
    pub local: SocketAddr,
    pub census: Census,
    /// How long an idle connection stays open while serving normally.
    pub keep_alive: Duration,
    /// What the persistent handlers share.
    pub persistence: Persistence,
}

/// Starts the workers and the accept loop; answers how the Supervisor reaches them.
pub(crate) fn start<F, T>(
    listener: TcpListener,
    core: &Core,
    setup: WorkerSetup<F>,
    workers: usize,
) -> Transport
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: AppService,
{
    let census = core.census.clone();
    let mut arbiters = Vec::with_capacity(workers);
    let mut queues = Vec::with_capacity(workers.max(1));
    if workers == 0 {
        // Serve on the System's own thread, beside the actors: no message
        // crosses a thread.
        let (tx, rx) = mpsc::unbounded_channel();
        census.spawn(worker(setup.clone(), core.metrics.clone(), rx));
        queues.push(tx);
    }
    for _ in 0..workers {
        let arbiter = Arbiter::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (setup, metrics) = (setup.clone(), core.metrics.clone());
        // The App is not Send: it is built on the worker thread itself.
        arbiter.spawn_fn(move || {
            let census = setup.census.clone();
            census.spawn(worker(setup, metrics, rx));
        });
        arbiters.push(arbiter);
        queues.push(tx);
    }
    let (close_tx, close_rx) = oneshot::channel();
    let dispatcher = Dispatcher {
        coordinator: core.coordinator.clone(),
        ids: ConnIds::default(),
        workers: queues,
        next: 0,
    };
    census.spawn(accept_loop(
        listener,
        close_rx,
        dispatcher,
        core.handover.clone(),
    ));
    let actor = HttpTransport {
        close: Some(close_tx),
        workers: arbiters,
        census,
    }
    .start();
    Transport {
        close_listener: actor.clone().recipient(),
        stop: actor.recipient(),
    }
}

/// Hands accepted connections to the workers, round robin.
struct Dispatcher {
    coordinator: Addr<DrainCoordinator>,
    /// Connection ids: this listener's own.
    ids: ConnIds,
    workers: Vec<mpsc::UnboundedSender<Conn>>,
    next: usize,
}

impl Dispatcher {
    fn dispatch(&mut self, stream: std::net::TcpStream) {
        // Registered here, on the accept loop, so the coordinator hears of the
        // connection before it hears that the listener closed.
        let (guard, close) = ConnGuard::register(&self.coordinator, self.ids.next_id());
        let mut conn = Conn {
            stream,
            guard,
            close,
        };
        for _ in 0..self.workers.len() {
            let i = self.next % self.workers.len();
            self.next = self.next.wrapping_add(1);
            match self.workers[i].send(conn) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => conn = back,
            }
        }
        error!("no worker is running: connection dropped");
    }
}

/// Accepts until told to close the listener, or until the listener is
/// handed over to a successor ([`crate::handoff`]).
async fn accept_loop(
    listener: TcpListener,
    mut close: oneshot::Receiver<oneshot::Sender<usize>>,
    mut dispatcher: Dispatcher,
    handover: crate::handoff::Handover,
) {
    let accepting = handover.accepting();
    // A successor accepts nothing before its commit point. A close before it
    // only drops this descriptor: the socket is still the running
    // instance's, and closing it gracefully (the filter) would break it.
    tokio::select! {
        biased;
        reply = &mut close => {
            if let Ok(reply) = reply {
                let _ = reply.send(0);
            }
            return;
        }
        _ = handover.opened() => {}
    }
    loop {
        tokio::select! {
            biased;
            _ = handover.released() => {
                // Handed over at the commit point: let go of this descriptor
                // only (deregistered as the tokio listener drops); no
                // shutdown, no filter. Nothing is left to close later.
                drop(listener);
                drop(accepting);
                if let Ok(reply) = close.await {
                    let _ = reply.send(0);
                }
                return;
            }
            reply = &mut close => {
                let taken = match listener.into_std() {
                    Ok(std) => listener::close_gracefully(std, |s| dispatcher.dispatch(s)),
                    Err(e) => {
                        error!("cannot take back the listener to close it: {e}");
                        0
                    }
                };
                if let Ok(reply) = reply {
                    let _ = reply.send(taken);
                }
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match stream.into_std() {
                    Ok(stream) => dispatcher.dispatch(stream),
                    Err(e) => info!("accepted connection unusable: {e}"),
                },
                Err(e) => accept_error(e).await,
            },
        }
    }
}

/// A failed accept: the peer's problem is ignored; running out of file
/// descriptors is logged and retried shortly.
pub(crate) async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock => {}
        _ => {
            error!("accept failed: {e}; retrying in 100 ms");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One worker thread: builds the App once, then serves each connection it is handed.
async fn worker<F, T>(
    setup: WorkerSetup<F>,
    metrics: Metrics,
    mut conns: mpsc::UnboundedReceiver<Conn>,
) where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: AppService,
{
    let timeouts = Timeouts {
        client: setup.data.client_request_timeout,
        keep_alive: setup.keep_alive,
    };
    let local = setup.local;
    let app = (setup.factory)().app_data(actix_web::web::Data::new(setup.persistence.clone()));
    let app = http::wrap(app, setup.data.clone());
    let factory = actix_http::HttpService::build()
        .keep_alive(DISPATCHER_KEEP_ALIVE)
        // Every head, the first included, is timed by the connection's
        // Activity instead, which answers 408 with a JSON body.
        .client_request_timeout(Duration::ZERO)
        .on_connect_ext(|io: &TrackedStream, ext| {
            ext.insert(io.conn_id());
            ext.insert(io.activity());
        })
        // The host a request without a Host header resolves to, and the
        // local address, are the listener's own. (actix-web keeps
        // `AppConfig::new` private; this public, doc-hidden constructor is
        // semver-exempt, so the workspace pins actix-web's minor version and
        // a test checks what a handler sees.)
        .h1(map_config(app, move |_| {
            AppConfig::__priv_test_new(false, local.to_string(), local)
        }));
    let service = match factory.new_service(()).await {
        Ok(service) => Rc::new(service),
        Err(()) => {
            error!("worker could not build the HTTP service");
            return;
        }
    };
    while let Some(conn) = conns.recv().await {
        setup
            .census
            .spawn(serve(service.clone(), conn, timeouts, metrics.clone()));
    }
}

/// The answer to a request head that took longer than
/// `CLIENT_REQUEST_TIMEOUT_MS`, written by the serve loop itself (the
/// dispatcher never saw the request): the same 408 the app gives a body that
/// stalls, with `Connection: close`.
fn head_timeout_answer() -> Vec<u8> {
    let error = EngineError::ClientTimeout;
    let status = error.status_code();
    let body = error.body().to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

/// A connection's time limits.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// `CLIENT_REQUEST_TIMEOUT_MS`: for each request, and for reading its answers.
    client: Duration,
    /// `KEEP_ALIVE_MS`: for an idle connection.
    keep_alive: Duration,
}

/// Serves one connection until it closes, the coordinator closes it, or its
/// client runs out of time.
async fn serve<S>(service: Rc<S>, conn: Conn, timeouts: Timeouts, metrics: Metrics)
where
    S: Service<(TrackedStream, Option<SocketAddr>)>,
{
    let Timeouts {
        client: client_timeout,
        keep_alive,
    } = timeouts;
    let Conn {
        stream,
        guard,
        mut close,
    } = conn;
    let peer = stream.peer_addr().ok();
    // A second handle on the socket, to answer a head that timed out after
    // the dispatcher (which owns the first) is gone, and to linger.
    let mut answer_on = stream.try_clone().ok();
    let prepared = stream
        .set_nonblocking(true)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| tokio::net::TcpStream::from_std(stream));
    let activity = Rc::new(Activity::default());
    let io = match prepared {
        Ok(io) => TrackedStream::new(io, guard, activity.clone()),
        Err(e) => {
            info!("connection dropped before serving: {e}");
            return;
        }
    };
    let dispatcher = service.call((io, peer));
    tokio::pin!(dispatcher);
    let check = actix_rt::time::sleep(client_timeout.min(keep_alive));
    tokio::pin!(check);
    loop {
        tokio::select! {
            _ = &mut dispatcher => {
                // Answered before its body was read (a 413, an early
                // error): read the rest before closing, so that a client
                // that writes its whole body first reads the answer
                // instead of a reset. (The guard lives on meanwhile: the
                // drain's hard limit still ends this.)
                if activity.mid_body() {
                    if let Some(socket) = answer_on.take() {
                        linger(socket, &mut close).await;
                    }
                }
                return;
            }
            () = activity.closing() => return,
            asked = close.recv() => match asked {
                // A request on it still awaits its answer, which carries
                // `Connection: close`: the connection will end by itself.
                // A persistent one has had its goodbye.
                Some(Close::IfIdle) if activity.awaiting_response() || activity.is_persistent() => continue,
                // Shielded work past the cut still owes its answer: it is
                // written before the connection closes (bounded by the budget).
                Some(Close::Now) if activity.holds_shielded() => continue,
                // Dropping the dispatcher closes the socket and drops the guard.
                Some(Close::IfIdle | Close::Now) | None => return,
            },
            _ = &mut check => {
                let now = std::time::Instant::now();
                match activity.expired(now, client_timeout, keep_alive) {
                    None => {
                        let next = activity.next_check(now, client_timeout, keep_alive);
                        check.as_mut().reset(tokio::time::Instant::from_std(next));
                    }
                    Some(Expired::Idle) => return,
                    Some(expired) => {
                        let (reason, why) = describe(expired);
                        info!("closing a connection: {why}");
                        metrics.client_timeout(reason);
                        // The dispatcher (dropped on return) never saw this
                        // head and writes nothing more.
                        if let (Expired::Head, Some(socket)) = (expired, answer_on.take()) {
                            answer_timed_out_head(socket);
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Its `drainer_client_timeouts_total{reason}` label, and its log line.
fn describe(expired: Expired) -> (&'static str, &'static str) {
    match expired {
        Expired::Head => (
            "head",
            "a request head took longer than CLIENT_REQUEST_TIMEOUT_MS (answered 408)",
        ),
        Expired::Body => (
            "body",
            "the body of an answered request did not arrive in time",
        ),
        Expired::Writes => (
            "writes",
            "its client read none of its answers for CLIENT_REQUEST_TIMEOUT_MS",
        ),
        Expired::Idle => ("idle", "idle past the keep-alive"),
    }
}

/// Writes the 408 on the socket's second handle (a few bytes: they fit in
/// the send buffer of a connection whose writes are not blocked) and closes
/// it, reading first what the client may still have sent so that the close
/// does not reset the answer away.
fn answer_timed_out_head(socket: std::net::TcpStream) {
    use std::io::{Read, Write};
    let _ = socket.set_nonblocking(true);
    let mut socket = socket;
    let _ = socket.write_all(&head_timeout_answer());
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while let Ok(n) = socket.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// A lingering close: the write side is shut (the answer is out), and what
/// the client still sends is read and discarded — up to [`LINGER_BYTES`],
/// for [`LINGER_TIME`], and never past the drain's hard limit — so that the
/// close does not reset the answer away.
async fn linger(socket: std::net::TcpStream, close: &mut mpsc::UnboundedReceiver<Close>) {
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let Ok(socket) = tokio::net::TcpStream::from_std(socket) else {
        return;
    };
    let until = actix_rt::time::sleep(LINGER_TIME);
    tokio::pin!(until);
    let mut sink = vec![0u8; 64 * 1024];
    let mut left = LINGER_BYTES;
    while left > 0 {
        tokio::select! {
            () = &mut until => return,
            asked = close.recv() => match asked {
                Some(Close::IfIdle) => {}
                Some(Close::Now) | None => return,
            },
            ready = socket.readable() => {
                if ready.is_err() {
                    return;
                }
                match socket.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(n) => left = left.saturating_sub(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// The actor the Supervisor talks to.
struct HttpTransport {
    /// Taken by the first [`CloseListener`].
    close: Option<oneshot::Sender<oneshot::Sender<usize>>>,
    workers: Vec<Arbiter>,
    census: Census,
}

impl Actor for HttpTransport {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.census.actor_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
    }
}

impl Handler<CloseListener> for HttpTransport {
    type Result = ResponseFuture<usize>;

    /// Asks the accept loop to close the listener; answers once it has.
    fn handle(&mut self, _: CloseListener, _: &mut Context<Self>) -> Self::Result {
        let (reply, taken) = oneshot::channel();
        if let Some(close) = self.close.take() {
            let _ = close.send(reply);
        }
        Box::pin(async move { taken.await.unwrap_or(0) })
    }
}

impl Handler<StopTransport> for HttpTransport {
    type Result = ();

    /// Stops the worker threads (their connections are closed by now); then
    /// this actor stops. Nothing waits for the threads to end: the exit is
    /// bounded by the budget, not by a join.
    fn handle(&mut self, _: StopTransport, ctx: &mut Context<Self>) {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
        ctx.stop();
    }
}
