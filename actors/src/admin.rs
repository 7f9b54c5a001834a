//! The admin listener (`ADMIN_PORT`): `/metrics` and `/admin/prestop`, on a
//! port of its own so that only those who can reach it can take the instance
//! out of service.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text format |
//! | `POST /admin/prestop` (or `GET` with `X-Drainer-Prestop: true`, for Kubernetes' `preStop.httpGet`) | begins the drain; 200 `{"status":"draining"}` once the delay is over |
//! | anything else | 404 / 405 with `{"error": …}` |
//!
//! Its connections are not work: the DrainCoordinator never sees them, so a
//! scrape never holds up the drain. It stops in its own phase, `stop_admin`,
//! after the API has drained (so the drain itself can be scraped): the accept
//! loop ends and every admin connection is closed. Completion is tracked by
//! ownership: the accept loop and each connection hold a receiver of the stop
//! channel, and the phase ends when the last one is dropped.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix_service::{map_config, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse};
use log::{error, info};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::census::Census;
use crate::http::EngineError;
use crate::supervisor::StopFn;
use crate::transport::{Core, PreStop};

/// How long an idle scrape connection stays open.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Admin requests being answered (a prestop waits for its delay): the stop
/// lets them finish before it closes their connections.
#[derive(Clone)]
struct Busy(watch::Sender<usize>);

/// Held while one admin request is answered.
struct Answering(watch::Sender<usize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Makes a bound listener ready to serve (on the System's runtime).
pub(crate) fn bind(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Starts serving on `listener`; answers the `stop_admin` phase's work.
pub(crate) fn start(listener: TcpListener, core: &Core) -> StopFn {
    let (stop, stopped) = watch::channel(false);
    let busy = Busy(watch::channel(0).0);
    let mut answered = busy.0.subscribe();
    if let Ok(addr) = listener.local_addr() {
        info!("admin listener on {addr} (/metrics, /admin/prestop)");
    }
    let census = core.census.clone();
    census.spawn(accept_loop(
        listener,
        core.clone(),
        busy,
        stopped,
        census.clone(),
    ));
    Box::new(move |ctx| {
        Box::pin(async move {
            // A request being answered (a prestop's 200) is written first.
            let _ = tokio::time::timeout_at(ctx.deadline, answered.wait_for(|n| *n == 0)).await;
            let _ = stop.send(true);
            // Every receiver dropped: the accept loop and each connection are gone.
            stop.closed().await;
            info!("admin listener stopped");
            Ok(())
        })
    })
}

/// Accepts until told to stop; serves each connection in a task of its own.
async fn accept_loop(
    listener: TcpListener,
    core: Core,
    busy: Busy,
    mut stop: watch::Receiver<bool>,
    census: Census,
) {
    let handover = core.handover.clone();
    let factory = actix_http::HttpService::build()
        .keep_alive(KEEP_ALIVE)
        .h1(map_config(app(core, busy), |_| AppConfig::default()));
    let service = match factory.new_service(()).await {
        Ok(service) => Rc::new(service),
        Err(()) => {
            error!("the admin listener could not build its HTTP service");
            return;
        }
    };
    let connections = stop.clone();
    let accepting = handover.accepting();
    // A successor's admin listener accepts once the takeover is committed.
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => return,
        _ = handover.opened() => {}
    }
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = handover.released() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    census.spawn(serve(service.clone(), stream, peer, connections.clone()));
                }
                Err(e) => crate::server::accept_error(e).await,
            },
        }
    }
    // Handed over: let go of this descriptor only; the connections already
    // open are served until the stop.
    drop(listener);
    drop(accepting);
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves one connection until it closes or the listener stops.
async fn serve<S>(
    service: Rc<S>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<(tokio::net::TcpStream, Option<SocketAddr>)>,
{
    let _ = stream.set_nodelay(true);
    tokio::select! {
        _ = service.call((stream, Some(peer))) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The admin routes.
fn app(
    core: Core,
    busy: Busy,
) -> App<
    impl ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(core))
        .app_data(web::Data::new(busy))
        .wrap(from_fn(count_busy))
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/admin/prestop")
                .route(web::post().to(prestop))
                .route(web::get().to(prestop_get))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(not_found))
}

/// Counts the request as being answered until its response is ready (the
/// connection's task writes it in the same turn).
async fn count_busy(
    req: actix_web::dev::ServiceRequest,
    next: Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let busy = req.app_data::<web::Data<Busy>>().map(|b| b.0.clone());
    let _answering = busy.map(|busy| {
        busy.send_modify(|n| *n += 1);
        Answering(busy)
    });
    next.call(req).await
}

/// `GET /metrics`.
async fn metrics(core: web::Data<Core>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(core.metrics.content_type())
        .body(core.metrics.render())
}

/// The header a `GET /admin/prestop` must carry: a stray GET (a crawler, a
/// mistyped scrape path) must not take the instance out of service.
pub const PRESTOP_HEADER: &str = "x-drainer-prestop";

/// `GET /admin/prestop`, for Kubernetes' `preStop.httpGet` (which can only
/// send GET, with headers): needs [`PRESTOP_HEADER`]` : true`.
async fn prestop_get(
    req: actix_web::HttpRequest,
    core: web::Data<Core>,
) -> Result<HttpResponse, EngineError> {
    let asked = req
        .headers()
        .get(PRESTOP_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if !asked {
        return Err(EngineError::PrestopHeaderMissing);
    }
    prestop(core).await
}

/// `POST /admin/prestop`: answered once the delay is over.
async fn prestop(core: web::Data<Core>) -> Result<HttpResponse, EngineError> {
    core.prestop()
        .send(PreStop)
        .await
        .map_err(|_| EngineError::NotServed)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "draining" })))
}

async fn not_found() -> Result<HttpResponse, EngineError> {
    Err(EngineError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, EngineError> {
    Err(EngineError::MethodNotAllowed)
}
