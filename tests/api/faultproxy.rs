//! A fault-injecting TCP proxy for the tests, placed between the `drainer`
//! binary and the throwaway PostgreSQL: point `DATABASE_URL` at
//! [`FaultProxy::url`] and switch [`Mode`]s while requests are in flight to
//! lose replies, freeze (partition) the network, cut connections, refuse new
//! ones, or answer like a server that is still starting up.
//!
//! It speaks just enough of the PostgreSQL wire protocol (no TLS: the client
//! must send its StartupMessage first, as tokio-postgres with `NoTls` does) to
//! answer [`Mode::StartingUp`]; everything else is forwarded byte for byte.
//!
//! Only std: one thread accepts, and each proxied connection has one thread
//! per direction. Sockets have a short read timeout (20 ms) so that the
//! threads notice mode changes and cuts without busy-looping; the mode is
//! checked once per chunk read.
//!
//! [`Mode::Refuse`] refuses at the TCP level: the listening socket is closed,
//! so a connect gets ECONNREFUSED, and it is bound again on the same port when
//! the mode changes (std sets SO_REUSEADDR on Unix, so connections still open
//! on that port or in TIME_WAIT do not stop the rebinding). While it is closed
//! some other socket could in principle be given the port; then the rebinding
//! fails and [`FaultProxy::set_mode`] panics saying so.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{TestDb, PATIENCE};

/// How long a proxy thread waits at most before looking at the mode again.
const POLL: Duration = Duration::from_millis(20);
/// The largest chunk forwarded at once.
const CHUNK: usize = 16 * 1024;
/// Bound on connecting to the upstream PostgreSQL.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(5);
/// Bound on reading a StartupMessage in [`Mode::StartingUp`].
const STARTUP_READ: Duration = Duration::from_secs(5);
/// How long [`FaultProxy::set_mode`] tries to listen on the port again.
const REBIND_FOR: Duration = Duration::from_secs(2);

/// What the proxy does with bytes and connections. Set with
/// [`FaultProxy::set_mode`]; it applies to open and new connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward client→server bytes; read and silently discard server→client
    /// bytes (the INSERT reaches PostgreSQL, its reply never comes back).
    /// Only what the client sends without waiting for a reply gets through: a
    /// simple query, or Bind/Execute of an already prepared statement, but not
    /// a statement still to be prepared (its Parse is answered, and lost).
    DropReplies,
    /// Forward nothing either way and keep the sockets open (a partition).
    /// A chunk already read is held and forwarded once the mode allows it
    /// again; nothing more is read meanwhile, so the rest waits in the kernel's
    /// buffers and closes are not noticed either: the partition heals intact.
    Freeze,
    /// New connections are refused at the TCP level (the listener is closed);
    /// open ones are forwarded as in [`Mode::Pass`] unless cut.
    Refuse,
    /// New connections get, after their StartupMessage, an ErrorResponse
    /// FATAL 57P03 "the database system is starting up" and are closed; open
    /// ones are forwarded as in [`Mode::Pass`].
    StartingUp,
}

/// A proxy on `127.0.0.1:port` in front of one upstream PostgreSQL.
/// Dropping it stops accepting and cuts every connection; its threads end by
/// themselves.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    inner: Arc<Inner>,
}

struct Inner {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Notified on every mode change, cut and stop.
    changed: Condvar,
}

struct State {
    mode: Mode,
    /// None while refusing (and once stopped).
    listener: Option<TcpListener>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// How many times `cut_all` ran: a connection accepted before a cut and
    /// registered after it is cut as well.
    cuts: u64,
    stopped: bool,
}

/// Handles on one proxied connection's sockets, to cut it.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    cut: Arc<AtomicBool>,
}

impl Conn {
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Sleeps until something changes or [`POLL`] has passed.
    fn wait_change(&self) {
        let state = self.lock();
        let _ = self.changed.wait_timeout(state, POLL);
    }

