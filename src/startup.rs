//! Start-up: signals first (the engine's `main`), then configuration, the
//! port, the database, and the engine. Every failure here is exit code 2
//! with one line on stderr.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix::{Actor, AsyncContext};
use clap::error::ErrorKind;
use clap::Parser;
use drainer_engine::handoff::{ControlSocket, HandoffSettings, Successor};
use drainer_engine::{
    Engine, Handle, Report, Server, ShutdownSignal, Signals, StartError, Telemetry,
};
use futures_util::{Stream, StreamExt};
use log::{info, warn};
use std::rc::Rc;

use crate::config::Config;
use crate::http::{Jobs, Outcomes};
use crate::jobs::db::{DbActor, DbError, DbSettings, Ping, RecordTakeover};
use crate::jobs::feed::Feed;
use crate::jobs::heartbeat::Heartbeat;

/// How much longer than `REQUEST_TIMEOUT_MS` a statement may run before
/// PostgreSQL ends it by itself.
const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another process holds the port.
    #[error("port {port} is already in use (another drainer running?)")]
    PortInUse {
        /// The port asked for.
        port: u16,
    },
    /// Another process holds the admin port.
    #[error("admin port {port} is already in use (ADMIN_PORT)")]
    AdminPortInUse {
        /// The port asked for.
        port: u16,
    },
    /// The port could not be bound for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The database is unreachable or refused us.
    #[error("{0}")]
    Database(DbError),
    /// The engine could not start.
    #[error("{0}")]
    Engine(StartError),
    /// The control socket, or the takeover (`--takeover`).
    #[error("{0}")]
    Handoff(drainer_engine::handoff::HandoffError),
}

/// Runs drainer from the command line; answers the process exit code.
/// `drainer probe …` is a client: it never starts the engine.
pub fn run() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "probe") {
        args.next();
        return crate::probe::main(args);
    }
    if args.peek().is_some_and(|a| a == "upgrade") {
        args.next();
        return crate::upgrade::main(args);
    }
    drainer_engine::main(start)
}

/// Everything after the signals.
async fn start(signals: Signals) -> Result<Report, StartupError> {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return Ok(Report::nothing_to_do());
        }
        Err(e) => {
            // clap's message, without its usage hints: one line.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.trim_start_matches("error: ");
            return Err(StartupError::Config(line.to_string()));
        }
    };
    if config.command.is_some() {
        return Err(StartupError::Config(
            "a subcommand comes first, alone: drainer probe <url>, drainer upgrade".into(),
        ));
    }
    init_logging();
    let telemetry = Telemetry::from_env().map_err(StartupError::Config)?;
    let report = if config.stdin {
        start_stdin(&config, signals, &telemetry).await
    } else {
        serve(config, signals, &telemetry, |_, _| {}).await
    };
    telemetry.shutdown();
    report
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// The stdin transport on the engine: no database, no port, and no shutdown
/// delay (there is no load balancer to tell).
async fn start_stdin(
    config: &Config,
    signals: Signals,
    telemetry: &Telemetry,
) -> Result<Report, StartupError> {
    // No budget: the drain deadline (DRAIN_TIMEOUT_MS or tcp_shutdown's)
    // alone bounds the work, and the phases after the drain are instant.
    let settings = drainer_engine::ShutdownSettings {
        shutdown_delay: Duration::ZERO,
        ..config.shutdown().budget(None)
    };
    let drain_timeout = config.drain_timeout();
    let mut engine = Engine::new(settings);
    engine.signals(signals);
    engine.on_stop("flush_telemetry", telemetry.flush_hook());
    info!("speaking the node protocol on stdin and stdout");
    engine
        .run(|core| crate::stdin::node::start(core, drain_timeout))
        .await
        .map_err(StartupError::Engine)
}

/// The HTTP service in this process, for tests and embedders: as the binary
/// runs it, but the triggers are `triggers` (no signal handlers, no logger,
/// no trace exporter), and `serving` is told the bound address and a
/// [`Handle`] once it serves. Answers the run's report.
pub async fn serve_in_process<S>(
    config: Config,
    triggers: S,
    serving: impl FnOnce(SocketAddr, Handle),
) -> Result<Report, StartupError>
where
    S: Stream<Item = ShutdownSignal> + Unpin + 'static,
{
    let telemetry = Telemetry::none();
    serve(config, triggers, &telemetry, serving).await
}

