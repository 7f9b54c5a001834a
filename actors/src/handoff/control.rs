//! The running instance's side: serves the control socket until the
//! listeners are handed over (or the process stops).
//!
//! One takeover at a time: a second one while the first is in progress, or
//! once a drain has begun, is refused. A takeover that fails before the
//! commit point — the successor dies, says it failed, is not ready within
//! [`HandoffSettings::timeout`], or a drain begins here — leaves this
//! instance as it was. At the commit point this instance lets go of its
//! listeners (its own descriptors only), says `committed`, and drains as a
//! handoff ([`crate::Trigger::Takeover`]).

use std::cell::RefCell;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::channel::{kind, pid, reason, Channel};
use super::{Handover, PROTOCOL};
use crate::drain::DrainState;
use crate::supervisor::HandedOver;
use crate::transport::Core;

/// How long a connection may take to say what it wants.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts this instance's successor (for `upgrade`): its own program, with
/// `--takeover <path>` or whatever the application's flag is.
pub type SuccessorCommand = Rc<dyn Fn() -> std::process::Command>;

/// How the running instance serves the control socket.
#[derive(Clone)]
pub struct HandoffSettings {
    /// How long a successor may take to say `ready` (`TAKEOVER_TIMEOUT_MS`).
    pub timeout: Duration,
    /// How `upgrade` starts a successor; without it, `upgrade` is refused.
    pub successor: Option<SuccessorCommand>,
}

impl Default for HandoffSettings {
    fn default() -> Self {
        HandoffSettings {
            timeout: super::TAKEOVER_TIMEOUT,
            successor: None,
        }
    }
}

/// What `upgrade` answers: the successor's pid at the commit point.
pub type Upgraded = Result<u32, String>;

/// What is handed over, by name and descriptor (borrowed: the accept loops
/// own them until the commit point).
#[derive(Clone)]
pub(crate) struct Listeners {
    pub http: (RawFd, String),
    pub admin: Option<(RawFd, String)>,
    pub control: (RawFd, PathBuf, (u64, u64)),
}

/// At most one takeover or upgrade at a time.
enum Busy {
    Idle,
    /// A takeover by `pid` is under way (or, with `outcome`, an upgrade
    /// started `pid` and waits to hear how its takeover went).
    Handing {
        pid: u32,
        outcome: Option<oneshot::Sender<Upgraded>>,
    },
    /// Handed over: nothing more.
    Done,
}

struct Shared {
    core: Core,
    handover: Handover,
    listeners: Listeners,
    settings: HandoffSettings,
    busy: RefCell<Busy>,
}

/// Serves `listener` until the listeners are handed over or the process stops.
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    core: Core,
    handover: Handover,
    listeners: Listeners,
    settings: HandoffSettings,
) {
    let shared = Rc::new(Shared {
        core: core.clone(),
        handover: handover.clone(),
        listeners,
        settings,
        busy: RefCell::new(Busy::Idle),
    });
    let _accepting = handover.accepting();
    let mut state = core.state.clone();
    // A successor serves the control socket once its takeover has committed.
    tokio::select! {
        _ = handover.opened() => {}
        _ = state.wait_for(|s| matches!(s, DrainState::Stopped)) => return,
    }
    loop {
        tokio::select! {
            _ = handover.released() => break,
            changed = state.wait_for(|s| matches!(s, DrainState::Stopped)) => {
                let _ = changed;
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    core.census.spawn(async move { connection(Channel::new(stream), shared).await });
                }
                Err(e) => crate::server::accept_error(e).await,
            },
        }
    }
}

fn refuse_line(reason: &str) -> Value {
    json!({"type": "refused", "proto": PROTOCOL, "reason": reason})
}

