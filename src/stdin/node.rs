//! The stdin transport: one node speaking the node protocol, through the
//! same DrainCoordinator and Supervisor as the HTTP service.
//!
//! - A reader thread turns stdin into batches of lines (a blocked read never
//!   holds the exit: the process exits around it).
//! - [`StdinNode`] handles the lines strictly in order. A `tcp_request` with a
//!   latency asks the coordinator for a permit; the permit waits in one
//!   deadline-ordered queue (ties in arrival order) under one timer, so replies
//!   leave in the order of their deadlines. A request with latency 0 is
//!   answered at once and never counted.
//! - `tcp_shutdown` asks the Supervisor for a drain that does not end the
//!   process ([`TransportDrain`]); the end of input asks it to drain and exit
//!   0 ([`TransportEnded`]); signals work as in the HTTP service.
//! - When the coordinator cuts the drain short (deadline or signal), the node
//!   sees it in the published phase and answers every queued request with the
//!   reason, then drops their permits.
//! - Replies are written whole, one line each, and flushed before the node
//!   waits again.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, SpawnHandle,
    StreamHandler, WrapFuture,
};
use drainer_engine::drain::{GetSnapshot, Snapshot};
use drainer_engine::{
    CancelReason, CloseListener, Core, DrainState, Outcome, Permit, StopTransport, Transport,
    TransportDrain, TransportEnded,
};
use log::{info, warn};
use tokio::sync::mpsc;

use super::protocol::{
    parse_line, Inbound, LineError, Reply, ReplyBody, Request, CODE_MALFORMED_REQUEST,
    CODE_NOT_SUPPORTED,
};

/// What the reader thread sends.
#[derive(Debug, Message)]
#[rtype(result = "()")]
enum Input {
    /// Complete lines, read at `at`.
    Lines(Vec<Vec<u8>>, Instant),
    /// End of input.
    End,
}

/// Starts the reader thread and the node; answers how the Supervisor reaches it.
pub fn start(core: &Core, default_drain_timeout: Duration) -> Transport {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("stdin-reader".into())
        .spawn(move || read_stdin(tx))
        .map_err(|e| warn!("cannot start the stdin reader: {e}"))
        .ok();
    let node = StdinNode::create(|ctx| {
        ctx.add_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|input| (input, rx))
        }));
        let phase = core.state.clone();
        ctx.add_stream(futures_util::stream::unfold(phase, |mut rx| async move {
            rx.changed().await.ok()?;
            let phase = *rx.borrow_and_update();
            Some((phase, rx))
        }));
        StdinNode::new(core.clone(), default_drain_timeout)
    });
    Transport {
        close_listener: node.clone().recipient(),
        stop: node.recipient(),
    }
}

/// Reads stdin in batches of complete lines until end of input.
fn read_stdin(tx: mpsc::UnboundedSender<Input>) {
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("reading stdin failed: {e}; treating it as end of input");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let at = Instant::now();
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in buf.iter().enumerate() {
            if *b == b'\n' {
                let mut line = std::mem::take(&mut partial);
                line.extend_from_slice(&buf[start..i]);
                lines.push(line);
                start = i + 1;
            }
        }
        partial.extend_from_slice(&buf[start..]);
        let used = buf.len();
        reader.consume(used);
        if !lines.is_empty() && tx.send(Input::Lines(lines, at)).is_err() {
            return;
        }
    }
    if !partial.is_empty() {
        let _ = tx.send(Input::Lines(vec![partial], Instant::now()));
    }
    let _ = tx.send(Input::End);
}

