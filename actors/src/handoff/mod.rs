//! Hot restart by socket handoff: a successor takes the running instance's
//! listening sockets over a unix control socket, so the same kernel sockets
//! serve throughout and no connection waiting in an accept queue is lost.
//!
//! # Map
//!
//! - [`socket`] — [`ControlSocket`]: the control socket (mode 0600, in a
//!   directory others cannot write), removed only at a terminal exit and only
//!   while it is still this process's.
//! - [`control`] — the running instance's side: a takeover (send the
//!   listeners, wait for `ready`, let go, `committed`, then drain as a
//!   handoff) and an upgrade (start its own successor and say how it went).
//! - [`successor`] — [`Successor`]: the new instance's side: ask, receive the
//!   listeners, prepare, say `ready`, accept only once `committed`.
//! - [`handover`] — [`Handover`]: the accept loops' gate (wait for the
//!   commit point; let go at it).
//! - [`channel`] — newline-delimited JSON over the unix socket.
//! - [`fds`] — descriptors over the socket (`SCM_RIGHTS`).
//!
//! # The protocol (version [`PROTOCOL`])
//!
//! ```text
//!  successor                                   running instance
//!  {"type":"takeover","proto":1,"pid":N}  ──▶
//!                                         ◀──  {"type":"listeners","proto":1,"pid":M,"listeners":[…]} + descriptors
//!                                              (or {"type":"refused","reason":…})
//!  prepares: database, actors, workers; accepts nothing
//!  {"type":"ready","pid":N}               ──▶
//!                                              lets go of its listeners (no shutdown, no filter)
//!                                         ◀──  {"type":"committed","pid":M}   ← the commit point
//!  accepts                                     drains as a handoff
//!                                         ◀──  {"type":"abort","reason":…}    (instead: timeout, terminating)
//!
//!  drainer upgrade                             running instance
//!  {"type":"upgrade","proto":1}           ──▶  starts its successor (which takes over as above)
//!                                         ◀──  {"type":"upgraded","pid":N} or {"type":"failed","reason":…}
//! ```
//!
//! Before the commit point the successor has accepted nothing, so a failure
//! there (it dies, it is not ready within the timeout, a SIGTERM reaches the
//! running instance) costs nothing: the successor exits and the running
//! instance carries on as if nothing happened.

pub mod channel;
pub mod control;
pub mod fds;
pub mod handover;
pub mod socket;
pub mod successor;

use std::time::Duration;

pub use control::{HandoffSettings, Upgraded};
pub use handover::Handover;
pub use socket::ControlSocket;
pub use successor::Successor;

/// The protocol's version; a peer speaking another is refused.
pub const PROTOCOL: u64 = 1;

/// How long a successor may take to say `ready`, by default, in ms (it must
/// open the database within `DB_CONNECT_TIMEOUT_MS` first).
pub const TAKEOVER_TIMEOUT_MS: u64 = 30_000;

/// [`TAKEOVER_TIMEOUT_MS`] as a duration.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_millis(TAKEOVER_TIMEOUT_MS);

/// The listening socket's inode, as the log names it (` (socket inode N)`):
/// the same number in every generation proves the socket was never rebound.
pub(crate) fn inode_note(fd: std::os::fd::RawFd) -> String {
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a descriptor this process holds; stat is writable.
    if unsafe { libc::fstat(fd, &mut stat) } == 0 {
        format!(" (socket inode {})", stat.st_ino)
    } else {
        String::new()
    }
}

/// For the backlog test only: `DRAINER_TEST_ACCEPT_DELAY_MS` makes a
/// successor wait that long between the commit point and its first accept,
/// so connections queue in the shared backlog while nobody accepts. Never
/// set it in production.
pub(crate) async fn test_accept_delay() {
    let delay = std::env::var("DRAINER_TEST_ACCEPT_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    if let Some(delay) = delay {
        log::warn!(
            "takeover: waiting {} ms before accepting (DRAINER_TEST_ACCEPT_DELAY_MS)",
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

/// Why a handoff could not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The control socket cannot be used.
    #[error("control socket {path}: {reason}")]
    Socket {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Nothing answers on the control socket.
    #[error("nothing is listening on the control socket {path} ({source})")]
    NotListening {
        /// Its path.
        path: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The running instance refused.
    #[error("the running instance refused the takeover: {0}")]
    Refused(String),
    /// The peer broke the protocol or went away.
    #[error("takeover failed: {0}")]
    Protocol(String),
    /// The running instance aborted before the commit point.
    #[error("the running instance aborted the takeover ({0}); nothing was accepted")]
    Aborted(String),
}
