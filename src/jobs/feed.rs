//! The **Feed**: the jobs this instance commits, in commit order, for SSE
//! streams and long-polls. The RequestActor tells it of each job once the
//! DbActor has answered that the job is committed — never before.
//!
//! - every job gets a per-process `seq` from 1 (the SSE `id:`);
//! - a broadcast of [`BROADCAST`] events: a subscriber more than that far
//!   behind is told it lagged (its SSE stream is dropped and counted);
//! - the last [`RECENT`] events, so that a poll with `since` misses nothing
//!   while its client stays on this instance.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, MessageResult};
use drainer_engine::persistent::sse::Event;
use drainer_engine::{Census, StopActor};
use tokio::sync::broadcast;

use super::db::Job;

/// How far behind a subscriber may fall before it lagged.
pub const BROADCAST: usize = 256;
/// How many events a poll's `since` can reach back.
pub const RECENT: usize = 1024;

/// One committed job, as streams and polls see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    /// Its place in this instance's commit order, from 1.
    pub seq: u64,
    /// The job.
    pub job: Job,
    /// The job as an SSE event, encoded once for every stream.
    pub sse: Event,
}

impl JobEvent {
    fn new(seq: u64, job: Job) -> JobEvent {
        let data = serde_json::json!({"id": job.id.to_string(), "name": job.name}).to_string();
        let sse = Event::new(Some(&seq.to_string()), Some("job"), &data);
        JobEvent { seq, job, sse }
    }
}

/// A job was committed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Committed(pub Job);

/// Subscribes to the events from now on, with those after `since` still
/// in the recent buffer (`None`: none of the past).
#[derive(Debug, Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    /// The last `seq` the client has seen.
    pub since: Option<u64>,
}

/// The answer to [`Subscribe`]: the past it asked for, then the future.
#[derive(Debug)]
pub struct Subscription {
    /// Events after `since` still in the buffer, oldest first.
    pub past: Vec<Arc<JobEvent>>,
    /// Every event from now on.
    pub next: broadcast::Receiver<Arc<JobEvent>>,
}

/// See the module documentation.
pub struct Feed {
    next_seq: u64,
    recent: VecDeque<Arc<JobEvent>>,
    events: broadcast::Sender<Arc<JobEvent>>,
    census: Census,
}

impl Feed {
    /// An empty feed, counted in `census`.
    pub fn new(census: Census) -> Feed {
        let (events, _) = broadcast::channel(BROADCAST);
        Feed {
            next_seq: 1,
            recent: VecDeque::with_capacity(RECENT),
            events,
            census,
        }
    }
}

impl Actor for Feed {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.census.actor_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.census.actor_stopped();
    }
}

impl Handler<Committed> for Feed {
    type Result = ();

    fn handle(&mut self, Committed(job): Committed, _: &mut Context<Self>) {
        let event = Arc::new(JobEvent::new(self.next_seq, job));
        self.next_seq += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }
}

impl Handler<Subscribe> for Feed {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let past = match msg.since {
            None => Vec::new(),
            Some(since) => self
                .recent
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
        };
        MessageResult(Subscription {
            past,
            next: self.events.subscribe(),
        })
    }
}

impl Handler<StopActor> for Feed {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;

    fn job(name: &str) -> Job {
        Job {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
        }
    }

    #[actix_rt::test]
    async fn events_are_numbered_in_commit_order_and_the_past_is_kept() {
        let feed = Feed::new(Census::default()).start();
        let mut live = feed.send(Subscribe { since: None }).await.expect("alive");
        assert!(live.past.is_empty());
        for name in ["a", "b", "c"] {
            feed.send(Committed(job(name))).await.expect("alive");
        }
        let seen: Vec<(u64, String)> = (0..3)
            .map(|_| live.next.try_recv().expect("sent"))
            .map(|e| (e.seq, e.job.name.clone()))
            .collect();
        assert_eq!(seen, [(1, "a".into()), (2, "b".into()), (3, "c".into())]);
        let later = feed
            .send(Subscribe { since: Some(1) })
            .await
            .expect("alive");
        let past: Vec<u64> = later.past.iter().map(|e| e.seq).collect();
        assert_eq!(past, [2, 3]);
    }

    #[actix_rt::test]
    async fn a_subscriber_too_far_behind_lags() {
        let feed = Feed::new(Census::default()).start();
        let mut slow = feed.send(Subscribe { since: None }).await.expect("alive");
        for i in 0..=BROADCAST {
            feed.send(Committed(job(&i.to_string())))
                .await
                .expect("alive");
        }
        assert!(matches!(
            slow.next.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
