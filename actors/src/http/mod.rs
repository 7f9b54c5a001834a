//! The engine's HTTP layer, wrapped around the application's `App`:
//!
//! - `policy` — probes, admission of every other request, the cut, and
//!   `Connection: close` once a drain begins;
//! - `deadline` — the client's deadline on its request body (408), and the
//!   count of answers that paces reading;
//! - [`probes`] — the probe paths and readiness checks;
//! - [`work`] — [`Work`], a handler's view of its admission;
//! - [`error`] — [`EngineError`], the answers the engine gives itself.

pub(crate) mod deadline;
pub mod error;
pub(crate) mod policy;
pub mod probes;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{web, App};
use tokio::sync::watch;

use crate::drain::{Admission, ConnectionChanged, DrainState};
use crate::metrics::Metrics;
pub use error::EngineError;
pub use probes::{Probes, ReadinessCheck};
pub use work::Work;

/// Told of each request the engine answers instead of the application.
/// It is told the request's method and path.
pub type OnEngineAnswer = Arc<dyn Fn(&Method, &str, EngineError) + Send + Sync>;

/// What the middleware reads, shared by every worker.
#[derive(Clone)]
pub(crate) struct EngineData {
    pub admission: Admission,
    pub state: watch::Receiver<DrainState>,
    pub probes: Probes,
    pub readiness: Vec<(String, ReadinessCheck)>,
    pub on_engine_answer: Option<OnEngineAnswer>,
    pub client_request_timeout: Duration,
    pub metrics: Metrics,
    /// Where a connection's change of kind is told (`Connection: close`).
    pub changed: actix::Recipient<ConnectionChanged>,
    /// Whether the listeners were handed to a successor.
    pub handover: crate::handoff::Handover,
}

/// What an `App<T>` is built from: the service factory `App::new()` and its
/// `.wrap`s, `.route`s and `.service`s make, answering bodies of type
/// [`AppService::Body`]. (A name for the bounds `HttpServer::new` asks of it.)
pub trait AppService:
    ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<Self::Body>,
        Error = actix_web::Error,
        InitError = (),
    > + 'static
{
    /// The body its responses carry.
    type Body: MessageBody + 'static;
}

impl<T, B> AppService for T
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    type Body = B;
}

/// The application's `App`, inside the engine's middleware.
pub(crate) fn wrap<T: AppService>(app: App<T>, data: EngineData) -> App<impl AppService> {
    app.app_data(web::Data::new(data))
        .wrap(from_fn(policy::drain_policy))
        .wrap(from_fn(deadline::client_deadline))
}
