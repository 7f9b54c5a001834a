//! The shutdown report: what a run of the engine did, as a value.

use std::fmt;
use std::time::Duration;

use crate::drain::{Class, ClassFigures, Outcome, WorkDone};
use crate::signals::ShutdownSignal;

use super::trigger::Trigger;

/// What one run of the engine did. [`Report::exit_code`] is what the process
/// should exit with; `Display` is the one `shutdown report:` line.
#[derive(Debug, Clone)]
pub struct Report {
    /// What began the shutdown (`None`: nothing did).
    pub trigger: Option<Trigger>,
    /// The phases that have ended, in order, with durations and outcomes.
    pub phases: Vec<PhaseRecord>,
    /// Requests answered with their real result during the drain.
    pub completed: usize,
    /// Requests cancelled at the cut and answered with an error.
    pub cut_short: usize,
    /// Requests in flight when the cut came (0 without a cut).
    pub in_flight_at_cut: usize,
    /// How the drain ended (`None`: it never ended).
    pub outcome: Option<Outcome>,
    /// The code the process exits with: 0 drained, 1 cut short, 2 failed to start.
    pub exit_code: i32,
    /// How the persistent connections open at the goodbye ended, per class.
    pub persistent: [ClassFigures; 3],
    /// The engine's census, read once the System has stopped.
    pub(crate) census: Option<crate::census::Census>,
}

impl Report {
    /// The report of a run whose shutdown began with `trigger` and has got
    /// this far; `exit_zero`: the input ended, so the code is 0 whatever the outcome.
    pub(crate) fn new(
        trigger: Option<Trigger>,
        phases: Vec<PhaseRecord>,
        work: Option<WorkDone>,
        exit_zero: bool,
    ) -> Report {
        let outcome = work.map(|w| w.outcome);
        let (in_flight_at_cut, cut_short) = match outcome {
            Some(Outcome::CutShort {
                remaining,
                cancelled,
                ..
            }) => (remaining, cancelled),
            _ => (0, 0),
        };
        Report {
            trigger,
            phases,
            completed: work.map_or(0, |w| w.completed),
            cut_short,
            in_flight_at_cut,
            outcome,
            exit_code: if exit_zero {
                0
            } else {
                outcome.map_or(1, Outcome::exit_code)
            },
            persistent: no_persistent(),
            census: None,
        }
    }

    /// With the persistent connections' figures.
    pub(crate) fn with_persistent(mut self, figures: [ClassFigures; 3]) -> Report {
        self.persistent = figures;
        self
    }

    /// A signal came during start-up, before anything was served: exit 0.
    pub fn before_serving(signal: ShutdownSignal) -> Report {
        Report {
            trigger: Some(Trigger::Signal(signal)),
            phases: Vec::new(),
            completed: 0,
            cut_short: 0,
            in_flight_at_cut: 0,
            outcome: None,
            exit_code: 0,
            persistent: no_persistent(),
            census: None,
        }
    }

    /// Nothing was run (`--help`): exit 0.
    pub fn nothing_to_do() -> Report {
        Report {
            trigger: None,
            ..Report::before_serving(ShutdownSignal::Terminate)
        }
    }

    /// The same figures as JSON, for records (`drain_complete`'s details).
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let phases: Vec<serde_json::Value> = self
            .phases
            .iter()
            .map(|p| {
                let mut phase = serde_json::json!({
                    "phase": p.name,
                    "duration_ms": u64::try_from(p.took.as_millis()).unwrap_or(u64::MAX),
                    "outcome": p.result.to_string(),
                });
                if let Some(note) = &p.note {
                    phase["note"] = note.clone().into();
                }
                phase
            })
            .collect();
        let mut map = serde_json::Map::new();
        map.insert(
            "trigger".into(),
            self.trigger
                .map_or(serde_json::Value::Null, |t| t.to_string().into()),
        );
        map.insert("phases".into(), phases.into());
        let persistent: serde_json::Map<String, serde_json::Value> = self
            .persistent
            .iter()
            .map(|p| {
                (
                    p.class.as_str().to_string(),
                    serde_json::json!({"clean": p.clean, "forced": p.forced}),
                )
            })
            .collect();
        map.insert("persistent".into(), persistent.into());
        map.insert("completed".into(), self.completed.into());
        map.insert("cut_short".into(), self.cut_short.into());
        map.insert("in_flight_at_cut".into(), self.in_flight_at_cut.into());
        map.insert("exit_code".into(), self.exit_code.into());
        map
    }
}

