//! A long-poll drained on purpose: at the goodbye a pending poll is answered
//! "nothing yet" at once, and the client re-polls through the load balancer
//! with no error and no backoff (Consul's blocking queries, Kubernetes'
//! watches: an early return is no promise of a change). A poll that begins
//! after the goodbye is answered the same way at once.

use std::future::Future;
use std::time::Duration;

use actix_web::{HttpMessage, HttpRequest};

use super::{goodbye, Class, Farewell, Persistence};
use crate::http::Work;

/// How a long-poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled<T> {
    /// What it waited for arrived.
    Ready(T),
    /// Its timeout passed first.
    TimedOut,
    /// The goodbye came first (or had come): answer "nothing yet" now;
    /// the response carries `Connection: close`.
    Goodbye,
}

/// Waits for `wait`, at most `timeout`, and no longer than the goodbye.
pub async fn long_poll<T>(
    req: &HttpRequest,
    timeout: Duration,
    wait: impl Future<Output = T>,
) -> Polled<T> {
    let Some(persistence) = Persistence::of(req) else {
        return Polled::Ready(wait.await);
    };
    if persistence.goodbye_said() {
        return Polled::Goodbye;
    }
    let held = persistence.hold(req, Class::LongPoll);
    // Answered "nothing yet" at a forced cut rather than cut: not counted
    // as cut work (the exit code follows the requests only).
    let _parked = req.extensions().get::<Work>().and_then(Work::park);
    let mut farewell = persistence.farewell.clone();
    tokio::select! {
        biased;
        farewell = goodbye(&mut farewell) => {
            // Told to go at the goodbye: clean; at a forced cut: forced.
            held.clean_flag().set(farewell == Farewell::Goodbye);
            Polled::Goodbye
        }
        ready = wait => Polled::Ready(ready),
        () = tokio::time::sleep(timeout) => Polled::TimedOut,
    }
}
