//! The relay's lease in Redis (`REDIS_URL`, given by `make test`'s
//! throwaway redis-server): held and renewed while running, released at
//! SIGTERM, expired after SIGKILL, never released when it is another's, and
//! taken by a standby once released.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

fn redis_url() -> String {
    std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: run these tests under scripts/with-redis.sh (make test does)",
    )
}

/// A key of this test's own.
struct Key {
    name: String,
    key: String,
    con: redis::Connection,
}

impl Key {
    fn new(test: &str) -> Key {
        let name = format!("{test}-{}", std::process::id());
        let client = redis::Client::open(redis_url()).expect("a Redis URL");
        let con = client.get_connection().expect("Redis reachable");
        Key {
            key: format!("drainer:lock:{name}"),
            name,
            con,
        }
    }

    fn token(&mut self) -> Option<String> {
        redis::cmd("GET")
            .arg(&self.key)
            .query(&mut self.con)
            .expect("GET")
    }

    fn pttl(&mut self) -> i64 {
        redis::cmd("PTTL")
            .arg(&self.key)
            .query(&mut self.con)
            .expect("PTTL")
    }

    /// Waits (bounded) until `done` holds of the token; answers it.
    fn wait(&mut self, what: &str, done: impl Fn(&Option<String>) -> bool) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let token = self.token();
            if done(&token) {
                return token;
            }
            assert!(Instant::now() < deadline, "{what}: never (token {token:?})");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn start(db: &TestDb, key: &Key, ttl_ms: &str, extra: &[(&str, &str)]) -> Server {
    let url = redis_url();
    let mut env = vec![
        ("REDIS_URL", url.as_str()),
        ("LOCK_NAME", key.name.as_str()),
        ("LOCK_TTL_MS", ttl_ms),
    ];
    env.extend_from_slice(extra);
    Server::start(db, &env)
}

#[test]
fn the_lease_is_held_renewed_and_released_at_sigterm() {
    let db = TestDb::create();
    let mut key = Key::new("held");
    let mut server = start(&db, &key, "900", &[("ADMIN_PORT", "0")]);
    let token = key.wait("taken", Option::is_some);
    // Renewed every 300 ms: the time to live climbs back up.
    let low = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ttl = key.pttl();
            if ttl < 700 {
                break ttl;
            }
            assert!(Instant::now() < deadline, "the TTL never ran down");
            thread::sleep(Duration::from_millis(10));
        }
    };
    let deadline = Instant::now() + PATIENCE;
    while key.pttl() <= low {
        assert!(Instant::now() < deadline, "never renewed");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(key.token(), token, "renewed, not taken anew");
    let metrics = get(server.admin_port(), "/metrics").body;
    assert!(
        metrics.lines().any(|l| l == "drainer_lease_held 1"),
        "{metrics}"
    );
    assert_eq!(
        post_work(server.port, r#"{"name":"served"}"#).status,
        201,
        "the holder serves"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(key.token(), None, "released at once, not left to expire");
    let log = server.log();
    assert!(log.contains("lease released"), "{log}");
    assert!(log.contains("release_lease "), "a phase of its own: {log}");
    assert!(!log.contains(&redis_url()), "the Redis URL is never logged");
}

#[test]
fn after_a_sigkill_the_lease_expires_by_itself() {
    let db = TestDb::create();
    let mut key = Key::new("killed");
    let server = start(&db, &key, "600", &[]);
    let token = key.wait("taken", Option::is_some);
    server.signal(libc::SIGKILL);
    assert_eq!(key.token(), token, "still there just after the kill");
    key.wait("expired", Option::is_none);
}

#[test]
fn a_release_never_deletes_another_holders_lease() {
    let db = TestDb::create();
    let mut key = Key::new("stolen");
    let mut server = start(&db, &key, "600", &[]);
    key.wait("taken", Option::is_some);
    // Another holder, as after a partition.
    let _: () = redis::cmd("SET")
        .arg(&key.key)
        .arg("another-holder")
        .arg("PX")
        .arg(60_000)
        .query(&mut key.con)
        .expect("SET");
    server.wait_for_log("lease drainer:lock:");
    server.wait_for_log("lost");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    assert_eq!(key.token().as_deref(), Some("another-holder"));
    let log = server.log();
    assert!(log.contains("lease not held"), "{log}");
    assert!(
        log.contains("ms ok (not held), "),
        "the report says so: {log}"
    );
}

#[test]
fn a_standby_takes_a_released_lease_within_a_second() {
    let db = TestDb::create();
    let mut key = Key::new("standby");
    let mut holder = start(&db, &key, "10000", &[]);
    let first = key.wait("taken", Option::is_some);
    let mut standby = start(&db, &key, "10000", &[]);
    assert_eq!(
        post_work(standby.port, r#"{"name":"standby"}"#).status,
        201,
        "a standby serves too"
    );
    assert_eq!(key.token(), first, "the standby does not take a held lease");
    holder.signal(libc::SIGTERM);
    let (code, exited) = holder.wait_exit(PATIENCE);
    assert_eq!(code, 0);
    let second = key.wait("taken by the standby", |t| t.is_some() && *t != first);
    let took = exited.elapsed();
    // It retries every 250 ms; the bound is generous for a shared machine.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_ne!(second, first);
    standby.signal(libc::SIGTERM);
    assert_eq!(standby.wait_exit(PATIENCE).0, 0);
    assert_eq!(key.token(), None);
}

/// Redis unreachable: the service serves as usual, the instance stays a
/// standby, and the password in `REDIS_URL` appears in no log line.
#[test]
fn an_unreachable_redis_never_stops_the_api_or_shows_its_password() {
    let db = TestDb::create();
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}/", closed_port());
    let mut server = Server::start(
        &db,
        &[
            ("REDIS_URL", url.as_str()),
            ("LOCK_NAME", "unreachable"),
            (
                "RUST_LOG",
                "info,drainer_engine::drain=debug,drainer::jobs::lease=debug",
            ),
        ],
    );
    server.wait_for_log("cannot reach Redis");
    let res = post_work(server.port, r#"{"name":"no-redis"}"#);
    assert_eq!(res.status, 201, "{}", res.body);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).0, 0);
    let log = server.log();
    assert!(log.contains("lease not held"), "{log}");
    assert!(
        !log.contains("s3cret-pass"),
        "the password was logged:\n{log}"
    );
}
