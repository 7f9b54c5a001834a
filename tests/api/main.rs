//! Integration tests: the real `drainer` binary, on a free port, against a
//! throwaway database of its own. One test binary, shared helpers.

mod batching;
mod contract;
mod deploy;
mod downstream;
mod faultproxy;
mod faults;
mod handoff;
mod hostile;
mod lease;
mod lifecycle;
mod operations;
mod persistent;
mod relay;
mod shutdown;
mod startup;
mod stdin;
mod support;
