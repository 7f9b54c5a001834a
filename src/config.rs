//! Configuration: command-line flags with environment fallbacks (clap).
//!
//! Every setting has a flag and an environment variable; the flag wins. The
//! database URL is wrapped in [`DatabaseUrl`], whose `Debug` and `Display`
//! never show it, and `--help` never prints its value.

use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
Logging: RUST_LOG (env_logger syntax, default \"info\"), to stderr.

Shutdown (see docs/operations.md):
  SIGTERM  starts the graceful drain (or continues a prestop's); later SIGTERMs are logged and ignored
  SIGINT   the first starts the graceful drain; a second one cuts it short
  SIGQUIT  cuts the drain short at once
  SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXCPU,
  SIGXFSZ  logged and ignored (the process keeps serving)
  SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT and real-time signals keep their defaults
  POST /admin/prestop (admin listener) begins the drain and answers after the delay
  Phases, in order: delay, stop_accepting, drain, close_persistent, stop_admin,
  stop_background, flush_events and release_lease (with REDIS_URL), flush_telemetry,
  close_database; all within SHUTDOWN_TIMEOUT_MS.
  At the end of the delay the listener closes: WebSockets get Close 1001, SSE
  streams a retry and a reconnect event, pending polls 204 (GET /ws, /events, /poll).

Service manager: with NOTIFY_SOCKET set (systemd's Type=notify), READY=1 is sent
once the listener accepts and STOPPING=1 when a drain begins; a successor sends
MAINPID=<pid> and READY=1 at its commit point.

Hot restart (see docs/operations.md): with CONTROL_SOCKET set, `drainer upgrade
--control-socket <path>` (or a `drainer --takeover <path>` started by hand) takes
the listening sockets over; the running instance drains without a delay
(trigger takeover) while the successor accepts on the same sockets.

Telemetry: each shutdown is one OpenTelemetry trace, exported over OTLP/HTTP
when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set
and OTEL_TRACES_EXPORTER is not \"none\"; otherwise not exported.

Exit codes:
  0  the drain completed: every admitted request got its real answer
  1  the drain was cut short (DRAIN_TIMEOUT_MS, a second SIGINT, or SIGQUIT)
  2  start-up failed (invalid configuration, port in use, database unreachable or
     still starting up, a schema change blocked by a lock, a takeover that failed
     before its commit point)";

use drainer_engine::persistent::defaults as persistent;
use drainer_engine::supervisor::defaults;

/// The jobs service's default `SHUTDOWN_TIMEOUT_MS`: the engine's 50000 ms
/// holds its own phases and three stop hooks; with `REDIS_URL` the service
/// adds `flush_events` and `release_lease` (1500 ms each). 5000 prestop delay,
/// 1500 stop_accepting, 32500 drain, 5100 close_persistent, then 1500 each for
/// stop_admin, stop_background, flush_events, release_lease and
/// flush_telemetry, and the 1000 ms reserve (close_database runs in it):
/// 52600 ms.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 55_000;

/// What `drainer <subcommand>` does instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// GET a URL: exit 0 on a 2xx answer, 1 otherwise (a container HEALTHCHECK without curl).
    Probe(crate::probe::ProbeArgs),
    /// Ask the instance on a control socket to start its successor: exit 0 once it took over, 2 otherwise.
    Upgrade(crate::upgrade::UpgradeArgs),
}

/// drainer: an HTTP service that drains in-flight work on shutdown and loses nothing.
#[derive(Debug, Parser)]
#[command(name = "drainer", version, about, after_help = AFTER_HELP, disable_help_subcommand = true)]
pub struct Config {
    /// A subcommand instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Speak the node protocol on stdin/stdout instead of serving HTTP (no database needed).
    #[arg(long)]
    pub stdin: bool,

    /// TCP port to listen on (0 picks a free port; the log says which).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db (required unless --stdin). Its password is never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

    /// The `host` of this instance's ServerInstance row [default: the machine's hostname].
    #[arg(long, env = "INSTANCE_HOST")]
    pub instance_host: Option<String>,

    /// Once the listener has closed, how long in-flight requests may still run before they are cancelled (ms).
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = defaults::DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,

    /// After a shutdown signal, how long to keep serving (health answers 503) before closing the listener (ms).
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = defaults::SHUTDOWN_DELAY_MS)]
    pub shutdown_delay_ms: u64,

    /// The whole shutdown's budget, from the prestop or the first signal; start-up refuses phases that cannot fit (ms).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = SHUTDOWN_TIMEOUT_MS)]
    pub shutdown_timeout_ms: u64,

    /// The own deadline of each shutdown phase other than the delay and the drain (ms).
    #[arg(long, env = "SHUTDOWN_PHASE_TIMEOUT_MS", default_value_t = defaults::SHUTDOWN_PHASE_TIMEOUT_MS)]
    pub shutdown_phase_timeout_ms: u64,

    /// How often the instance's ServerInstance.last_seen_at is stamped (ms).
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,

    /// Port of the admin listener (/metrics, /admin/prestop); off when unset. 0 picks a free port.
    #[arg(long, env = "ADMIN_PORT")]
    pub admin_port: Option<u16>,

    /// Address of the admin listener.
    #[arg(long, env = "ADMIN_BIND", default_value = "127.0.0.1")]
    pub admin_bind: IpAddr,

    /// Test-only: this shutdown phase hangs after its work until its deadline.
    #[arg(long, env = "DRAINER_TEST_STALL_PHASE", hide = true)]
    pub test_stall_phase: Option<String>,

    /// A POST /work running past this is stopped at a safe point and answered 504 (ms).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// From the first byte of each request, how long a client has to send all of it (head and body), and to read its answers; past it: 408 and the connection closed (ms).
    #[arg(long, env = "CLIENT_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_request_timeout_ms: u64,

    /// How long start-up keeps trying to reach the database before it gives up with exit code 2 (ms).
    #[arg(long, env = "DB_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_connect_timeout_ms: u64,

    /// How long connections may stay open, idle, after the listener closed before they are closed (ms).
    #[arg(long, env = "IDLE_CLOSE_GRACE_MS", default_value_t = defaults::IDLE_CLOSE_GRACE_MS)]
    pub idle_close_grace_ms: u64,

    /// HTTP worker threads besides the main thread; 0 serves HTTP on the main thread, beside the actors [default: CPUs - 2, at least 0].
    #[arg(long, env = "WORKERS", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: Option<u16>,

    /// The most database connections the pool opens; also the most job batches written at once.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_pool_size: u16,

    /// The most jobs written by one multi-row INSERT.
    #[arg(long, env = "DB_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_batch_size: u16,

    /// The most jobs waiting for a batch; past it POST /work answers 503 overloaded.
    #[arg(long, env = "DB_QUEUE_BOUND", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub db_queue_bound: u32,

    /// How long an idle connection stays open while serving; keep it longer than the idle timeout of the load balancer in front (AWS ALB and nginx: 60 s) (ms).
    #[arg(long, env = "KEEP_ALIVE_MS", default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_ms: u64,

    /// After a WebSocket's goodbye (Close 1001), how long to wait for the client's Close reply before closing it anyway; the close_persistent phase's deadline (ms).
    #[arg(long, env = "WS_CLOSE_TIMEOUT_MS", default_value_t = persistent::WS_CLOSE_TIMEOUT_MS)]
    pub ws_close_timeout_ms: u64,

    /// How long a WebSocket may be idle before the server pings it; a peer that has not answered within twice that is closed with 1011 (ms).
    #[arg(long, env = "WS_PING_MS", default_value_t = persistent::WS_PING_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_ping_ms: u64,

    /// How often an SSE stream gets a comment line, so that proxies do not time it out (ms).
    #[arg(long, env = "SSE_KEEPALIVE_MS", default_value_t = persistent::SSE_KEEPALIVE_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub sse_keepalive_ms: u64,

    /// Redis, for the relay's lease (`drainer:lock:<LOCK_NAME>`); unset: no lease. Never printed.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<DatabaseUrl>,

    /// The lease's name: the key is `drainer:lock:<name>`.
    #[arg(long, env = "LOCK_NAME", default_value = "drainer")]
    pub lock_name: String,

    /// How long the lease lives without a renewal; it is renewed every third of it (ms).
    #[arg(long, env = "LOCK_TTL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(30..))]
    pub lock_ttl_ms: u64,

    /// A service POST /work calls (POST, JSON {"id","name"}) before it writes the job; unset: none. A failure answers 502 downstream_failed, a timeout 504 downstream_timeout; nothing is written.
    #[arg(long, env = "DOWNSTREAM_URL", hide_env_values = true)]
    pub downstream_url: Option<String>,

    /// How long a call to the downstream may take before the request is answered 504 downstream_timeout (ms).
    #[arg(long, env = "DOWNSTREAM_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub downstream_timeout_ms: u64,

    /// The `retry:` an SSE stream is told at the goodbye: how long its client waits before reconnecting (ms).
    #[arg(long, env = "SSE_RETRY_MS", default_value_t = persistent::SSE_RETRY_MS)]
    pub sse_retry_ms: u64,

    /// A unix socket (created 0600; its directory must not be writable by others) on which a successor can take this instance's listeners over (hot restart: --takeover, drainer upgrade).
    #[arg(long, env = "CONTROL_SOCKET")]
    pub control_socket: Option<std::path::PathBuf>,

    /// Take the listeners over from the instance serving the control socket at this path, and serve them once it has stopped accepting (same configuration otherwise).
    #[arg(long, value_name = "PATH")]
    pub takeover: Option<std::path::PathBuf>,

    /// How long a successor may take to be ready before the takeover is abandoned (ms).
    #[arg(long, env = "TAKEOVER_TIMEOUT_MS", default_value_t = drainer_engine::handoff::TAKEOVER_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub takeover_timeout_ms: u64,
}

