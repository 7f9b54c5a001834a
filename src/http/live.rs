//! The live endpoints, on the engine's drained persistent connections:
//!
//! | route | answer |
//! |---|---|
//! | `GET /ws` | WebSocket echo; Close 1001 at the goodbye |
//! | `GET /events` | every job this instance commits, as SSE (`id: <seq>`, `event: job`); `retry:` and `event: reconnect` at the goodbye. `Last-Event-ID` is not replayed |
//! | `GET /poll?timeout_ms=N&since=<seq>` | 200 `{"events": [...]}` once a job is committed (or at once with those after `since`), 204 at the timeout or the goodbye |

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use drainer_engine::persistent::poll::{self, Polled};
use drainer_engine::persistent::sse::{self, Lagged};
use drainer_engine::persistent::ws;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::Jobs;
use crate::jobs::feed::{JobEvent, Subscribe};

/// The longest `timeout_ms` a poll may ask for.
pub const MAX_POLL_MS: u64 = 60_000;
/// A poll's `timeout_ms` when it names none.
pub const DEFAULT_POLL_MS: u64 = 30_000;

/// `GET /ws`: text and binary frames come back unchanged.
pub async fn websocket(req: HttpRequest, body: web::Payload) -> HttpResponse {
    ws::websocket(&req, body, Some)
}

/// `GET /events`: the committed jobs as server-sent events.
pub async fn events(req: HttpRequest, jobs: web::Data<Jobs>) -> Result<HttpResponse, ApiError> {
    let subscription = jobs
        .feed
        .send(Subscribe { since: None })
        .await
        .map_err(|_| ApiError::Internal)?;
    let stream = futures_util::stream::unfold(subscription.next, |mut next| async move {
        match next.recv().await {
            Ok(event) => Some((Ok(event.sse.clone()), next)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Err(Lagged), next)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    Ok(sse::stream(&req, stream))
}

fn poll_event(event: &JobEvent) -> Value {
    json!({"seq": event.seq, "id": event.job.id.to_string(), "name": event.job.name})
}

/// What a poll asks for.
struct PollQuery {
    timeout: Duration,
    since: Option<u64>,
}

impl PollQuery {
    fn parse(query: &str) -> Result<PollQuery, ApiError> {
        let mut timeout_ms = DEFAULT_POLL_MS;
        let mut since = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "timeout_ms" => {
                    timeout_ms = value
                        .parse()
                        .ok()
                        .filter(|ms| *ms <= MAX_POLL_MS)
                        .ok_or_else(|| {
                            ApiError::Invalid(format!(
                                "timeout_ms must be a whole number from 0 to {MAX_POLL_MS}"
                            ))
                        })?
                }
                "since" => {
                    since = Some(value.parse().map_err(|_| {
                        ApiError::Invalid("since must be a whole number (a seq)".into())
                    })?)
                }
                _ => {}
            }
        }
        Ok(PollQuery {
            timeout: Duration::from_millis(timeout_ms),
            since,
        })
    }
}

/// `GET /poll`: a long-poll for the next committed jobs.
pub async fn poll(req: HttpRequest, jobs: web::Data<Jobs>) -> Result<HttpResponse, ApiError> {
    let query = PollQuery::parse(req.query_string())?;
    let subscription = jobs
        .feed
        .send(Subscribe { since: query.since })
        .await
        .map_err(|_| ApiError::Internal)?;
    if !subscription.past.is_empty() {
        return Ok(answer(&subscription.past));
    }
    let mut next = subscription.next;
    let wait = async move {
        let mut events = Vec::new();
        loop {
            match next.recv().await {
                Ok(event) => {
                    events.push(event);
                    // What else is already there goes in the same answer.
                    while let Ok(more) = next.try_recv() {
                        events.push(more);
                    }
                    return events;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return events,
            }
        }
    };
    Ok(match poll::long_poll(&req, query.timeout, wait).await {
        Polled::Ready(events) if !events.is_empty() => answer(&events),
        Polled::Ready(_) | Polled::TimedOut | Polled::Goodbye => HttpResponse::NoContent().finish(),
    })
}

fn answer(events: &[Arc<JobEvent>]) -> HttpResponse {
    let events: Vec<Value> = events.iter().map(|e| poll_event(e)).collect();
    HttpResponse::Ok().json(json!({ "events": events }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_queries_are_checked() {
        let q = PollQuery::parse("").expect("defaults");
        assert_eq!((q.timeout, q.since), (Duration::from_secs(30), None));
        let q = PollQuery::parse("timeout_ms=0&since=7").expect("valid");
        assert_eq!((q.timeout, q.since), (Duration::ZERO, Some(7)));
        for bad in [
            "timeout_ms=60001",
            "timeout_ms=-1",
            "timeout_ms=soon",
            "since=x",
        ] {
            assert!(
                matches!(PollQuery::parse(bad), Err(ApiError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