/// A request waiting for its deadline.
struct Pending {
    deadline: Instant,
    /// Arrival order, for ties.
    seq: u64,
    /// The request's dest: the node's id in the reply if `init` has not named it.
    dest: String,
    src: String,
    in_reply_to: u64,
    latency_ms: u64,
    permit: Permit,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: the earliest deadline (then the earliest arrival) on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// What the node knows of the drain, for `tcp_drain_status`.
#[derive(Debug, Clone, Copy)]
struct DrainClock {
    /// When the first shutdown arrived (or the node first saw the drain).
    since: Instant,
    /// The last in-flight request's nominal deadline minus `since`, in ms.
    took_ms: u64,
    /// The drain timeout asked for, reported as `took_ms` when timed out.
    timeout_ms: u64,
}

/// See the module documentation.
pub struct StdinNode {
    core: Core,
    default_drain_timeout: Duration,
    /// This node's id, once `init` has named it.
    node_id: Option<String>,
    /// The next `msg_id` this node writes.
    next_msg_id: u64,
    /// The next arrival number.
    next_seq: u64,
    /// Lines not handled yet, in order.
    lines: VecDeque<(Vec<u8>, Instant)>,
    /// Whether a line's round trip is under way (the rest wait for it).
    busy: bool,
    /// Requests waiting for their deadlines.
    pending: BinaryHeap<Pending>,
    /// The one timer, armed for the earliest deadline.
    timer: Option<(Instant, SpawnHandle)>,
    /// Set by the first shutdown.
    clock: Option<DrainClock>,
    /// Where replies go; flushed before the node waits.
    out: std::io::BufWriter<std::io::Stdout>,
    /// Whether stdout has failed (then replies are dropped, once logged).
    out_broken: bool,
    /// Set when the Supervisor closes the "listener": from then on new
    /// requests are refused (stdin is one connection whose requests all
    /// count; the engine would otherwise admit them until the count is 0).
    refusing: bool,
}

impl StdinNode {
    fn new(core: Core, default_drain_timeout: Duration) -> Self {
        StdinNode {
            core,
            default_drain_timeout,
            node_id: None,
            next_msg_id: 0,
            next_seq: 0,
            lines: VecDeque::new(),
            busy: false,
            pending: BinaryHeap::new(),
            timer: None,
            clock: None,
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            out_broken: false,
            refusing: false,
        }
    }

    /// Writes one reply line (buffered).
    fn reply(&mut self, node: String, to: String, in_reply_to: u64, body: ReplyBody) {
        let line = Reply {
            src: node,
            dest: to,
            in_reply_to,
            msg_id: self.next_msg_id,
            body,
        }
        .to_line();
        self.next_msg_id += 1;
        if self.out_broken {
            return;
        }
        let written = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = written {
            warn!("writing to stdout failed: {e}; replies are lost from here on");
            self.out_broken = true;
        }
    }

    fn flush(&mut self) {
        if !self.out_broken {
            if let Err(e) = self.out.flush() {
                warn!("writing to stdout failed: {e}; replies are lost from here on");
                self.out_broken = true;
            }
        }
    }

    /// The id replies come from: the node's, or before `init` the request's dest.
    fn me(&self, dest: &str) -> String {
        self.node_id.clone().unwrap_or_else(|| dest.to_string())
    }