impl Config {
    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The per-request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A client's time to send a whole request, and to read its answers.
    pub fn client_request_timeout(&self) -> Duration {
        Duration::from_millis(self.client_request_timeout_ms)
    }

    /// The shutdown delay.
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    /// The engine's shutdown settings, from the flags and variables.
    pub fn shutdown(&self) -> drainer_engine::ShutdownSettings {
        let settings = drainer_engine::ShutdownSettings::default()
            .shutdown_delay(self.shutdown_delay())
            .drain_timeout(self.drain_timeout())
            .idle_grace(self.idle_close_grace())
            .budget(Some(Duration::from_millis(self.shutdown_timeout_ms)))
            .phase_timeout(Duration::from_millis(self.shutdown_phase_timeout_ms));
        let ms = Duration::from_millis;
        drainer_engine::ShutdownSettings {
            stalled_phase: self.test_stall_phase.clone(),
            persistent: drainer_engine::persistent::PersistentSettings {
                ws_close_timeout: ms(self.ws_close_timeout_ms),
                ws_ping: ms(self.ws_ping_ms),
                sse_keepalive: ms(self.sse_keepalive_ms),
                sse_retry: ms(self.sse_retry_ms),
            },
            ..settings
        }
    }

    /// The lease's settings, when `REDIS_URL` is set.
    pub fn lease(&self) -> Result<Option<crate::jobs::lease::LeaseSettings>, String> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.expose())
            .map_err(|_| "REDIS_URL is not a valid Redis URL".to_string())?;
        Ok(Some(crate::jobs::lease::LeaseSettings {
            client,
            name: self.lock_name.clone(),
            ttl: Duration::from_millis(self.lock_ttl_ms),
        }))
    }

    /// How long a successor may take to be ready.
    pub fn takeover_timeout(&self) -> Duration {
        Duration::from_millis(self.takeover_timeout_ms)
    }

    /// The downstream POST /work calls, when one is set.
    pub fn downstream(&self) -> Option<crate::jobs::downstream::DownstreamSettings> {
        self.downstream_url
            .as_ref()
            .map(|url| crate::jobs::downstream::DownstreamSettings {
                url: url.clone(),
                timeout: Duration::from_millis(self.downstream_timeout_ms),
            })
    }

    /// How long an idle connection stays open while serving.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }

    /// How often the heartbeat stamps `last_seen_at`.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// The database connect timeout.
    pub fn db_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.db_connect_timeout_ms)
    }

    /// The idle-connection grace.
    pub fn idle_close_grace(&self) -> Duration {
        Duration::from_millis(self.idle_close_grace_ms)
    }

    /// Worker threads: the flag, or one per CPU but two. The main thread is
    /// busy too (accept loop, DrainCoordinator, DbActor and its connections),
    /// and PostgreSQL wants a core: measured on 2 cores, serving on the main
    /// thread (0 workers) gave the highest throughput and the lowest latency,
    /// because no message between the actors crosses a thread
    /// (docs/benchmarks.md).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(0, |n| n.get().saturating_sub(2)),
        }
    }

    /// The ServerInstance host: the flag, or the machine's hostname.
    pub fn instance_host(&self) -> String {
        self.instance_host.clone().unwrap_or_else(hostname)
    }
}

