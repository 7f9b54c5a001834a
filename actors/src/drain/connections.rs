//! The open connections, as the coordinator sees them: each one registered
//! by a [`ConnGuard`] that the transport keeps for as long as the socket lives.

use std::collections::HashMap;
use std::fmt;

use actix::{Addr, Message, Recipient};
use tokio::sync::mpsc;

use super::DrainCoordinator;

/// Identifies one open connection (unique within one transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub(crate) u64);

/// Hands out connection ids; one per transport, no process-wide counter.
#[derive(Debug, Default)]
pub struct ConnIds(u64);

impl ConnIds {
    /// The next id.
    pub fn next_id(&mut self) -> ConnId {
        self.0 = self.0.wrapping_add(1);
        ConnId(self.0)
    }
}

/// What the coordinator asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Close it unless a request on it still awaits its response: the idle
    /// sweep after the listener closed. A busy connection closes itself after
    /// its answer, which carries `Connection: close`.
    IfIdle,
    /// Close it now: the hard deadline, or a forced shutdown (a connection
    /// that still owes the answer of shielded work waits for that answer).
    Now,
}

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
        crate::metrics::PERSISTENT_CLASSES[self.index()]
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Class::WebSocket => 0,
            Class::Sse => 1,
            Class::LongPoll => 2,
        }
    }
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

/// What a connection is carrying, as far as the drain is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// Request/response exchanges: it may carry another request, so the
    /// drain waits for it (an idle one is closed after the grace).
    Exchange,
    /// Its last answer carries `Connection: close`: it carries no other
    /// request and closes once that answer is written.
    Closing,
    /// A persistent connection (a WebSocket, an SSE stream): it carries no
    /// other request; its goodbye comes as the listener closes and the
    /// `close_persistent` phase waits for it.
    Persistent(Class),
}

/// Sent by [`ConnGuard::register`]: a connection was accepted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ConnectionOpened {
    pub(crate) id: ConnId,
    pub(crate) close: mpsc::UnboundedSender<Close>,
}

/// Sent by [`ConnGuard`]'s `Drop`: a connection is gone.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ConnectionClosed {
    pub(crate) id: ConnId,
}

/// Sent when a connection changes [`ConnKind`] (it starts with `Exchange`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConnectionChanged {
    /// Which connection.
    pub id: ConnId,
    /// What it carries now.
    pub kind: ConnKind,
}

/// Held by a transport for as long as one connection lives.
pub struct ConnGuard {
    id: ConnId,
    closed: Recipient<ConnectionClosed>,
}

impl ConnGuard {
    /// Registers a new connection. The receiver tells the transport when the
    /// coordinator wants the connection closed (see [`Close`]); the transport
    /// then drops the socket, and the guard with it.
    pub fn register(
        coordinator: &Addr<DrainCoordinator>,
        id: ConnId,
    ) -> (ConnGuard, mpsc::UnboundedReceiver<Close>) {
        let (close, close_rx) = mpsc::unbounded_channel();
        coordinator.do_send(ConnectionOpened { id, close });
        let guard = ConnGuard {
            id,
            closed: coordinator.clone().recipient(),
        };
        (guard, close_rx)
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnGuard").field(&self.id).finish()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.closed.do_send(ConnectionClosed { id: self.id });
    }
}

/// The open connections as the coordinator keeps them: how to ask each to
/// close and what each carries, with the counts by kind kept as they change
/// (the drain checks them after every close: no scan of every connection).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: HashMap<ConnId, Entry>,
    /// Of them, `Exchange` ones.
    exchanges: usize,
    /// Of them, `Persistent` ones.
    persistent: usize,
}

#[derive(Debug)]
struct Entry {
    close: mpsc::UnboundedSender<Close>,
    kind: ConnKind,
}

impl Registry {
    fn count(&mut self, kind: ConnKind, up: bool) {
        let n = match kind {
            ConnKind::Exchange => &mut self.exchanges,
            ConnKind::Persistent(_) => &mut self.persistent,
            ConnKind::Closing => return,
        };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    /// A new connection, carrying exchanges.
    pub(crate) fn opened(&mut self, id: ConnId, close: mpsc::UnboundedSender<Close>) {
        let kind = ConnKind::Exchange;
        if let Some(old) = self.conns.insert(id, Entry { close, kind }) {
            self.count(old.kind, false);
        }
        self.count(kind, true);
    }

    /// `id` now carries `kind` (a persistent one stays persistent); answers
    /// how to close it when it changed.
    pub(crate) fn change(
        &mut self,
        id: ConnId,
        kind: ConnKind,
    ) -> Option<&mpsc::UnboundedSender<Close>> {
        let old = self.conns.get(&id)?.kind;
        if matches!(old, ConnKind::Persistent(_)) {
            return None;
        }
        self.count(old, false);
        self.count(kind, true);
        let entry = self.conns.get_mut(&id)?;
        entry.kind = kind;
        Some(&entry.close)
    }

    /// `id` is gone.
    pub(crate) fn closed(&mut self, id: ConnId) {
        if let Some(old) = self.conns.remove(&id) {
            self.count(old.kind, false);
        }
    }

    /// Connections open.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Connections that could still carry a request.
    pub(crate) fn exchanges(&self) -> usize {
        self.exchanges
    }

    /// Persistent connections open.
    pub(crate) fn persistent(&self) -> usize {
        self.persistent
    }

    /// Asks every connection whose kind `persistent` matches (true: the
    /// persistent ones; false: all the others) to `close`; answers how many.
    pub(crate) fn tell(&self, persistent: bool, close: Close) -> usize {
        let mut told = 0;
        for entry in self.conns.values() {
            if matches!(entry.kind, ConnKind::Persistent(_)) == persistent {
                let _ = entry.close.send(close);
                told += 1;
            }
        }
        told
    }
}
