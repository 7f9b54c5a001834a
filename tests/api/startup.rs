//! Start-up failures: exit code 2 and one clear line on stderr.

use std::time::{Duration, Instant};

use crate::support::*;

/// The one line a failed start-up prints.
fn failure_line(server: &mut Server) -> String {
    let (code, _) = server.wait_exit(PATIENCE);
    assert_eq!(code, 2, "log:\n{}", server.log());
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is one line:\n{log}");
    assert!(lines[0].starts_with("drainer: "), "{log}");
    lines[0].to_string()
}

#[test]
fn port_in_use_exits_2_naming_the_port_and_leaves_the_live_row_alone() {
    let db = TestDb::create();
    let mut live = Server::start(&db, &[]);
    let port = live.port.to_string();
    let before = db.rows("SELECT id::text, status, drained_at::text FROM serverinstance");

    let mut second = spawn(&[("DATABASE_URL", db.url.as_str()), ("PORT", port.as_str())]);
    let line = failure_line(&mut second);
    assert_eq!(
        line,
        format!("drainer: port {port} is already in use (another drainer running?)")
    );
    assert_eq!(
        db.rows("SELECT id::text, status, drained_at::text FROM serverinstance"),
        before,
        "the live instance's row is untouched"
    );
    assert_eq!(before[0][1], Some("active".into()));
    // And the live one still serves.
    assert_eq!(get(live.port, "/health").status, 200);
    live.signal(libc::SIGTERM);
    assert_eq!(live.wait_exit(PATIENCE).0, 0);
}

#[test]
fn unreachable_database_exits_2_after_the_connect_timeout_naming_the_host() {
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    let started = Instant::now();
    let mut server = spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "700"),
    ]);
    let line = failure_line(&mut server);
    let took = started.elapsed();
    assert!(
        line.starts_with(&format!(
            "drainer: cannot reach the database at 127.0.0.1:{port} within 700 ms"
        )),
        "{line}"
    );
    assert!(
        took >= Duration::from_millis(700),
        "it kept trying for the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "then gave up: {took:?}");
}

#[test]
fn invalid_configuration_exits_2_with_one_line() {
    let db = TestDb::create();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("DATABASE_URL", db.url.as_str()), ("PORT", "not-a-port")],
            "drainer: invalid configuration: invalid value 'not-a-port' for '--port <PORT>'",
        ),
        (
            vec![("DATABASE_URL", db.url.as_str()), ("DRAIN_TIMEOUT_MS", "-5")],
            "drainer: invalid configuration: invalid value '-5' for '--drain-timeout-ms <DRAIN_TIMEOUT_MS>'",
        ),
        (vec![], "drainer: invalid configuration: DATABASE_URL is not set"),
        (
            vec![("DATABASE_URL", "definitely not a url")],
            "drainer: invalid configuration: DATABASE_URL is not a valid PostgreSQL connection URL",
        ),
    ];
    for (env, expected) in cases {
        let mut server = spawn(&env);
        let line = failure_line(&mut server);
        assert!(
            line.starts_with(expected),
            "{line:?} should start with {expected:?}"
        );
    }
}

#[test]
fn help_documents_every_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drainer"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "PORT",
        "DATABASE_URL",
        "INSTANCE_HOST",
        "DRAIN_TIMEOUT_MS",
        "SHUTDOWN_DELAY_MS",
        "DB_CONNECT_TIMEOUT_MS",
        "IDLE_CLOSE_GRACE_MS",
        "CLIENT_REQUEST_TIMEOUT_MS",
        "SIGHUP",
        "SIGXFSZ",
        "RUST_LOG",
        "Exit codes",
    ] {
        assert!(help.contains(name), "--help lacks {name}:\n{help}");
    }
}

#[test]
fn a_restart_on_the_same_host_and_port_reuses_the_row() {
    let db = TestDb::create();
    let mut first = Server::start(&db, &[]);
    let port = first.port.to_string();
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        db.value("SELECT status FROM serverinstance"),
        Some("stopped".into())
    );
    let mut again = Server::start(&db, &[("PORT", port.as_str())]);
    assert_eq!(
        db.rows("SELECT status, drain_started_at::text, drained_at::text FROM serverinstance"),
        vec![vec![Some("active".into()), None, None]]
    );
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(PATIENCE).0, 0);
}

#[test]
fn sigterm_while_waiting_for_the_database_exits_0_at_once() {
    let url = format!("postgres://postgres@127.0.0.1:{}/nothing", closed_port());
    let mut server = spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "20000"),
        ("RUST_LOG", "info,drainer::jobs::db=debug"),
    ]);
    server.wait_for_log("connecting to the database");
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let (code, exited) = server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "nothing was admitted, nothing was lost");
    assert!(
        exited - signalled < Duration::from_secs(2),
        "did not wait for the database: {:?}",
        exited - signalled
    );
}

/// The helper that signals servers holds the process, not its pid: once the
/// process has exited and been reaped, a signal fails (ESRCH) instead of
/// reaching whatever process gets the pid next — or every process, as
/// kill(-1, …) would.
#[test]
fn a_signal_to_an_exited_server_reaches_no_other_process() {
    let mut server = spawn(&[]);
    assert_eq!(server.wait_exit(PATIENCE).0, 2, "no DATABASE_URL");
    let e = server
        .try_signal(libc::SIGTERM)
        .expect_err("the process is gone");
    assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
}
