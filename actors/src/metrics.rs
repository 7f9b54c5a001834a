//! The metrics: one Prometheus registry per process, every family exported
//! from start-up with each label value at 0.
//!
//! The values are written where the events happen — the DrainCoordinator sets
//! the in-flight gauge and the drain state as it changes them, the lifecycle
//! runner times the shutdown phases, the HTTP layer counts client timeouts; the application adds its own families —
//! and read only by the `/metrics` endpoint ([`Metrics::render`]). The gauges
//! are published copies, like the coordinator's phase: nothing decides from
//! them.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every value of the persistent families' `class` label (see
/// `persistent::Class`).
pub const PERSISTENT_CLASSES: [&str; 3] = ["websocket", "sse", "long_poll"];

/// Every value of `drainer_client_timeouts_total{reason}`: a request head
/// or body not received within `CLIENT_REQUEST_TIMEOUT_MS`, or a client that
/// read none of its answers for as long.
pub const CLIENT_TIMEOUTS: [&str; 3] = ["head", "body", "writes"];

struct Families {
    registry: Registry,
    in_flight: IntGauge,
    /// Where the in-flight count is read at each scrape.
    in_flight_from: std::sync::OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
    drain_state: IntGauge,
    phase_duration: GaugeVec,
    phase_started: IntCounterVec,
    phase_failed: IntCounterVec,
    force_close: IntCounter,
    drain_duration: Gauge,
    client_timeouts: IntCounterVec,
    persistent_open: IntGaugeVec,
    persistent_forced: IntCounterVec,
    persistent_dropped: IntCounterVec,
}