    /// Forgets connection `id` and cuts it (if `cut_all` has not already).
    fn close(&self, id: u64) {
        if let Some(conn) = self.lock().conns.remove(&id) {
            conn.cut();
        }
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 on a free port, in [`Mode::Pass`], forwarding to
    /// `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the fault proxy");
        listener
            .set_nonblocking(true)
            .expect("make the fault proxy's listener non-blocking");
        let port = listener
            .local_addr()
            .expect("the fault proxy's address")
            .port();
        let inner = Arc::new(Inner {
            upstream,
            state: Mutex::new(State {
                mode: Mode::Pass,
                listener: Some(listener),
                conns: HashMap::new(),
                next_id: 0,
                cuts: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
        });
        let acceptor = inner.clone();
        thread::spawn(move || accept_loop(&acceptor));
        FaultProxy { port, inner }
    }

    /// Switches to `mode`, for open and new connections, at once: after it
    /// returns, a connect in [`Mode::Refuse`] is refused, and no chunk is
    /// forwarded in a way the new mode forbids.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.inner.lock();
        if state.stopped {
            return;
        }
        if mode == Mode::Refuse {
            state.listener = None;
        } else if state.listener.is_none() {
            state.listener = Some(listen_again(self.port));
        }
        state.mode = mode;
        self.inner.changed.notify_all();
    }

    /// Shuts down (both directions, both sides) every open proxied connection
    /// now: each side sees its connection end. The mode is unchanged.
    pub fn cut_all(&self) {
        let mut state = self.inner.lock();
        state.cuts += 1;
        for (_, conn) in state.conns.drain() {
            conn.cut();
        }
        self.inner.changed.notify_all();
    }

    /// How many proxied connections are open (cut ones are not counted).
    pub fn connections(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// `db_url` (a `postgres://` URL) with its host and port replaced by
    /// 127.0.0.1 and the proxy's port; user, database and parameters are kept.
    pub fn url(&self, db_url: &str) -> String {
        let (start, end) = host_span(db_url);
        format!(
            "{}127.0.0.1:{}{}",
            &db_url[..start],
            self.port,
            &db_url[end..]
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.stopped = true;
        state.listener = None;
        state.cuts += 1;
        for (_, conn) in state.conns.drain() {
            conn.cut();
        }
        self.inner.changed.notify_all();
    }
}

/// The address a `postgres://` URL connects to: host 127.0.0.1 when absent or
/// `localhost`, port 5432 when absent; the first one of a multi-host URL.
/// Unix-domain sockets and `host=`/`port=` query parameters are not supported.
pub fn upstream_of(db_url: &str) -> SocketAddr {
    let (start, end) = host_span(db_url);
    let hostport = db_url[start..end].split(',').next().unwrap_or_default();
    let (host, port) = match hostport.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest
                .split_once(']')
                .unwrap_or_else(|| panic!("no ']' after an IPv6 host in {db_url:?}"));
            (host, after.strip_prefix(':').unwrap_or_default())
        }
        None => hostport.rsplit_once(':').unwrap_or((hostport, "")),
    };
    assert!(
        !host.starts_with('%') && !host.starts_with('/'),
        "a Unix-domain socket cannot be proxied: {db_url:?}"
    );
    let port: u16 = if port.is_empty() {
        5432
    } else {
        port.parse()
            .unwrap_or_else(|_| panic!("bad port {port:?} in {db_url:?}"))
    };
    if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        return SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return SocketAddr::new(ip, port);
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host:?} from {db_url:?}"))
}

/// Byte range of the host[:port] part of a URL (after any `user@`).
fn host_span(url: &str) -> (usize, usize) {
    let authority = url
        .find("://")
        .unwrap_or_else(|| panic!("not a postgres:// URL: {url:?}"))
        + 3;
    let end = url[authority..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority + i);
    let start = url[authority..end]
        .rfind('@')
        .map_or(authority, |i| authority + i + 1);
    (start, end)
}

/// Listens on 127.0.0.1:`port` again after refusing.
fn listen_again(port: u16) -> TcpListener {
    let deadline = Instant::now() + REBIND_FOR;
    loop {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .expect("make the fault proxy's listener non-blocking");
                return listener;
            }
            Err(_) if Instant::now() < deadline => thread::sleep(POLL),
            Err(e) => panic!(
                "the fault proxy cannot listen on 127.0.0.1:{port} again after refusing: {e} \
                 (another socket took the port meanwhile?)"
            ),
        }
    }
}

