//! The stdin transport for the node protocol (`drainer --stdin`).
//!
//! Not wired to the command line yet: so far only the wire format,
//! [`protocol`], is built and tested. The transport that feeds it to the
//! DrainCoordinator comes next.

pub mod protocol;
