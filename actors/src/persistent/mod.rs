//! Persistent connections, drained on purpose: connections that never finish
//! on their own get a goodbye as the listener closes, and are tracked apart
//! from the in-flight request count.
//!
//! - [`ws`] — [`ws::websocket`]: an upgrade into a WebSocket session that
//!   answers Close 1001 at the goodbye, waits for the client's Close reply
//!   (`WS_CLOSE_TIMEOUT_MS`) and then closes TCP itself, server first; pings
//!   idle peers.
//! - [`sse`] — [`sse::stream`]: a server-sent events response that sends
//!   `retry:` and `event: reconnect` at the goodbye and ends cleanly.
//! - [`poll`] — [`poll::long_poll`]: a pending long-poll that is answered
//!   "nothing yet" at once at the goodbye.
//!
//! The goodbye is the [`Farewell`] the DrainCoordinator publishes: `Goodbye`
//! when the listener closes (at the end of `SHUTDOWN_DELAY_MS`), `Forced` at a
//! forced cut or at the end of the `close_persistent` phase. Until then every
//! persistent connection is served as usual. Each open one is counted in
//! `drainer_persistent_connections{class}`; each that was open at the goodbye
//! ends either cleanly or forced ([`Tally`], `drainer_persistent_forced_total`).

pub mod poll;
pub mod sse;
pub mod ws;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use actix_web::{web, HttpRequest};
use tokio::sync::watch;

use crate::census::Census;
use crate::drain::{ConnId, ConnKind, ConnectionChanged};
use crate::http::EngineData;
use crate::metrics::Metrics;
use crate::server::Activity;

/// The kinds of persistent connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// An upgraded WebSocket.
    WebSocket,
    /// A server-sent events stream.
    Sse,
    /// A pending long-poll.
    LongPoll,
}

impl Class {
    /// Every class, in the order reports list them.
    pub const ALL: [Class; 3] = [Class::WebSocket, Class::Sse, Class::LongPoll];

    /// Its `class` label and its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::WebSocket => "websocket",
            Class::Sse => "sse",
            Class::LongPoll => "long_poll",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::WebSocket => 0,
            Class::Sse => 1,
            Class::LongPoll => 2,
        }
    }
}

/// What persistent connections are told, published by the DrainCoordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// Serve as usual (also during `SHUTDOWN_DELAY_MS`).
    Serving,
    /// The listener has closed: say goodbye (a WebSocket waits for its
    /// client's Close reply, counted from its own goodbye).
    Goodbye,
    /// Close now without waiting for any reply: a forced cut, or the end of
    /// `close_persistent`.
    Forced,
}

/// The settings of persistent connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistentSettings {
    /// `WS_CLOSE_TIMEOUT_MS`: how long a WebSocket waits for its client's
    /// Close reply after the goodbye; the `close_persistent` phase's deadline.
    pub ws_close_timeout: Duration,
    /// `WS_PING_MS`: an idle WebSocket is pinged after this long; a peer that
    /// has not answered within twice that is closed with 1011.
    pub ws_ping: Duration,
    /// `SSE_KEEPALIVE_MS`: a comment line on an SSE stream this often.
    pub sse_keepalive: Duration,
    /// `SSE_RETRY_MS`: the `retry:` an SSE stream is told at the goodbye.
    pub sse_retry: Duration,
}

/// The defaults of [`PersistentSettings`], in milliseconds.
pub mod defaults {
    /// `WS_CLOSE_TIMEOUT_MS`.
    pub const WS_CLOSE_TIMEOUT_MS: u64 = 5_000;
    /// `WS_PING_MS`.
    pub const WS_PING_MS: u64 = 20_000;
    /// `SSE_KEEPALIVE_MS`.
    pub const SSE_KEEPALIVE_MS: u64 = 15_000;
    /// `SSE_RETRY_MS`.
    pub const SSE_RETRY_MS: u64 = 1_000;
}

impl Default for PersistentSettings {
    fn default() -> Self {
        let ms = Duration::from_millis;
        PersistentSettings {
            ws_close_timeout: ms(defaults::WS_CLOSE_TIMEOUT_MS),
            ws_ping: ms(defaults::WS_PING_MS),
            sse_keepalive: ms(defaults::SSE_KEEPALIVE_MS),
            sse_retry: ms(defaults::SSE_RETRY_MS),
        }
    }
}

/// How the persistent connections open at the goodbye ended, per class.
#[derive(Debug, Default)]
pub struct Tally {
    clean: [AtomicUsize; 3],
    forced: [AtomicUsize; 3],
    /// Open now (what `drainer_persistent_connections` shows).
    open: [AtomicUsize; 3],
}

