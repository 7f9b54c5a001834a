//! Start-up: signals first, then configuration, the port, the database, and
//! the actors. Every failure here is exit code 2 with one line on stderr.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;
use drainer_actors::{
    census, phase, Components, DbActor, DbError, DbSettings, Metrics, Signals, Supervisor,
};
use futures_util::StreamExt;
use log::info;

use crate::config::Config;
use crate::telemetry::Telemetry;
use crate::{admin, server};

/// How much longer than `REQUEST_TIMEOUT_MS` a statement may run before
/// PostgreSQL ends it by itself.
const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Exit code of a start-up failure.
pub const EXIT_STARTUP: i32 = 2;

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
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

/// How start-up ended, when it did not fail.
enum Started {
    /// Serving; the Supervisor owns the shutdown now.
    Serving,
    /// A shutdown signal came before anything was served.
    Interrupted(drainer_actors::ShutdownSignal),
}

/// Runs drainer from the command line; answers the process exit code.
pub fn run() -> i32 {
    let system = actix_rt::System::new();
    // First of all: from here on a SIGTERM is queued for the Supervisor
    // instead of killing the process.
    let signals = match system.block_on(async { Signals::install() }) {
        Ok(signals) => signals,
        Err(e) => return fail(StartupError::Signals(e)),
    };
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // clap's message, without its usage hints: one line.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.trim_start_matches("error: ");
            return fail(StartupError::Config(line.to_string()));
        }
    };
    init_logging();
    let telemetry = match Telemetry::from_env() {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(StartupError::Config(e)),
    };
    let started = if config.stdin {
        system.block_on(async { start_stdin(&config, signals, &telemetry) })
    } else {
        system.block_on(start(config, signals, &telemetry))
    };
    match started {
        Ok(Started::Serving) => {}
        Ok(Started::Interrupted(signal)) => {
            info!("{signal} during start-up: stopping before serving anything");
            info!("exited with code 0");
            return 0;
        }
        Err(e) => return fail(e),
    }
    let code = match system.run_with_code() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drainer: the actor system failed: {e}");
            1
        }
    };
    telemetry.shutdown();
    // Every actor stopped itself and every task ended before the System
    // stopped, or it is counted here.
    info!("leak check: {}", census::alive());
    info!("exited with code {code}");
    code
}

fn fail(e: StartupError) -> i32 {
    eprintln!("drainer: {e}");
    EXIT_STARTUP
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// Launches the actors with the stdin transport: no database, no port, and
/// no shutdown delay (there is no load balancer to tell).
fn start_stdin(
    config: &Config,
    signals: Signals,
    telemetry: &Telemetry,
) -> Result<Started, StartupError> {
    // No budget: the drain deadline (DRAIN_TIMEOUT_MS or tcp_shutdown's)
    // alone bounds the work, and the phases after the drain are instant.
    let shutdown = drainer_actors::ShutdownSettings {
        budget: None,
        ..config.shutdown(std::time::Duration::ZERO)
    };
    let drain_timeout = config.drain_timeout();
    let components = Components {
        db: None,
        metrics: Metrics::new(&phase::ALL),
        flush_telemetry: telemetry.flusher(),
    };
    Supervisor::launch(shutdown, components, signals, |core, _| {
        crate::stdin::node::start(core, drain_timeout)
    });
    info!("speaking the node protocol on stdin and stdout");
    Ok(Started::Serving)
}

/// Binds the ports, opens the database, registers, and launches the actors.
async fn start(
    config: Config,
    mut signals: Signals,
    telemetry: &Telemetry,
) -> Result<Started, StartupError> {
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
    };
    settings
        .check()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let shutdown = config.shutdown(config.shutdown_delay());
    shutdown
        .check_budget(true, config.admin_port.is_some())
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let addr = SocketAddr::new(config.bind_address, config.port);
    // The port first: a second instance that cannot have it must never touch
    // the live instance's ServerInstance row.
    let listener = server::listener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => StartupError::PortInUse { port: config.port },
        _ => StartupError::Bind { addr, source },
    })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartupError::Bind { addr, source })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| StartupError::Bind { addr, source })?;
    // Then the admin port, so an error names the port that failed.
    let admin_listener = match config.admin_port {
        None => None,
        Some(port) => Some(bind_admin(SocketAddr::new(config.admin_bind, port)).await?),
    };

    let host = config.instance_host();
    let db = tokio::select! {
        db = DbActor::open(&settings, &host, local.port()) => db.map_err(|e| match e {
            DbError::InvalidUrl => StartupError::Config(e.to_string()),
            e => StartupError::Database(e),
        })?,
        Some(signal) = signals.next() => return Ok(Started::Interrupted(signal)),
    };

    let workers = config.worker_count();
    let http_settings = crate::http::HttpSettings {
        request_timeout: config.request_timeout(),
        client_request_timeout: config.client_request_timeout(),
    };
    let phase_timeout = shutdown.phase_timeout;
    let components = Components {
        db: Some(db),
        metrics: Metrics::new(&phase::ALL),
        flush_telemetry: telemetry.flusher(),
    };
    Supervisor::launch(shutdown, components, signals, |core, lifecycle| {
        if let Some((admin_listener, admin_addr)) = admin_listener {
            admin::start(admin_listener, core, lifecycle, phase_timeout);
            info!("admin listener on {admin_addr} (/metrics, /admin/prestop)");
        }
        server::start(listener, core, http_settings, workers)
    });
    info!("listening on {local} with {workers} worker(s)");
    Ok(Started::Serving)
}

/// Binds the admin listener; answers it and the address it got.
async fn bind_admin(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartupError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => StartupError::AdminPortInUse { port: addr.port() },
            _ => StartupError::Bind { addr, source },
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartupError::Bind { addr, source })?;
    Ok((listener, local))
}
