//! `work`: keeps connections busy with `POST /work` until SIGTERM/SIGINT and
//! records every request's outcome — the load of the rolling-restart and
//! hot-restart proofs.
//!
//! Each of `--connections` tasks sends one request after another: on a
//! keep-alive connection (reopened when the server says `Connection: close`
//! or the connection fails), or, for the `--fresh` first ones, on a new
//! connection each time. An outcome is `status_<code>` or the failure's
//! kind (`refused`, `reset`, `eof`: closed without an answer, `timeout`,
//! …); a request that failed is never retried by the client. The id of every
//! 201 goes to `--ids-file`, one per line, to be looked up in the database.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::cli::WorkArgs;
use crate::http::{read_body, read_head};
use crate::support::{io_reason, signal_ready, Shutdown};

/// One request's record.
struct Done {
    outcome: String,
    /// When it was answered (or failed), since the start.
    at: Duration,
    latency: Duration,
    id: Option<String>,
}

/// Sends one request on `conn` (opening it when there is none); answers the
/// outcome, the job id of a 201, and whether the connection may be reused.
async fn one(
    addr: &str,
    conn: &mut Option<(TcpStream, Vec<u8>)>,
    body: &str,
) -> (String, Option<String>) {
    if conn.is_none() {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                *conn = Some((stream, Vec::new()));
            }
            Err(e) => return (io_reason(&e), None),
        }
    }
    let Some((stream, buf)) = conn.as_mut() else {
        return ("no_connection".into(), None);
    };
    let request = format!(
        "POST /work HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        stream.write_all(request.as_bytes()).await?;
        let head = read_head(stream, buf).await?;
        let body = read_body(stream, buf, &head).await?;
        Ok::<_, io::Error>((head, body))
    };
    match answer.await {
        Ok((head, body)) => {
            let close = head.connection_close();
            let id = (head.status == 201)
                .then(|| {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
                })
                .flatten();
            if close {
                *conn = None;
            }
            let outcome = match (head.status, &id) {
                (201, None) => "status_201_without_id".to_owned(),
                (status, _) => format!("status_{status}"),
            };
            (outcome, id)
        }
        Err(e) => {
            *conn = None;
            (io_reason(&e), None)
        }
    }
}

/// One connection's loop, until `stop`.
async fn client(
    n: usize,
    addr: String,
    fresh: bool,
    timeout: Duration,
    start: Instant,
    done: mpsc::UnboundedSender<Done>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn = None;
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        let body = format!(r#"{{"name":"load-{n}-{seq}"}}"#);
        let began = Instant::now();
        let (outcome, id) = tokio::select! {
            r = tokio::time::timeout(timeout, one(&addr, &mut conn, &body)) => match r {
                Ok(r) => r,
                Err(_) => {
                    conn = None;
                    ("timeout".to_owned(), None)
                }
            },
            // A request in flight at the stop is not counted: it was neither
            // answered nor failed.
            _ = stop.changed() => return,
        };
        if fresh {
            conn = None;
        }
        let now = Instant::now();
        let record = Done {
            outcome,
            at: now - start,
            latency: now - began,
            id,
        };
        if done.send(record).is_err() {
            return;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

pub async fn run(args: WorkArgs) -> Result<serde_json::Value, String> {
    let mut shutdown = Shutdown::install()?;
    let ids = File::create(&args.ids_file)
        .map_err(|e| format!("cannot create {}: {e}", args.ids_file.display()))?;
    let mut ids = BufWriter::new(ids);
    let mut timeline = match &args.timeline_file {
        Some(path) => {
            Some(BufWriter::new(File::create(path).map_err(|e| {
                format!("cannot create {}: {e}", path.display())
            })?))
        }
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut tasks = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        tasks.push(tokio::spawn(client(
            n,
            args.addr.clone(),
            n < args.fresh,
            timeout,
            start,
            done_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(done_tx);
    signal_ready(args.common_ready_file.as_deref())?;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut record = |d: Done, ids: &mut BufWriter<File>| -> Result<(), String> {
        *outcomes.entry(d.outcome.clone()).or_default() += 1;
        let ms = d.latency.as_secs_f64() * 1000.0;
        latencies.push(ms);
        if let Some(id) = &d.id {
            writeln!(ids, "{id}").map_err(|e| format!("cannot write the ids: {e}"))?;
        }
        if let Some(t) = timeline.as_mut() {
            writeln!(
                t,
                "{:.3}\t{ms:.3}\t{}",
                d.at.as_secs_f64() * 1000.0,
                d.outcome
            )
            .map_err(|e| format!("cannot write the timeline: {e}"))?;
        }
        Ok(())
    };
    let signal = loop {
        tokio::select! {
            signal = shutdown.recv() => break signal,
            d = done_rx.recv() => match d {
                Some(d) => record(d, &mut ids)?,
                None => break "every client ended",
            },
        }
    };
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    while let Ok(d) = done_rx.try_recv() {
        record(d, &mut ids)?;
    }
    ids.flush()
        .map_err(|e| format!("cannot write the ids: {e}"))?;
    if let Some(t) = timeline.as_mut() {
        t.flush()
            .map_err(|e| format!("cannot write the timeline: {e}"))?;
    }
    latencies.sort_by(f64::total_cmp);
    let requests: u64 = outcomes.values().sum();
    let ok: u64 = outcomes
        .iter()
        .filter(|(k, _)| k.starts_with("status_2") && k.as_str() != "status_201_without_id")
        .map(|(_, v)| v)
        .sum();
    Ok(json!({
        "stopped_by": signal,
        "seconds": start.elapsed().as_secs_f64(),
        "requests": requests,
        "ok": ok,
        "failed": requests - ok,
        "outcomes": outcomes,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(0.0),
        },
    }))
}
