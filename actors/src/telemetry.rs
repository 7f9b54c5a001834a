//! Traces: where the shutdown trace goes, chosen by the standard `OTEL_*`
//! environment variables.
//!
//! - `OTEL_TRACES_EXPORTER=none`: nothing is exported.
//! - otherwise, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: OTLP over HTTP (protobuf),
//!   configured by the exporter's own `OTEL_EXPORTER_OTLP_*` variables, in
//!   batches from a thread of its own; `OTEL_SERVICE_NAME` defaults to
//!   `drainer`.
//! - otherwise nothing is exported.
//!
//! The spans themselves are made by the lifecycle runner through the global
//! tracer; with no provider installed they cost nothing. `OTEL_SERVICE_NAME`
//! unset: the service is named after the program.

use futures_util::future::LocalBoxFuture;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::lifecycle::PhaseCtx;

/// The installed provider, if any.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// No exporter.
    pub fn none() -> Telemetry {
        Telemetry { provider: None }
    }

    /// Installs the exporter the environment asks for.
    pub fn from_env() -> Result<Telemetry, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let exporter = var("OTEL_TRACES_EXPORTER").unwrap_or_else(|| "otlp".into());
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        match (exporter.as_str(), endpoint) {
            ("none", _) | (_, None) => return Ok(Telemetry { provider: None }),
            ("otlp", Some(_)) => {}
            (other, Some(_)) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other} is not supported (otlp or none)"
                ))
            }
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        let mut resource = Resource::builder();
        if var("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(program_name());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        log::info!("traces: exported over OTLP");
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// A stop hook's work (register it as `flush_telemetry`): export the
    /// spans that have ended so far, on a thread of its own, so that an
    /// exporter that hangs is cut at the phase's deadline and cannot hold
    /// the exit.
    pub fn flush_hook(
        &self,
    ) -> impl FnOnce(PhaseCtx) -> LocalBoxFuture<'static, Result<(), String>> + 'static {
        let provider = self.provider.clone();
        move |_| {
            Box::pin(async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(match provider {
                        Some(p) => p.force_flush().map_err(|e| e.to_string()),
                        None => Ok(()),
                    });
                });
                rx.await
                    .unwrap_or_else(|_| Err("the exporter panicked".to_string()))
            })
        }
    }

    /// At exit: exports the rest (the root span and the last phase) and
    /// stops, within the exit's share of the shutdown budget.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let allowance = crate::lifecycle::EXIT_ALLOWANCE / 2;
            if let Err(e) = provider.shutdown_with_timeout(allowance) {
                log::warn!("traces: the final export failed: {e}");
            }
        }
    }
}

/// The running program's name (`drainer`, `hello`).
pub(crate) fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map_or_else(|| "drainer".into(), |n| n.to_string_lossy().into_owned())
}
