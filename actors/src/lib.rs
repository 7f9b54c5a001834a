//! drainer's engine: graceful shutdown for any actix-web service — no request
//! reset when the listener closes, probes and readiness, a pre-drain delay,
//! ordered stop phases under one budget, and an exit the moment the last
//! answer is written.
//!
//! ```no_run
//! use actix_web::{web, App};
//! use drainer_engine::{Server, ShutdownSettings};
//!
//! fn main() -> std::process::ExitCode {
//!     drainer_engine::main(|signals| async move {
//!         Server::new(|| App::new().route("/", web::get().to(|| async { "hello" })))
//!             .shutdown(ShutdownSettings::from_env().unwrap_or_default())
//!             .with_engine(|e| { e.signals(signals); })
//!             .bind(("127.0.0.1", 8080))?
//!             .run()
//!             .await
//!     })
//! }
//! ```
//!
//! # Map
//!
//! - [`server`] — [`Server`], the builder that takes the `App` factory; the
//!   engine's own accept loop feeding actix-web workers (so the coordinator
//!   knows every connection and the listener closes without resetting queued
//!   clients), over a stream that bounds hostile clients.
//! - [`http`] — the middleware around the application: probes, admission of
//!   every request, the cut, `Connection: close`, the body deadline; [`Work`],
//!   a handler's view of its admission; [`EngineError`], the engine's answers.
//! - [`engine`] — [`Engine`]: settings, stop hooks, owned components, the
//!   admin listener, the triggers; [`Handle`] for programmatic triggers.
//! - [`supervisor`] — the **Supervisor**, the one owner of shutdown: settings
//!   and the [`StopPlan`], triggers, the state enum, the phases, the [`Report`].
//! - [`lifecycle`] — the registry of named stop phases, run in the plan's
//!   order under one budget, each with its deadline; traces each shutdown.
//! - [`drain`] — the **DrainCoordinator**: the only holder of the drain state
//!   (`Active`, `Draining`, `Stopped`), of the in-flight count (its gate) and
//!   of the set of open connections.
//! - [`transport`] — what a transport gets from the engine ([`Core`]) and the
//!   messages between it and the Supervisor.
//! - [`admin`] — the admin listener: `/metrics`, `/admin/prestop`.
//! - [`handoff`] — hot restart: a successor takes the listening sockets over
//!   a unix control socket (`SCM_RIGHTS`); the running instance then drains
//!   as a handoff.
//! - [`persistent`] — WebSockets, SSE streams and long-polls drained on
//!   purpose: a goodbye as the listener closes, tracked apart from the
//!   in-flight count, closed by `close_persistent`.
//! - [`signals`] — SIGTERM / SIGINT / SIGQUIT as a stream, installed first;
//!   stray signals logged and ignored.
//! - [`metrics`] — the Prometheus registry (the application adds its own families).
//! - [`notify`] — `NOTIFY_SOCKET`: `READY=1` once accepting, `STOPPING=1` at the drain.
//! - [`telemetry`] — where the shutdown trace goes (`OTEL_*` variables).
//! - [`census`] — counts actors not stopped and tasks not finished: the leak check.
//! - [`run`] — [`main`]: signals first, the run, the exit code.
//!
//! # Messages
//!
//! ```text
//!  signals / Handle ──Asked──▶ Supervisor ──BeginDrain / ArmDeadline / ListenerClosed / ClosePersistent / CutDrain──▶ DrainCoordinator
//!                               │   ▲                                                                 │   ▲
//!                               │   └──────────── DrainReport (WorkDone, Quiet) ──────────────────────┘   │
//!                               ├──CloseListener / StopTransport──▶ transport (HTTP or stdin)             │
//!                               ├──stop hooks (the application's phases) ──▶ its actors (a DbActor…)      │
//!                               └──StopActor──▶ owned components                                          │
//!  transport ──TransportDrain / TransportEnded──▶ Supervisor                                              │
//!  admin listener ──PreStop──▶ Supervisor                                                                 │
//!  control socket (a takeover committed) ──HandedOver──▶ Supervisor                                       │
//!  request ──Admission::admit (an atomic, no message)──▶ Permit ──dropped──▶ gate (last one: GateEmptied)─┤
//!  ConnGuard::register / drop ──ConnectionOpened / ConnectionClosed───────────────────────────────────────┘
//! ```
//!
//! # Rules that must never break
//!
//! 1. The in-flight count lives only in the DrainCoordinator's gate. It goes
//!    up when [`Admission::admit`] hands out a [`Permit`] and down only when
//!    that permit is dropped — so errors, panics and disconnected clients
//!    still count down.
//! 2. Admission stops at the drain deadline or a forced cut — or earlier,
//!    once the listener has closed, nothing is in flight and no connection
//!    that could carry another request is open — never merely because the
//!    listener closed: a request on a connection already open is served for
//!    real, with `Connection: close`, so each carries at most one more.
//!    Once the gate has closed no request is admitted again: closing it and
//!    reading its count are one atomic step, and admission is a
//!    compare-and-swap that fails on a closed gate — there is no window
//!    between "counted zero" and "admitted one more".
//! 3. At a cut, a handler that has not finished is dropped and answered 503
//!    with the cut's reason, unless it shielded itself ([`Work::try_shield`]);
//!    shielded work sees the cut through [`Work::cancelled`] and answers
//!    itself, and its connection is never closed before that answer.
//! 4. The drain ends when the count is zero and no connection that could
//!    still carry a request is open (idle ones close after
//!    `IDLE_CLOSE_GRACE_MS`) — events, not polls — or at the deadline (a
//!    timer); the run ends only once the connections that carried the
//!    answers have closed, so no answer is lost in a buffer. Persistent
//!    connections (WebSockets, SSE streams) never hold the drain: they get
//!    their goodbye as the listener closes, and `close_persistent` waits for
//!    them (`WS_CLOSE_TIMEOUT_MS`).
//! 5. The exit code comes from [`Outcome::exit_code`] — except that the end
//!    of a transport's input always exits 0 (its replies already said what was
//!    cut short). A cut with nothing in flight is a completed drain.

#![deny(missing_docs)]

pub mod admin;
pub mod census;
pub mod drain;
pub mod engine;
pub mod handoff;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod persistent;
pub mod run;
pub mod server;
pub mod signals;
pub mod supervisor;
pub mod telemetry;
pub mod transport;

pub use census::{Alive, Census};
pub use drain::{
    Admission, CancelReason, Close, ConnGuard, ConnId, DrainCoordinator, DrainState, NotAdmitted,
    Outcome, Permit,
};
pub use engine::{Engine, Handle};
pub use http::{EngineError, Probes, Work};
pub use lifecycle::{PhaseCtx, PhaseRecord, PhaseResult, StopActor};
pub use metrics::Metrics;
pub use run::main;
pub use server::listener::bind;
pub use server::{Server, StartError};
pub use signals::{ShutdownSignal, Signals};
pub use supervisor::{phase, DrainBegun, Report, ShutdownSettings, StopPlan, Trigger};
pub use telemetry::Telemetry;
pub use transport::{
    CloseListener, Core, PreStop, StopTransport, Transport, TransportDrain, TransportEnded,
};
