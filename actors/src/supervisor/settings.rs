//! The shutdown's settings and its one plan: which phases run, in what
//! order, with what deadline — used both by the start-up budget check and by
//! the run.

use std::time::Duration;

use crate::drain::CANCEL_ALLOWANCE;
use crate::lifecycle::{self, BudgetShort};
use crate::persistent::settings::PersistentSettings;

/// After `WS_CLOSE_TIMEOUT_MS`, how long `close_persistent` gives what it
/// closed to be gone (and counted).
pub(crate) const CLOSE_MARGIN: Duration = Duration::from_millis(100);

/// The shortest time connections get to close once the work is done, before
/// they are closed for them.
const MIN_LINGER: Duration = Duration::from_secs(1);

/// The defaults, in milliseconds, shared with any command line that sets them.
pub mod defaults {
    /// `SHUTDOWN_DELAY_MS`.
    pub const SHUTDOWN_DELAY_MS: u64 = 0;
    /// A prestop's delay when `SHUTDOWN_DELAY_MS` is 0.
    pub const PRESTOP_DELAY_MS: u64 = 5_000;
    /// `DRAIN_TIMEOUT_MS`.
    pub const DRAIN_TIMEOUT_MS: u64 = 30_000;
    /// `IDLE_CLOSE_GRACE_MS`.
    pub const IDLE_CLOSE_GRACE_MS: u64 = 100;
    /// `SHUTDOWN_TIMEOUT_MS`: room for a 5000 ms prestop delay, the drain's
    /// 32500 ms, `close_persistent`'s 5100 ms and four 1500 ms phases
    /// before the last (which runs in the 1000 ms reserve): 49600 ms.
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 50_000;
    /// `SHUTDOWN_PHASE_TIMEOUT_MS`.
    pub const SHUTDOWN_PHASE_TIMEOUT_MS: u64 = 1_500;
}

/// The engine's own phase names, in the order they run. The application's
/// stop hooks run after them.
pub mod phase {
    /// Keeps serving (readiness 503) so load balancers notice.
    pub const DELAY: &str = "delay";
    /// Stops admission and closes the listener.
    pub const STOP_ACCEPTING: &str = "stop_accepting";
    /// Waits for the work in flight and the connections that carry it.
    pub const DRAIN: &str = "drain";
    /// Waits for the persistent connections after their goodbyes; closes
    /// those left at `WS_CLOSE_TIMEOUT_MS`.
    pub const CLOSE_PERSISTENT: &str = "close_persistent";
    /// Stops the admin listener (when there is one).
    pub const STOP_ADMIN: &str = "stop_admin";
}

/// Timings of the shutdown. [`ShutdownSettings::default`] and
/// [`ShutdownSettings::from_env`] give production-correct values; the
/// setters change one each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// After a signal: how long the service keeps serving (readiness 503)
    /// before it stops accepting — the load balancer's time to notice.
    pub shutdown_delay: Duration,
    /// The same for a prestop (`SHUTDOWN_DELAY_MS`, or 5000 ms when that is 0).
    pub prestop_delay: Duration,
    /// How long in-flight work may run once admission has stopped.
    pub drain_timeout: Duration,
    /// How long connections may stay open, idle, after the listener closed.
    pub idle_grace: Duration,
    /// The whole shutdown's budget (`SHUTDOWN_TIMEOUT_MS`); `None` when the
    /// drain deadline alone bounds the work (the stdin transport).
    pub budget: Option<Duration>,
    /// The own deadline of every phase but the delay and the drain, and of
    /// every stop hook registered without one.
    pub phase_timeout: Duration,
    /// Persistent connections: the WebSocket close wait (the
    /// `close_persistent` phase's deadline), pings, SSE keep-alives and retry.
    pub persistent: PersistentSettings,
    /// Test-only: a phase that hangs after its work until its deadline.
    pub stalled_phase: Option<String>,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        let ms = Duration::from_millis;
        ShutdownSettings {
            shutdown_delay: ms(defaults::SHUTDOWN_DELAY_MS),
            prestop_delay: ms(defaults::PRESTOP_DELAY_MS),
            drain_timeout: ms(defaults::DRAIN_TIMEOUT_MS),
            idle_grace: ms(defaults::IDLE_CLOSE_GRACE_MS),
            budget: Some(ms(defaults::SHUTDOWN_TIMEOUT_MS)),
            phase_timeout: ms(defaults::SHUTDOWN_PHASE_TIMEOUT_MS),
            persistent: PersistentSettings::default(),
            stalled_phase: None,
        }
    }
}

/// A variable that is set but is not a number of milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} must be a whole number of milliseconds, not {value:?}")]
pub struct BadSetting {
    /// The variable.
    pub name: &'static str,
    /// What it held.
    pub value: String,
}

