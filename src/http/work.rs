//! `POST /work`: validate, hand the work to a RequestActor (the engine has
//! admitted the request already), answer.

use std::time::Duration;

use actix::Actor;
use actix_web::{web, HttpResponse};
use drainer_engine::Work;
use serde_json::Value;

use super::error::ApiError;
use super::Jobs;
use crate::fields;
use crate::jobs::downstream::Downstream;
use crate::jobs::request::{Process, RequestActor};

/// The longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 1000;

/// A valid request body.
#[derive(Debug, PartialEq, Eq)]
pub struct NewJob {
    /// The job's name: a non-blank string of at most 1000 characters.
    pub name: String,
    /// The simulated processing time.
    pub latency: Duration,
    /// Whether the work may be declined when a drain begins.
    pub cancellable: bool,
}

impl TryFrom<Value> for NewJob {
    type Error = ApiError;

    fn try_from(body: Value) -> Result<Self, ApiError> {
        let invalid = |msg: &str| ApiError::Invalid(msg.to_string());
        let Value::Object(mut body) = body else {
            return Err(invalid("the body must be a JSON object"));
        };
        let name = match body.remove("name") {
            None | Some(Value::Null) => return Err(invalid("name is required")),
            Some(Value::String(name)) => name,
            Some(_) => return Err(invalid("name must be a string")),
        };
        if name.trim().is_empty() {
            return Err(invalid("name must not be empty"));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(invalid("name must be at most 1000 characters"));
        }
        // PostgreSQL's text cannot hold NUL: the client's mistake, not ours.
        if name.contains('\0') {
            return Err(invalid("name must not contain NUL characters"));
        }
        let latency_ms = fields::latency_ms(body.remove("latency_ms")).map_err(invalid)?;
        let cancellable = match body.remove("cancellable") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(invalid("cancellable must be a boolean")),
        };
        Ok(NewJob {
            name,
            latency: Duration::from_millis(latency_ms),
            cancellable,
        })
    }
}

/// Validates, runs the work, answers 201; counts the outcome.
pub async fn post_work(
    work: Work,
    body: web::Json<Value>,
    jobs: web::Data<Jobs>,
    downstream: Option<web::Data<Downstream>>,
) -> Result<HttpResponse, ApiError> {
    let answer = post(work, body, &jobs, downstream.as_ref().map(|d| d.get_ref())).await;
    jobs.outcomes.count(match &answer {
        Ok(_) => "created",
        Err(e) => e.outcome(),
    });
    answer
}

async fn post(
    work: Work,
    body: web::Json<Value>,
    jobs: &Jobs,
    downstream: Option<&Downstream>,
) -> Result<HttpResponse, ApiError> {
    let deadline = tokio::time::Instant::now() + jobs.request_timeout;
    let job = NewJob::try_from(body.into_inner())?;
    let id = uuid::Uuid::new_v4();
    // Before the work's safe point: at the cut this is dropped with the call.
    if let Some(downstream) = downstream {
        downstream.call(id, &job.name).await?;
    }
    let stored = RequestActor::new(work, jobs.db.clone(), jobs.census.clone())
        .announcing_to(jobs.feed.clone().recipient())
        .start()
        .send(Process {
            id,
            name: job.name,
            latency: job.latency,
            deadline: Some(deadline),
            declines_on_drain: job.cancellable,
        })
        .await??;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": stored.id.to_string(),
        "name": stored.name,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        NewJob::try_from(v).expect_err("invalid").to_string()
    }

    #[test]
    fn accepts_name_and_optional_latency() {
        assert_eq!(
            NewJob::try_from(json!({"name": "a"})).unwrap(),
            NewJob {
                name: "a".into(),
                latency: Duration::ZERO,
                cancellable: false
            }
        );
        assert_eq!(
            NewJob::try_from(json!({"name": "a", "latency_ms": 600000})).unwrap(),
            NewJob {
                name: "a".into(),
                latency: Duration::from_secs(600),
                cancellable: false
            }
        );
        let long = "é".repeat(1000);
        assert!(NewJob::try_from(json!({ "name": long })).is_ok());
    }

    #[test]
    fn rejects_bad_fields_with_a_reason() {
        assert_eq!(err(json!({})), "name is required");
        assert_eq!(err(json!({"name": null})), "name is required");
        assert_eq!(err(json!({"name": 5})), "name must be a string");
        assert_eq!(err(json!({"name": ""})), "name must not be empty");
        assert_eq!(err(json!({"name": "  "})), "name must not be empty");
        assert_eq!(
            err(json!({"name": "x".repeat(1001)})),
            "name must be at most 1000 characters"
        );
        let bad_latency = "latency_ms must be an integer from 0 to 600000";
        assert_eq!(err(json!({"name": "a", "latency_ms": -1})), bad_latency);
        assert_eq!(err(json!({"name": "a", "latency_ms": 1.5})), bad_latency);
        assert_eq!(err(json!({"name": "a", "latency_ms": "5"})), bad_latency);
        assert_eq!(err(json!({"name": "a", "latency_ms": 600001})), bad_latency);
        assert_eq!(
            err(json!({"name": "a\u{0}b"})),
            "name must not contain NUL characters"
        );
        assert_eq!(err(json!([1])), "the body must be a JSON object");
        assert_eq!(
            err(json!({"name": "a", "cancellable": "yes"})),
            "cancellable must be a boolean"
        );
    }
}
