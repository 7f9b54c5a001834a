//! What one connection is doing, as seen at its socket: the bookkeeping that
//! bounds hostile clients.
//!
//! - **Owed answers.** Whether bytes were read that no flushed write has
//!   answered yet (the idle sweep must not close a connection in the moment
//!   between a request's work ending and its response being written), and how
//!   many request heads have arrived ([`Framer`]) against how many the app has
//!   answered.
//! - **A deadline on every request.** From its first byte until its last body
//!   byte a request has `CLIENT_REQUEST_TIMEOUT_MS`; the serve loop checks it
//!   ([`Activity::expired`]) on a timer, with no work on the hot path.
//! - **Back-pressure.** While the client reads none of its answers (writes
//!   blocked) or too many are owed, reading stops without waking anyone
//!   ([`Activity::paused`]): actix-http's dispatcher would otherwise wake itself
//!   in a loop, buffering ever more, and a pipelining client that never reads
//!   would pin a core. A connection whose writes make no progress for
//!   `CLIENT_REQUEST_TIMEOUT_MS` is closed.
//! - **Keep-alive.** A connection with nothing owed either way closes after
//!   the keep-alive time. (actix-http's own keep-alive timer would also fire
//!   while answers wait to be written, dropping them.)
//! - **Persistent connections.** A WebSocket or an SSE stream is never idle,
//!   and none of the bounds above apply to it (its frames are not requests;
//!   its session pings and says goodbye itself); once its body has ended and
//!   been written, the connection closes ([`Activity::close_when_flushed`]).
//! - **Lingering close.** Whether the connection ended in the middle of a
//!   request body ([`Activity::mid_body`]): the rest is read and discarded
//!   before the socket closes, so the client reads its early answer.

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::framing::Framer;

/// Past this many requests received and not yet answered, reading pauses.
/// It keeps actix-http's pipeline queue (16) from filling, so its read
/// buffer never reaches the size at which it wakes itself in a loop.
pub const MAX_OWED: u64 = 8;

/// How much longer than its deadline the unread rest of an answered body may
/// take before the connection is closed: the app answers a body it reads 408
/// at the deadline itself, and closes the connection then.
const BODY_GRACE: Duration = Duration::from_millis(250);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bytes were read since the last flushed response.
    awaiting: Cell<bool>,
    /// Bytes were written since the last flush.
    wrote: Cell<bool>,
    /// Where requests begin and end.
    framer: RefCell<Framer>,
    /// Requests the app has answered.
    answered: Cell<u64>,
    /// Requests the app has taken and not answered yet: while any is, no
    /// request deadline closes the connection (only `Writes` can).
    in_app: Cell<u64>,
    /// Since when writes have made no progress (the client reads nothing).
    blocked_since: Cell<Option<Instant>>,
    /// The reader parked by [`Activity::park`], woken when it may read again.
    parked: RefCell<Option<Waker>>,
    /// Since when nothing has been owed either way (unset: not idle).
    idle_since: Cell<Option<Instant>>,
    /// Shielded requests past the cut whose answers are still owed: the
    /// hard deadline does not close the connection before they are written.
    shielded: Cell<u64>,
    /// A WebSocket or an SSE stream has taken the connection over.
    persistent: Cell<bool>,
    /// Its persistent body has ended: close once it is written.
    ending: Cell<bool>,
    /// Told when the connection should close now (a persistent body written whole).
    closing: tokio::sync::Notify,
}

/// What ran out on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head has been arriving for the whole timeout, and every
    /// earlier request was answered and its answer written: answer it 408
    /// and close.
    Head,
    /// The rest of an answered request's body never came (or bytes whose
    /// framing could not be followed, or a head behind answers not yet
    /// written): close.
    Body,
    /// Writes made no progress for the whole timeout: close.
    Writes,
    /// Nothing was owed either way for the keep-alive time: close.
    Idle,
}

impl Activity {
    /// A shielded request kept running past the cut.
    pub fn shield_held(&self) {
        self.shielded.set(self.shielded.get() + 1);
    }

    /// That request has answered.
    pub fn shield_released(&self) {
        self.shielded.set(self.shielded.get().saturating_sub(1));
    }

    /// Whether a shielded request's answer is still owed.
    pub fn holds_shielded(&self) -> bool {
        self.shielded.get() > 0
    }

    /// True when the client sent something that has not been answered yet.
    pub fn awaiting_response(&self) -> bool {
        self.awaiting.get()
    }

    /// A WebSocket or an SSE stream has taken the connection over.
    pub(crate) fn became_persistent(&self) {
        self.persistent.set(true);
        self.idle_since.set(None);
    }