/// A database URL. It carries a password, so it never prints.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatabaseUrl {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(DatabaseUrl(s.to_string()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The machine's hostname, or "localhost" if it cannot be read.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read from the definitions, not by parsing: the environment may hold values.
    #[test]
    fn defaults_and_variables_match_the_operations_guide() {
        use clap::CommandFactory;
        let command = Config::command();
        let setting = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"));
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            (env, default)
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(setting("port"), (s("PORT"), s("3000")));
        assert_eq!(setting("database_url"), (s("DATABASE_URL"), None));
        assert_eq!(setting("instance_host"), (s("INSTANCE_HOST"), None));
        assert_eq!(
            setting("drain_timeout_ms"),
            (s("DRAIN_TIMEOUT_MS"), s("30000"))
        );
        assert_eq!(
            setting("shutdown_delay_ms"),
            (s("SHUTDOWN_DELAY_MS"), s("0"))
        );
        assert_eq!(
            setting("db_connect_timeout_ms"),
            (s("DB_CONNECT_TIMEOUT_MS"), s("10000"))
        );
        assert_eq!(
            setting("idle_close_grace_ms"),
            (s("IDLE_CLOSE_GRACE_MS"), s("100"))
        );
        assert_eq!(setting("db_pool_size"), (s("DB_POOL_SIZE"), s("4")));
        assert_eq!(setting("db_batch_size"), (s("DB_BATCH_SIZE"), s("64")));
        assert_eq!(setting("db_queue_bound"), (s("DB_QUEUE_BOUND"), s("10000")));
        assert_eq!(
            setting("shutdown_timeout_ms"),
            (s("SHUTDOWN_TIMEOUT_MS"), s("55000"))
        );
        assert_eq!(
            setting("shutdown_phase_timeout_ms"),
            (s("SHUTDOWN_PHASE_TIMEOUT_MS"), s("1500"))
        );
        assert_eq!(setting("heartbeat_ms"), (s("HEARTBEAT_MS"), s("5000")));
        assert_eq!(setting("admin_port"), (s("ADMIN_PORT"), None));
        assert_eq!(setting("admin_bind"), (s("ADMIN_BIND"), s("127.0.0.1")));
        assert_eq!(setting("keep_alive_ms"), (s("KEEP_ALIVE_MS"), s("75000")));
        assert_eq!(
            setting("ws_close_timeout_ms"),
            (s("WS_CLOSE_TIMEOUT_MS"), s("5000"))
        );
        assert_eq!(setting("ws_ping_ms"), (s("WS_PING_MS"), s("20000")));
        assert_eq!(
            setting("sse_keepalive_ms"),
            (s("SSE_KEEPALIVE_MS"), s("15000"))
        );
        assert_eq!(setting("sse_retry_ms"), (s("SSE_RETRY_MS"), s("1000")));
        assert_eq!(setting("downstream_url"), (s("DOWNSTREAM_URL"), None));
        assert_eq!(setting("redis_url"), (s("REDIS_URL"), None));
        assert_eq!(setting("lock_name"), (s("LOCK_NAME"), s("drainer")));
        assert_eq!(setting("lock_ttl_ms"), (s("LOCK_TTL_MS"), s("10000")));
        assert_eq!(
            setting("downstream_timeout_ms"),
            (s("DOWNSTREAM_TIMEOUT_MS"), s("5000"))
        );
    }

    #[test]
    fn database_url_never_prints() {
        let c = Config::try_parse_from([
            "drainer",
            "--database-url",
            "postgres://u:hunter2@db:5432/x",
        ])
        .expect("parses");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(
            c.database_url.expect("set").expose(),
            "postgres://u:hunter2@db:5432/x"
        );
    }
}