impl ShutdownSettings {
    /// The defaults, with `SHUTDOWN_DELAY_MS`, `DRAIN_TIMEOUT_MS`,
    /// `IDLE_CLOSE_GRACE_MS`, `SHUTDOWN_TIMEOUT_MS`,
    /// `SHUTDOWN_PHASE_TIMEOUT_MS`, `WS_CLOSE_TIMEOUT_MS`, `WS_PING_MS`,
    /// `SSE_KEEPALIVE_MS` and `SSE_RETRY_MS` read from the environment when set.
    pub fn from_env() -> Result<Self, BadSetting> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`ShutdownSettings::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BadSetting> {
        let read = |name: &'static str| -> Result<Option<u64>, BadSetting> {
            match lookup(name) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| BadSetting { name, value }),
            }
        };
        let mut s = ShutdownSettings::default();
        if let Some(ms) = read("SHUTDOWN_DELAY_MS")? {
            s = s.shutdown_delay(Duration::from_millis(ms));
        }
        if let Some(ms) = read("DRAIN_TIMEOUT_MS")? {
            s = s.drain_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = read("IDLE_CLOSE_GRACE_MS")? {
            s = s.idle_grace(Duration::from_millis(ms));
        }
        if let Some(ms) = read("SHUTDOWN_TIMEOUT_MS")? {
            s = s.budget(Some(Duration::from_millis(ms)));
        }
        if let Some(ms) = read("SHUTDOWN_PHASE_TIMEOUT_MS")? {
            s = s.phase_timeout(Duration::from_millis(ms));
        }
        let p = &mut s.persistent;
        for (name, field) in [
            ("WS_CLOSE_TIMEOUT_MS", &mut p.ws_close_timeout),
            ("WS_PING_MS", &mut p.ws_ping),
            ("SSE_KEEPALIVE_MS", &mut p.sse_keepalive),
            ("SSE_RETRY_MS", &mut p.sse_retry),
        ] {
            if let Some(ms) = read(name)? {
                *field = Duration::from_millis(ms);
            }
        }
        Ok(s)
    }

    /// Sets the delay after a signal; a prestop waits as long (or 5000 ms
    /// when this is 0).
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown_delay = delay;
        self.prestop_delay = if delay.is_zero() {
            Duration::from_millis(defaults::PRESTOP_DELAY_MS)
        } else {
            delay
        };
        self
    }

    /// Sets the drain timeout.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets the idle-connection grace.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// Sets the whole shutdown's budget (`None`: the drain deadline alone).
    pub fn budget(mut self, budget: Option<Duration>) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the default deadline of the phases after the drain.
    pub fn phase_timeout(mut self, timeout: Duration) -> Self {
        self.phase_timeout = timeout;
        self
    }

    /// The hard deadline for connections once the work is done.
    pub fn linger(&self) -> Duration {
        MIN_LINGER.max(self.idle_grace)
    }

    /// `close_persistent`'s own deadline: `WS_CLOSE_TIMEOUT_MS` and the
    /// margin in which what it closes at that time is counted.
    pub(crate) fn close_persistent_phase(&self) -> Duration {
        self.persistent.ws_close_timeout + CLOSE_MARGIN
    }

    /// The drain phase's own deadline for a drain of `drain_timeout`: the
    /// deadline, then the linger for cancelled work and the allowance for
    /// cancels to be confirmed, then the linger for connections.
    pub(crate) fn drain_phase(&self, drain_timeout: Duration) -> Duration {
        drain_timeout + 2 * self.linger() + CANCEL_ALLOWANCE
    }
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPhase {
    /// Its name.
    pub name: &'static str,
    /// Its own deadline (within the budget).
    pub timeout: Duration,
}

/// The phases of one shutdown in the order they run: the engine's own, then
/// the stop hooks last-registered-first. Built once from the settings and the
/// registrations; the budget check reads it and the run follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPlan {
    phases: Vec<PlannedPhase>,
    budget: Option<Duration>,
}

impl StopPlan {
    /// The plan for `settings`, with an admin listener or not, and the stop
    /// hooks `hooks` (name and deadline) in the order they were registered.
    pub fn new(
        settings: &ShutdownSettings,
        admin: bool,
        hooks: impl DoubleEndedIterator<Item = (&'static str, Duration)>,
    ) -> StopPlan {
        let delay = if admin {
            settings.shutdown_delay.max(settings.prestop_delay)
        } else {
            settings.shutdown_delay
        };
        let mut phases = vec![
            (phase::DELAY, delay),
            (phase::STOP_ACCEPTING, settings.phase_timeout),
            (phase::DRAIN, settings.drain_phase(settings.drain_timeout)),
            (phase::CLOSE_PERSISTENT, settings.close_persistent_phase()),
        ];
        if admin {
            phases.push((phase::STOP_ADMIN, settings.phase_timeout));
        }
        phases.extend(hooks.rev());
        StopPlan {
            phases: phases
                .into_iter()
                .map(|(name, timeout)| PlannedPhase { name, timeout })
                .collect(),
            budget: settings.budget,
        }
    }

    /// The phases, in the order they run.
    pub fn phases(&self) -> &[PlannedPhase] {
        &self.phases
    }

    /// The names, in the order they run.
    pub fn names(&self) -> Vec<&'static str> {
        self.phases.iter().map(|p| p.name).collect()
    }

    /// Refuses a budget that cannot hold the phases. The last phase runs
    /// in the reserve — unless it is one of the engine's own (no stop hooks:
    /// the drain runs last), which gets its whole deadline within the budget.
    pub fn check_budget(&self) -> Result<(), BudgetShort> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        // In order of registration: the last phase to run comes first.
        let mut timeouts: Vec<Duration> = self.phases.iter().rev().map(|p| p.timeout).collect();
        let engine_last = self.phases.last().is_some_and(|p| {
            [
                phase::DELAY,
                phase::STOP_ACCEPTING,
                phase::DRAIN,
                phase::CLOSE_PERSISTENT,
                phase::STOP_ADMIN,
            ]
            .contains(&p.name)
        });
        if engine_last {
            // Nothing runs in the reserve: every deadline counts.
            timeouts.insert(0, Duration::ZERO);
        }
        lifecycle::check_budget(&timeouts, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_hooks(s: &ShutdownSettings) -> Vec<(&'static str, Duration)> {
        ["close_database", "flush_telemetry", "stop_background"]
            .iter()
            .map(|&n| (n, s.phase_timeout))
            .collect()
    }

    #[test]
    fn the_default_budget_holds_the_default_phases() {
        let s = ShutdownSettings::default().idle_grace(Duration::from_millis(100));
        let s = ShutdownSettings {
            prestop_delay: Duration::from_millis(300),
            ..s
        };
        let plan = StopPlan::new(&s, true, app_hooks(&s).into_iter());
        assert!(plan.check_budget().is_ok());
        assert_eq!(
            plan.names(),
            [
                "delay",
                "stop_accepting",
                "drain",
                "close_persistent",
                "stop_admin",
                "stop_background",
                "flush_telemetry",
                "close_database"
            ]
        );
        let tight = s.clone().budget(Some(Duration::from_secs(30)));
        let plan = StopPlan::new(&tight, true, app_hooks(&tight).into_iter());
        let short = plan.check_budget().expect_err("too small");
        // 300 delay + 32500 drain + 5100 close_persistent + 4 × 1500
        // + 1000 reserve = 44900.
        assert_eq!(short.needed, Duration::from_millis(44_900));
    }

    /// Without stop hooks the drain runs last: its deadline counts too.
    #[test]
    fn without_hooks_the_drain_is_held_to_the_budget() {
        let s = ShutdownSettings::default().budget(Some(Duration::from_secs(3)));
        let short = StopPlan::new(&s, false, std::iter::empty())
            .check_budget()
            .expect_err("a 30 s drain cannot fit 3 s");
        // 0 delay + 1500 stop_accepting + 32500 drain + 5100
        // close_persistent + 1000 reserve.
        assert_eq!(short.needed, Duration::from_millis(40_100));
        let roomy = s.budget(Some(Duration::from_millis(40_100)));
        assert!(StopPlan::new(&roomy, false, std::iter::empty())
            .check_budget()
            .is_ok());
    }

    #[test]
    fn settings_come_from_the_environment_names() {
        let vars = [("DRAIN_TIMEOUT_MS", "1200"), ("SHUTDOWN_DELAY_MS", "700")];
        let s = ShutdownSettings::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid");
        assert_eq!(s.drain_timeout, Duration::from_millis(1200));
        assert_eq!(s.shutdown_delay, Duration::from_millis(700));
        assert_eq!(s.prestop_delay, Duration::from_millis(700));
        assert_eq!(s.phase_timeout, Duration::from_millis(1500));
        let bad = ShutdownSettings::from_lookup(|name| {
            (name == "IDLE_CLOSE_GRACE_MS").then(|| "soon".to_string())
        })
        .expect_err("not a number");
        assert_eq!(
            bad.to_string(),
            "IDLE_CLOSE_GRACE_MS must be a whole number of milliseconds, not \"soon\""
        );
    }
}
