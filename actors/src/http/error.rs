//! The answers the engine itself gives, each a JSON body `{"error": …}`:
//! the one place they become HTTP responses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::drain::CancelReason;

/// An answer the engine gives instead of the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Admission has stopped: the request was not processed.
    #[error("server_shutting_down")]
    ShuttingDown,
    /// The handler was dropped at the drain's cut: nothing of it ran further.
    #[error("{0}")]
    Cut(CancelReason),
    /// The client did not send the whole request in `CLIENT_REQUEST_TIMEOUT_MS`.
    #[error("client_request_timeout")]
    ClientTimeout,
    /// No such path (the admin listener).
    #[error("not found")]
    NotFound,
    /// The path exists, the method does not (probes, the admin listener).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A `GET /admin/prestop` without its header.
    #[error("GET /admin/prestop needs the header x-drainer-prestop: true (or use POST)")]
    PrestopHeaderMissing,
    /// A request to a WebSocket endpoint that is not a valid upgrade.
    #[error("websocket_upgrade_required")]
    NotAnUpgrade,
    /// A handler asked for [`crate::Work`] outside the engine's server.
    #[error("internal error: the request was not processed")]
    NotServed,
}

impl EngineError {
    /// The JSON body it answers with.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string() })
    }
}

impl ResponseError for EngineError {
    fn status_code(&self) -> StatusCode {
        match self {
            EngineError::ShuttingDown | EngineError::Cut(_) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            EngineError::NotFound => StatusCode::NOT_FOUND,
            EngineError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            EngineError::PrestopHeaderMissing => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::NotAnUpgrade => StatusCode::BAD_REQUEST,
            EngineError::NotServed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            // The rest of the body will never be read: the connection ends.
            EngineError::ClientTimeout => {
                res.force_close();
            }
            // A cut: the drain is ending, the client goes elsewhere. A
            // refused upgrade: the rest of the connection is not HTTP.
            EngineError::Cut(_) | EngineError::NotAnUpgrade => {
                res.force_close();
            }
            _ => {}
        }
        res.json(self.body())
    }
}
