//! A server-sent events response drained on purpose.
//!
//! [`stream`] turns the application's events into a `text/event-stream`
//! body, with a comment line every `SSE_KEEPALIVE_MS` so that proxies do not
//! time the stream out. At the goodbye the stream gets `retry:
//! <SSE_RETRY_MS>` and `event: reconnect` (with `data: {}`: an EventSource
//! drops an event without data), then ends cleanly — the chunked terminator,
//! then the connection closes — and the client reconnects elsewhere. A new
//! stream after the listener has closed gets 200 with the same goodbye and
//! an at-once ended body, never 503: a browser's EventSource gives up for
//! good on any answer but 200.

use std::fmt::Write as _;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::{after, Class, Farewell, Held, Persistence};
use crate::http::EngineError;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `id:` (what a reconnecting client sends back as `Last-Event-ID`).
    pub id: Option<String>,
    /// Its `event:` name.
    pub event: Option<String>,
    /// Its `data:` (one `data:` line per line).
    pub data: String,
}

impl Event {
    fn encode(&self) -> Bytes {
        let mut out = String::new();
        if let Some(id) = &self.id {
            let _ = writeln!(out, "id: {id}");
        }
        if let Some(event) = &self.event {
            let _ = writeln!(out, "event: {event}");
        }
        for line in self.data.split('\n') {
            let _ = writeln!(out, "data: {line}");
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// The application's events fell too far behind: the stream is dropped
/// (counted in `drainer_persistent_dropped_total{class="sse"}`) rather than
/// holding the others back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

/// The goodbye: how long to wait before reconnecting, and a last event that
/// says so.
fn goodbye(retry: Duration) -> Bytes {
    Bytes::from(format!(
        "retry: {}\nevent: reconnect\ndata: {{}}\n\n",
        retry.as_millis()
    ))
}

/// A `text/event-stream` answer carrying `events`, drained on purpose (see
/// the module documentation).
///
/// ```no_run
/// use actix_web::{HttpRequest, HttpResponse};
/// use drainer_engine::persistent::sse::{self, Event};
///
/// async fn events(req: HttpRequest) -> HttpResponse {
///     let ticks = futures_util::stream::iter([Ok(Event {
///         id: Some("1".into()),
///         event: Some("tick".into()),
///         data: "{}".into(),
///     })]);
///     sse::stream(&req, ticks)
/// }
/// ```
pub fn stream<S>(req: &HttpRequest, events: S) -> HttpResponse
where
    S: Stream<Item = Result<Event, Lagged>> + 'static,
{
    let Some(persistence) = Persistence::of(req) else {
        return EngineError::NotServed.error_response();
    };
    let mut res = HttpResponse::Ok();
    res.content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"));
    let retry = persistence.settings.sse_retry;
    if persistence.goodbye_said() {
        // Reconnect elsewhere, at once; the connection closes after this.
        res.force_close();
        let body =
            futures_util::stream::once(
                async move { Ok::<_, std::convert::Infallible>(goodbye(retry)) },
            );
        return res.streaming(body);
    }
    let held = persistence.hold(req, Class::Sse);
    let state = Sse {
        events: Box::pin(events),
        farewell: persistence.farewell.clone(),
        keepalive: persistence.settings.sse_keepalive,
        retry,
        held,
        persistence,
        ended: false,
    };
    res.streaming(futures_util::stream::unfold(state, Sse::next))
}

struct Sse {
    events: Pin<Box<dyn Stream<Item = Result<Event, Lagged>>>>,
    farewell: watch::Receiver<Farewell>,
    keepalive: Duration,
    retry: Duration,
    held: Held,
    persistence: Persistence,
    ended: bool,
}

impl Sse {
    /// The next chunk, or the end (which closes the connection once written).
    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Sse)> {
        if self.ended {
            self.held.body_ended();
            return None;
        }
        let keepalive = tokio::time::sleep_until(after(self.keepalive));
        tokio::pin!(keepalive);
        let chunk = tokio::select! {
            biased;
            changed = self.farewell.wait_for(|f| *f != Farewell::Serving) => {
                // Goodbye or forced: the goodbye is written either way; it
                // is clean unless forced.
                let forced = changed.map_or(true, |f| *f == Farewell::Forced);
                self.held.clean_flag().set(!forced);
                self.ended = true;
                goodbye(self.retry)
            }
            event = self.events.next() => match event {
                Some(Ok(event)) => event.encode(),
                Some(Err(Lagged)) => {
                    self.persistence.metrics.persistent_dropped(Class::Sse);
                    log::info!("an SSE client fell too far behind: its stream is dropped");
                    self.held.body_ended();
                    return None;
                }
                None => {
                    self.held.body_ended();
                    return None;
                }
            },
            () = &mut keepalive => Bytes::from_static(b": keepalive\n\n"),
        };
        Some((Ok(chunk), self))
    }
}