/// One class's line in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassFigures {
    /// Which class.
    pub class: Class,
    /// Closed cleanly after the goodbye (a WebSocket's close handshake, an
    /// SSE stream's goodbye written, a poll answered).
    pub clean: usize,
    /// Closed by force (no Close reply in time, a forced cut).
    pub forced: usize,
}

impl Tally {
    /// How many of `class` are open now.
    pub(crate) fn open(&self, class: Class) -> usize {
        self.open[class.index()].load(Ordering::Relaxed)
    }

    /// The figures so far, in [`Class::ALL`]'s order.
    pub fn figures(&self) -> [ClassFigures; 3] {
        Class::ALL.map(|class| ClassFigures {
            class,
            clean: self.clean[class.index()].load(Ordering::Acquire),
            forced: self.forced[class.index()].load(Ordering::Acquire),
        })
    }
}

/// What the persistent handlers share, in the engine's request data.
#[derive(Clone)]
pub(crate) struct Persistence {
    pub farewell: watch::Receiver<Farewell>,
    pub tally: Arc<Tally>,
    pub settings: PersistentSettings,
    pub changed: Recipient<ConnectionChanged>,
    pub metrics: Metrics,
    pub census: Census,
}

impl Persistence {
    /// The engine's persistence for this request (none outside the engine).
    fn of(req: &HttpRequest) -> Option<Persistence> {
        req.app_data::<web::Data<EngineData>>()
            .map(|data| data.persistence.clone())
    }

    /// Whether the goodbye has been said (a new persistent request gets
    /// its answer at once).
    fn goodbye_said(&self) -> bool {
        *self.farewell.borrow() != Farewell::Serving
    }

    /// Counts a persistent connection of `class` for the request `req`.
    /// A WebSocket or an SSE stream takes its connection over: the drain no
    /// longer waits for it, the idle sweep and the request deadlines leave
    /// it alone, and it closes once its body has ended and been written.
    fn hold(&self, req: &HttpRequest, class: Class) -> Held {
        let activity = req.conn_data::<Rc<Activity>>().cloned();
        if class != Class::LongPoll {
            if let Some(activity) = &activity {
                activity.became_persistent();
            }
            if let Some(&id) = req.conn_data::<ConnId>() {
                self.changed.do_send(ConnectionChanged {
                    id,
                    kind: ConnKind::Persistent(class),
                });
            }
        }
        self.metrics.persistent_open(class, 1);
        self.tally.open[class.index()].fetch_add(1, Ordering::Relaxed);
        Held {
            class,
            clean: Rc::new(Cell::new(false)),
            persistence: self.clone(),
            activity: if class == Class::LongPoll {
                None
            } else {
                activity
            },
        }
    }
}

/// One persistent connection, counted for as long as its body (or its poll)
/// lives. Dropped after a goodbye, it counts as clean if [`Held::clean`] was
/// set, forced otherwise.
pub(crate) struct Held {
    class: Class,
    clean: Rc<Cell<bool>>,
    persistence: Persistence,
    /// The connection to close once the body has ended and been written.
    activity: Option<Rc<Activity>>,
}

impl Held {
    /// Where the session says its goodbye completed.
    fn clean_flag(&self) -> Rc<Cell<bool>> {
        self.clean.clone()
    }

    /// The body has ended: close the connection once it is written.
    fn body_ended(&self) {
        if let Some(activity) = &self.activity {
            activity.close_when_flushed();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let p = &self.persistence;
        p.metrics.persistent_open(self.class, -1);
        p.tally.open[self.class.index()].fetch_sub(1, Ordering::Relaxed);
        if *p.farewell.borrow() == Farewell::Serving {
            return;
        }
        let i = self.class.index();
        if self.clean.get() {
            p.tally.clean[i].fetch_add(1, Ordering::AcqRel);
        } else {
            p.tally.forced[i].fetch_add(1, Ordering::AcqRel);
            p.metrics.persistent_forced(self.class);
        }
    }
}

/// Resolves once the farewell is at least `Goodbye`; answers it.
async fn goodbye(farewell: &mut watch::Receiver<Farewell>) -> Farewell {
    match farewell.wait_for(|f| *f != Farewell::Serving).await {
        Ok(f) => *f,
        // The coordinator is gone: the process is ending.
        Err(_) => Farewell::Forced,
    }
}

/// `Instant::now()` + `d`, for timers.
fn after(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(Instant::now() + d)
}
