//! The HTTP API: routes, the drain policy middleware, and the one error type.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | 200 `{"status":"ok"}`; 503 `{"status":"shutting_down"}` once a drain begins |
//! | `GET /livez`, `GET /healthz` | 200 `{"status":"ok"}` while the process can work, the drain included |
//! | `GET /readyz` | 200 when active and the database answers; 503 `shutting_down` / `database_unavailable` |
//! | `POST /work` | 201 `{"id","name"}` after the row is committed |
//! | anything else | 404 / 405 with `{"error": …}` |
//!
//! The drain policy (one middleware, [`drain_policy`]): once the coordinator
//! stops admitting, every request other than a probe (`GET /health`, `/livez`,
//! `/healthz`, `/readyz`) is answered 503
//! `{"error":"server_shutting_down"}` without being processed; and from the
//! moment a drain begins every response carries `Connection: close`.

mod deadline;
pub mod error;
pub mod work;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, ResponseError};
use std::time::Duration;

use drainer_actors::db::Ping;
use drainer_actors::{Core, Phase};

use error::{ApiError, MAX_BODY};

/// Settings of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// A request running past this is stopped at a safe point: 504.
    pub request_timeout: Duration,
    /// From a request's first byte, how long the client has to send the
    /// whole of it (head and body): 408.
    pub client_request_timeout: Duration,
}

/// The probes: answered during a drain, never counted as work.
const PROBES: [&str; 4] = ["/health", "/livez", "/healthz", "/readyz"];

/// Builds the App for one worker.
pub fn app(
    core: Core,
    settings: HttpSettings,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let json = web::JsonConfig::default()
        .limit(MAX_BODY)
        .error_handler(|e, _| ApiError::from(e).into());
    App::new()
        .app_data(web::Data::new(core))
        .app_data(web::Data::new(settings))
        .app_data(json)
        .wrap(from_fn(drain_policy))
        .wrap(from_fn(deadline::client_deadline))
        .service(
            web::resource("/health")
                .route(web::get().to(health))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource(["/livez", "/healthz"])
                .route(web::get().to(live))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/readyz")
                .route(web::get().to(ready))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/work")
                .route(web::post().to(work::post_work))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(not_found))
}

/// See the module documentation.
async fn drain_policy(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let core = req.app_data::<web::Data<Core>>().cloned();
    let phase = || core.as_ref().map_or(Phase::Active, |c| *c.phase.borrow());
    let probe = req.method() == actix_web::http::Method::GET && PROBES.contains(&req.path());
    if !phase().admitting() && !probe {
        if req.path() == "/work" {
            if let Some(core) = &core {
                core.metrics.request("rejected");
            }
        }
        let mut res = req.into_response(ApiError::ShuttingDown.error_response());
        close_connection(&mut res);
        return Ok(res.map_into_right_body());
    }
    let mut res = next.call(req).await?;
    // Checked after the work: a request that began before the drain and ends
    // during it also tells its client to go elsewhere.
    if !phase().is_active() {
        close_connection(&mut res);
    }
    Ok(res.map_into_left_body())
}

fn close_connection<B>(res: &mut ServiceResponse<B>) {
    res.response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
}

/// `GET /health`.
async fn health(core: web::Data<Core>) -> HttpResponse {
    if core.phase.borrow().is_active() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "shutting_down" }))
    }
}

/// `GET /livez` and `/healthz`: the process is able to work.
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: active, and the database answers.
async fn ready(core: web::Data<Core>) -> HttpResponse {
    let unavailable = |status: &str| {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": status }))
    };
    if !core.phase.borrow().is_active() {
        return unavailable("shutting_down");
    }
    let Some(db) = core.db.as_ref() else {
        return unavailable("database_unavailable");
    };
    match db.send(Ping).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })),
        Ok(Err(e)) => {
            log::debug!("readiness: {e}");
            unavailable("database_unavailable")
        }
        Err(_) => unavailable("database_unavailable"),
    }
}

pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub(crate) async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
