//! [`ControlSocket`]: where a successor asks for the listeners.
//!
//! Whoever can connect to it can take the port, so it is created with mode
//! 0600, in a directory only its owner can write (start-up refuses one that
//! its group or others can write), and a connection from another user is
//! refused. Its descriptor is handed over with the listeners: after a
//! handoff the path belongs to the successor, so a process removes the path
//! only at a terminal exit, and only if the path still names its socket.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use log::{info, warn};

use super::HandoffError;

/// See the module documentation.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode, to know it is still ours.
    file: (u64, u64),
}

fn error(path: &Path, reason: impl Into<String>) -> HandoffError {
    HandoffError::Socket {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl ControlSocket {
    /// Creates the socket at `path`. A stale socket file there (nothing
    /// listening) is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<ControlSocket, HandoffError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let meta = std::fs::metadata(dir)
            .map_err(|e| error(path, format!("its directory cannot be read: {e}")))?;
        if meta.mode() & 0o022 != 0 {
            return Err(error(
                path,
                format!(
                    "its directory {} can be written by others (mode {:o}): use one only its owner can write",
                    dir.display(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(existing) => {
                use std::os::unix::fs::FileTypeExt;
                if !existing.file_type().is_socket() {
                    return Err(error(path, "the path exists and is not a socket"));
                }
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(error(
                        path,
                        "another instance is listening on it (use --takeover to succeed it)",
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| error(path, format!("cannot remove the stale socket: {e}")))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(path, e.to_string())),
        }
        let listener = UnixListener::bind(path).map_err(|e| error(path, e.to_string()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| error(path, format!("cannot set its mode to 0600: {e}")))?;
        let meta = std::fs::metadata(path).map_err(|e| error(path, e.to_string()))?;
        info!("control socket on {}", path.display());
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            file: (meta.dev(), meta.ino()),
        })
    }

    /// The socket a predecessor handed over.
    pub(crate) fn inherited(fd: OwnedFd, path: PathBuf, file: (u64, u64)) -> ControlSocket {
        ControlSocket {
            listener: UnixListener::from(fd),
            path,
            file,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket file's device and inode.
    pub(crate) fn file(&self) -> (u64, u64) {
        self.file
    }

    /// The listening descriptor.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Ready for the System's runtime.
    pub(crate) fn into_tokio(self) -> std::io::Result<(tokio::net::UnixListener, Remover)> {
        self.listener.set_nonblocking(true)?;
        let remover = Remover {
            path: self.path,
            file: self.file,
        };
        Ok((tokio::net::UnixListener::from_std(self.listener)?, remover))
    }
}

/// Removes the socket's path at a terminal exit, if it is still ours.
pub(crate) struct Remover {
    path: PathBuf,
    file: (u64, u64),
}

impl Remover {
    /// Removes the path unless it now names another socket (a successor's).
    pub(crate) fn remove(self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.file => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(
                        "cannot remove the control socket {}: {e}",
                        self.path.display()
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("drainer-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("mode");
        dir
    }

    #[test]
    fn the_socket_is_0600_and_a_live_one_is_not_replaced() {
        let dir = private_dir("live");
        let path = dir.join("ctl.sock");
        let socket = ControlSocket::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = ControlSocket::bind(&path).expect_err("a live socket");
        assert!(err.to_string().contains("another instance"), "{err}");
        drop(socket);
        // Nothing listens now: a stale file is replaced.
        ControlSocket::bind(&path).expect("stale replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = private_dir("open");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("mode");
        let err = ControlSocket::bind(&dir.join("ctl.sock")).expect_err("refused");
        assert!(
            err.to_string().contains("can be written by others"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_path_is_removed_only_while_it_is_ours() {
        let dir = private_dir("remove");
        let path = dir.join("ctl.sock");
        let (_, remover) = ControlSocket::bind(&path)
            .expect("bind")
            .into_tokio_blocking();
        // Another socket took the path (a successor's, after a handoff); the
        // first file is moved, not deleted, so its inode cannot be reused.
        std::fs::rename(&path, dir.join("moved.sock")).expect("mv");
        let _other = UnixListener::bind(&path).expect("other");
        remover.remove();
        assert!(path.exists(), "another's socket is left alone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    impl ControlSocket {
        fn into_tokio_blocking(self) -> (UnixListener, Remover) {
            let remover = Remover {
                path: self.path.clone(),
                file: self.file,
            };
            (self.listener, remover)
        }
    }
}
