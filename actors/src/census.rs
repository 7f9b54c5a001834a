//! The census: how many actors and spawned tasks are still alive.
//!
//! Every drainer actor reports its `started` and `stopped` here
//! ([`actor_started`], [`actor_stopped`]), and every task drainer spawns goes
//! through [`spawn`], which counts it until its future completes. An actor
//! that is dropped with its System instead of being stopped, or a task that
//! is dropped unfinished, stays counted: [`alive`] read after the System has
//! stopped is the leak check (zero and zero, or something was left running).
//!
//! The counts are process-wide atomics: they describe the process, not any
//! one actor's state, and nothing makes decisions from them.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::sync::watch;

static ACTORS: AtomicUsize = AtomicUsize::new(0);
static TASKS: AtomicUsize = AtomicUsize::new(0);
/// Ticks on every change, so [`settled`] waits for an event, not a poll.
static CHANGED: OnceLock<watch::Sender<()>> = OnceLock::new();

fn changed() -> &'static watch::Sender<()> {
    CHANGED.get_or_init(|| watch::channel(()).0)
}

fn add(count: &AtomicUsize) {
    count.fetch_add(1, Ordering::SeqCst);
    changed().send_replace(());
}

fn remove(count: &AtomicUsize) {
    count.fetch_sub(1, Ordering::SeqCst);
    changed().send_replace(());
}

/// Resolves once at most `actors` actors and `tasks` tasks are alive.
pub async fn settled(actors: usize, tasks: usize) {
    let mut ticks = changed().subscribe();
    loop {
        let now = alive();
        if now.actors <= actors && now.tasks <= tasks {
            return;
        }
        if ticks.changed().await.is_err() {
            return;
        }
    }
}

/// What is alive right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alive {
    /// Actors started and not stopped.
    pub actors: usize,
    /// Tasks spawned through [`spawn`] whose future has not completed.
    pub tasks: usize,
}

impl std::fmt::Display for Alive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} actor(s) and {} task(s) left running",
            self.actors, self.tasks
        )
    }
}

/// The current counts.
pub fn alive() -> Alive {
    Alive {
        actors: ACTORS.load(Ordering::SeqCst),
        tasks: TASKS.load(Ordering::SeqCst),
    }
}

/// Call from an actor's `started`.
pub fn actor_started() {
    add(&ACTORS);
}

/// Call from an actor's `stopped`.
pub fn actor_stopped() {
    remove(&ACTORS);
}

/// `actix_rt::spawn`, counted until the future completes.
pub fn spawn<F>(task: F) -> actix_rt::task::JoinHandle<F::Output>
where
    F: Future + 'static,
{
    add(&TASKS);
    actix_rt::spawn(async move {
        let out = task.await;
        remove(&TASKS);
        out
    })
}
