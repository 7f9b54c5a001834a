//! What a transport (the HTTP server, the stdin node, an adopter's own) gets
//! from the engine, and how the Supervisor reaches it.

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Message, Recipient};
use tokio::sync::watch;

use crate::census::Census;
use crate::drain::Farewell;
use crate::drain::{Admission, DrainCoordinator, DrainState};
use crate::metrics::Metrics;
use crate::persistent::settings::{PersistentSettings, Tally};
use crate::supervisor::Supervisor;

/// What a transport needs from the engine.
#[derive(Clone)]
pub struct Core {
    /// Connection guards register here.
    pub coordinator: Addr<DrainCoordinator>,
    /// Where work is admitted and counted.
    pub admission: Admission,
    /// The published drain state, for probes and `Connection: close`.
    pub state: watch::Receiver<DrainState>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The leak check's counts.
    pub census: Census,
    /// How long, after a cut, work past its safe point may still run.
    pub linger: Duration,
    pub(crate) supervisor: Addr<Supervisor>,
    /// What persistent connections are told (the goodbye).
    pub farewell: watch::Receiver<Farewell>,
    /// How the persistent connections open at the goodbye ended.
    pub tally: Arc<Tally>,
    /// The persistent connections' settings.
    pub persistent: PersistentSettings,
    /// The accept loops' gate: wait for a successor's commit point, let go
    /// at the running instance's.
    pub handover: crate::handoff::Handover,
}

impl Core {
    /// Where a transport's own protocol asks for a drain.
    pub fn drain(&self) -> Recipient<TransportDrain> {
        self.supervisor.clone().recipient()
    }

    /// Where a transport reports the end of its input.
    pub fn ended(&self) -> Recipient<TransportEnded> {
        self.supervisor.clone().recipient()
    }

    /// Where a prestop is asked for (the admin listener's `/admin/prestop`).
    pub fn prestop(&self) -> Recipient<PreStop> {
        self.supervisor.clone().recipient()
    }
}

/// Tells the transport to stop accepting: close the listening socket, serving
/// what had already reached it. Answers how many queued connections it took.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseListener;

/// Tells the transport to stop serving altogether (the work is over); it
/// answers once it has stopped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopTransport;

/// The transport's own protocol asks for a drain (stdin's `tcp_shutdown`): it
/// runs like a signal's drain, without a shutdown delay, but it does not end
/// the process. Answers the number of requests in flight once admission stopped.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct TransportDrain {
    /// How long in-flight work may run before it is cancelled.
    pub drain_timeout: Duration,
}

/// The transport's input has ended (stdin closed): drain if no drain is
/// running, then exit 0 — the replies already said what was cut short.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TransportEnded;

/// A prestop hook (`POST /admin/prestop`): begin the drain's first phase and
/// answer once the delay is over. The phases after it wait for a signal.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PreStop;

/// How the Supervisor reaches the transport it runs.
pub struct Transport {
    /// Closes the listener.
    pub close_listener: Recipient<CloseListener>,
    /// Stops the transport.
    pub stop: Recipient<StopTransport>,
}
