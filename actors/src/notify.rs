//! The service manager's notification socket (`NOTIFY_SOCKET`, systemd's
//! `Type=notify`): `READY=1` once the HTTP listener accepts, `STOPPING=1`
//! when a drain begins. Without `NOTIFY_SOCKET`, nothing is sent.
//!
//! The socket is a unix datagram socket named by a path, or by an abstract
//! name when the variable starts with `@`. A message that cannot be sent is
//! logged once per kind and never stops the service: the manager's own
//! timeout says what a missing `READY=1` means.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{debug, warn};

/// The variable that names the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Sends `READY=1`, once per process (an admin listener starting after the
/// HTTP one does not send it again).
pub(crate) fn ready() {
    if !READY_SENT.swap(true, Ordering::AcqRel) {
        send("READY=1");
    }
}

/// Sends `STOPPING=1`: the drain has begun.
pub(crate) fn stopping() {
    send("STOPPING=1");
}

/// Sends `state` (lines of `KEY=value`) to `NOTIFY_SOCKET`, if set.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send_to(&path, state) {
        Ok(()) => debug!("told the service manager {state}"),
        Err(e) => warn!(
            "cannot tell the service manager {state} ({NOTIFY_SOCKET}={}): {e}",
            path.to_string_lossy()
        ),
    }
}

fn send_to(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("drainer-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "STOPPING=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("drainer-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind");
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let err = send_to(
            std::ffi::OsStr::new("/nonexistent/drainer/notify.sock"),
            "READY=1",
        );
        assert!(err.is_err());
    }
}