impl fmt::Display for Report {
    /// The one line that sums the shutdown up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trigger = self
            .trigger
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| match &p.note {
                None => format!("{} {} ms {}", p.name, p.took.as_millis(), p.result),
                Some(note) => format!("{} {} ms {} ({note})", p.name, p.took.as_millis(), p.result),
            })
            .collect();
        let persistent: Vec<String> = self
            .persistent
            .iter()
            .map(|p| format!("{} {} clean {} forced", p.class.as_str(), p.clean, p.forced))
            .collect();
        write!(
            f,
            "shutdown report: trigger {trigger}; phases: {}; persistent: {}; \
             completed during the drain: {}; cut short: {} (of {} in flight at the cut); \
             exit code {}",
            phases.join(", "),
            persistent.join(", "),
            self.completed,
            self.cut_short,
            self.in_flight_at_cut,
            self.exit_code
        )
    }
}

/// Every class at 0.
fn no_persistent() -> [ClassFigures; 3] {
    Class::ALL.map(|class| ClassFigures {
        class,
        clean: 0,
        forced: 0,
    })
}

/// How one phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseResult {
    /// Done within its deadline.
    Done,
    /// It reported an error.
    Failed(String),
    /// Cut at its deadline (the time it was allowed).
    Overran(Duration),
}

impl fmt::Display for PhaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhaseResult::Done => f.write_str("ok"),
            PhaseResult::Failed(e) => write!(f, "failed ({e})"),
            PhaseResult::Overran(allowed) => {
                write!(f, "overran its {} ms deadline", allowed.as_millis())
            }
        }
    }
}

/// One phase as it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseRecord {
    /// The phase's name.
    pub name: &'static str,
    /// How long it ran.
    pub took: Duration,
    /// How it ended.
    pub result: PhaseResult,
    /// What it said of itself ([`crate::PhaseCtx::note`]).
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::CancelReason;

    #[test]
    fn the_line_and_the_fields_say_the_same() {
        let work = WorkDone {
            outcome: Outcome::CutShort {
                reason: CancelReason::DrainTimeout,
                remaining: 3,
                cancelled: 2,
            },
            completed: 4,
        };
        let phases = vec![PhaseRecord {
            name: "drain",
            took: Duration::from_millis(12),
            result: PhaseResult::Done,
            note: None,
        }];
        let report = Report::new(
            Some(Trigger::Signal(ShutdownSignal::Terminate)),
            phases,
            Some(work),
            false,
        );
        assert_eq!(
            report.to_string(),
            "shutdown report: trigger SIGTERM; phases: drain 12 ms ok; persistent: websocket 0 \
             clean 0 forced, sse 0 clean 0 forced, long_poll 0 clean 0 forced; completed during \
             the drain: 4; cut short: 2 (of 3 in flight at the cut); exit code 1"
        );
        let fields = serde_json::Value::Object(report.fields());
        assert_eq!(
            fields,
            serde_json::json!({
                "trigger": "SIGTERM",
                "phases": [{"phase": "drain", "duration_ms": 12, "outcome": "ok"}],
                "persistent": {
                    "websocket": {"clean": 0, "forced": 0},
                    "sse": {"clean": 0, "forced": 0},
                    "long_poll": {"clean": 0, "forced": 0},
                },
                "completed": 4, "cut_short": 2, "in_flight_at_cut": 3, "exit_code": 1,
            })
        );
        let ended = Report::new(Some(Trigger::EndOfInput), vec![], Some(work), true);
        assert_eq!(ended.exit_code, 0, "the end of input always exits 0");
    }
}