    /// Handles queued lines in order until one needs a round trip.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while !self.busy {
            self.check_cut(ctx);
            let Some((line, at)) = self.lines.pop_front() else {
                break;
            };
            self.complete_due(at, ctx);
            self.handle_line(&line, at, ctx);
        }
        self.flush();
    }

    /// Answers what is queued if the drain has been cut, as soon as the
    /// published phase says so (not only when the phase stream is polled).
    fn check_cut(&mut self, ctx: &mut Context<Self>) {
        if self.pending.is_empty() {
            return;
        }
        let phase = *self.core.state.borrow();
        match phase {
            DrainState::Draining {
                cut: Some(reason), ..
            } => self.cancel_all(reason, ctx),
            // The coordinator gave up on them: they are answered all the same.
            DrainState::Stopped => self.cancel_all(CancelReason::DrainTimeout, ctx),
            _ => {}
        }
    }

    fn handle_line(&mut self, line: &[u8], at: Instant, ctx: &mut Context<Self>) {
        let msg = match parse_line(line) {
            Ok(msg) => msg,
            Err(LineError::Malformed(why)) => {
                warn!(
                    "ignoring a malformed line ({why}): {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                );
                return;
            }
            Err(LineError::BadField {
                src,
                dest,
                msg_id,
                text,
            }) => {
                let me = self.me(&dest);
                let body = ReplyBody::Error {
                    code: CODE_MALFORMED_REQUEST,
                    text,
                };
                self.reply(me, src, msg_id, body);
                return;
            }
        };
        let Inbound {
            src,
            dest,
            msg_id,
            request,
        } = msg;
        match request {
            Request::Init { node_id } => {
                info!("initialised as {node_id}");
                self.node_id = Some(node_id);
                let me = self.me(&dest);
                self.reply(me, src, msg_id, ReplyBody::InitOk);
            }
            Request::Unknown { kind } => {
                let me = self.me(&dest);
                let body = ReplyBody::Error {
                    code: CODE_NOT_SUPPORTED,
                    text: format!("message type '{kind}' is not supported"),
                };
                self.reply(me, src, msg_id, body);
            }
            Request::TcpRequest { latency_ms: 0 } => {
                // Never counted in flight: answered before the next line.
                let me = self.me(&dest);
                let body = if !self.refusing && self.core.state.borrow().admitting() {
                    ReplyBody::TcpRequestOk { duration_ms: 0 }
                } else {
                    ReplyBody::TcpRequestError {
                        error: "server_shutting_down",
                    }
                };
                self.reply(me, src, msg_id, body);
            }
            Request::TcpRequest { latency_ms } => {
                self.busy = true;
                // Admission is an atomic step; `wait` keeps the lines in order.
                let admitted = if self.refusing {
                    Err(drainer_engine::NotAdmitted)
                } else {
                    self.core.admission.admit()
                };
                let admit = std::future::ready(Ok::<_, actix::MailboxError>(admitted));
                ctx.wait(admit.into_actor(self).map(move |admitted, act, ctx| {
                    act.busy = false;
                    match admitted {
                        Ok(Ok(permit)) => {
                            let seq = act.next_seq;
                            act.next_seq += 1;
                            act.pending.push(Pending {
                                deadline: at + Duration::from_millis(latency_ms),
                                seq,
                                dest,
                                src,
                                in_reply_to: msg_id,
                                latency_ms,
                                permit,
                            });
                            act.arm(ctx);
                        }
                        _ => act.reply(
                            act.me(&dest),
                            src,
                            msg_id,
                            ReplyBody::TcpRequestError {
                                error: "server_shutting_down",
                            },
                        ),
                    }
                    act.pump(ctx);
                }));
            }
            Request::TcpShutdown { drain_timeout_ms } => {
                let timeout = drain_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(self.default_drain_timeout);
                let first = self.clock.is_none();
                self.start_clock(at, timeout);
                self.busy = true;
                let drain = self.core.drain().send(TransportDrain {
                    drain_timeout: timeout,
                });
                let coordinator = self.core.coordinator.clone();
                ctx.wait(
                    async move {
                        let in_flight = drain.await.unwrap_or(0);
                        (in_flight, coordinator.send(GetSnapshot).await.ok())
                    }
                    .into_actor(self)
                    .map(move |(in_flight, snapshot), act, ctx| {
                        act.busy = false;
                        // The drain has begun for this node: new requests
                        // are refused from the next line on.
                        act.refusing = true;
                        let status = match (first, snapshot) {
                            (true, _) | (false, None) => "draining",
                            (false, Some(s)) => act.status(&s).0,
                        };
                        let me = act.me(&dest);
                        let body = ReplyBody::TcpShutdownOk { status, in_flight };
                        act.reply(me, src, msg_id, body);
                        act.pump(ctx);
                    }),
                );
            }
            Request::TcpDrainStatus => {
                self.busy = true;
                let snapshot = self.core.coordinator.send(GetSnapshot);
                ctx.wait(snapshot.into_actor(self).map(move |snapshot, act, ctx| {
                    act.busy = false;
                    let (status, remaining, took_ms) = match snapshot {
                        Ok(s) => act.status(&s),
                        Err(_) => ("draining", 0, 0),
                    };
                    let me = act.me(&dest);
                    let body = ReplyBody::TcpDrainStatusOk {
                        status,
                        remaining,
                        took_ms,
                    };
                    act.reply(me, src, msg_id, body);
                    act.pump(ctx);
                }));
            }
        }
    }

    /// Starts the drain clock once: freezes the nominal `took_ms`.
    fn start_clock(&mut self, at: Instant, timeout: Duration) {
        if self.clock.is_some() {
            return;
        }
        let last = self.pending.iter().map(|p| p.deadline).max();
        let took_ms = last.map_or(0, |d| round_ms(d.saturating_duration_since(at)));
        self.clock = Some(DrainClock {
            since: at,
            took_ms,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
    }

    /// `tcp_drain_status`: (status, remaining, took_ms).
    fn status(&self, s: &Snapshot) -> (&'static str, usize, u64) {
        let clock = self.clock;
        match (s.state, s.outcome, clock) {
            (DrainState::Active, _, _) => ("active", s.in_flight, 0),
            (_, Some(Outcome::Drained), c) => ("drained", 0, c.map_or(0, |c| c.took_ms)),
            (
                _,
                Some(Outcome::CutShort {
                    reason: CancelReason::DrainTimeout,
                    cancelled,
                    ..
                }),
                c,
            ) => ("timed_out", cancelled, c.map_or(0, |c| c.timeout_ms)),
            (_, Some(Outcome::CutShort { cancelled, .. }), c) => (
                "cut_short",
                cancelled,
                c.map_or(0, |c| round_ms(c.since.elapsed())),
            ),
            (_, None, c) => (
                "draining",
                s.in_flight,
                c.map_or(0, |c| round_ms(c.since.elapsed())),
            ),
        }
    }

    /// Arms the one timer for the earliest deadline.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.pending.peek().map(|p| p.deadline) else {
            return;
        };
        if let Some((armed, handle)) = self.timer {
            if armed <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.complete_due(Instant::now(), ctx);
        });
        self.timer = Some((next, handle));
    }

    /// Answers every request whose deadline is at or before `now`, in
    /// deadline order. Called by the timer, and before each input line with
    /// the line's arrival: a request due before a line arrived is answered
    /// before that line, however late the timer wakes up.
    fn complete_due(&mut self, now: Instant, ctx: &mut Context<Self>) {
        while self.pending.peek().is_some_and(|p| p.deadline <= now) {
            if let Some(mut done) = self.pending.pop() {
                done.permit.mark_answered();
                let body = ReplyBody::TcpRequestOk {
                    duration_ms: done.latency_ms,
                };
                let me = self.me(&done.dest);
                self.reply(me, done.src, done.in_reply_to, body);
                drop(done.permit);
            }
        }
        self.arm(ctx);
        self.flush();
    }

    /// The drain was cut: every queued request is answered with the reason.
    fn cancel_all(&mut self, reason: CancelReason, ctx: &mut Context<Self>) {
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let mut cancelled = 0;
        while let Some(mut p) = self.pending.pop() {
            let body = ReplyBody::TcpRequestError {
                error: reason.as_str(),
            };
            let me = self.me(&p.dest);
            let src = std::mem::take(&mut p.src);
            self.reply(me, src, p.in_reply_to, body);
            p.permit.mark_cancelled();
            cancelled += 1;
        }
        if cancelled > 0 {
            info!("cancelled {cancelled} request(s): {reason}");
        }
        self.flush();
    }
}