async fn connection(mut channel: Channel, shared: Rc<Shared>) {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match channel.peer_uid() {
        Ok(uid) if uid == me => {}
        Ok(uid) => {
            warn!("control socket: a connection from uid {uid} refused");
            let _ = channel.send(&refuse_line("another user")).await;
            return;
        }
        Err(e) => {
            warn!("control socket: cannot identify the peer: {e}");
            return;
        }
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, channel.recv()).await {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let _ = channel.send(&refuse_line(&e.to_string())).await;
            return;
        }
        Err(_) => return,
    };
    let proto = hello.get("proto").and_then(Value::as_u64);
    if proto != Some(PROTOCOL) {
        let said = proto.map_or_else(|| "none".to_string(), |v| v.to_string());
        warn!("control socket: protocol version {said} refused (this instance speaks {PROTOCOL})");
        let reason = format!("protocol version {said}; this instance speaks {PROTOCOL}");
        let _ = channel.send(&refuse_line(&reason)).await;
        return;
    }
    match kind(&hello) {
        "takeover" => {
            let pid = pid(&hello).unwrap_or(0);
            takeover(channel, pid, &shared).await;
        }
        "upgrade" => upgrade(channel, &shared).await,
        other => {
            let _ = channel
                .send(&refuse_line(&format!("unknown message {other:?}")))
                .await;
        }
    }
}

/// Whether no drain has begun.
fn active(shared: &Shared) -> bool {
    shared.core.state.borrow().is_active()
}

/// Duplicates `fd` (close-on-exec): held while it is sent, then closed.
fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold answers a new one we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Ends a takeover that did not commit: tells an `upgrade` waiting for it.
fn failed(shared: &Shared, reason: String) {
    let previous = std::mem::replace(&mut *shared.busy.borrow_mut(), Busy::Idle);
    if let Busy::Handing {
        outcome: Some(outcome),
        ..
    } = previous
    {
        let _ = outcome.send(Err(reason));
    }
}

async fn takeover(mut channel: Channel, pid: u32, shared: &Shared) {
    if !active(shared) {
        let _ = channel
            .send(&refuse_line("this instance is draining"))
            .await;
        return;
    }
    let admitted = {
        let mut busy = shared.busy.borrow_mut();
        match &*busy {
            Busy::Idle => {
                *busy = Busy::Handing { pid, outcome: None };
                true
            }
            // The successor an upgrade started.
            Busy::Handing {
                pid: started,
                outcome: Some(_),
            } if *started == pid => true,
            _ => false,
        }
    };
    if !admitted {
        warn!("takeover by pid {pid} refused: another is in progress");
        let _ = channel
            .send(&refuse_line("busy: another takeover is in progress"))
            .await;
        return;
    }
    info!("takeover by pid {pid}: handing over the listeners");
    let l = &shared.listeners;
    let mut names = vec![json!({"name": "http", "addr": l.http.1})];
    let mut raw = vec![l.http.0];
    if let Some((fd, addr)) = &l.admin {
        names.push(json!({"name": "admin", "addr": addr}));
        raw.push(*fd);
    }
    names.push(json!({
        "name": "control",
        "path": l.control.1.display().to_string(),
        "dev": l.control.2 .0,
        "ino": l.control.2 .1,
    }));
    raw.push(l.control.0);
    let dups: Result<Vec<OwnedFd>, _> = raw.iter().map(|&fd| dup(fd)).collect();
    let dups = match dups {
        Ok(dups) => dups,
        Err(e) => {
            error!("takeover by pid {pid}: cannot duplicate the listeners: {e}");
            let _ = channel
                .send(&refuse_line("cannot duplicate the listeners"))
                .await;
            failed(shared, format!("cannot duplicate the listeners: {e}"));
            return;
        }
    };
    let fds: Vec<RawFd> = dups.iter().map(|fd| fd.as_raw_fd()).collect();
    let me = std::process::id();
    let message = json!({"type": "listeners", "proto": PROTOCOL, "pid": me, "listeners": names});
    let sent = channel.send_with_fds(&message, &fds).await;
    drop(dups);
    if let Err(e) = sent {
        warn!("takeover by pid {pid} failed: cannot send the listeners ({e}); carrying on");
        failed(shared, format!("cannot send the listeners: {e}"));
        return;
    }
    let mut state = shared.core.state.clone();
    let waited = tokio::select! {
        message = tokio::time::timeout(shared.settings.timeout, channel.recv()) => match message {
            Ok(Ok(Some(m))) if kind(&m) == "ready" => Ok(()),
            Ok(Ok(Some(m))) => Err(format!("the successor said {:?}: {}", kind(&m), reason(&m))),
            Ok(Ok(None)) => Err("the successor went away before it was ready".to_string()),
            Ok(Err(e)) => Err(format!("the control connection failed: {e}")),
            Err(_) => {
                let _ = channel.send(&json!({"type": "abort", "reason": "timeout"})).await;
                Err(format!(
                    "the successor was not ready within {} ms",
                    shared.settings.timeout.as_millis()
                ))
            }
        },
        _ = state.wait_for(|s| !s.is_active()) => {
            let _ = channel.send(&json!({"type": "abort", "reason": "terminating"})).await;
            Err("a drain began here first".to_string())
        },
    };
    if let Err(reason) = waited {
        warn!("takeover by pid {pid} aborted: {reason}; carrying on, nothing was handed over");
        failed(shared, reason);
        return;
    }
    if !active(shared) {
        let _ = channel
            .send(&json!({"type": "abort", "reason": "terminating"}))
            .await;
        warn!("takeover by pid {pid} aborted: a drain began here first");
        failed(shared, "a drain began here first".into());
        return;
    }
    // The commit point: stop accepting (own descriptors only), then say so.
    shared.handover.release().await;
    info!("takeover by pid {pid}: stopped accepting; committed");
    if let Err(e) = channel.send(&json!({"type": "committed", "pid": me})).await {
        // Its descriptors are the listeners now; it sees us gone and carries on.
        warn!("takeover by pid {pid}: cannot confirm ({e}); draining anyway");
    }
    let previous = std::mem::replace(&mut *shared.busy.borrow_mut(), Busy::Done);
    if let Busy::Handing {
        outcome: Some(outcome),
        ..
    } = previous
    {
        let _ = outcome.send(Ok(pid));
    }
    shared
        .core
        .supervisor
        .do_send(HandedOver { successor: pid });
}

