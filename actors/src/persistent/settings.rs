//! The settings of persistent connections, and the tally of how they ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::drain::{Class, ClassFigures};

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
    pub(super) clean: [AtomicUsize; 3],
    pub(super) forced: [AtomicUsize; 3],
    /// Open now (what `drainer_persistent_connections` shows).
    pub(super) open: [AtomicUsize; 3],
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
