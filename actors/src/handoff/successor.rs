//! [`Successor`]: the new instance's side of a takeover. It asks the running
//! instance for its listeners, checks each one, and keeps the connection to
//! say `ready` once prepared; it never binds the port itself.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::info;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use super::channel::{kind, pid, reason, Channel};
use super::{ControlSocket, HandoffError, PROTOCOL};

/// See the module documentation.
pub struct Successor {
    pub(crate) channel: Channel,
    /// The running instance's pid.
    pub predecessor: u32,
    /// The HTTP listener, the same socket the predecessor accepted on.
    pub http: TcpListener,
    /// The admin listener, if the predecessor had one.
    pub admin: Option<TcpListener>,
    /// The control socket, for the next upgrade.
    pub control: ControlSocket,
}

fn protocol(e: impl std::fmt::Display) -> HandoffError {
    HandoffError::Protocol(e.to_string())
}

/// Whether `fd` is a listening socket (`SO_ACCEPTCONN`).
fn is_listening(fd: &OwnedFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for getsockopt to write.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && value == 1
}

impl Successor {
    /// Asks the instance listening on `path` for its listeners, within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Successor, HandoffError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| HandoffError::NotListening {
                    path: path.display().to_string(),
                    source,
                })?;
        let mut channel = Channel::new(stream);
        let me = std::process::id();
        channel
            .send(&json!({"type": "takeover", "proto": PROTOCOL, "pid": me}))
            .await
            .map_err(protocol)?;
        let (message, fds) = tokio::time::timeout(timeout, channel.recv_with_fds())
            .await
            .map_err(|_| protocol("the running instance did not answer in time"))?
            .map_err(protocol)?
            .ok_or_else(|| protocol("the running instance closed the control connection"))?;
        match kind(&message) {
            "listeners" => {}
            "refused" => return Err(HandoffError::Refused(reason(&message).to_string())),
            other => return Err(protocol(format!("unexpected message {other:?}"))),
        }
        let proto = message.get("proto").and_then(Value::as_u64);
        if proto != Some(PROTOCOL) {
            let said = proto.map_or_else(|| "none".to_string(), |v| v.to_string());
            return Err(HandoffError::Refused(format!(
                "protocol version {said}; this instance speaks {PROTOCOL}"
            )));
        }
        let predecessor = pid(&message).ok_or_else(|| protocol("no pid in listeners"))?;
        let names: Vec<&Value> = message
            .get("listeners")
            .and_then(Value::as_array)
            .map(|l| l.iter().collect())
            .unwrap_or_default();
        if names.len() != fds.len() {
            return Err(protocol(format!(
                "{} listeners named, {} descriptors received",
                names.len(),
                fds.len()
            )));
        }
        let (mut http, mut admin, mut control) = (None, None, None);
        for (entry, fd) in names.into_iter().zip(fds) {
            if !is_listening(&fd) {
                return Err(protocol("a descriptor received is not a listening socket"));
            }
            match entry.get("name").and_then(Value::as_str) {
                Some("http") => http = Some(TcpListener::from(fd)),
                Some("admin") => admin = Some(TcpListener::from(fd)),
                Some("control") => {
                    let path = entry
                        .get("path")
                        .and_then(Value::as_str)
                        .map(PathBuf::from)
                        .unwrap_or_else(|| path.to_path_buf());
                    let file = (
                        entry.get("dev").and_then(Value::as_u64).unwrap_or(0),
                        entry.get("ino").and_then(Value::as_u64).unwrap_or(0),
                    );
                    control = Some(ControlSocket::inherited(fd, path, file));
                }
                other => return Err(protocol(format!("unknown listener {other:?}"))),
            }
        }
        let http = http.ok_or_else(|| protocol("no http listener received"))?;
        let control = control.ok_or_else(|| protocol("no control socket received"))?;
        if let Ok(addr) = http.local_addr() {
            info!("takeover: received the listener on {addr} from pid {predecessor}; preparing");
        }
        Ok(Successor {
            channel,
            predecessor,
            http,
            admin,
            control,
        })
    }
}

impl Successor {
    /// Resolves if the running instance aborts the takeover (or goes away)
    /// while this one prepares: select it against the preparation (opening
    /// the database), so an abort ends the successor at once. Nothing else
    /// arrives before `ready`, so nothing is lost by dropping it.
    pub async fn interrupted(&mut self) -> HandoffError {
        not_committed(self.channel.recv().await)
    }
}

/// What the running instance said instead of `committed`, as an error.
fn not_committed(received: std::io::Result<Option<Value>>) -> HandoffError {
    match received {
        Ok(Some(message)) if kind(&message) == "abort" => {
            HandoffError::Aborted(reason(&message).to_string())
        }
        Ok(Some(message)) => protocol(format!("unexpected message {:?}", kind(&message))),
        Ok(None) => protocol("the running instance closed the control connection"),
        Err(e) => protocol(e),
    }
}

/// Says `ready` and waits for the commit point: `Ok` once `committed` (or
/// once the predecessor is gone: its descriptors were ours already), `Err`
/// with the reason otherwise.
async fn commit(channel: &mut Channel, predecessor: u32) -> Result<(), HandoffError> {
    let me = std::process::id();
    channel
        .send(&json!({"type": "ready", "pid": me}))
        .await
        .map_err(protocol)?;
    match channel.recv().await {
        Ok(Some(message)) if kind(&message) == "committed" => Ok(()),
        Ok(None) | Err(_) if !alive(predecessor) => {
            info!("takeover: pid {predecessor} is gone before confirming; taking over");
            Ok(())
        }
        other => Err(not_committed(other)),
    }
}

/// The successor's side of the commit point, once it is ready on `local`:
/// says `ready`, and once `committed` opens the accept loops, tells the
/// service manager (`MAINPID=`, `READY=1`) and calls `on_committed` with the
/// predecessor's pid. An error means nothing was accepted.
pub(crate) async fn serve_when_committed(
    mut channel: Channel,
    predecessor: u32,
    handover: super::Handover,
    local: std::net::SocketAddr,
    on_committed: Vec<Box<dyn FnOnce(u32)>>,
) -> Result<(), HandoffError> {
    commit(&mut channel, predecessor).await?;
    super::test_accept_delay().await;
    handover.open();
    info!("takeover committed: listening on {local} (predecessor pid {predecessor})");
    crate::notify::send(&format!("MAINPID={}\nREADY=1", std::process::id()));
    for committed in on_committed {
        committed(predecessor);
    }
    Ok(())
}
/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks.
    unsafe { libc::kill(pid, 0) == 0 }
}