    /// Whether a WebSocket or an SSE stream has taken the connection over.
    pub fn is_persistent(&self) -> bool {
        self.persistent.get()
    }

    /// The persistent body has ended: the connection closes once that end is
    /// written (the chunked terminator flushed).
    pub(crate) fn close_when_flushed(&self) {
        self.ending.set(true);
    }

    /// Resolves once the connection should close (see [`Activity::close_when_flushed`]).
    pub(super) async fn closing(&self) {
        self.closing.notified().await
    }

    /// Whether a request's body was still arriving (or its framing could not
    /// be followed) when the connection ended: the client may still be
    /// writing the rest.
    pub(super) fn mid_body(&self) -> bool {
        if self.persistent.get() {
            return false;
        }
        let framer = self.framer.borrow();
        framer.receiving_since().is_some() && !framer.in_head()
    }

    /// Requests received whole and not yet answered by the app.
    fn owed(&self) -> u64 {
        self.framer
            .borrow()
            .heads()
            .saturating_sub(self.answered.get())
    }

    /// Bytes arrived at `now`.
    pub(super) fn read(&self, bytes: &[u8], now: Instant) {
        if self.persistent.get() {
            // Frames, not requests.
            return;
        }
        self.awaiting.set(true);
        self.idle_since.set(None);
        self.framer.borrow_mut().feed(bytes, now);
    }

    /// A write went out (`progress`: some bytes), or could not (`false`).
    pub(super) fn wrote(&self, progress: bool, now: Instant) {
        if progress {
            self.wrote.set(true);
            self.blocked_since.set(None);
        } else if self.blocked_since.get().is_none() {
            self.blocked_since.set(Some(now));
        }
    }

    /// A flush completed: a response went out whole, nothing is owed.
    pub(super) fn flushed(&self, now: Instant) {
        if self.ending.get() {
            self.closing.notify_one();
        }
        if self.persistent.get() {
            self.wrote.set(false);
            return;
        }
        if self.wrote.replace(false) {
            self.awaiting.set(false);
            let between = self.framer.borrow().receiving_since().is_none();
            if between && self.owed() == 0 {
                self.idle_since.set(Some(now));
            }
        }
    }

    /// The connection is new: idle until its first byte.
    pub(super) fn opened(&self, now: Instant) {
        self.idle_since.set(Some(now));
    }

    /// Whether reading must pause: too many answers owed, or writes blocked
    /// (`writable` says whether the socket could take bytes right now).
    /// A paused reader [`Activity::park`]s its waker.
    pub(super) fn paused(&self, writable: impl FnOnce() -> bool) -> bool {
        if self.persistent.get() {
            // Its session bounds its own writes; its client's frames (a
            // Close reply among them) are always read.
            return false;
        }
        self.owed() >= MAX_OWED || (self.blocked_since.get().is_some() && !writable())
    }

    /// Keeps a paused reader's waker, to be woken by the next answer (the
    /// socket wakes it once writable).
    pub(super) fn park(&self, waker: &Waker) {
        *self.parked.borrow_mut() = Some(waker.clone());
    }

    /// The app takes the next request: answers when its first byte arrived.
    pub fn request_started(&self) -> Option<Instant> {
        self.in_app.set(self.in_app.get() + 1);
        self.framer.borrow_mut().take_head_start()
    }

    /// The app has answered a request.
    pub fn answered(&self) {
        self.in_app.set(self.in_app.get().saturating_sub(1));
        self.answered.set(self.answered.get() + 1);
        if let Some(reader) = self.parked.borrow_mut().take() {
            reader.wake();
        }
    }

    /// What has run out at `now`, with `timeout` for each request and for
    /// write progress.
    pub fn expired(
        &self,
        now: Instant,
        timeout: Duration,
        keep_alive: Duration,
    ) -> Option<Expired> {
        if self.persistent.get() {
            return None;
        }
        if self
            .idle_since
            .get()
            .is_some_and(|since| now >= since + keep_alive)
        {
            return Some(Expired::Idle);
        }
        if self
            .blocked_since
            .get()
            .is_some_and(|since| now >= since + timeout)
        {
            return Some(Expired::Writes);
        }
        let deadline = self.request_deadline(timeout)?;
        if now < deadline || self.in_app.get() > 0 || self.owed() > 0 {
            // Not yet; or the app is handling a request (a body it reads
            // has the same deadline, and it answers 408 itself).
            return None;
        }
        // Nothing is closed while an answer is still being written (a client
        // that reads nothing is bounded by `Writes`); the 408 goes out once
        // every answer is out.
        if self.wrote.get() || self.blocked_since.get().is_some() {
            return None;
        }
        let framer = self.framer.borrow();
        Some(if framer.in_head() && !framer.opaque() {
            Expired::Head
        } else {
            Expired::Body
        })
    }

