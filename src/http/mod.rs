//! The jobs service's HTTP API: its routes, its outcome counter, and the one
//! error type. The engine wraps it: probes, admission, the drain policy and
//! the body deadline are the engine's (see docs/engine.md).
//!
//! | route | answer |
//! |---|---|
//! | `POST /work` | 201 `{"id","name"}` after the row is committed (and, with `DOWNSTREAM_URL`, after the downstream said yes: 502 / 504 otherwise) |
//! | `GET /ws`, `/events`, `/poll` | the live endpoints (see [`live`]) |
//! | `GET /health`, `/livez`, `/healthz`, `/readyz` | the engine's probes; `/readyz` also pings the database (`database_unavailable`) |
//! | anything else | 404 / 405 with `{"error": …}` |

pub mod error;
pub mod live;
pub mod work;

use std::time::Duration;

use actix::Addr;
use actix_web::{web, App, HttpResponse};
use drainer_engine::http::AppService;
use drainer_engine::{Census, EngineError, Metrics};
use prometheus::{IntCounterVec, Opts};

use crate::jobs::db::DbActor;
use crate::jobs::downstream::{Downstream, DownstreamSettings};
use crate::jobs::feed::Feed;
use error::{ApiError, MAX_BODY};

/// Every value of `drainer_requests_total{outcome}`.
pub const OUTCOMES: [&str; 10] = [
    "created",
    "rejected",
    "drain_timeout",
    "shutdown_forced",
    "request_timeout",
    "cancelled",
    "overloaded",
    "downstream_failed",
    "downstream_timeout",
    "error",
];

/// `drainer_requests_total{outcome}`: POST /work requests by outcome, every
/// outcome present from start-up at 0, on the engine's registry.
#[derive(Clone)]
pub struct Outcomes(IntCounterVec);

impl Outcomes {
    /// Registers the family on `metrics`.
    pub fn register(metrics: &Metrics) -> Result<Outcomes, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("drainer_requests_total", "POST /work requests by outcome."),
            &["outcome"],
        )?;
        for outcome in OUTCOMES {
            requests.with_label_values(&[outcome]);
        }
        metrics.registry().register(Box::new(requests.clone()))?;
        Ok(Outcomes(requests))
    }

    /// One POST /work answered with `outcome` (one of [`OUTCOMES`]).
    pub fn count(&self, outcome: &str) {
        self.0.with_label_values(&[outcome]).inc();
    }

    /// The engine answered a request for the app: counted when it was POST /work.
    pub fn engine_answered(&self, path: &str, answer: EngineError) {
        if path != "/work" {
            return;
        }
        match answer {
            EngineError::ShuttingDown => self.count("rejected"),
            EngineError::Cut(reason) => self.count(reason.as_str()),
            _ => self.count("error"),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct Jobs {
    /// Where jobs are written.
    pub db: Addr<DbActor>,
    /// Where committed jobs are announced, and streams and polls subscribe.
    pub feed: Addr<Feed>,
    /// The outcome counter.
    pub outcomes: Outcomes,
    /// The engine's leak check, for the RequestActors.
    pub census: Census,
    /// A request running past this is stopped at a safe point: 504.
    pub request_timeout: Duration,
    /// The service POST /work calls before it writes (`DOWNSTREAM_URL`).
    pub downstream: Option<DownstreamSettings>,
}

/// Builds the App for one worker.
pub fn app(jobs: Jobs) -> App<impl AppService> {
    let json = web::JsonConfig::default()
        .limit(MAX_BODY)
        .error_handler(|e, _| ApiError::from(e).into());
    // Its client is built here, on the worker's own thread.
    let downstream = jobs.downstream.as_ref().map(Downstream::new);
    let app = App::new();
    let app = match downstream {
        Some(d) => app.app_data(web::Data::new(d)),
        None => app,
    };
    app.app_data(web::Data::new(jobs))
        .app_data(json)
        .service(
            web::resource("/work")
                .route(web::post().to(work::post_work))
                .default_service(web::to(method_not_allowed)),
        )
        .route("/ws", web::get().to(live::websocket))
        .route("/events", web::get().to(live::events))
        .route("/poll", web::get().to(live::poll))
        .default_service(web::to(not_found))
}

/// The engine's answers for paths and methods the app does not have.
async fn not_found() -> Result<HttpResponse, EngineError> {
    Err(EngineError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, EngineError> {
    Err(EngineError::MethodNotAllowed)
}