impl Actor for StdinNode {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.core.census.actor_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.core.census.actor_stopped();
    }
}

impl StreamHandler<Input> for StdinNode {
    /// Queues the lines and handles them in order.
    fn handle(&mut self, input: Input, ctx: &mut Context<Self>) {
        match input {
            Input::Lines(lines, at) => {
                self.lines.extend(lines.into_iter().map(|l| (l, at)));
                self.pump(ctx);
            }
            Input::End => self.core.ended().do_send(TransportEnded),
        }
    }

    /// The reader is gone; the node keeps answering until the process exits.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl StreamHandler<DrainState> for StdinNode {
    /// Notices a drain (for the clock) and a cut (to answer what is queued).
    fn handle(&mut self, phase: DrainState, ctx: &mut Context<Self>) {
        if let DrainState::Draining { .. } = phase {
            let timeout = self.default_drain_timeout;
            self.start_clock(Instant::now(), timeout);
        }
        self.check_cut(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<CloseListener> for StdinNode {
    type Result = usize;

    /// There is no listener: stdin is read until it ends, and new requests
    /// are refused from now on.
    fn handle(&mut self, _: CloseListener, _: &mut Context<Self>) -> usize {
        self.refusing = true;
        0
    }
}

impl Handler<StopTransport> for StdinNode {
    type Result = ();

    /// Makes sure every reply is out before the process exits; then stops.
    fn handle(&mut self, _: StopTransport, ctx: &mut Context<Self>) {
        self.flush();
        ctx.stop();
    }
}

/// A duration in whole ms, rounded to the nearest.
fn round_ms(d: Duration) -> u64 {
    u64::try_from((d.as_micros() + 500) / 1000).unwrap_or(u64::MAX)
}
