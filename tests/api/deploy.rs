//! What the deployment files rely on: `drainer probe` (the image's
//! HEALTHCHECK) and `NOTIFY_SOCKET` (systemd's `Type=notify`).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drainer"))
        .arg("probe")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run drainer probe")
}

#[test]
fn probe_exits_0_on_livez_and_1_on_a_503_or_a_closed_port() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[("SHUTDOWN_DELAY_MS", "5000")]);
    let live = probe(&[&format!("http://127.0.0.1:{}/livez", server.port)]);
    assert_eq!(live.status.code(), Some(0), "{live:?}");
    assert!(live.stderr.is_empty(), "{live:?}");

    let missing = probe(&[&format!("http://127.0.0.1:{}/nothing-here", server.port)]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        format!(
            "drainer probe: http://127.0.0.1:{}/nothing-here answered 404",
            server.port
        )
    );

    // Draining: readiness answers 503, so does a probe of it.
    server.signal(libc::SIGTERM);
    server.wait_for_log("draining server");
    let ready = probe(&[&format!("http://127.0.0.1:{}/readyz", server.port)]);
    assert_eq!(ready.status.code(), Some(1), "{ready:?}");
    assert!(
        String::from_utf8_lossy(&ready.stderr).contains("answered 503"),
        "{ready:?}"
    );
    assert_eq!(server.wait_exit(PATIENCE).0, 0);

    let closed = probe(&[&format!("http://127.0.0.1:{}/livez", closed_port())]);
    assert_eq!(closed.status.code(), Some(1), "{closed:?}");
    assert!(
        String::from_utf8_lossy(&closed.stderr).contains("cannot reach"),
        "{closed:?}"
    );
}

#[test]
fn probe_refuses_a_url_it_cannot_use_and_a_missing_one() {
    let https = probe(&["https://127.0.0.1/livez"]);
    assert_eq!(https.status.code(), Some(1), "{https:?}");
    assert_eq!(
        String::from_utf8_lossy(&https.stderr).trim(),
        "drainer probe: not an http:// URL: https://127.0.0.1/livez"
    );
    let none = probe(&[]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("<URL>"),
        "{none:?}"
    );
}

#[test]
fn help_lists_the_probe_subcommand() {
    let out = Command::new(env!("CARGO_BIN_EXE_drainer"))
        .arg("--help")
        .output()
        .expect("run drainer --help");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("probe ")),
        "{help}"
    );
}

#[test]
fn notify_socket_gets_ready_once_accepting_and_stopping_at_the_drain() {
    let db = TestDb::create();
    let dir = std::env::temp_dir().join(format!("drainer-notify-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let manager = UnixDatagram::bind(&path).expect("bind the notify socket");
    manager
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let path_str = path.to_str().expect("utf-8 path");
    let mut server = Server::start(&db, &[("NOTIFY_SOCKET", path_str), ("ADMIN_PORT", "0")]);
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // Accepting by then: the service manager may route to it at once.
    assert_eq!(get(server.port, "/readyz").status, 200);
    // Nothing else until the drain (the admin listener does not send READY=1 again).
    manager
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    assert!(manager.recv(&mut buf).is_err(), "one READY=1 only");
    manager
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    server.signal(libc::SIGTERM);
    let n = manager.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
