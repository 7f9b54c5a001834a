//! The probes: answered by the engine on every listener it serves, during
//! the drain too, and never counted as work.
//!
//! | probe (GET) | answer |
//! |---|---|
//! | `/health` (legacy) | 200 `{"status":"ok"}`; 503 `{"status":"shutting_down"}` once a drain begins |
//! | `/livez`, `/healthz` | 200 `{"status":"ok"}` while the process can work, the drain included |
//! | `/readyz` | 200 when active and every readiness check passes; 503 `shutting_down`, or `<check>_unavailable` for the first check that fails |
//!
//! Another method on a probe's path is 405.

use std::sync::Arc;

use actix_web::HttpResponse;
use futures_util::future::LocalBoxFuture;

use crate::drain::DrainState;

/// A readiness check: `Ok` when the dependency answers.
pub type ReadinessCheck =
    Arc<dyn Fn() -> LocalBoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Where the probes answer. [`Probes::default`] is `/health`, `/livez` and
/// `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probes {
    /// The legacy health probe (503 once a drain begins); `None`: not served.
    pub health: Option<String>,
    /// The liveness probes.
    pub live: Vec<String>,
    /// The readiness probe.
    pub ready: Option<String>,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            health: Some("/health".into()),
            live: vec!["/livez".into(), "/healthz".into()],
            ready: Some("/readyz".into()),
        }
    }
}

/// Which probe a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Health,
    Live,
    Ready,
}

impl Probes {
    /// No probes at all (the application answers every path).
    pub fn none() -> Probes {
        Probes {
            health: None,
            live: Vec::new(),
            ready: None,
        }
    }

    pub(crate) fn find(&self, path: &str) -> Option<Probe> {
        if self.health.as_deref() == Some(path) {
            Some(Probe::Health)
        } else if self.ready.as_deref() == Some(path) {
            Some(Probe::Ready)
        } else if self.live.iter().any(|p| p == path) {
            Some(Probe::Live)
        } else {
            None
        }
    }
}

fn status(ok: bool, status: &str) -> HttpResponse {
    let body = serde_json::json!({ "status": status });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The answer to `probe` in `state`, running the readiness checks in order.
pub(crate) async fn answer(
    probe: Probe,
    state: DrainState,
    checks: &[(String, ReadinessCheck)],
) -> HttpResponse {
    match probe {
        Probe::Live => status(true, "ok"),
        Probe::Health if state.is_active() => status(true, "ok"),
        Probe::Health | Probe::Ready if !state.is_active() => status(false, "shutting_down"),
        Probe::Health | Probe::Ready => {
            for (name, check) in checks {
                if let Err(e) = check().await {
                    log::debug!("readiness: {name}: {e}");
                    return status(false, &format!("{name}_unavailable"));
                }
            }
            status(true, "ok")
        }
    }
}
