//! The drain policy, one middleware around the application:
//!
//! - probes are answered here (see [`super::probes`]);
//! - every other request is admitted and counted — or, once admission has
//!   stopped, answered 503 `{"error":"server_shutting_down"}` without being
//!   processed;
//! - at the drain's cut, a handler that has not finished and is not shielded
//!   is dropped and answered 503 `{"error":"drain_timeout"}` or
//!   `{"error":"shutdown_forced"}`; a shielded one runs on and answers itself;
//! - from the moment a drain begins every response carries `Connection: close`
//!   (never a 101: actix would let it override the upgrade), and the
//!   coordinator hears that the connection carries no other request.

use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{ConnectionType, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use super::error::EngineError;
use super::work::Work;
use super::{probes, EngineData};
use crate::drain::{ConnId, ConnKind, ConnectionChanged, DrainState};
use crate::server::Activity;

/// See the module documentation.
pub(crate) async fn drain_policy<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(data) = req.app_data::<web::Data<EngineData>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if let Some(probe) = data.probes.find(req.path()) {
        // Only a GET is a probe; another method is refused like any request
        // once admission has stopped, and is 405 before.
        let res = if req.method() == Method::GET {
            let state = *data.state.borrow();
            // A handoff's drain is no outage: the successor serves. Its
            // probes answer as before the drain.
            let state = if data.handover.is_released() {
                DrainState::Active
            } else {
                state
            };
            probes::answer(probe, state, &data.readiness).await
        } else if data.admission.is_closed() {
            EngineError::ShuttingDown.error_response()
        } else {
            EngineError::MethodNotAllowed.error_response()
        };
        let mut res = req.into_response(res);
        if data.admission.drain_begun() {
            close_connection(&mut res, &data);
        }
        return Ok(res.map_into_right_body());
    }
    let Ok(permit) = data.admission.admit() else {
        if let Some(told) = &data.on_engine_answer {
            told(req.method(), req.path(), EngineError::ShuttingDown);
        }
        let mut res = req.into_response(EngineError::ShuttingDown.error_response());
        close_connection(&mut res, &data);
        return Ok(res.map_into_right_body());
    };
    let work = Work::new(permit);
    req.extensions_mut().insert(work.clone());
    let activity = req.conn_data::<Rc<Activity>>().cloned();
    // (Not the request itself: a clone would stop actix-web's routing.)
    let told = data
        .on_engine_answer
        .as_ref()
        .map(|told| (told.clone(), req.method().clone(), req.path().to_owned()));
    let handler = next.call(req);
    tokio::pin!(handler);
    let mut held = false;
    let answer = loop {
        tokio::select! {
            biased;
            answer = &mut handler => break Ok(answer),
            reason = work.cancelled(), if !held => {
                if work.try_drop() {
                    break Err(reason);
                }
                held = true;
                if let Some(activity) = &activity {
                    activity.shield_held();
                }
            }
        }
    };
    if held {
        if let Some(activity) = &activity {
            activity.shield_released();
        }
    }
    let mut res = match answer {
        Ok(Ok(res)) => {
            work.finished(!res.status().is_server_error());
            // The request's own copy goes now, so the count goes down as the
            // answer leaves (not when actix-web recycles the request).
            res.request().extensions_mut().remove::<Work>();
            res.map_into_left_body()
        }
        Ok(Err(e)) => return Err(e),
        // Dropped at the cut: the handler's future goes with this function.
        Err(reason) => {
            if let Some((told, method, path)) = told {
                told(&method, &path, EngineError::Cut(reason));
            }
            // Answered by actix-web from the error: 503 with the reason, and
            // the connection closes after it.
            return Err(EngineError::Cut(reason).into());
        }
    };
    // Checked after the work: a request that began before the drain and ends
    // during it also tells its client to go elsewhere.
    if data.admission.drain_begun() {
        close_connection(&mut res, &data);
    }
    Ok(res)
}

/// `Connection: close` on `res` (not on a 101), and the coordinator told the
/// connection carries nothing after it.
fn close_connection<B>(res: &mut ServiceResponse<B>, data: &EngineData) {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    res.response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    if let Some(&id) = res.request().conn_data::<ConnId>() {
        data.changed.do_send(ConnectionChanged {
            id,
            kind: ConnKind::Closing,
        });
    }
}
