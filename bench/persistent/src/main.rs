//! Load client for drainer's persistent-connection endpoints.
//!
//! * `drain` opens WebSockets, SSE streams and pending long-polls, signals
//!   readiness, then accounts for how each one is said goodbye to when the
//!   server drains.
//! * `idle` holds WebSockets open (to measure server memory per socket).
//! * `sse` counts `event: job` events over many subscribers.
//! * `work` keeps connections busy with `POST /work` and records every
//!   request's outcome (the rolling-restart and hot-restart proofs).
//!
//! Every subcommand prints exactly one JSON object on stdout; progress goes
//! to stderr.

mod cli;
mod drain;
mod http;
mod idle;
mod poll;
mod report;
mod sse;
mod subscribe;
mod support;
mod work;
mod ws;
mod ws_ignoring;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    support::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("persistent-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Drain(args) => drain::run(args).await,
            cli::Command::Idle(args) => idle::run(args).await,
            cli::Command::Sse(args) => subscribe::run(args).await,
            cli::Command::Work(args) => work::run(args).await,
        }
    });
    // Do not wait for the tasks still holding sockets (idle, timed-out drains).
    runtime.shutdown_background();
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("persistent-load: {e}");
            ExitCode::FAILURE
        }
    }
}