fn accept_loop(inner: &Arc<Inner>) {
    let mut state = inner.lock();
    while !state.stopped {
        let accepted = match &state.listener {
            Some(listener) => listener.accept().map(|(stream, _)| stream),
            None => Err(io::ErrorKind::WouldBlock.into()),
        };
        match accepted {
            Ok(client) => {
                let (mode, cuts) = (state.mode, state.cuts);
                drop(state);
                let handler = inner.clone();
                thread::spawn(move || serve(handler, client, mode, cuts));
                state = inner.lock();
            }
            // Nothing to accept (or a transient error such as EMFILE): wait.
            Err(_) => {
                state = match inner.changed.wait_timeout(state, POLL) {
                    Ok((state, _)) => state,
                    Err(poisoned) => poisoned.into_inner().0,
                }
            }
        }
    }
}

/// One accepted connection, in the mode it was accepted in. Proxied
/// connections: this thread forwards client→server, a second one
/// server→client.
fn serve(inner: Arc<Inner>, client: TcpStream, mode: Mode, cuts: u64) {
    match mode {
        // Accepted from the backlog just before the listener was closed.
        Mode::Refuse => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        Mode::StartingUp => return starting_up(client),
        Mode::Pass | Mode::DropReplies | Mode::Freeze => {}
    }
    let Ok(server) = TcpStream::connect_timeout(&inner.upstream, UPSTREAM_CONNECT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let clones = (|| {
        for s in [&client, &server] {
            s.set_nonblocking(false)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))?;
        }
        Ok::<_, io::Error>([
            client.try_clone()?,
            server.try_clone()?,
            client.try_clone()?,
            server.try_clone()?,
        ])
    })();
    let Ok([client_to_cut, server_to_cut, client_out, server_in]) = clones else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    let cut = Arc::new(AtomicBool::new(false));
    let id = {
        let mut state = inner.lock();
        if state.stopped || state.cuts != cuts {
            // Cut (or dropped) between accept and now.
            drop(state);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        let id = state.next_id;
        state.next_id += 1;
        let conn = Conn {
            client: client_to_cut,
            server: server_to_cut,
            cut: cut.clone(),
        };
        state.conns.insert(id, conn);
        id
    };
    let reverse = (inner.clone(), cut.clone());
    thread::spawn(move || {
        let (inner, cut) = reverse;
        pump(&inner, id, Direction::ToClient, server_in, client_out, &cut);
    });
    pump(&inner, id, Direction::ToServer, client, server, &cut);
}

/// Forwards `from` → `to` chunk by chunk, as the mode says, until either side
/// closes or the connection is cut; then tears the whole connection down.
fn pump(
    inner: &Inner,
    id: u64,
    direction: Direction,
    mut from: TcpStream,
    mut to: TcpStream,
    cut: &AtomicBool,
) {
    let mut buf = vec![0u8; CHUNK];
    // Bytes read and not forwarded yet (held while frozen).
    let mut held = 0;
    while !cut.load(Ordering::SeqCst) {
        if held == 0 {
            if inner.mode() == Mode::Freeze {
                inner.wait_change();
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => held = n,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => break,
            }
        }
        match inner.mode() {
            Mode::Freeze => inner.wait_change(),
            Mode::DropReplies if direction == Direction::ToClient => held = 0,
            _ => {
                if to.write_all(&buf[..held]).is_err() {
                    break;
                }
                held = 0;
            }
        }
    }
    inner.close(id);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The protocol codes a startup packet can carry instead of a version.
const CANCEL_REQUEST: u32 = 80_877_102;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// [`Mode::StartingUp`]: reads the StartupMessage, answers FATAL 57P03 and
/// closes (SSL and GSS encryption requests are declined with 'N' first).
fn starting_up(mut client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(STARTUP_READ));
    while let Some(code) = read_startup_packet(&mut client) {
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                if client.write_all(b"N").is_err() {
                    break;
                }
            }
            CANCEL_REQUEST => break,
            _ => {
                let _ = client.write_all(&starting_up_error());
                break;
            }
        }
    }
    // Close with a FIN: wait (bounded) for the client to close first, so that
    // nothing unread is left to turn the close into a reset that could
    // discard the error before the client has read it.
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(POLL));
    let until = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 512];
    while Instant::now() < until {
        match client.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

/// Reads one startup packet (int32 length including itself, then the
/// payload); answers its first int32 (protocol version or request code).
fn read_startup_packet(client: &mut TcpStream) -> Option<u32> {
    let mut len = [0u8; 4];
    client.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=10_000).contains(&len) {
        return None;
    }
    let mut payload = vec![0u8; len - 4];
    client.read_exact(&mut payload).ok()?;
    Some(u32::from_be_bytes([
        payload[0], payload[1], payload[2], payload[3],
    ]))
}

