//! The downstream service `POST /work` calls before it writes the job
//! (`DOWNSTREAM_URL`): a POST with the job's id and name, bounded by
//! `DOWNSTREAM_TIMEOUT_MS`. A downstream that refuses, resets or answers
//! anything but 2xx fails the request (502 `downstream_failed`), one that
//! takes too long times it out (504 `downstream_timeout`); either way nothing
//! is written. The call is made before the RequestActor's safe point, so a
//! downstream that hangs never holds the drain: at the cut the request is
//! dropped with its call and answered 503 like any unshielded work.

use std::time::Duration;

use awc::error::SendRequestError;
use uuid::Uuid;

/// Where the downstream is and how long a call may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamSettings {
    /// `DOWNSTREAM_URL`.
    pub url: String,
    /// `DOWNSTREAM_TIMEOUT_MS`.
    pub timeout: Duration,
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownstreamError {
    /// Refused, reset, or an answer that is not 2xx.
    #[error("the downstream failed: {0}")]
    Failed(String),
    /// No answer within `DOWNSTREAM_TIMEOUT_MS`.
    #[error("the downstream did not answer in time")]
    Timeout,
}

/// The downstream's client: one per worker thread (awc's client is not
/// `Send`), keeping its connections alive between calls.
pub struct Downstream {
    client: awc::Client,
    url: String,
}

impl Downstream {
    /// A client for `settings`.
    pub fn new(settings: &DownstreamSettings) -> Downstream {
        Downstream {
            client: awc::Client::builder().timeout(settings.timeout).finish(),
            url: settings.url.clone(),
        }
    }

    /// Tells the downstream of the job `id` named `name`.
    pub async fn call(&self, id: Uuid, name: &str) -> Result<(), DownstreamError> {
        let body = serde_json::json!({"id": id.to_string(), "name": name});
        match self.client.post(&self.url).send_json(&body).await {
            Ok(res) if res.status().is_success() => Ok(()),
            Ok(res) => Err(DownstreamError::Failed(format!(
                "answered {}",
                res.status()
            ))),
            Err(SendRequestError::Timeout) => Err(DownstreamError::Timeout),
            Err(e) => Err(DownstreamError::Failed(e.to_string())),
        }
    }
}
