//! drainer's actor system: who owns a shutdown, who counts the work, who writes.
//!
//! # Map
//!
//! - [`supervisor`] — the **Supervisor**. Starts the DrainCoordinator and (when
//!   there is a database) the DbActor and the Heartbeat once, registers their
//!   stop phases, owns the shutdown triggers (signals, or any other stream of
//!   [`ShutdownSignal`]s, a [`PreStop`], a transport's own [`TransportDrain`] /
//!   [`TransportEnded`]), runs the phases — delay, stop accepting, drain, stop
//!   the admin listener, stop the heartbeat, flush telemetry, write the final
//!   records and close the pool — logs the report and stops the System with
//!   the exit code.
//! - [`lifecycle`] — the registry of named stop phases, run last-registered
//!   first under one budget, each with its deadline; traces each shutdown.
//! - [`drain`] — the **DrainCoordinator**. The only holder of the drain state
//!   (`Active`, `Draining`, `Stopped`), of the in-flight count and of the set
//!   of open connections. Hands out [`Permit`]s and [`ConnGuard`]s; decides the
//!   [`Outcome`].
//! - [`request`] — the **RequestActor**. One per admitted HTTP job: holds the
//!   permit, does the simulated work, writes through the DbActor, replies.
//!   (The stdin transport has no writes; it keeps its permits in one
//!   deadline-ordered queue instead, so its replies leave in deadline order.)
//! - [`db`] — the **DbActor**. Owns the PostgreSQL pool: schema, instance
//!   registration, jobs (batched, every write bounded and answered truthfully
//!   whatever the database does), drain records; closes the pool last.
//! - [`heartbeat`] — the **Heartbeat**: stamps the instance's `last_seen_at`
//!   every `HEARTBEAT_MS`; stops between two beats.
//! - [`signals`] — turns SIGTERM / SIGINT / SIGQUIT into a stream of
//!   [`ShutdownSignal`]s, installed before anything else happens; logs and
//!   ignores the stray ones (SIGHUP, SIGUSR1, …).
//! - [`metrics`] — the Prometheus registry; values are written where the
//!   events happen and read only by `/metrics`.
//! - [`census`] — counts actors not stopped and tasks not finished: the leak
//!   check at exit.
//!
//! # Messages
//!
//! ```text
//!  signals ──ShutdownSignal──▶ Supervisor ──BeginDrain / StopAdmitting / ListenerClosed / CutShort──▶ DrainCoordinator
//!                               │   ▲                                                                   │  ▲
//!                               │   └────────────── DrainReport (WorkDone, Quiet) ──────────────────────┘  │
//!                               │                                                                          │
//!                               ├──CloseListener / StopTransport──▶ transport (HTTP or stdin)            │
//!                               ├──StopActor──▶ Heartbeat ──Beat──▶ DbActor                               │
//!                               └──RecordDrainBegin / RecordDrainComplete / ClosePool──▶ DbActor          │
//!  transport ──TransportDrain / TransportEnded──▶ Supervisor                                              │
//!  admin listener ──PreStop──▶ Supervisor                                                                 │
//!  transport ──Admit──▶ DrainCoordinator ──Permit──▶ RequestActor ──InsertJob / CancelWrite──▶ DbActor     │
//!  Permit::drop ──RequestFinished──────────────────────────────────────────────────────────────────────────┤
//!  ConnGuard::register / drop ──ConnectionOpened / ConnectionClosed────────────────────────────────────────┘
//! ```
//!
//! # Rules that must never break
//!
//! 1. The in-flight count lives only in the DrainCoordinator. It goes up when
//!    `Admit` hands out a [`Permit`] and down only when that permit is dropped —
//!    so errors, panics and disconnected clients still count down.
//! 2. Once the coordinator has stopped admitting, no request is admitted again:
//!    admission and the zero check happen in the same actor, one message at a
//!    time, so there is no window between "counted zero" and "admitted one more".
//! 3. A job is acknowledged only after its row is committed, and answered "not
//!    stored" only when that is certain. A request cancelled at the drain
//!    deadline is cancelled before its write begins; a write already begun gets
//!    the hard linger to commit, then is cancelled in PostgreSQL, and a write
//!    past its request's deadline is cancelled at once. A cancelled write is
//!    answered by what the cancel proved (nothing written: `drain_timeout`,
//!    `shutdown_forced` or `request_timeout`; unconfirmed: "may or may not have
//!    been stored"), before its connection closes — never silently.
//! 4. The drain ends when the count reaches zero (an event, not a poll) or at the
//!    deadline (a timer); the process exits only once the connections that
//!    carried the answers have closed, so no answer is lost in a buffer.
//! 5. The database pool is closed after the drain and after every phase that
//!    uses it (the heartbeat stops first), never before.
//! 6. The exit code comes from [`Outcome::exit_code`] — except that the end of
//!    a transport's input always exits 0 (its replies already said what was
//!    cut short). A cut with nothing in flight is a completed drain.

#![deny(missing_docs)]

pub mod census;
pub mod db;
pub mod drain;
pub mod heartbeat;
pub mod lifecycle;
pub mod metrics;
pub mod request;
pub mod signals;
pub mod supervisor;

pub use db::{DbActor, DbError, DbSettings, Job};
pub use drain::{
    CancelReason, Close, ConnGuard, ConnId, DrainCoordinator, Outcome, Permit, Phase, ShuttingDown,
};
pub use lifecycle::{Lifecycle, PhaseCtx, StopActor};
pub use metrics::Metrics;
pub use request::{RequestActor, WorkError};
pub use signals::{ShutdownSignal, Signals};
pub use supervisor::{
    phase, CloseListener, Components, Core, PreStop, ShutdownSettings, StopTransport, Supervisor,
    Transport, TransportDrain, TransportEnded,
};
