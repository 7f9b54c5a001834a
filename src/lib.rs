//! drainer's transports: the binary's side of the actor system.
//!
//! # Map
//!
//! - [`startup`] — signals first, then configuration, the port, the database,
//!   and the actors; every failure there is exit code 2.
//! - [`config`] — flags with environment fallbacks (clap); the database URL
//!   never prints.
//! - [`server`] — the HTTP transport: drainer's own accept loop (so the
//!   coordinator knows every connection, and the listener closes without
//!   resetting queued clients) feeding actix-web workers, over a stream that
//!   bounds hostile clients (a deadline on every request, no reading while
//!   the client reads none of its answers).
//! - [`admin`] — the admin listener (`ADMIN_PORT`): `/metrics` and
//!   `/admin/prestop`, stopped in its own shutdown phase after the API drains.
//! - [`telemetry`] — where the shutdown trace goes (`OTEL_*` variables).
//! - [`fields`] — field rules both transports share (`latency_ms`).
//! - [`http`] — the routes, the drain-policy middleware, and the one error
//!   type that becomes every JSON error response.
//! - [`stdin`] — the stdin transport (`--stdin`): the node protocol's codec
//!   and the node that feeds it to the same actors.
//!
//! The actors themselves — Supervisor, DrainCoordinator, RequestActor, DbActor,
//! Heartbeat — and the shutdown's lifecycle registry and metrics live in the `drainer-actors` crate, which knows nothing of HTTP.

pub mod admin;
pub mod config;
pub mod fields;
pub mod http;
pub mod server;
pub mod startup;
pub mod stdin;
pub mod telemetry;
