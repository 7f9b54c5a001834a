//! Plumbing shared by the subcommands: file-descriptor limit, bounded-
//! concurrency opening, the ready signal, stop and shutdown signals.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// How long one connection may take to open (connect plus handshake).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the soft RLIMIT_NOFILE to the hard limit; says so on stderr.
pub fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        eprintln!("getrlimit: {}", io::Error::last_os_error());
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            eprintln!("setrlimit: {}", io::Error::last_os_error());
            return;
        }
    }
    eprintln!("open-file limit: {}", limit.rlim_cur);
}

/// Opens `n` connections, at most `concurrency` at a time, each bounded by
/// [`OPEN_TIMEOUT`]. Returns the opened ones and the failure reasons.
pub async fn open_all<T, F, Fut>(
    label: &str,
    n: usize,
    concurrency: usize,
    open: F,
) -> (Vec<T>, Vec<String>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut opened = Vec::with_capacity(n);
    let mut failed = Vec::new();
    if n == 0 {
        return (opened, failed);
    }
    eprintln!("{label}: opening {n}, {concurrency} at a time");
    let mut results = stream::iter(0..n)
        .map(|_| async {
            match tokio::time::timeout(OPEN_TIMEOUT, open()).await {
                Ok(result) => result,
                Err(_) => Err("open_timeout".to_owned()),
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = results.next().await {
        match result {
            Ok(conn) => opened.push(conn),
            Err(reason) => failed.push(reason),
        }
    }
    eprintln!("{label}: opened {}/{n}", opened.len());
    (opened, failed)
}

/// Prints `ready` on stderr and creates the ready file, if any.
pub fn signal_ready(ready_file: Option<&Path>) -> Result<(), String> {
    if let Some(path) = ready_file {
        std::fs::write(path, b"ready\n")
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    eprintln!("ready");
    Ok(())
}

/// Tells the connection tasks to give up (deadline, signal, --seconds).
pub fn stop_channel() -> (watch::Sender<bool>, Stop) {
    let (tx, rx) = watch::channel(false);
    (tx, Stop(rx))
}

#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once stop was sent (or its sender is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

/// SIGTERM and SIGINT, installed before `ready` so that none is missed.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    pub fn install() -> Result<Self, String> {
        let install =
            |kind| signal(kind).map_err(|e| format!("cannot install a signal handler: {e}"));
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// A short, stable name for an I/O error, fit for a JSON reasons map.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset".to_owned(),
        io::ErrorKind::ConnectionRefused => "refused".to_owned(),
        io::ErrorKind::ConnectionAborted => "aborted".to_owned(),
        io::ErrorKind::BrokenPipe => "broken_pipe".to_owned(),
        io::ErrorKind::UnexpectedEof => "eof".to_owned(),
        io::ErrorKind::TimedOut => "timeout".to_owned(),
        io::ErrorKind::InvalidData => "invalid_response".to_owned(),
        kind => format!("io_{kind:?}").to_lowercase(),
    }
}
