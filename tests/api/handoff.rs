//! Hot restart by socket handoff (`CONTROL_SOCKET`, `--takeover`,
//! `drainer upgrade`): the successor serves the same listening socket, the
//! running instance drains as a handoff, and a takeover that fails before
//! its commit point changes nothing.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// A directory only its owner can write, removed at the end.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(name: &str) -> PrivateDir {
        let dir = std::env::temp_dir().join(format!(
            "drainer-handoff-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let dir = PathBuf::from(dir.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("mode");
        PrivateDir(dir)
    }

    fn socket(&self) -> String {
        self.0.join("ctl.sock").to_string_lossy().into_owned()
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running instance, with a control socket and an admin listener.
fn start_old(db: &TestDb, dir: &PrivateDir, env: &[(&str, &str)]) -> Server {
    let socket = dir.socket();
    let mut all = vec![("CONTROL_SOCKET", socket.as_str()), ("ADMIN_PORT", "0")];
    all.extend_from_slice(env);
    Server::start(db, &all)
}

/// A successor: `--takeover <socket>` with the same database (or `db_url`).
fn successor(db_url: &str, dir: &PrivateDir, env: &[(&str, &str)]) -> Server {
    let socket = dir.socket();
    let mut all = vec![("DATABASE_URL", db_url), ("ADMIN_PORT", "0")];
    all.extend_from_slice(env);
    spawn_args(&["--takeover", &socket], &all)
}

/// `drainer upgrade` on `dir`'s control socket: exit 0; answers the successor's pid.
fn upgrade(dir: &PrivateDir) -> i32 {
    let upgrade = Command::new(env!("CARGO_BIN_EXE_drainer"))
        .args(["upgrade", "--control-socket", &dir.socket()])
        .output()
        .expect("drainer upgrade");
    assert_eq!(upgrade.status.code(), Some(0), "{upgrade:?}");
    let said = String::from_utf8_lossy(&upgrade.stdout);
    said.trim()
        .strip_prefix("drainer upgrade: pid ")
        .and_then(|rest| rest.strip_suffix(" took over"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {said:?}"))
}

/// Stops a successor `drainer upgrade` started (not this test's child:
/// known by its pid) and waits until its terminal exit removed the socket.
fn stop_upgraded(pid: i32, dir: &PrivateDir) {
    // SAFETY: a plain kill of the successor the upgrade named.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    while std::path::Path::new(&dir.socket()).exists() {
        assert!(Instant::now() < deadline, "the successor never exited");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The running instance still serves, then stops cleanly.
fn serves_then_stops(old: &mut Server) {
    assert_eq!(post_work(old.port, r#"{"name":"unmoved"}"#).status, 201);
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit(PATIENCE).0, 0);
}

/// Its `(socket inode N)`.
fn inode(line: &str) -> String {
    line.split("(socket inode ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no inode in {line:?}"))
        .to_string()
}

/// One request's outcome: its status and the job id (or body), or why it failed.
type Outcome = Result<(u16, String), String>;

/// Keep-alive clients posting until stopped; every outcome kept.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|n| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    let mut client: Option<Client> = None;
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let c = match client.take() {
                            Some(c) => c,
                            None => match Client::connect(port) {
                                Ok(c) => c,
                                Err(e) => {
                                    outcomes.push(Err(format!("connect: {e}")));
                                    continue;
                                }
                            },
                        };
                        let mut c = c;
                        match c.post_work(&format!(r#"{{"name":"load-{n}-{i}"}}"#)) {
                            Ok(res) => {
                                let id = if res.status == 201 {
                                    res.json()["id"].as_str().unwrap_or("").to_string()
                                } else {
                                    res.body.clone()
                                };
                                if !res.closes() {
                                    client = Some(c);
                                }
                                outcomes.push(Ok((res.status, id)));
                            }
                            Err(e) => outcomes.push(Err(format!("request: {e}"))),
                        }
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops; answers every outcome.
    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect()
    }
}

/// Waits until `n` more requests were answered on `port` (the load is
/// flowing), bounded.
fn some_answered(port: u16, n: usize) {
    for i in 0..n {
        assert_eq!(
            post_work(port, &format!(r#"{{"name":"probe-{i}"}}"#)).status,
            201
        );
    }
}

#[test]
fn a_takeover_under_load_fails_no_request_and_the_endpoint_stays_active() {
    let db = TestDb::create();
    let dir = PrivateDir::new("load");
    let mut old = start_old(&db, &dir, &[]);
    let port = old.port;
    let old_inode = inode(&old.wait_for_log("listening on"));
    let mode = std::fs::metadata(dir.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the control socket is the owner's only");
    let load = Load::start(port, 4);
    some_answered(port, 20);

    let mut new = successor(&db.url, &dir, &[]);
    let ready = new.wait_for_log("takeover: ready on");
    assert_eq!(
        inode(&ready),
        old_inode,
        "the same listening socket, never rebound"
    );
    new.wait_for_log("takeover committed");
    assert_eq!(old.wait_exit(PATIENCE).0, 0, "the handoff drain completes");
    // The successor serves what comes next, on the same port.
    some_answered(port, 20);
    let outcomes = load.finish();

    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok((201, _))))
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(outcomes.len() >= 40, "the load ran: {}", outcomes.len());
    let ids: Vec<&str> = outcomes
        .iter()
        .flatten()
        .map(|(_, id)| id.as_str())
        .collect();
    assert_eq!(
        db.count(&format!(
            "SELECT count(*)::text FROM jobs WHERE id = ANY('{{{}}}'::uuid[])",
            ids.join(",")
        )),
        ids.len() as i64,
        "every acknowledged job stored"
    );
    let log = old.log();
    assert!(log.contains("shutdown report: trigger takeover;"), "{log}");
    assert!(
        log.contains("phases: delay 0 ms ok,"),
        "no delay in a handoff: {log}"
    );
    let (old_pid, new_pid) = (old.pid.to_string(), new.pid.to_string());
    assert_eq!(
        db.rows("SELECT status FROM serverinstance"),
        vec![vec![Some("active".to_string())]],
        "one endpoint, never stopped"
    );
    let events = db.rows(
        "SELECT event_type, details->>'pid', coalesce(details->>'successor_pid', details->>'predecessor_pid') \
         FROM drainevent ORDER BY id",
    );
    let expected = |kind: &str, pid: &str, other: &str| {
        vec![
            Some(kind.to_string()),
            Some(pid.to_string()),
            Some(other.to_string()),
        ]
    };
    assert!(
        events.contains(&expected("takeover", &new_pid, &old_pid)),
        "{events:?}"
    );
    assert!(
        events.contains(&expected("drain_begin", &old_pid, &new_pid)),
        "{events:?}"
    );
    assert!(
        events.contains(&expected("drain_complete", &old_pid, &new_pid)),
        "{events:?}"
    );
    new.signal(libc::SIGTERM);
    assert_eq!(new.wait_exit(PATIENCE).0, 0);
    assert!(
        !std::path::Path::new(&dir.socket()).exists(),
        "the last generation removes the control socket at its terminal exit"
    );
}

#[test]
fn a_successor_that_cannot_reach_the_database_exits_2_and_a_good_upgrade_then_succeeds() {
    let db = TestDb::create();
    let dir = PrivateDir::new("baddb");
    let mut old = start_old(&db, &dir, &[]);
    let bad = format!("postgres://nobody@127.0.0.1:{}/none", closed_port());
    let mut new = successor(&bad, &dir, &[("DB_CONNECT_TIMEOUT_MS", "300")]);
    assert_eq!(new.wait_exit(PATIENCE).0, 2, "{}", new.log());
    assert!(old.try_signal(0).is_ok(), "the running instance carries on");
    old.wait_for_log("aborted");
    assert_eq!(post_work(old.port, r#"{"name":"still-here"}"#).status, 201);

    let pid = upgrade(&dir);
    assert_eq!(old.wait_exit(PATIENCE).0, 0);
    assert_eq!(post_work(old.port, r#"{"name":"successor"}"#).status, 201);
    stop_upgraded(pid, &dir);
}

/// A PostgreSQL that never answers: the successor hangs in start-up, past
/// the moment it received the listeners.
fn black_hole() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "postgres://nobody@127.0.0.1:{}/none",
        listener.local_addr().expect("addr").port()
    );
    (listener, url)
}

#[test]
fn a_successor_killed_before_it_is_ready_changes_nothing_and_a_second_one_is_refused_meanwhile() {
    let db = TestDb::create();
    let dir = PrivateDir::new("killed");
    let mut old = start_old(&db, &dir, &[]);
    let (_hole, url) = black_hole();
    let mut stuck = successor(&url, &dir, &[("DB_CONNECT_TIMEOUT_MS", "60000")]);
    stuck.wait_for_log("takeover: received the listener");

    let mut second = successor(&db.url, &dir, &[]);
    assert_eq!(second.wait_exit(PATIENCE).0, 2);
    assert!(
        second.log().contains("refused the takeover: busy"),
        "{}",
        second.log()
    );

    stuck.signal(libc::SIGKILL);
    stuck.wait_killed(libc::SIGKILL, PATIENCE);
    old.wait_for_log("went away before it was ready");
    assert_eq!(post_work(old.port, r#"{"name":"carried-on"}"#).status, 201);

    let mut good = successor(&db.url, &dir, &[]);
    good.wait_for_log("takeover committed");
    assert_eq!(old.wait_exit(PATIENCE).0, 0);
    assert_eq!(post_work(old.port, r#"{"name":"taken-over"}"#).status, 201);
    good.signal(libc::SIGTERM);
    assert_eq!(good.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_sigterm_before_the_commit_point_aborts_the_takeover_then_drains() {
    let db = TestDb::create();
    let dir = PrivateDir::new("sigterm");
    let mut old = start_old(&db, &dir, &[]);
    let (_hole, url) = black_hole();
    let mut stuck = successor(&url, &dir, &[("DB_CONNECT_TIMEOUT_MS", "60000")]);
    stuck.wait_for_log("takeover: received the listener");
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit(PATIENCE).0, 0, "{}", old.log());
    assert!(old.log().contains("shutdown report: trigger SIGTERM;"));
    assert!(
        old.log().contains("aborted: a drain began here first"),
        "{}",
        old.log()
    );
    // Told while it waits for its database: it gives up at once, exit 2.
    assert_eq!(stuck.wait_exit(PATIENCE).0, 2, "{}", stuck.log());
    assert!(
        stuck.log().contains("aborted the takeover (terminating)"),
        "{}",
        stuck.log()
    );
}

#[test]
fn connections_queued_while_nobody_accepts_are_all_answered_by_the_successor() {
    let db = TestDb::create();
    let dir = PrivateDir::new("backlog");
    let mut old = start_old(&db, &dir, &[]);
    let port = old.port;
    let mut new = successor(&db.url, &dir, &[("DRAINER_TEST_ACCEPT_DELAY_MS", "1500")]);
    old.wait_for_log("stopped accepting; committed");
    new.wait_for_log("before accepting");
    // Nobody accepts now: these complete their handshake into the backlog.
    let queued: Vec<_> = (0..50)
        .map(|i| post_work_async(port, &format!(r#"{{"name":"queued-{i}"}}"#)))
        .collect();
    for q in queued {
        let res = q.join().expect("client").expect("answered, not reset");
        assert_eq!(res.status, 201, "{res:?}");
    }
    assert!(new.log().contains("takeover committed"));
    assert_eq!(old.wait_exit(PATIENCE).0, 0);
    assert_eq!(
        db.count("SELECT count(*)::text FROM jobs WHERE name LIKE 'queued-%'"),
        50
    );
    new.signal(libc::SIGTERM);
    assert_eq!(new.wait_exit(PATIENCE).0, 0);
}

#[test]
fn takeover_without_a_running_instance_exits_2_with_one_line() {
    let db = TestDb::create();
    let dir = PrivateDir::new("none");
    let mut new = successor(&db.url, &dir, &[]);
    assert_eq!(new.wait_exit(PATIENCE).0, 2);
    let log = new.log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].starts_with("drainer: nothing is listening on the control socket "),
        "{log}"
    );
}

#[test]
fn a_control_socket_in_a_directory_others_can_write_is_refused_at_start() {
    let db = TestDb::create();
    let open = std::env::temp_dir().join(format!("drainer-open-{}", std::process::id()));
    std::fs::create_dir_all(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("mode");
    let socket = open.join("ctl.sock");
    let mut server = spawn_args(
        &[],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("CONTROL_SOCKET", socket.to_str().expect("path")),
        ],
    );
    assert_eq!(server.wait_exit(PATIENCE).0, 2);
    assert!(
        server.log().contains("can be written by others"),
        "{}",
        server.log()
    );
    let _ = std::fs::remove_dir_all(&open);
}

#[test]
fn another_protocol_version_is_refused() {
    use std::io::{BufRead, BufReader, Write};
    let db = TestDb::create();
    let dir = PrivateDir::new("proto");
    let mut old = start_old(&db, &dir, &[]);
    let mut stream = std::os::unix::net::UnixStream::connect(dir.socket()).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    writeln!(stream, r#"{{"type":"takeover","proto":99,"pid":1}}"#).expect("write");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("answer");
    let answer: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(answer["type"], "refused");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap_or("")
            .contains("protocol version 99; this instance speaks 1"),
        "{answer}"
    );
    serves_then_stops(&mut old);
}

#[test]
fn a_successor_not_ready_within_the_takeover_timeout_is_abandoned() {
    let db = TestDb::create();
    let dir = PrivateDir::new("timeout");
    let mut old = start_old(&db, &dir, &[("TAKEOVER_TIMEOUT_MS", "400")]);
    let (_hole, url) = black_hole();
    let mut slow = successor(&url, &dir, &[("DB_CONNECT_TIMEOUT_MS", "60000")]);
    assert_eq!(slow.wait_exit(PATIENCE).0, 2, "{}", slow.log());
    assert!(
        slow.log().contains("aborted the takeover (timeout)"),
        "{}",
        slow.log()
    );
    old.wait_for_log("was not ready within 400 ms");
    serves_then_stops(&mut old);
}

#[test]
fn the_service_manager_hears_the_successor_take_over_and_no_stopping() {
    use std::os::unix::net::UnixDatagram;
    let db = TestDb::create();
    let dir = PrivateDir::new("notify");
    let notify = dir.0.join("notify.sock");
    let manager = UnixDatagram::bind(&notify).expect("bind the notify socket");
    manager.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let notify = notify.to_string_lossy().into_owned();
    let mut old = start_old(&db, &dir, &[("NOTIFY_SOCKET", notify.as_str())]);
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");

    let pid = upgrade(&dir);
    let n = manager
        .recv(&mut buf)
        .expect("the successor's notification");
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("MAINPID={pid}\nREADY=1")
    );
    assert_eq!(old.wait_exit(PATIENCE).0, 0);
    // A handoff is no stop: the old instance sent no STOPPING=1.
    manager
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(
        manager.recv(&mut buf).is_err(),
        "nothing more, no STOPPING=1"
    );
    // The successor's own stop is one.
    manager.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stop_upgraded(pid, &dir);
    let n = manager.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
