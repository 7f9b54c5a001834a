//! The census: how many actors and spawned tasks of one engine are still alive.
//!
//! Every actor the engine (or the app, through the same [`Census`]) starts
//! reports its `started` and `stopped` here, and every task goes through
//! [`Census::spawn`], which counts it until its future completes. An actor
//! that is dropped with its System instead of being stopped, or a task that
//! is dropped unfinished, stays counted: [`Census::alive`] read after the
//! System has stopped is the leak check (zero and zero, or something was left
//! running).
//!
//! One census per engine, handed out by the engine: two engines in one
//! process count apart. Nothing makes decisions from the counts.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

struct Counts {
    actors: AtomicUsize,
    tasks: AtomicUsize,
    /// Ticks on every change, so [`Census::settled`] waits for an event, not a poll.
    changed: watch::Sender<()>,
}

/// A handle on one engine's counts; clones share them.
#[derive(Clone)]
pub struct Census(Arc<Counts>);

impl Default for Census {
    fn default() -> Self {
        Census(Arc::new(Counts {
            actors: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
            changed: watch::channel(()).0,
        }))
    }
}

impl std::fmt::Debug for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Census({})", self.alive())
    }
}

/// What is alive right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alive {
    /// Actors started and not stopped.
    pub actors: usize,
    /// Tasks spawned through [`Census::spawn`] whose future has not completed.
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

impl Census {
    fn add(&self, count: &AtomicUsize) {
        count.fetch_add(1, Ordering::SeqCst);
        self.0.changed.send_replace(());
    }

    fn remove(&self, count: &AtomicUsize) {
        count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.send_replace(());
    }

    /// The current counts.
    pub fn alive(&self) -> Alive {
        Alive {
            actors: self.0.actors.load(Ordering::SeqCst),
            tasks: self.0.tasks.load(Ordering::SeqCst),
        }
    }

    /// Call from an actor's `started`.
    pub fn actor_started(&self) {
        self.add(&self.0.actors);
    }

    /// Call from an actor's `stopped`.
    pub fn actor_stopped(&self) {
        self.remove(&self.0.actors);
    }

    /// `actix_rt::spawn`, counted until the future completes.
    pub fn spawn<F>(&self, task: F) -> actix_rt::task::JoinHandle<F::Output>
    where
        F: Future + 'static,
    {
        self.add(&self.0.tasks);
        let census = self.clone();
        actix_rt::spawn(async move {
            let out = task.await;
            census.remove(&census.0.tasks);
            out
        })
    }

    /// Resolves once at most `actors` actors and `tasks` tasks are alive.
    pub async fn settled(&self, actors: usize, tasks: usize) {
        let mut ticks = self.0.changed.subscribe();
        loop {
            let now = self.alive();
            if now.actors <= actors && now.tasks <= tasks {
                return;
            }
            if ticks.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn two_censuses_count_apart() {
        let (a, b) = (Census::default(), Census::default());
        a.actor_started();
        let task = b.spawn(async {});
        assert_eq!(
            a.alive(),
            Alive {
                actors: 1,
                tasks: 0
            }
        );
        task.await.expect("task ran");
        assert_eq!(
            b.alive(),
            Alive {
                actors: 0,
                tasks: 0
            }
        );
        a.actor_stopped();
        a.settled(0, 0).await;
    }
}
