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
pub(crate) mod settings;
pub mod sse;
pub mod ws;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use actix_web::{web, HttpRequest};
use tokio::sync::watch;

use crate::census::Census;
pub use crate::drain::{Class, ClassFigures, Farewell};
use crate::drain::{ConnId, ConnKind, ConnectionChanged};
use crate::metrics::Metrics;
use crate::server::Activity;
pub use settings::{defaults, PersistentSettings, Tally};

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
        req.app_data::<web::Data<Persistence>>()
            .map(|p| p.get_ref().clone())
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
        self.metrics.persistent_open(class.as_str(), 1);
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
        p.metrics.persistent_open(self.class.as_str(), -1);
        p.tally.open[self.class.index()].fetch_sub(1, Ordering::Relaxed);
        if *p.farewell.borrow() == Farewell::Serving {
            return;
        }
        let i = self.class.index();
        if self.clean.get() {
            p.tally.clean[i].fetch_add(1, Ordering::AcqRel);
        } else {
            p.tally.forced[i].fetch_add(1, Ordering::AcqRel);
            p.metrics.persistent_forced(self.class.as_str());
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
