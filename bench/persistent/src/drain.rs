//! `drain`: open every class of connection, signal ready, and account for
//! how the server's drain ends each one.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::cli::DrainArgs;
use crate::report::{class_json, ms, Outcome};
use crate::support::{open_all, signal_ready, stop_channel, Stop};
use crate::{poll, sse, ws, ws_ignoring};

pub async fn run(args: DrainArgs) -> Result<Value, String> {
    if args.ignore_close > args.ws {
        return Err("--ignore-close cannot exceed --ws".to_owned());
    }
    let addr = args.common.addr.as_str();
    let concurrency = args.common.concurrency;
    let polite = args.ws - args.ignore_close;

    let (ws_open, ws_errors) = open_all("ws", polite, concurrency, || ws::open(addr)).await;
    let (ign_open, ign_errors) = open_all("ws-ignoring", args.ignore_close, concurrency, || {
        ws_ignoring::open(addr)
    })
    .await;
    let (sse_open, sse_errors) = open_all("sse", args.sse, concurrency, || sse::open(addr)).await;
    let (poll_open, poll_errors) = open_all("poll", args.polls, concurrency, || {
        poll::open(addr, args.poll_timeout_ms)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;

    let ready_at = Instant::now();
    signal_ready(args.common.ready_file.as_deref())?;
    let (stop_tx, stop) = stop_channel();
    let deadline = ready_at + Duration::from_millis(args.max_wait_ms);
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        let _ = stop_tx.send(true);
    });

    let ws_tasks = spawn_all(ws_open, &stop, ws::run);
    let ign_tasks = spawn_all(ign_open, &stop, ws_ignoring::run);
    let sse_tasks = spawn_all(sse_open, &stop, |sub, stop| async move {
        sse::run(sub, stop).await.0
    });
    let poll_tasks = spawn_all(poll_open, &stop, poll::run);
    let ws_done = join_all(ws_tasks).await;
    let ign_done = join_all(ign_tasks).await;
    let sse_done = join_all(sse_tasks).await;
    let poll_done = join_all(poll_tasks).await;
    eprintln!("all connections accounted for");

    let all = || {
        ws_done
            .iter()
            .chain(&ign_done)
            .chain(&sse_done)
            .chain(&poll_done)
    };
    let first = all().filter_map(|o| o.goodbye).min();
    let last_end = all().filter_map(|o| o.ended).max();
    let still_open = all().filter(|o| o.ended.is_none()).count();

    Ok(json!({
        "command": "drain",
        "ws": class_json(polite, &ws_errors, &ws_done, first),
        "ws_ignoring": ignoring_json(args.ignore_close, &ign_errors, &ign_done, first),
        "sse": class_json(args.sse, &sse_errors, &sse_done, first),
        "poll": class_json(args.polls, &poll_errors, &poll_done, first),
        "first_goodbye_ms_after_ready": first.map(|first| ms(ready_at, first)),
        "ended_ms": first.zip(last_end).map(|(first, last)| ms(first, last)),
        "still_open": still_open,
        "timed_out": still_open > 0,
    }))
}

/// The class summary plus, for clients that never answer the Close: how
/// many saw it, and how many the server closed (and when, after `first`).
fn ignoring_json(
    requested: usize,
    open_errors: &[String],
    outcomes: &[Outcome],
    first: Option<Instant>,
) -> Value {
    let mut summary = class_json(requested, open_errors, outcomes, first);
    let closed: Vec<Instant> = outcomes.iter().filter_map(|o| o.ended).collect();
    let after_first = |t: Option<&Instant>| first.zip(t).map(|(first, t)| ms(first, *t));
    let extra = json!({
        "got_close_1001": outcomes.iter().filter(|o| o.goodbye.is_some()).count(),
        "closed_by_server": closed.len(),
        "closed_reset": outcomes.iter().filter(|o| o.reset).count(),
        "closed_ms_min": after_first(closed.iter().min()),
        "closed_ms_max": after_first(closed.iter().max()),
    });
    if let (Some(summary), Value::Object(extra)) = (summary.as_object_mut(), extra) {
        summary.extend(extra);
    }
    summary
}

fn spawn_all<C, F, Fut>(conns: Vec<C>, stop: &Stop, run: F) -> Vec<JoinHandle<Outcome>>
where
    F: Fn(C, Stop) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    conns
        .into_iter()
        .map(|conn| tokio::spawn(run(conn, stop.clone())))
        .collect()
}

async fn join_all(tasks: Vec<JoinHandle<Outcome>>) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(match task.await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::ended(false, "task_failed", None),
        });
    }
    outcomes
}