/// Binds the ports, opens the database, registers, and serves.
async fn serve<S>(
    config: Config,
    mut signals: S,
    telemetry: &Telemetry,
    serving: impl FnOnce(SocketAddr, Handle),
) -> Result<Report, StartupError>
where
    S: Stream<Item = ShutdownSignal> + Unpin + 'static,
{
    let url = config
        .database_url
        .clone()
        .ok_or_else(|| StartupError::Config("DATABASE_URL is not set".into()))?;
    let settings = DbSettings {
        url: url.expose().to_string(),
        connect_timeout: config.db_connect_timeout(),
        pool_size: usize::from(config.db_pool_size),
        batch_size: usize::from(config.db_batch_size),
        queue_bound: usize::try_from(config.db_queue_bound).unwrap_or(usize::MAX),
        // Every write is cancelled by its request's deadline; the session's
        // own timeout is the second line, for a statement nobody cancels.
        statement_timeout: config.request_timeout() + STATEMENT_TIMEOUT_MARGIN,
        outbox: config.redis_url.is_some(),
    };
    settings
        .check()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let addr = SocketAddr::new(config.bind_address, config.port);
    // The port first: a second instance that cannot have it must never touch
    // the live instance's ServerInstance row. A successor never binds: it
    // takes the running instance's listeners.
    let (mut listening, local, admin) = match &config.takeover {
        Some(path) => take_over(&config, path).await?,
        None => {
            let listener = drainer_engine::bind(addr).map_err(|source| match source.kind() {
                io::ErrorKind::AddrInUse => StartupError::PortInUse { port: config.port },
                _ => StartupError::Bind { addr, source },
            })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartupError::Bind { addr, source })?;
            // Then the admin port, so an error names the port that failed.
            let admin = match config.admin_port {
                None => None,
                Some(port) => Some(bind_admin(SocketAddr::new(config.admin_bind, port))?),
            };
            let control = match &config.control_socket {
                Some(path) => Some(ControlSocket::bind(path).map_err(StartupError::Handoff)?),
                None => None,
            };
            (Listening::Bound { listener, control }, local, admin)
        }
    };

    // Every stop hook registered (the actors' addresses exist before the
    // actors run), so the plan that will run is checked against the budget
    // before the database is touched. In order of start: the database
    // first, so it closes last.
    let mut engine = Engine::new(config.shutdown());
    if let Some(admin) = admin {
        engine.admin(admin);
    }
    let db_context = actix::Context::<DbActor>::new();
    let db = db_context.address();
    engine.own(db.clone());
    crate::jobs::register_database(&mut engine, db.clone());
    engine.on_stop("flush_telemetry", telemetry.flush_hook());
    let relay = match config.lease().map_err(StartupError::Config)? {
        Some(lease) => Some(
            crate::jobs::register_relay(&mut engine, lease)
                .map_err(|e| StartupError::Config(format!("metrics: {e}")))?,
        ),
        None => None,
    };
    let heartbeat = crate::jobs::register_heartbeat(&mut engine);
    engine
        .check_budget()
        .map_err(|e| StartupError::Config(e.to_string()))?;

    let host = config.instance_host();
    let aborted = async {
        match &mut listening {
            // A takeover aborted while the database opens ends the successor now.
            Listening::Takeover(successor) => successor.interrupted().await,
            Listening::Bound { .. } => std::future::pending().await,
        }
    };
    let opened = tokio::select! {
        db = DbActor::open(&settings, &host, local.port()) => db.map_err(|e| match e {
            DbError::InvalidUrl => StartupError::Config(e.to_string()),
            e => StartupError::Database(e),
        })?,
        Some(signal) = signals.next() => return Ok(interrupted(signal)),
        e = aborted => return Err(StartupError::Handoff(e)),
    };
    if let Some(start_relay) = relay {
        start_relay(opened.pool());
    }
    db_context.run(opened.counted_in(engine.census().clone()));
    heartbeat.run(Heartbeat::new(
        db.clone(),
        config.heartbeat(),
        engine.census().clone(),
    ));
    engine.signals(signals);

    let outcomes = Outcomes::register(engine.metrics())
        .map_err(|e| StartupError::Config(format!("metrics: {e}")))?;
    let feed = Feed::new(engine.census().clone()).start();
    engine.own(feed.clone());
    let jobs = Jobs {
        db: db.clone(),
        feed,
        outcomes: outcomes.clone(),
        census: engine.census().clone(),
        request_timeout: config.request_timeout(),
        downstream: config.downstream(),
    };
    let workers = config.worker_count();
    let recorder = db.clone();
    let census = engine.census().clone();
    let mut server = Server::new(move || crate::http::app(jobs.clone()))
        .workers(workers)
        .client_request_timeout(config.client_request_timeout())
        .keep_alive(config.keep_alive())
        .readiness("database", move || {
            let db = db.clone();
            Box::pin(async move {
                match db.send(Ping).await {
                    Ok(answer) => answer.map_err(|e| e.to_string()),
                    Err(_) => Err("the database actor is gone".to_string()),
                }
            })
        })
        .on_engine_answer(move |_, path, answer| outcomes.engine_answered(path, answer));
    let handoff = HandoffSettings {
        timeout: config.takeover_timeout(),
        successor: config
            .control_socket
            .clone()
            .or_else(|| config.takeover.clone())
            .map(|path| {
                Rc::new(move || crate::upgrade::successor_command(path.clone()))
                    as drainer_engine::handoff::control::SuccessorCommand
            }),
    };
    server = match listening {
        Listening::Bound { listener, control } => {
            let server = server.listen(listener);
            match control {
                Some(control) => server.control_socket(control, handoff),
                None => server,
            }
        }
        Listening::Takeover(successor) => {
            server
                .takeover(successor, handoff)
                .on_committed(move |predecessor| {
                    census.spawn(async move {
                        match recorder.send(RecordTakeover { predecessor }).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => warn!("takeover record skipped: {e}"),
                            Err(_) => warn!("takeover record skipped: the database actor is gone"),
                        }
                    });
                })
        }
    };
    serving(local, engine.handle());
    *server.engine() = engine;
    server.run().await.map_err(StartupError::Engine)
}