/// ErrorResponse: FATAL 57P03 "the database system is starting up".
fn starting_up_error() -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "57P03"),
        (b'M', "the database system is starting up"),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    message
}

// ----------------------------------------------------------------------------
// Tests of the proxy itself, against the real PostgreSQL
// ----------------------------------------------------------------------------

/// Runs `f` on a thread and waits for it at most [`PATIENCE`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: nothing within {PATIENCE:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the thread panicked"),
    }
}

/// Connects (bounded) to `url`.
fn connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse().expect("a postgres URL");
    config.connect_timeout(Duration::from_secs(5));
    within("connect", move || config.connect(postgres::NoTls))
}

/// `SELECT n` on `client`, bounded.
fn select(client: postgres::Client, n: i32) -> (postgres::Client, Result<i32, postgres::Error>) {
    within("query", move || {
        let mut client = client;
        let result = client
            .query_one(&format!("SELECT {n}"), &[])
            .map(|row| row.get::<_, i32>(0));
        (client, result)
    })
}

/// Polls `done` every 10 ms for at most [`PATIENCE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn faultproxy_urls_are_rewritten_and_parsed() {
    let url = "postgres://postgres@127.0.0.1:5433/dbname?x=y";
    assert_eq!(upstream_of(url), "127.0.0.1:5433".parse().unwrap());
    assert_eq!(
        upstream_of("postgres://u:p@localhost/db"),
        "127.0.0.1:5432".parse().unwrap()
    );
    assert_eq!(
        upstream_of("postgresql://[::1]:6000/db"),
        "[::1]:6000".parse().unwrap()
    );
    assert_eq!(
        upstream_of("postgres://"),
        "127.0.0.1:5432".parse().unwrap()
    );
    let proxy = FaultProxy::start(upstream_of(url));
    assert_eq!(
        proxy.url(url),
        format!("postgres://postgres@127.0.0.1:{}/dbname?x=y", proxy.port)
    );
    assert_eq!(
        proxy.url("postgres://localhost"),
        format!("postgres://127.0.0.1:{}", proxy.port)
    );
}

#[test]
fn faultproxy_passes_queries_and_counts_connections() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let client = connect(&proxy.url(&db.url)).expect("connect through the proxy");
    let (client, n) = select(client, 1);
    assert_eq!(n.expect("SELECT 1"), 1);
    assert_eq!(proxy.connections(), 1);
    drop(client);
    wait_until("the closed connection is forgotten", || {
        proxy.connections() == 0
    });
}

#[test]
fn faultproxy_cut_all_fails_the_next_query() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let url = proxy.url(&db.url);
    let (client, n) = select(connect(&url).expect("connect"), 1);
    assert_eq!(n.expect("SELECT 1"), 1);
    proxy.cut_all();
    assert_eq!(proxy.connections(), 0);
    let (client, after) = select(client, 2);
    assert!(after.is_err(), "a query on a cut connection succeeded");
    assert!(client.is_closed());
    // New connections are not affected.
    let (_client, n) = select(connect(&url).expect("connect after the cut"), 3);
    assert_eq!(n.expect("SELECT 3"), 3);
}

