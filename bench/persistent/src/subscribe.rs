//! `sse`: open SSE streams and count `event: job` events on each until
//! SIGTERM/SIGINT or `--seconds` after ready.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::SseArgs;
use crate::report::count;
use crate::sse;
use crate::support::{open_all, signal_ready, stop_channel, Shutdown};

pub async fn run(args: SseArgs) -> Result<Value, String> {
    let mut shutdown = Shutdown::install()?;
    let addr = args.common.addr.as_str();
    let (opened, open_errors) = open_all("sse", args.subscribers, args.common.concurrency, || {
        sse::open(addr)
    })
    .await;
    let ready_at = Instant::now();
    signal_ready(args.common.ready_file.as_deref())?;

    let (stop_tx, stop) = stop_channel();
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|sub| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (outcome, jobs) = sse::run(sub, stop).await;
                // Still open when told to stop: the stream did not end early.
                (outcome.ended.is_some().then_some(outcome.kind), jobs)
            })
        })
        .collect();
    let exit = match args.seconds {
        Some(seconds) => tokio::select! {
            signal = shutdown.recv() => signal,
            () = tokio::time::sleep(Duration::from_secs(seconds)) => "seconds",
        },
        None => shutdown.recv().await,
    };
    let elapsed = ready_at.elapsed();
    let _ = stop_tx.send(true);

    let mut per_stream = Vec::with_capacity(tasks.len());
    let mut ended_early = Vec::new();
    for task in tasks {
        match task.await {
            Ok((ended, jobs)) => {
                per_stream.push(jobs);
                ended_early.extend(ended);
            }
            Err(_) => ended_early.push("task_failed".to_owned()),
        }
    }
    eprintln!("sse: {exit}, {} streams counted", per_stream.len());
    Ok(json!({
        "command": "sse",
        "subscribers": args.subscribers,
        "opened": per_stream.len(),
        "open_failed": open_errors.len(),
        "open_errors": count(open_errors),
        "events_total": per_stream.iter().sum::<u64>(),
        "min_per_stream": per_stream.iter().min(),
        "max_per_stream": per_stream.iter().max(),
        "ended_early": ended_early.len(),
        "ended_early_reasons": count(ended_early),
        "exit": exit,
        "seconds": elapsed.as_millis() as f64 / 1000.0,
    }))
}
