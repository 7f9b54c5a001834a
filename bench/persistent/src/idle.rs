//! `idle`: open WebSockets and hold them (pings are answered while reading)
//! until SIGTERM/SIGINT or until the server has closed them all.

use std::time::Instant;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::cli::IdleArgs;
use crate::report::{count, ms, Outcome};
use crate::support::{open_all, signal_ready, stop_channel, Shutdown};
use crate::ws;

pub async fn run(args: IdleArgs) -> Result<Value, String> {
    let mut shutdown = Shutdown::install()?;
    let addr = args.common.addr.as_str();
    let (opened, open_errors) =
        open_all("ws", args.ws, args.common.concurrency, || ws::open(addr)).await;
    let opened_count = opened.len();
    let ready_at = Instant::now();
    signal_ready(args.common.ready_file.as_deref())?;

    // Never sent: the sockets are dropped at exit, not closed one by one.
    let (_stop_tx, stop) = stop_channel();
    let mut tasks = JoinSet::new();
    for conn in opened {
        tasks.spawn(ws::run(conn, stop.clone()));
    }
    let mut closed: Vec<Outcome> = Vec::new();
    let exit = tokio::select! {
        signal = shutdown.recv() => signal,
        () = collect(&mut tasks, &mut closed) => "all_closed",
    };
    eprintln!(
        "idle: {exit}, {} of {opened_count} closed by the server",
        closed.len()
    );
    Ok(json!({
        "command": "idle",
        "requested": args.ws,
        "opened": opened_count,
        "open_failed": open_errors.len(),
        "open_errors": count(open_errors),
        "closed_by_server": closed.len(),
        "closed": count(closed.iter().map(|o| o.kind.clone())),
        "exit": exit,
        "held_ms": ms(ready_at, Instant::now()),
    }))
}

async fn collect(tasks: &mut JoinSet<Outcome>, closed: &mut Vec<Outcome>) {
    while let Some(done) = tasks.join_next().await {
        closed.push(done.unwrap_or_else(|_| Outcome::ended(false, "task_failed", None)));
    }
}