/// A handle on the registry; clones share it.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh registry with every engine family present at 0. The
    /// application registers its own families on [`Metrics::registry`].
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let in_flight = IntGauge::new(
            "drainer_requests_in_flight",
            "Requests admitted and not yet answered.",
        )
        .expect("valid metric");
        let drain_state = IntGauge::new(
            "drainer_drain_state",
            "The drain state: 0 active, 1 draining, 2 stopped.",
        )
        .expect("valid metric");
        let phase_duration = GaugeVec::new(
            Opts::new(
                "shutdown_phase_duration_seconds",
                "How long each shutdown phase took (the last shutdown).",
            ),
            &["phase"],
        )
        .expect("valid metric");
        let phase_started = IntCounterVec::new(
            Opts::new("shutdown_phase_started_total", "Shutdown phases begun."),
            &["phase"],
        )
        .expect("valid metric");
        let phase_failed = IntCounterVec::new(
            Opts::new(
                "shutdown_phase_failed_total",
                "Shutdown phases that failed or overran their deadline.",
            ),
            &["phase"],
        )
        .expect("valid metric");
        let force_close = IntCounter::new(
            "drainer_force_close_total",
            "Connections closed by force at the drain's hard limit.",
        )
        .expect("valid metric");
        let drain_duration = Gauge::new(
            "drainer_drain_duration_seconds",
            "From the start of the drain to the end of its work (0 until a drain ends).",
        )
        .expect("valid metric");
        let client_timeouts = IntCounterVec::new(
            Opts::new(
                "drainer_client_timeouts_total",
                "Connections closed because their client ran out of CLIENT_REQUEST_TIMEOUT_MS, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in CLIENT_TIMEOUTS {
            client_timeouts.with_label_values(&[reason]);
        }
        let persistent_open = IntGaugeVec::new(
            Opts::new(
                "drainer_persistent_connections",
                "Persistent connections open (WebSockets, SSE streams, pending long-polls), by class.",
            ),
            &["class"],
        )
        .expect("valid metric");
        let persistent_forced = IntCounterVec::new(
            Opts::new(
                "drainer_persistent_forced_total",
                "Persistent connections closed without their goodbye completing (a WebSocket that \
                 did not answer the close, a forced cut), by class.",
            ),
            &["class"],
        )
        .expect("valid metric");
        let persistent_dropped = IntCounterVec::new(
            Opts::new(
                "drainer_persistent_dropped_total",
                "Persistent connections ended because their client fell too far behind, by class.",
            ),
            &["class"],
        )
        .expect("valid metric");
        for class in PERSISTENT_CLASSES {
            persistent_open.with_label_values(&[class]);
            persistent_forced.with_label_values(&[class]);
        }
        persistent_dropped.with_label_values(&["sse"]);
        let families = Families {
            registry,
            in_flight,
            in_flight_from: std::sync::OnceLock::new(),
            drain_state,
            phase_duration,
            phase_started,
            phase_failed,
            force_close,
            drain_duration,
            client_timeouts,
            persistent_open,
            persistent_forced,
            persistent_dropped,
        };
        let f = &families;
        let collectors: [Box<dyn prometheus::core::Collector>; 11] = [
            Box::new(f.in_flight.clone()),
            Box::new(f.drain_state.clone()),
            Box::new(f.phase_duration.clone()),
            Box::new(f.phase_started.clone()),
            Box::new(f.phase_failed.clone()),
            Box::new(f.force_close.clone()),
            Box::new(f.drain_duration.clone()),
            Box::new(f.client_timeouts.clone()),
            Box::new(f.persistent_open.clone()),
            Box::new(f.persistent_forced.clone()),
            Box::new(f.persistent_dropped.clone()),
        ];
        for c in collectors {
            f.registry.register(c).expect("each family registered once");
        }
        Metrics(Arc::new(families))
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(read) = self.0.in_flight_from.get() {
            let n = read();
            self.0.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.0.registry.gather(), &mut out) {
            log::warn!("metrics: cannot encode: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The content type of [`Metrics::render`].
    pub fn content_type(&self) -> &'static str {
        prometheus::TEXT_FORMAT
    }

    /// The registry, for the application's own families.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// Puts each of `phases` in the phase families at 0.
    pub fn know_phases(&self, phases: &[&str]) {
        for phase in phases {
            self.0.phase_duration.with_label_values(&[phase]);
            self.0.phase_started.with_label_values(&[phase]);
            self.0.phase_failed.with_label_values(&[phase]);
        }
    }

    /// Where `drainer_requests_in_flight` is read at each scrape (the
    /// coordinator's count; set once).
    pub(crate) fn read_in_flight_from(&self, read: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.0.in_flight_from.set(Box::new(read));
    }

    /// The coordinator's state changed: 0 active, 1 draining, 2 stopped.
    pub(crate) fn set_drain_state(&self, code: i64) {
        self.0.drain_state.set(code);
    }

    /// The drain's work ended after `took`.
    pub fn set_drain_duration(&self, took: Duration) {
        self.0.drain_duration.set(took.as_secs_f64());
    }

    /// A client ran out of time (`reason`: one of [`CLIENT_TIMEOUTS`]).
    pub fn client_timeout(&self, reason: &str) {
        self.0.client_timeouts.with_label_values(&[reason]).inc();
    }

    /// `n` connections closed by force.
    pub fn force_closed(&self, n: usize) {
        self.0.force_close.inc_by(n as u64);
    }

    /// A persistent connection of `class` opened (`+1`) or closed (`-1`).
    pub(crate) fn persistent_open(&self, class: &str, delta: i64) {
        self.0
            .persistent_open
            .with_label_values(&[class])
            .add(delta);
    }

    /// A persistent connection of `class` was closed by force.
    pub(crate) fn persistent_forced(&self, class: &str) {
        self.0.persistent_forced.with_label_values(&[class]).inc();
    }

    /// A persistent connection of `class` was dropped for falling behind.
    pub(crate) fn persistent_dropped(&self, class: &str) {
        self.0.persistent_dropped.with_label_values(&[class]).inc();
    }

    /// A shutdown phase began.
    pub fn phase_started(&self, phase: &str) {
        self.0.phase_started.with_label_values(&[phase]).inc();
    }

    /// A shutdown phase ended after `took`; `failed` if it failed or overran.
    pub fn phase_ended(&self, phase: &str, took: Duration, failed: bool) {
        self.0
            .phase_duration
            .with_label_values(&[phase])
            .set(took.as_secs_f64());
        if failed {
            self.0.phase_failed.with_label_values(&[phase]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_and_label_is_exported_at_zero() {
        let m = Metrics::new();
        m.know_phases(&["drain", "close_database"]);
        let text = m.render();
        for line in [
            "drainer_requests_in_flight 0",
            "drainer_drain_state 0",
            "drainer_force_close_total 0",
            "drainer_drain_duration_seconds 0",
            "shutdown_phase_duration_seconds{phase=\"drain\"} 0",
            "shutdown_phase_started_total{phase=\"close_database\"} 0",
            "shutdown_phase_failed_total{phase=\"drain\"} 0",
            "drainer_persistent_connections{class=\"websocket\"} 0",
            "drainer_persistent_connections{class=\"sse\"} 0",
            "drainer_persistent_connections{class=\"long_poll\"} 0",
            "drainer_persistent_forced_total{class=\"websocket\"} 0",
            "drainer_persistent_dropped_total{class=\"sse\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        for reason in CLIENT_TIMEOUTS {
            let line = format!("drainer_client_timeouts_total{{reason=\"{reason}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
        m.read_in_flight_from(|| 1);
        m.phase_ended("drain", Duration::from_millis(1500), true);
        let text = m.render();
        assert!(text.contains("drainer_requests_in_flight 1"));
        assert!(text.contains("shutdown_phase_duration_seconds{phase=\"drain\"} 1.5"));
        assert!(text.contains("shutdown_phase_failed_total{phase=\"drain\"} 1"));
    }
}
