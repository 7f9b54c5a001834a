//! The stdin transport: `drainer --stdin` speaks the node protocol
//! (newline-delimited JSON on stdin and stdout) through the same
//! DrainCoordinator and Supervisor as the HTTP service. See docs/protocol.md.
//!
//! - [`protocol`] — the wire format: parsing lines, writing byte-exact replies.
//! - [`node`] — the transport: ordered handling of lines, the deadline queue,
//!   drains asked for by the protocol, the end of input.

pub mod node;
pub mod protocol;