/// `upgrade`: starts a successor and answers once it committed or failed.
async fn upgrade(mut channel: Channel, shared: &Shared) {
    let Some(command) = shared.settings.successor.clone() else {
        let _ = channel
            .send(&refuse_line("this instance cannot start a successor"))
            .await;
        return;
    };
    if !active(shared) {
        let _ = channel
            .send(&refuse_line("this instance is draining"))
            .await;
        return;
    }
    if !matches!(*shared.busy.borrow(), Busy::Idle) {
        let _ = channel
            .send(&refuse_line("busy: another takeover is in progress"))
            .await;
        return;
    }
    let mut command = command();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            error!("upgrade: cannot start the successor: {e}");
            let _ = channel
                .send(&json!({"type": "failed", "reason": format!("cannot start the successor: {e}")}))
                .await;
            return;
        }
    };
    let pid = child.id();
    info!("upgrade: started the successor, pid {pid}");
    let (outcome_tx, outcome) = oneshot::channel();
    *shared.busy.borrow_mut() = Busy::Handing {
        pid,
        outcome: Some(outcome_tx),
    };
    // Reaped on a thread of its own: a successor that fails must not stay a zombie.
    let (exit_tx, exited) = watch::channel(None);
    std::thread::spawn(move || {
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        let _ = exit_tx.send(Some(status));
    });
    let mut exited = exited;
    let deadline = shared.settings.timeout + HELLO_TIMEOUT;
    let result: Upgraded = tokio::select! {
        outcome = outcome => outcome.unwrap_or_else(|_| Err("the takeover ended without a word".into())),
        status = exited.wait_for(Option::is_some) => {
            let status = status.map(|s| s.clone().unwrap_or_default()).unwrap_or_default();
            Err(format!("the successor (pid {pid}) exited before the commit point ({status})"))
        }
        _ = tokio::time::sleep(deadline) => Err(format!("no takeover within {} ms", deadline.as_millis())),
    };
    let stale = matches!(*shared.busy.borrow(), Busy::Handing { pid: p, .. } if p == pid);
    if result.is_err() && stale {
        *shared.busy.borrow_mut() = Busy::Idle;
    }
    let reply = match &result {
        Ok(pid) => json!({"type": "upgraded", "pid": pid}),
        Err(reason) => {
            warn!("upgrade failed: {reason}");
            json!({"type": "failed", "reason": reason})
        }
    };
    let _ = channel.send(&reply).await;
}

/// The listeners' names and addresses, for the `listeners` message.
pub(crate) fn describe(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}
