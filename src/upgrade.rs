//! `drainer upgrade --control-socket <path>`: asks the running instance to
//! start its own successor (its own program, with `--takeover <path>` and
//! the same environment) and exits 0 once the successor has taken over (the
//! commit point), 2 otherwise — what a service manager's reload runs.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// `drainer upgrade`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "drainer upgrade",
    about = "Ask the instance on a control socket to start its successor: exit 0 once it took over, 2 otherwise"
)]
pub struct UpgradeArgs {
    /// The running instance's control socket (its CONTROL_SOCKET).
    #[arg(long, env = "CONTROL_SOCKET")]
    pub control_socket: PathBuf,
    /// How long to wait for the outcome (ms): above the instance's TAKEOVER_TIMEOUT_MS.
    #[arg(long, default_value_t = 45_000)]
    pub timeout_ms: u64,
}

/// Runs `drainer upgrade` on `args` (the words after `upgrade`).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args =
        match UpgradeArgs::try_parse_from(std::iter::once("drainer upgrade".into()).chain(args)) {
            Ok(args) => args,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
        };
    match upgrade(&args) {
        Ok(pid) => {
            println!("drainer upgrade: pid {pid} took over");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drainer upgrade: {e}");
            ExitCode::from(2)
        }
    }
}

/// Asks for the upgrade; answers the successor's pid.
fn upgrade(args: &UpgradeArgs) -> Result<u64, String> {
    let path = args.control_socket.display();
    let mut stream = UnixStream::connect(&args.control_socket)
        .map_err(|e| format!("nothing is listening on the control socket {path} ({e})"))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(args.timeout_ms)))
        .map_err(|e| e.to_string())?;
    let hello = serde_json::json!({"type": "upgrade", "proto": drainer_engine::handoff::PROTOCOL});
    writeln!(stream, "{hello}").map_err(|e| format!("cannot ask {path}: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from {path}: {e}"))?;
    let answer: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|_| format!("no answer from {path}: the instance closed the connection"))?;
    let reason = || {
        answer
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("no reason given")
            .to_string()
    };
    match answer.get("type").and_then(|t| t.as_str()) {
        Some("upgraded") => answer
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| "the answer has no pid".to_string()),
        Some("refused") => Err(format!("refused: {}", reason())),
        _ => Err(format!("failed: {}", reason())),
    }
}

/// How the running instance starts its successor: its own program (as it
/// was started, `argv[0]`, so an upgraded binary on disk is the one run),
/// its own arguments without any `--takeover`, then `--takeover <path>`; the
/// environment is inherited.
pub fn successor_command(control: PathBuf) -> std::process::Command {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "drainer".into());
    let mut command = std::process::Command::new(program);
    let mut skip = false;
    for arg in args {
        if skip {
            skip = false;
            continue;
        }
        if arg == "--takeover" {
            skip = true;
            continue;
        }
        if arg.to_string_lossy().starts_with("--takeover=") {
            continue;
        }
        command.arg(arg);
    }
    command
        .arg("--takeover")
        .arg(control)
        .stdin(std::process::Stdio::null());
    command
}