/// Where the HTTP listener comes from.
enum Listening {
    /// Bound here, with the control socket if `CONTROL_SOCKET` is set.
    Bound {
        listener: std::net::TcpListener,
        control: Option<ControlSocket>,
    },
    /// Taken over from the running instance (`--takeover`).
    Takeover(Successor),
}

/// `--takeover <path>`: the running instance's listeners, checked against
/// this configuration (a successor keeps it: same port, an admin listener
/// exactly when the predecessor had one, the same control socket).
async fn take_over(
    config: &Config,
    path: &std::path::Path,
) -> Result<(Listening, SocketAddr, Option<std::net::TcpListener>), StartupError> {
    if config
        .control_socket
        .as_ref()
        .is_some_and(|control| control != path)
    {
        return Err(StartupError::Config(format!(
            "--takeover {} and CONTROL_SOCKET {} differ: a successor inherits the control socket",
            path.display(),
            config
                .control_socket
                .as_ref()
                .map_or(String::new(), |c| c.display().to_string())
        )));
    }
    let mut successor = Successor::connect(path, config.takeover_timeout())
        .await
        .map_err(StartupError::Handoff)?;
    let local = successor
        .http
        .local_addr()
        .map_err(|source| StartupError::Bind {
            addr: SocketAddr::new(config.bind_address, config.port),
            source,
        })?;
    if config.port != 0 && local.port() != config.port {
        return Err(StartupError::Config(format!(
            "the running instance listens on port {}, PORT is {}: a successor keeps the configuration",
            local.port(),
            config.port
        )));
    }
    if config.admin_port.is_some() != successor.admin.is_some() {
        return Err(StartupError::Config(
            "ADMIN_PORT must be set exactly when the running instance has an admin listener".into(),
        ));
    }
    let admin = successor.admin.take();
    Ok((Listening::Takeover(successor), local, admin))
}

/// A shutdown signal before anything was served: stop, exit 0.
fn interrupted(signal: ShutdownSignal) -> Report {
    info!("{signal} during start-up: stopping before serving anything");
    Report::before_serving(signal)
}

/// Binds the admin listener.
fn bind_admin(addr: SocketAddr) -> Result<std::net::TcpListener, StartupError> {
    std::net::TcpListener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => StartupError::AdminPortInUse { port: addr.port() },
        _ => StartupError::Bind { addr, source },
    })
}
