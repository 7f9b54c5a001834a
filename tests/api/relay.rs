//! Job events from the outbox, through the lease holder's relay, to the Redis
//! stream `drainer:jobs`: each job exactly once after a drain under load,
//! after the holder is SIGKILLed (a standby publishes the rest), and across a
//! Redis outage. Each test runs a redis-server of its own (the stream's name
//! is fixed), killed when the test ends.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// A redis-server of this test's own, on a free port.
struct TestRedis {
    port: u16,
    child: Option<Child>,
}

impl TestRedis {
    fn start() -> TestRedis {
        let mut redis = TestRedis {
            port: closed_port(),
            child: None,
        };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on its port, empty; waits until it answers.
    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make test checks it is installed)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while self.connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server never answered");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client.get_connection().ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    /// The job ids in the stream, in order.
    fn stream(&self) -> Vec<String> {
        let mut con = self.connection().expect("Redis up");
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("drainer:jobs")
            .arg("-")
            .arg("+")
            .query(&mut con)
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, fields)| {
                fields
                    .into_iter()
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v)
                    .expect("an id field")
            })
            .collect()
    }

    /// Waits (bounded) until the stream holds `n` entries; answers them.
    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ids = self.stream();
            if ids.len() >= n {
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "the stream has {} of {n} events",
                ids.len()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.down();
    }
}

fn start(db: &TestDb, redis: &TestRedis, ttl_ms: &str) -> Server {
    let url = redis.url();
    Server::start(
        db,
        &[
            ("REDIS_URL", url.as_str()),
            ("LOCK_TTL_MS", ttl_ms),
            ("ADMIN_PORT", "0"),
        ],
    )
}

/// `n` POST /work from `threads` threads; answers the ids of the 201s.
fn load(port: u16, threads: usize, n: usize) -> Vec<thread::JoinHandle<Vec<String>>> {
    (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..n {
                    let Ok(mut c) = Client::connect(port) else {
                        break;
                    };
                    match c.post_work(&format!(r#"{{"name":"load-{t}-{i}"}}"#)) {
                        Ok(res) if res.status == 201 => {
                            ids.push(res.json()["id"].as_str().expect("id").to_string())
                        }
                        _ => {}
                    }
                }
                ids
            })
        })
        .collect()
}

fn jobs(db: &TestDb) -> HashSet<String> {
    db.rows("SELECT id::text FROM jobs")
        .into_iter()
        .map(|r| r[0].clone().expect("id"))
        .collect()
}

