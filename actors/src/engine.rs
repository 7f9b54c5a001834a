//! The [`Engine`]: the shutdown settings, the application's stop hooks and
//! components, the admin listener and the triggers, put together before a
//! transport runs on them. [`crate::Server`] is the HTTP transport on an
//! engine; a transport of one's own (the stdin node) calls [`Engine::run`].

use std::future::Future;
use std::time::Duration;

use actix::{Actor, Addr, Handler};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::census::Census;
use crate::lifecycle::{BudgetShort, PhaseCtx, StopActor};
use crate::metrics::Metrics;
use crate::signals::ShutdownSignal;
use crate::supervisor::{
    Ask, Asked, DrainBeginFn, DrainBegun, Launch, Report, ShutdownSettings, StopHook, StopPlan,
    Supervisor, Trigger,
};
use crate::transport::{Core, Transport};

/// See the module documentation.
pub struct Engine {
    settings: ShutdownSettings,
    hooks: Vec<StopHook>,
    drain_begin: Vec<DrainBeginFn>,
    owned: Vec<actix::Recipient<StopActor>>,
    metrics: Metrics,
    census: Census,
    admin: Option<std::net::TcpListener>,
    /// The accept loops' gate (a successor's stays closed until its commit point).
    pub(crate) handover: crate::handoff::Handover,
    signals: Option<futures_util::stream::LocalBoxStream<'static, ShutdownSignal>>,
    asks: (mpsc::UnboundedSender<Asked>, mpsc::UnboundedReceiver<Asked>),
    prestops: (
        mpsc::UnboundedSender<oneshot::Sender<()>>,
        mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ),
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(ShutdownSettings::default())
    }
}

