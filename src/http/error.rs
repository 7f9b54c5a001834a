//! The one place where errors become HTTP responses.
//!
//! Every error a client can see from the app is an [`ApiError`]; each variant
//! maps to one status and a JSON body `{"error": "<what is wrong>"}`.
//! Internal details (database messages, mailbox failures) go to the log,
//! never to the client. What the engine answers itself — a refusal once
//! admission stopped, a handler dropped at the cut, a body past its deadline,
//! the probes — is its `EngineError`, in the same shape.

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use drainer_engine::CancelReason;

use crate::jobs::db::DbError;
use crate::jobs::downstream::DownstreamError;
use crate::jobs::request::WorkError;

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// See the module documentation.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Well-formed JSON that breaks the contract.
    #[error("{0}")]
    Invalid(String),
    /// The body is over [`MAX_BODY`].
    #[error("request body is larger than 65536 bytes")]
    PayloadTooLarge,
    /// The body is not declared as JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The body could not be read.
    #[error("could not read the request body")]
    BadPayload,
    /// The client did not send the whole request in `CLIENT_REQUEST_TIMEOUT_MS`.
    #[error("client_request_timeout")]
    ClientTimeout,
    /// Cancellable work declined when a drain began; nothing was written.
    #[error("server_shutting_down")]
    Declined,
    /// The work was cancelled at its safe point; nothing was written.
    #[error("{0}")]
    Cancelled(CancelReason),
    /// The request ran past `REQUEST_TIMEOUT_MS`; nothing was written.
    #[error("request_timeout")]
    RequestTimeout,
    /// The write queue is full: not processed, try again shortly.
    #[error("overloaded")]
    Overloaded,
    /// The downstream refused, reset or failed; the job was not stored.
    #[error("downstream_failed")]
    DownstreamFailed,
    /// The downstream did not answer within `DOWNSTREAM_TIMEOUT_MS`; the job
    /// was not stored.
    #[error("downstream_timeout")]
    DownstreamTimeout,
    /// Something on our side failed; the job was not stored.
    #[error("internal error: the job was not stored")]
    Internal,
    /// The database connection failed mid-write: the job may be stored.
    #[error("internal error: the job may or may not have been stored")]
    Indeterminate,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadPayload => StatusCode::BAD_REQUEST,
            ApiError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Declined | ApiError::Cancelled(_) | ApiError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RequestTimeout | ApiError::DownstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::DownstreamFailed => StatusCode::BAD_GATEWAY,
            ApiError::Internal | ApiError::Indeterminate => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Overloaded => {
                res.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
            }
            // The rest of the body will never be read: the connection ends.
            ApiError::ClientTimeout => {
                res.force_close();
            }
            _ => {}
        }
        res.json(self.body())
    }
}

impl ApiError {
    /// The JSON body every error answers with.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string() })
    }

    /// Its `drainer_requests_total{outcome}` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::Declined => "cancelled",
            ApiError::Cancelled(CancelReason::DrainTimeout) => "drain_timeout",
            ApiError::Cancelled(CancelReason::ShutdownForced) => "shutdown_forced",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::DownstreamFailed => "downstream_failed",
            ApiError::DownstreamTimeout => "downstream_timeout",
            _ => "error",
        }
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(e: JsonPayloadError) -> Self {
        match e {
            JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::PayloadTooLarge
            }
            JsonPayloadError::Deserialize(e) | JsonPayloadError::Serialize(e) => {
                ApiError::MalformedJson(e.to_string())
            }
            JsonPayloadError::Payload(actix_web::error::PayloadError::Io(e))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                ApiError::ClientTimeout
            }
            _ => ApiError::BadPayload,
        }
    }
}

impl From<WorkError> for ApiError {
    fn from(e: WorkError) -> Self {
        match e {
            WorkError::Cancelled(reason) => ApiError::Cancelled(reason),
            WorkError::Declined => ApiError::Declined,
            WorkError::TimedOut => ApiError::RequestTimeout,
            WorkError::Db(DbError::Overloaded) => ApiError::Overloaded,
            WorkError::Db(e @ DbError::Indeterminate(_)) => {
                log::error!("POST /work: {e}");
                ApiError::Indeterminate
            }
            other => {
                log::error!("POST /work failed: {other}");
                ApiError::Internal
            }
        }
    }
}

impl From<DownstreamError> for ApiError {
    fn from(e: DownstreamError) -> Self {
        log::info!("POST /work: {e}; nothing written");
        match e {
            DownstreamError::Failed(_) => ApiError::DownstreamFailed,
            DownstreamError::Timeout => ApiError::DownstreamTimeout,
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        log::error!("an actor did not answer: {e}");
        ApiError::Internal
    }
}
