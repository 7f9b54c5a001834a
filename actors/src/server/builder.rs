//! [`Server`]: what an actix-web user writes instead of
//! `HttpServer::new(f).bind(a)?.run().await`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::App;
use futures_util::future::LocalBoxFuture;
use log::info;

use super::{listener, WorkerSetup};
use crate::engine::Engine;
use crate::handoff::control::{describe, Listeners};
use crate::handoff::{ControlSocket, HandoffSettings, Handover, Successor};
use crate::http::{AppService, EngineData, EngineError, Probes, ReadinessCheck};
use crate::lifecycle::BudgetShort;
use crate::supervisor::{Report, ShutdownSettings};

/// From a request's first byte, how long the client has to send all of it
/// (and to read its answers), by default.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the engine could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No listener: neither [`Server::bind`] nor [`Server::listen`] was called.
    #[error("no address to listen on (Server::bind or Server::listen)")]
    NoListener,
    /// The port is taken.
    #[error("port {port} is already in use")]
    PortInUse {
        /// The port asked for.
        port: u16,
    },
    /// The listener could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin listener could not be set up.
    #[error("the admin listener cannot serve: {0}")]
    Admin(std::io::Error),
    /// The budget cannot hold the phases.
    #[error("invalid configuration: {0}")]
    Budget(BudgetShort),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The Supervisor stopped without a report (the System went away).
    #[error("the engine stopped without a report")]
    Lost,
    /// The control socket could not be served, or a takeover failed before
    /// its commit point (nothing was accepted).
    #[error("{0}")]
    Handoff(crate::handoff::HandoffError),
}

/// See the module documentation. `F` is the same `App` factory closure
/// `HttpServer::new` takes.
pub struct Server<F> {
    factory: F,
    engine: Engine,
    workers: usize,
    listener: Option<std::net::TcpListener>,
    probes: Probes,
    readiness: Vec<(String, ReadinessCheck)>,
    on_engine_answer: Option<crate::http::OnEngineAnswer>,
    client_request_timeout: Duration,
    keep_alive: Duration,
    /// The control socket successors connect to, and how it is served.
    control: Option<(ControlSocket, HandoffSettings)>,
    /// Set when this server takes over from a running instance.
    takeover: Option<Takeover>,
    /// Told the predecessor's pid at the commit point.
    on_committed: Vec<Box<dyn FnOnce(u32)>>,
}

/// What a successor keeps until its commit point.
struct Takeover {
    channel: crate::handoff::channel::Channel,
    predecessor: u32,
    /// The predecessor's admin listener, unless the caller gave it to its
    /// engine itself; given to the engine [`Server::run`] runs.
    admin: Option<std::net::TcpListener>,
}

/// How long an idle connection stays open while serving normally, by
/// default: longer than the load balancers in front (AWS ALB and nginx
/// close idle upstream connections after 60 s), or a balancer may send a
/// request on a connection the backend is closing.
pub const KEEP_ALIVE: Duration = Duration::from_secs(75);

impl<F, T> Server<F>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: AppService,
{
    /// A server for the application `factory` builds (once per worker),
    /// with the default shutdown settings, probes on, one worker per CPU.
    pub fn new(factory: F) -> Self {
        Server {
            factory,
            engine: Engine::default(),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            listener: None,
            probes: Probes::default(),
            readiness: Vec::new(),
            on_engine_answer: None,
            client_request_timeout: CLIENT_REQUEST_TIMEOUT,
            keep_alive: KEEP_ALIVE,
            control: None,
            takeover: None,
            on_committed: Vec::new(),
        }
    }

    /// Serves the control socket: a successor (see [`Server::takeover`]) can
    /// take the listeners over, and an `upgrade` can start one
    /// ([`crate::handoff`]).
    pub fn control_socket(mut self, socket: ControlSocket, settings: HandoffSettings) -> Self {
        self.control = Some((socket, settings));
        self
    }