    /// When the request arriving now runs out of time; none when nothing is
    /// arriving or its framing could not be followed.
    fn request_deadline(&self, timeout: Duration) -> Option<Instant> {
        let framer = self.framer.borrow();
        let since = framer.receiving_since()?;
        // A framing that cannot be followed is bounded like a body.
        if framer.in_head() && !framer.opaque() {
            Some(since + timeout)
        } else {
            Some(since + timeout + BODY_GRACE)
        }
    }

    /// When to look again: no later than any deadline. A deadline that
    /// starts after `now` (a request's first byte, an idle stretch, a blocked
    /// write) ends after `now` + the shorter of `timeout` and `keep_alive`, so
    /// looking again by then misses none, and nothing on the hot path has to
    /// say when one starts.
    pub fn next_check(&self, now: Instant, timeout: Duration, keep_alive: Duration) -> Instant {
        let request = self.request_deadline(timeout);
        let writes = self.blocked_since.get().map(|s| s + timeout);
        let idle = self.idle_since.get().map(|s| s + keep_alive);
        [request, writes, idle]
            .into_iter()
            .flatten()
            .filter(|&at| at > now)
            .fold(now + timeout.min(keep_alive), Instant::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);
    const KA: Duration = Duration::from_secs(60);

    #[test]
    fn a_head_arriving_too_long_after_every_answer_expires() {
        let a = Activity::default();
        let t0 = Instant::now();
        a.read(b"GET / HTTP/1.1\r\n\r\n", t0);
        assert_eq!(a.request_started(), Some(t0));
        a.answered();
        a.read(b"GET / HT", t0 + Duration::from_secs(1));
        assert_eq!(a.expired(t0 + Duration::from_secs(10), T, KA), None);
        assert_eq!(
            a.next_check(t0 + Duration::from_secs(10), T, KA),
            t0 + Duration::from_secs(11)
        );
        assert_eq!(
            a.expired(t0 + Duration::from_secs(11), T, KA),
            Some(Expired::Head)
        );
    }

    #[test]
    fn a_request_the_app_is_handling_is_left_to_the_app() {
        let a = Activity::default();
        let t0 = Instant::now();
        a.read(b"POST /work HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", t0);
        assert_eq!(
            a.expired(t0 + 2 * T, T, KA),
            None,
            "owed: the app answers 408 itself"
        );
        a.answered();
        assert_eq!(
            a.expired(t0 + T, T, KA),
            None,
            "the app's own 408 closes first"
        );
        assert_eq!(a.expired(t0 + T + BODY_GRACE, T, KA), Some(Expired::Body));
    }

    #[test]
    fn writes_without_progress_expire_and_block_reading() {
        let a = Activity::default();
        let t0 = Instant::now();
        a.wrote(false, t0);
        assert!(a.paused(|| false), "blocked: no reading");
        assert!(!a.paused(|| true), "writable again: read");
        assert_eq!(a.expired(t0 + T, T, KA), Some(Expired::Writes));
        a.wrote(true, t0 + T);
        assert_eq!(a.expired(t0 + T, T, KA), None);
    }

    #[test]
    fn too_many_owed_answers_pause_reading_until_one_is_given() {
        let a = Activity::default();
        a.read(
            &b"GET / HTTP/1.1\r\n\r\n".repeat(MAX_OWED as usize),
            Instant::now(),
        );
        assert!(a.paused(|| true));
        a.answered();
        assert!(!a.paused(|| true));
    }

    #[test]
    fn a_connection_with_nothing_owed_closes_after_the_keep_alive() {
        let a = Activity::default();
        let t0 = Instant::now();
        a.opened(t0);
        assert_eq!(a.expired(t0 + KA, T, KA), Some(Expired::Idle));
        a.read(b"GET / HTTP/1.1\r\n\r\n", t0);
        a.answered();
        a.wrote(false, t0);
        assert_eq!(
            a.expired(t0 + KA, T, KA),
            Some(Expired::Writes),
            "owed: not idle"
        );
        a.wrote(true, t0 + KA);
        a.flushed(t0 + KA);
        assert_eq!(a.expired(t0 + KA, T, KA), None);
        assert_eq!(a.expired(t0 + 2 * KA, T, KA), Some(Expired::Idle));
    }

    #[test]
    fn an_idle_connection_is_looked_at_once_per_timeout() {
        let a = Activity::default();
        let now = Instant::now();
        assert_eq!(a.next_check(now, T, KA), now + T);
        assert_eq!(a.expired(now + 5 * T, T, KA), None);
    }
}