#[test]
fn faultproxy_refuses_new_connections_until_pass() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let url = proxy.url(&db.url);
    // A connection the proxy closed first (cleanly: the StartingUp answer)
    // leaves the port in TIME_WAIT, a cut one ends, and one stays open across
    // the refusal: none of them may stop the rebinding.
    proxy.set_mode(Mode::StartingUp);
    assert!(connect(&url).is_err(), "connected while starting up");
    proxy.set_mode(Mode::Pass);
    let (cut, _) = select(connect(&url).expect("connect"), 1);
    proxy.cut_all();
    drop(cut);
    let (open, n) = select(connect(&url).expect("connect"), 1);
    assert_eq!(n.expect("SELECT 1"), 1);

    proxy.set_mode(Mode::Refuse);
    let raw = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, proxy.port)),
        Duration::from_secs(5),
    );
    assert_eq!(
        raw.map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused),
        "not refused at the TCP level"
    );
    assert!(connect(&url).is_err(), "connected while refusing");
    let (open, n) = select(open, 2);
    assert_eq!(n.expect("an open connection still works while refusing"), 2);

    proxy.set_mode(Mode::Pass);
    let (_again, n) = select(connect(&url).expect("connect after Refuse"), 3);
    assert_eq!(n.expect("SELECT 3"), 3);
    let (_open, n) = select(open, 4);
    assert_eq!(n.expect("SELECT 4"), 4);
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn faultproxy_starting_up_answers_57p03() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let url = proxy.url(&db.url);
    let open = connect(&url).expect("connect");
    proxy.set_mode(Mode::StartingUp);
    let e = connect(&url)
        .err()
        .expect("connected while the database is starting up");
    assert_eq!(
        e.code(),
        Some(&postgres::error::SqlState::CANNOT_CONNECT_NOW),
        "{e}"
    );
    let db_error = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_error.severity(), "FATAL");
    assert_eq!(db_error.message(), "the database system is starting up");
    let (_open, n) = select(open, 1);
    assert_eq!(n.expect("an open connection still works"), 1);
    proxy.set_mode(Mode::Pass);
    let (_client, n) = select(connect(&url).expect("connect after StartingUp"), 2);
    assert_eq!(n.expect("SELECT 2"), 2);
}

#[test]
fn faultproxy_drop_replies_runs_the_statement_but_loses_its_reply() {
    let db = TestDb::create();
    db.client()
        .batch_execute("CREATE TABLE fp_drop (n int)")
        .expect("create the table");
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let client = connect(&proxy.url(&db.url)).expect("connect");
    proxy.set_mode(Mode::DropReplies);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut client = client;
        // The simple query protocol: the statement is sent at once (`execute`
        // would wait for the reply to its Parse first, which is lost).
        let _ = tx.send(client.batch_execute("INSERT INTO fp_drop VALUES (1)"));
    });
    wait_until("the INSERT reaches PostgreSQL", || {
        db.count("SELECT count(*)::text FROM fp_drop") == 1
    });
    // Committed, so its reply was sent; it must not reach the client.
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "the client got a reply"
    );
    proxy.cut_all();
    let result = rx
        .recv_timeout(PATIENCE)
        .expect("the client is released by the cut");
    assert!(result.is_err(), "the lost reply arrived: {result:?}");
    assert_eq!(db.count("SELECT count(*)::text FROM fp_drop"), 1);
}

#[test]
fn faultproxy_freeze_holds_traffic_until_pass() {
    let db = TestDb::create();
    let proxy = FaultProxy::start(upstream_of(&db.url));
    let client = connect(&proxy.url(&db.url)).expect("connect");
    proxy.set_mode(Mode::Freeze);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut client = client;
        let _ = tx.send(
            client
                .query_one("SELECT 41 + 1", &[])
                .map(|r| r.get::<_, i32>(0)),
        );
    });
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "a query got through a frozen proxy"
    );
    assert_eq!(proxy.connections(), 1);
    proxy.set_mode(Mode::Pass);
    let n = rx.recv_timeout(PATIENCE).expect("an answer once healed");
    assert_eq!(n.expect("the held query"), 42);
}
