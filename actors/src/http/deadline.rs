//! The client's deadline on its request body, and the count of answers.
//!
//! The connection's [`Activity`] times every request from its first byte; while
//! the app is handling a request, the app bounds its body: a body that has not
//! arrived by `CLIENT_REQUEST_TIMEOUT_MS` after the request's first byte ends
//! in an error that becomes 408 `{"error":"client_request_timeout"}` with
//! `Connection: close` (the rest of the body would never be read). Every
//! answer is told to the [`Activity`], which pauses reading while too many are
//! owed.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;
use futures_util::Stream;

use super::{EngineData, EngineError};
use crate::server::Activity;
use actix_web::ResponseError;
use std::cell::Cell;

/// See the module documentation.
pub async fn client_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let activity = req.conn_data::<Rc<Activity>>().cloned();
    let data = req.app_data::<web::Data<EngineData>>().cloned();
    // Allocated only for a request with a body.
    let mut fired = None;
    if let (Some(activity), Some(data)) = (&activity, &data) {
        let began = activity.request_started().unwrap_or_else(Instant::now);
        let timeout = data.client_request_timeout;
        // A request without a body (every probe) has nothing to bound; an
        // upgrade's "body" is the upgraded protocol, bounded by its session.
        match req.take_payload() {
            Payload::None => {}
            body if req.head().upgrade() => req.set_payload(body),
            body => {
                let flag = Rc::new(Cell::new(false));
                fired = Some(flag.clone());
                req.set_payload(Payload::from(
                    Box::pin(Deadline::new(body, began, timeout, flag))
                        as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>,
                ))
            }
        }
    }
    let answer = next.call(req).await;
    if let Some(activity) = activity {
        activity.answered();
    }
    let answer = answer.map(|res| {
        // The body ran out of time, whatever the handler made of the error:
        // 408, and the connection ends (the rest would never be read).
        if fired.as_ref().is_some_and(|f| f.get()) && res.status().is_client_error() {
            let (req, _) = res.into_parts();
            ServiceResponse::new(req, EngineError::ClientTimeout.error_response())
                .map_into_right_body()
        } else {
            res.map_into_left_body()
        }
    });
    if let (Ok(res), Some(data)) = (&answer, &data) {
        if res.status() == actix_web::http::StatusCode::REQUEST_TIMEOUT {
            data.metrics.client_timeout("body");
        }
    }
    answer
}

/// A body that fails with `TimedOut` once its deadline has passed.
struct Deadline {
    body: Payload,
    timer: Pin<Box<actix_rt::time::Sleep>>,
    /// Set when the deadline passed before the body's end.
    fired: Rc<Cell<bool>>,
}

impl Deadline {
    fn new(body: Payload, began: Instant, timeout: Duration, fired: Rc<Cell<bool>>) -> Self {
        let at = tokio::time::Instant::from_std(began + timeout);
        Deadline {
            body,
            timer: Box::pin(actix_rt::time::sleep_until(at)),
            fired,
        }
    }
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.body).poll_next(cx) {
            return Poll::Ready(item);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.fired.set(true);
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive within CLIENT_REQUEST_TIMEOUT_MS",
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
