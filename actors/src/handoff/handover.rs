//! [`Handover`]: what the accept loops and the handoff share — whether they
//! may accept yet (a successor waits for the commit point), whether they must
//! let go of their listeners (the running instance at the commit point), and
//! how many are still accepting.
//!
//! Letting go is not closing: the listening socket is shared with the
//! successor, so an accept loop that lets go only drops its own descriptor
//! (deregistering it first, as dropping the tokio listener does). It never
//! shuts the socket down or attaches a filter, which would act on the shared
//! socket and break the successor.

use std::sync::Arc;

use tokio::sync::watch;

/// See the module documentation. Clones share the same state.
#[derive(Clone)]
pub struct Handover(Arc<Inner>);

struct Inner {
    /// False until a successor's commit point; true from the start otherwise.
    open: watch::Sender<bool>,
    /// Set at the running instance's commit point: let go of the listeners.
    released: watch::Sender<bool>,
    /// Accept loops holding a listener.
    accepting: watch::Sender<usize>,
}

impl Default for Handover {
    fn default() -> Self {
        Handover(Arc::new(Inner {
            open: watch::channel(true).0,
            released: watch::channel(false).0,
            accepting: watch::channel(0).0,
        }))
    }
}

/// Held by an accept loop while it holds its listener.
pub struct Accepting(Handover);

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0
             .0
            .accepting
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Handover {
    /// A successor's: nobody accepts until [`Handover::open`].
    pub fn closed() -> Handover {
        let handover = Handover::default();
        handover.0.open.send_replace(false);
        handover
    }

    /// The commit point, on the successor's side: the accept loops begin.
    pub fn open(&self) {
        self.0.open.send_replace(true);
    }

    /// Registers an accept loop; it holds the token while it holds its listener.
    pub fn accepting(&self) -> Accepting {
        self.0.accepting.send_modify(|n| *n += 1);
        Accepting(self.clone())
    }

    /// Resolves once the loops may accept.
    pub async fn opened(&self) {
        let mut open = self.0.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }

    /// Resolves once the loops must let go of their listeners.
    pub async fn released(&self) {
        let mut released = self.0.released.subscribe();
        let _ = released.wait_for(|released| *released).await;
    }

    /// Whether the loops may accept: from the start, or from a successor's
    /// commit point (never, for a successor whose takeover failed).
    pub fn is_open(&self) -> bool {
        *self.0.open.borrow()
    }

    /// Whether the listeners were handed to a successor.
    pub fn is_released(&self) -> bool {
        *self.0.released.borrow()
    }

    /// The commit point, on the running instance's side: asks every accept
    /// loop to let go, and resolves once none is accepting.
    pub async fn release(&self) {
        self.0.released.send_replace(true);
        let mut accepting = self.0.accepting.subscribe();
        let _ = accepting.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn release_waits_for_every_accept_loop_to_let_go() {
        let handover = Handover::default();
        let first = handover.accepting();
        let second = handover.accepting();
        let loops = {
            let handover = handover.clone();
            tokio::spawn(async move {
                handover.released().await;
                drop(first);
                tokio::task::yield_now().await;
                drop(second);
            })
        };
        handover.release().await;
        assert!(handover.is_released());
        assert_eq!(*handover.0.accepting.borrow(), 0);
        loops.await.expect("loops");
    }

    #[tokio::test]
    async fn a_successors_loops_wait_for_the_commit_point() {
        let handover = Handover::closed();
        let waiting = {
            let handover = handover.clone();
            tokio::spawn(async move { handover.opened().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        handover.open();
        waiting.await.expect("opened");
    }
}
