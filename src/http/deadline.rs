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

use super::HttpSettings;
use crate::server::Activity;
use drainer_actors::Core;

/// The error a body read ends with when its deadline passes.
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// See the module documentation.
pub async fn client_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let activity = req.conn_data::<Rc<Activity>>().cloned();
    let timeout = req
        .app_data::<web::Data<HttpSettings>>()
        .map(|s| s.client_request_timeout);
    if let (Some(activity), Some(timeout)) = (&activity, timeout) {
        let began = activity.request_started().unwrap_or_else(Instant::now);
        // A request without a body (every probe) has nothing to bound.
        match req.take_payload() {
            Payload::None => {}
            body => req.set_payload(Payload::from(Box::pin(Deadline::new(body, began, timeout))
                as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>)),
        }
    }
    let metrics = req
        .app_data::<web::Data<Core>>()
        .map(|core| core.metrics.clone());
    let answer = next.call(req).await;
    if let Some(activity) = activity {
        activity.answered();
    }
    if let (Ok(res), Some(metrics)) = (&answer, metrics) {
        if res.status() == actix_web::http::StatusCode::REQUEST_TIMEOUT {
            metrics.client_timeout("body");
        }
    }
    answer
}

/// A body that fails with `TimedOut` once its deadline has passed.
struct Deadline {
    body: Payload,
    timer: Pin<Box<actix_rt::time::Sleep>>,
}

impl Deadline {
    fn new(body: Payload, began: Instant, timeout: Duration) -> Self {
        let at = tokio::time::Instant::from_std(began + timeout);
        Deadline {
            body,
            timer: Box::pin(actix_rt::time::sleep_until(at)),
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
            Poll::Ready(()) => Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body did not arrive within CLIENT_REQUEST_TIMEOUT_MS",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }
}