/// Each job once, no other: the stream is the jobs table.
fn assert_stream_is_the_jobs(ids: &[String], db: &TestDb) {
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a job was published twice");
    assert_eq!(unique, jobs(db), "the stream and the jobs table differ");
    // Published rows are deleted once acknowledged (a round may still be
    // finishing: the killed holder's rows are deleted by the next holder).
    let deadline = Instant::now() + PATIENCE;
    while db.count("SELECT count(*)::text FROM outbox") > 0 {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn after_a_drain_under_load_the_stream_holds_each_committed_job_once() {
    let db = TestDb::create();
    let redis = TestRedis::start();
    let mut server = start(&db, &redis, "10000");
    let warm = post_work(server.port, r#"{"name":"first"}"#);
    assert_eq!(redis.wait_for(1), [warm.json()["id"].as_str().expect("id")]);
    let clients = load(server.port, 4, 60);
    thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    let acknowledged: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("thread"))
        .collect();
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    let ids = redis.stream();
    assert_stream_is_the_jobs(&ids, &db);
    let published: HashSet<String> = ids.into_iter().collect();
    assert!(acknowledged.iter().all(|id| published.contains(id)));
    let log = server.log();
    assert!(log.contains("none left in the outbox"), "{log}");
    // The report and drain_complete say what the flush and the release did.
    let report = log
        .lines()
        .find(|l| l.contains("shutdown report: "))
        .unwrap_or_default();
    assert!(report.contains(" flushed, 0 left), "), "{report}");
    assert!(report.contains("ms ok (released), "), "{report}");
    let note = |phase: &str| {
        db.value(&format!(
            "SELECT p->>'note' FROM drainevent, jsonb_array_elements(details->'phases') p \
             WHERE event_type = 'drain_complete' AND p->>'phase' = '{phase}'"
        ))
    };
    assert_eq!(note("release_lease"), Some("released".into()));
    let flushed = note("flush_events").expect("a note");
    assert!(flushed.ends_with(" flushed, 0 left"), "{flushed}");
}

#[test]
fn a_standby_publishes_what_a_killed_holder_left() {
    let db = TestDb::create();
    let redis = TestRedis::start();
    let holder = start(&db, &redis, "1000");
    let first = post_work(holder.port, r#"{"name":"first"}"#);
    redis.wait_for(1);
    let mut standby = start(&db, &redis, "1000");
    let clients = load(holder.port, 4, 40);
    thread::sleep(Duration::from_millis(150));
    holder.signal(libc::SIGKILL);
    for c in clients {
        let _ = c.join();
    }
    let committed = jobs(&db).len();
    assert!(committed > 1, "{first:?}");
    let ids = redis.wait_for(committed);
    assert_stream_is_the_jobs(&ids, &db);
    standby.signal(libc::SIGTERM);
    assert_eq!(standby.wait_exit(PATIENCE).0, 0);
}

#[test]
fn a_redis_outage_never_touches_the_api_and_the_events_arrive_after_it() {
    let db = TestDb::create();
    let mut redis = TestRedis::start();
    let mut server = start(&db, &redis, "1000");
    let before = post_work(server.port, r#"{"name":"before"}"#);
    assert_eq!(before.status, 201);
    redis.wait_for(1);
    redis.down();
    let during: Vec<String> = (0..10)
        .map(|i| {
            let res = post_work(server.port, &format!(r#"{{"name":"during-{i}"}}"#));
            assert_eq!(res.status, 201, "the API does not depend on Redis");
            res.json()["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(db.count("SELECT count(*)::text FROM outbox"), 10);
    // An empty Redis comes back: the holder lost its lease, takes it anew,
    // and publishes the outbox.
    redis.up();
    let ids = redis.wait_for(10);
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        during.into_iter().collect::<HashSet<_>>()
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(db.count("SELECT count(*)::text FROM outbox"), 0);
}

#[test]
fn a_standby_takes_a_released_lease_and_publishes() {
    let db = TestDb::create();
    let redis = TestRedis::start();
    let mut holder = start(&db, &redis, "10000");
    post_work(holder.port, r#"{"name":"by-the-holder"}"#);
    redis.wait_for(1);
    let mut standby = start(&db, &redis, "10000");
    holder.signal(libc::SIGTERM);
    assert_eq!(holder.wait_exit(PATIENCE).0, 0);
    let res = post_work(standby.port, r#"{"name":"by-the-standby"}"#);
    assert_eq!(res.status, 201);
    let ids = redis.wait_for(2);
    assert_eq!(ids[1], res.json()["id"].as_str().expect("id"));
    standby.signal(libc::SIGTERM);
    assert_eq!(standby.wait_exit(PATIENCE).0, 0);
    assert_stream_is_the_jobs(&redis.stream(), &db);
}

/// Without `REDIS_URL` nothing of this runs: no lease, no relay phases, and
/// no outbox rows (nothing would ever drain them).
#[test]
fn without_redis_no_outbox_row_is_written() {
    let db = TestDb::create();
    let mut server = Server::start(&db, &[]);
    assert_eq!(post_work(server.port, r#"{"name":"plain"}"#).status, 201);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(db.count("SELECT count(*)::text FROM outbox"), 0);
    let log = server.log();
    assert!(
        !log.contains("flush_events") && !log.contains("release_lease"),
        "{log}"
    );
}
