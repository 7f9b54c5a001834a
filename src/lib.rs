//! drainer's jobs service, built on the engine (`drainer-engine`, in
//! `actors/`) through its public API alone, as any adopter would build.
//!
//! # Map
//!
//! - [`startup`] — signals first (the engine's `main`), then configuration,
//!   the port, the database, and the engine; every failure there is exit code 2.
//! - [`config`] — flags with environment fallbacks (clap); the database URL
//!   never prints.
//! - [`jobs`] — the service's own resources: the **DbActor**, the
//!   **RequestActor**, the **Heartbeat**, and their stop hooks.
//! - [`http`] — the routes (`POST /work`), the outcome counter, and the one
//!   error type that becomes every JSON error response of the app.
//! - [`stdin`] — the stdin transport (`--stdin`): the node protocol's codec
//!   and the node that feeds it to the same engine.
//! - [`fields`] — field rules both transports share (`latency_ms`).
//! - [`probe`] — `drainer probe <url>`: a health check client for images
//!   without curl.
//! - [`upgrade`] — `drainer upgrade`: asks the running instance to start its
//!   successor (hot restart), and how it starts one.
//!
//! The Supervisor, the DrainCoordinator, the accept loop, the probes, the
//! drain policy, the admin listener, metrics and traces are the engine's.

pub mod config;
pub mod fields;
pub mod http;
pub mod jobs;
pub mod probe;
pub mod startup;
pub mod stdin;
pub mod upgrade;