impl Engine {
    /// An engine with these settings, no hooks, no admin listener.
    pub fn new(settings: ShutdownSettings) -> Engine {
        Engine {
            settings,
            hooks: Vec::new(),
            drain_begin: Vec::new(),
            owned: Vec::new(),
            metrics: Metrics::new(),
            census: Census::default(),
            admin: None,
            handover: crate::handoff::Handover::default(),
            signals: None,
            asks: mpsc::unbounded_channel(),
            prestops: mpsc::unbounded_channel(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ShutdownSettings {
        &self.settings
    }

    /// Replaces the settings.
    pub fn set_settings(&mut self, settings: ShutdownSettings) -> &mut Self {
        self.settings = settings;
        self
    }

    /// The metrics registry: register the application's own families on
    /// [`Metrics::registry`]; `/metrics` on the admin listener shows them.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The leak check's counts: count the application's actors and tasks here.
    pub fn census(&self) -> &Census {
        &self.census
    }

    /// A handle for programmatic triggers (prestop, drain, force).
    pub fn handle(&self) -> Handle {
        Handle {
            asks: self.asks.0.clone(),
            prestops: self.prestops.0.clone(),
        }
    }

    /// Registers a stop hook with the phase timeout as its deadline (the
    /// settings' at the run, whenever they are set). Hooks
    /// run after the drain (and the admin listener's stop), last registered
    /// first, each within its deadline and the one budget; `stop` gets the
    /// shutdown's figures so far in [`PhaseCtx::report`].
    pub fn on_stop<F, Fut>(&mut self, name: &'static str, stop: F) -> &mut Self
    where
        F: FnOnce(PhaseCtx) -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        self.hooks.push(StopHook {
            name,
            timeout: None,
            run: Box::new(move |ctx| Box::pin(stop(ctx))),
        });
        self
    }

    /// Registers a stop hook with a deadline of its own.
    pub fn on_stop_within<F, Fut>(
        &mut self,
        name: &'static str,
        timeout: Duration,
        stop: F,
    ) -> &mut Self
    where
        F: FnOnce(PhaseCtx) -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        self.hooks.push(StopHook {
            name,
            timeout: Some(timeout),
            run: Box::new(move |ctx| Box::pin(stop(ctx))),
        });
        self
    }

    /// Registers what to do when the drain begins; told the number in flight
    /// and what began it ([`crate::DrainBegun`]).
    pub fn on_drain_begin(&mut self, begun: impl FnOnce(DrainBegun) + 'static) -> &mut Self {
        self.drain_begin.push(Box::new(begun));
        self
    }

    /// Starts a component and hands it to the Supervisor, which stops it
    /// (with [`StopActor`]) at the exit, after the phases; answers its address.
    pub fn start<A>(&mut self, component: A) -> Addr<A>
    where
        A: Actor<Context = actix::Context<A>> + Handler<StopActor>,
    {
        let addr = component.start();
        self.own(addr.clone());
        addr
    }

    /// Hands a running component to the Supervisor, which stops it (with
    /// [`StopActor`]) at the exit, after the phases.
    pub fn own<A>(&mut self, component: Addr<A>) -> &mut Self
    where
        A: Actor + Handler<StopActor>,
        A::Context: actix::dev::ToEnvelope<A, StopActor>,
    {
        self.owned.push(component.recipient());
        self
    }

    /// Serves `/metrics` and `/admin/prestop` on `listener`, stopped in the
    /// `stop_admin` phase after the drain.
    pub fn admin(&mut self, listener: std::net::TcpListener) -> &mut Self {
        self.admin = Some(listener);
        self
    }

    /// Whether an admin listener is set.
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }

    /// The admin listener, if set (a takeover hands it over too).
    pub(crate) fn admin_listener(&self) -> Option<&std::net::TcpListener> {
        self.admin.as_ref()
    }

    /// Takes the shutdown signals from `signals` (installed before anything
    /// else, see [`crate::main`]). Without it, [`Engine::run`] installs them.
    pub fn signals(&mut self, signals: impl Stream<Item = ShutdownSignal> + 'static) -> &mut Self {
        self.signals = Some(signals.boxed_local());
        self
    }

    /// The phases a shutdown will run, in order, with their deadlines.
    pub fn plan(&self) -> StopPlan {
        StopPlan::new(
            &self.settings,
            self.admin.is_some(),
            self.hooks
                .iter()
                .map(|h| (h.name, h.timeout.unwrap_or(self.settings.phase_timeout))),
        )
    }

    /// Refuses a budget that cannot hold the plan.
    pub fn check_budget(&self) -> Result<(), BudgetShort> {
        self.plan().check_budget()
    }

    /// Runs the engine with the transport `build` makes from the [`Core`],
    /// until the shutdown is over; answers its report. The System keeps
    /// running: the caller decides what the process does next.
    pub async fn run<F>(self, build: F) -> Result<Report, crate::StartError>
    where
        F: FnOnce(&Core) -> Transport,
    {
        let plan = self.plan();
        plan.check_budget().map_err(crate::StartError::Budget)?;
        // Every phase's series present at 0 from the start.
        self.metrics.know_phases(&plan.names());
        let signals = match self.signals {
            Some(signals) => signals,
            None => crate::signals::Signals::install()
                .map_err(crate::StartError::Signals)?
                .boxed_local(),
        };
        let admin = match self.admin {
            None => None,
            Some(listener) => Some(crate::admin::bind(listener).map_err(crate::StartError::Admin)?),
        };
        let signals = signals.map(|signal| Asked {
            ask: Ask::from(signal),
            trigger: Trigger::Signal(signal),
        });
        let launch = Launch {
            settings: self.settings,
            plan,
            hooks: self.hooks,
            drain_begin: self.drain_begin,
            owned: self.owned,
            metrics: self.metrics,
            census: self.census,
            handover: self.handover,
            admin: admin.map(|listener| {
                Box::new(move |core: &Core| crate::admin::start(listener, core))
                    as crate::supervisor::AdminStart
            }),
            asks: futures_util::stream::select(signals, receiver_stream(self.asks.1)).boxed_local(),
            prestops: receiver_stream(self.prestops.1).boxed_local(),
        };
        let report = Supervisor::launch(launch, build);
        report.await.map_err(|_| crate::StartError::Lost)
    }
}

/// What a channel receives, as a stream (ends when every sender is gone).
fn receiver_stream<T>(rx: mpsc::UnboundedReceiver<T>) -> impl Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// Programmatic triggers, for tests and embedders: clones share the engine.
#[derive(Clone)]
pub struct Handle {
    asks: mpsc::UnboundedSender<Asked>,
    prestops: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Handle {
    /// Begins the drain's first phase and resolves once the delay is over;
    /// the phases after it wait for a drain (or a signal).
    pub async fn prestop(&self) {
        let (reply, answered) = oneshot::channel();
        if self.prestops.send(reply).is_ok() {
            let _ = answered.await;
        }
    }

    /// Drains gracefully, as SIGTERM does.
    pub fn drain(&self) {
        let _ = self.asks.send(Asked {
            ask: Ask::Drain,
            trigger: Trigger::Requested,
        });
    }

    /// Cuts the drain short, as SIGQUIT does.
    pub fn force(&self) {
        let _ = self.asks.send(Asked {
            ask: Ask::Force,
            trigger: Trigger::Requested,
        });
    }
}
