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

use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use super::{after, goodbye, Class, Farewell, Held, Persistence};
use crate::http::EngineError;

/// One event, encoded once: cloning it (to send it to many streams) copies
/// no bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event(Bytes);

impl Event {
    /// An event with an `id:` (what a reconnecting client sends back as
    /// `Last-Event-ID`), an `event:` name and its `data:` (one `data:` line
    /// per line).
    pub fn new(id: Option<&str>, event: Option<&str>, data: &str) -> Event {
        let mut out = String::with_capacity(data.len() + 32);
        if let Some(id) = id {
            let _ = writeln!(out, "id: {id}");
        }
        if let Some(event) = event {
            let _ = writeln!(out, "event: {event}");
        }
        for line in data.split('\n') {
            let _ = writeln!(out, "data: {line}");
        }
        out.push('\n');
        Event(Bytes::from(out))
    }

    /// The event as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The application's events fell too far behind: the stream is dropped
/// (counted in `drainer_persistent_dropped_total{class="sse"}`) rather than
/// holding the others back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

/// How long a stream waits, after an event, for more to send with it —
/// only while at least [`GATHER_FROM`] streams are open: then the wake-ups
/// and writes, one per stream per event, are what limits the service, and a
/// few milliseconds of delay divide them. (With few streams nothing waits:
/// at 25,000 events/s a wait of a few ms is most of the 256 events a stream
/// may fall behind.)
pub const GATHER: Duration = Duration::from_millis(5);

/// See [`GATHER`].
pub const GATHER_FROM: usize = 100;

/// The most bytes of ready events sent as one chunk.
pub const BATCH_BYTES: usize = 64 * 1024;

/// The goodbye: how long to wait before reconnecting, and a last event that
/// says so.
fn farewell_chunk(retry: Duration) -> Bytes {
    Bytes::from(format!(
        "retry: {}\nevent: reconnect\ndata: {{}}\n\n",
        retry.as_millis()
    ))
}

/// A `text/event-stream` answer carrying `events`, drained on purpose (see
/// the module documentation).
///
/// Events that are ready together go out in one chunk (at most
/// [`BATCH_BYTES`]): a stream with many subscribers costs one write per
/// wake-up, not one per event.
///
/// ```no_run
/// use actix_web::{HttpRequest, HttpResponse};
/// use drainer_engine::persistent::sse::{self, Event};
///
/// async fn events(req: HttpRequest) -> HttpResponse {
///     let ticks = futures_util::stream::iter([Ok(Event::new(Some("1"), Some("tick"), "{}"))]);
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
        let body = futures_util::stream::once(async move {
            Ok::<_, std::convert::Infallible>(farewell_chunk(retry))
        });
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
        pending: None,
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
    /// What batching found after the events it took: met on the next call.
    pending: Option<Option<Result<Event, Lagged>>>,
}

impl Sse {
    /// The next chunk, or the end (which closes the connection once written).
    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Sse)> {
        if self.ended {
            self.held.body_ended();
            return None;
        }
        if let Some(item) = self.pending.take() {
            let chunk = self.item(item)?;
            return Some((Ok(chunk), self));
        }
        let keepalive = tokio::time::sleep_until(after(self.keepalive));
        tokio::pin!(keepalive);
        let chunk = tokio::select! {
            biased;
            farewell = goodbye(&mut self.farewell) => {
                // Goodbye or forced: the goodbye is written either way; it
                // is clean unless forced.
                let forced = farewell == Farewell::Forced;
                self.held.clean_flag().set(!forced);
                self.ended = true;
                farewell_chunk(self.retry)
            }
            item = self.events.next() => {
                if matches!(item, Some(Ok(_)))
                    && self.persistence.tally.open(Class::Sse) >= GATHER_FROM
                {
                    // Let the events that follow it gather (one write, one
                    // wake-up for many), unless the goodbye comes.
                    let gather = tokio::time::sleep(GATHER);
                    tokio::select! {
                        biased;
                        _ = goodbye(&mut self.farewell) => {}
                        () = gather => {}
                    }
                }
                self.item(item)?
            }
            () = &mut keepalive => Bytes::from_static(b": keepalive\n\n"),
        };
        Some((Ok(chunk), self))
    }

    /// What to send for an item of the application's stream: its event and
    /// the ones ready after it; nothing once it lagged or ended (the body
    /// then ends, and the connection closes once that is written).
    fn item(&mut self, item: Option<Result<Event, Lagged>>) -> Option<Bytes> {
        match item {
            Some(Ok(event)) => Some(self.batch(event)),
            Some(Err(Lagged)) => {
                self.drop_lagging();
                None
            }
            None => {
                self.held.body_ended();
                None
            }
        }
    }

    /// `first` and whatever else is ready now, as one chunk. (A lag or the
    /// end found here is met on the next call.)
    fn batch(&mut self, first: Event) -> Bytes {
        let mut chunk = match self.events.next().now_or_never() {
            Some(Some(Ok(second))) => {
                let mut chunk = BytesMut::with_capacity(2 * first.0.len());
                chunk.extend_from_slice(&first.0);
                chunk.extend_from_slice(&second.0);
                chunk
            }
            Some(other) => {
                self.pending = Some(other);
                return first.0;
            }
            None => return first.0,
        };
        while chunk.len() < BATCH_BYTES {
            match self.events.next().now_or_never() {
                Some(Some(Ok(event))) => chunk.extend_from_slice(&event.0),
                Some(other) => {
                    self.pending = Some(other);
                    break;
                }
                None => break,
            }
        }
        chunk.freeze()
    }

    /// The client fell too far behind: the stream ends, counted.
    fn drop_lagging(&mut self) {
        self.persistence
            .metrics
            .persistent_dropped(Class::Sse.as_str());
        log::info!("an SSE client fell too far behind: its stream is dropped");
        self.held.body_ended();
    }
}