    /// Serves on the listeners `successor` received from the running
    /// instance (the HTTP one, the admin one if any, and the control socket
    /// for the next upgrade). Nothing is accepted before the commit point;
    /// a takeover that fails before it ends [`Server::run`] with
    /// [`StartError::Handoff`].
    pub fn takeover(mut self, successor: Successor, settings: HandoffSettings) -> Self {
        self.listener = Some(successor.http);
        self.control = Some((successor.control, settings));
        self.takeover = Some(Takeover {
            channel: successor.channel,
            predecessor: successor.predecessor,
            admin: successor.admin,
        });
        self
    }

    /// Called with the predecessor's pid once a takeover has committed.
    pub fn on_committed(mut self, committed: impl FnOnce(u32) + 'static) -> Self {
        self.on_committed.push(Box::new(committed));
        self
    }

    /// Sets the shutdown settings (see [`ShutdownSettings::from_env`]).
    pub fn shutdown(mut self, settings: ShutdownSettings) -> Self {
        self.engine.set_settings(settings);
        self
    }

    /// Sets the number of HTTP worker threads; 0 serves on the System's own
    /// thread, beside the actors.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Listens on `addr` (the first address it resolves to).
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> Result<Self, StartError> {
        let resolved: Option<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| StartError::Listen {
                addr: "the address".into(),
                source,
            })?
            .next();
        let addr = resolved.ok_or_else(|| StartError::Listen {
            addr: "the address".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "resolves to nothing"),
        })?;
        let listener = listener::bind(addr).map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => StartError::PortInUse { port: addr.port() },
            _ => StartError::Listen {
                addr: addr.to_string(),
                source,
            },
        })?;
        self.listener = Some(listener);
        Ok(self)
    }

    /// Serves on a listener bound already (see [`crate::bind`]).
    pub fn listen(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Where the probes answer (`Probes::none()`: the application's own).
    pub fn probes(mut self, probes: Probes) -> Self {
        self.probes = probes;
        self
    }

    /// Adds a readiness check: `/readyz` answers 503 `{"status":"<name>_unavailable"}`
    /// while it fails. Checks run in the order they were added.
    pub fn readiness<C>(mut self, name: &str, check: C) -> Self
    where
        C: Fn() -> LocalBoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.readiness.push((name.to_string(), Arc::new(check)));
        self
    }

    /// Told of each request the engine answers instead of the application
    /// (its method and path):
    /// refused once admission has stopped ([`EngineError::ShuttingDown`]),
    /// or dropped at the cut ([`EngineError::Cut`]) — to count them.
    pub fn on_engine_answer(
        mut self,
        told: impl Fn(&Method, &str, EngineError) + Send + Sync + 'static,
    ) -> Self {
        self.on_engine_answer = Some(Arc::new(told));
        self
    }

    /// From a request's first byte, how long the client has to send all of
    /// it and to read its answers (default 10 s): 408 past it.
    pub fn client_request_timeout(mut self, timeout: Duration) -> Self {
        self.client_request_timeout = timeout;
        self
    }

    /// How long an idle connection stays open while serving (default
    /// [`KEEP_ALIVE`], 75 s): keep it longer than the idle timeout of the
    /// load balancer in front.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// The engine under the server: stop hooks, owned components, the admin
    /// listener, the metrics registry, a [`crate::Handle`], the signals.
    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The same, builder style.
    pub fn with_engine(mut self, configure: impl FnOnce(&mut Engine)) -> Self {
        configure(&mut self.engine);
        self
    }

    /// The address the server listens on, once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until the shutdown is over; answers its report. Signals are
    /// installed here unless [`Engine::signals`] gave them (see [`crate::main`]).
    pub async fn run(mut self) -> Result<Report, StartError> {
        let listener = self.listener.take().ok_or(StartError::NoListener)?;
        let local = listener.local_addr().map_err(|source| StartError::Listen {
            addr: "the listener".into(),
            source,
        })?;
        let mut takeover = self.takeover.take();
        let listener_fd = listener.as_raw_fd();
        if let Some(takeover) = &mut takeover {
            self.engine.handover = Handover::closed();
            if let Some(admin) = takeover.admin.take() {
                self.engine.admin(admin);
            }
        }
        let handover = self.engine.handover.clone();
        // What a successor would be handed: descriptors the accept loops own.
        let control = match self.control.take() {
            None => None,
            Some((socket, settings)) => {
                let listeners = Listeners {
                    http: (listener_fd, describe(&listener)),
                    admin: self
                        .engine
                        .admin_listener()
                        .map(|l| (l.as_raw_fd(), describe(l))),
                    control: (socket.raw_fd(), socket.path().to_path_buf(), socket.file()),
                };
                let path = socket.path().display().to_string();
                let (unix, remover) = socket.into_tokio().map_err(|e| {
                    StartError::Handoff(crate::handoff::HandoffError::Socket {
                        path,
                        reason: e.to_string(),
                    })
                })?;
                Some((unix, remover, listeners, settings))
            }
        };
        // A listener bound with std is blocking; the accept loop needs it not to be.
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen {
                addr: local.to_string(),
                source,
            })?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|source| StartError::Listen {
                addr: local.to_string(),
                source,
            })?;
        let (workers, keep_alive) = (self.workers, self.keep_alive);
        let (factory, probes, readiness, on_engine_answer, client_request_timeout) = (
            self.factory,
            self.probes,
            self.readiness,
            self.on_engine_answer,
            self.client_request_timeout,
        );
        let on_committed = std::mem::take(&mut self.on_committed);
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let (serve_control, remover) = match control {
            Some((unix, remover, listeners, settings)) => {
                (Some((unix, listeners, settings)), Some(remover))
            }
            None => (None, None),
        };
        let run = self.engine.run(move |core| {
            let setup = WorkerSetup {
                factory,
                data: EngineData {
                    admission: core.admission.clone(),
                    state: core.state.clone(),
                    probes,
                    readiness,
                    on_engine_answer,
                    client_request_timeout,
                    metrics: core.metrics.clone(),
                    changed: core.coordinator.clone().recipient(),
                    handover: core.handover.clone(),
                },
                local,
                census: core.census.clone(),
                keep_alive,
                persistence: crate::persistent::Persistence {
                    farewell: core.farewell.clone(),
                    tally: core.tally.clone(),
                    settings: core.persistent,
                    changed: core.coordinator.clone().recipient(),
                    metrics: core.metrics.clone(),
                    census: core.census.clone(),
                },
            };
            let transport = super::start(listener, core, setup, workers);
            if let Some((unix, listeners, settings)) = serve_control {
                let (core2, handover) = (core.clone(), core.handover.clone());
                core.census.spawn(crate::handoff::control::serve(
                    unix, core2, handover, listeners, settings,
                ));
            }
            match takeover {
                None => {
                    info!(
                        "listening on {local} with {workers} worker(s){}",
                        crate::handoff::inode_note(listener_fd)
                    );
                    crate::notify::ready();
                }
                Some(Takeover {
                    channel,
                    predecessor,
                    ..
                }) => {
                    info!(
                        "takeover: ready on {local} with {workers} worker(s){}; \
                             waiting for pid {predecessor} to stop accepting",
                        crate::handoff::inode_note(listener_fd)
                    );
                    let committed = crate::handoff::successor::serve_when_committed(
                        channel,
                        predecessor,
                        core.handover.clone(),
                        local,
                        on_committed,
                    );
                    core.census.spawn(async move {
                        if let Err(e) = committed.await {
                            let _ = failed_tx.send(e);
                        }
                    });
                }
            }
            transport
        });
        let result = tokio::select! {
            report = run => report,
            Ok(e) = failed => Err(StartError::Handoff(e)),
        };
        // The control socket's path goes with a terminal exit of the process
        // that bound it or last inherited it — not with a handoff, nor with a
        // successor's failed takeover, which never opened (the path is the
        // running instance's).
        if let Some(remover) = remover {
            if handover.is_open() && !handover.is_released() {
                remover.remove();
            }
        }
        result
    }
}
