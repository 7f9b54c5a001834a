//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "persistent-load",
    about = "Load client: /ws, /events and /poll (drain accounting, idle sockets, SSE fan-out) and POST /work under restarts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Open connections of every class, then account for how the server's
    /// drain says goodbye to each one.
    Drain(DrainArgs),
    /// Open WebSockets and hold them until SIGTERM/SIGINT or until the
    /// server closes them all.
    Idle(IdleArgs),
    /// Open SSE streams and count `event: job` events per stream.
    Sse(SseArgs),
    /// Keep connections busy with POST /work until SIGTERM/SIGINT, recording
    /// every request's outcome and every acknowledged job's id.
    Work(WorkArgs),
}

#[derive(Args)]
pub struct Common {
    /// Server address, host:port.
    #[arg(long)]
    pub addr: String,
    /// Create this file once every connection is open.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

#[derive(Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// WebSockets to open (including the --ignore-close ones).
    #[arg(long, default_value_t = 0)]
    pub ws: usize,
    /// How many of the WebSockets never answer the server's Close.
    #[arg(long, default_value_t = 0)]
    pub ignore_close: usize,
    /// SSE streams to open.
    #[arg(long, default_value_t = 0)]
    pub sse: usize,
    /// Long-polls to leave pending.
    #[arg(long, default_value_t = 0)]
    pub polls: usize,
    /// timeout_ms sent with each long-poll.
    #[arg(long, default_value_t = 60_000)]
    pub poll_timeout_ms: u64,
    /// After `ready`, give up on connections still open after this long.
    #[arg(long, default_value_t = 30_000)]
    pub max_wait_ms: u64,
    /// Pause between the last open and `ready`, so the server has read the
    /// last poll requests (a poll counts as open once its request is sent).
    #[arg(long, default_value_t = 200)]
    pub settle_ms: u64,
}

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// WebSockets to open and hold.
    #[arg(long)]
    pub ws: usize,
}

#[derive(Args)]
pub struct SseArgs {
    #[command(flatten)]
    pub common: Common,
    /// SSE streams to open.
    #[arg(long)]
    pub subscribers: usize,
    /// Stop this many seconds after `ready` (default: at SIGTERM/SIGINT only).
    #[arg(long)]
    pub seconds: Option<u64>,
}

#[derive(Args)]
pub struct WorkArgs {
    /// Server address, host:port.
    #[arg(long)]
    pub addr: String,
    /// Create this file once every connection task has started.
    #[arg(long = "ready-file")]
    pub common_ready_file: Option<PathBuf>,
    /// Connections kept busy.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How many of them open a new connection for every request (the rest
    /// keep theirs alive).
    #[arg(long, default_value_t = 0)]
    pub fresh: usize,
    /// A request not answered within this long counts as `timeout`.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Every 201's job id, one per line.
    #[arg(long)]
    pub ids_file: PathBuf,
    /// Every request: answered at (ms since the start), latency (ms), outcome; tab-separated.
    #[arg(long)]
    pub timeline_file: Option<PathBuf>,
}
