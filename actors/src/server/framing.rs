//! Where each request begins and ends, as its bytes arrive.
//!
//! actix-http times out only a connection's first request head. To put a
//! deadline on every request — from its first byte until its last body byte —
//! the stream under the dispatcher follows the HTTP/1 framing itself: a head
//! up to its blank line (parsed with `httparse`, as actix-http does), then a
//! `Content-Length` body or a chunked one. It only observes: the dispatcher
//! still parses and answers everything. Anything it cannot follow (a head
//! actix-http will refuse, an upgrade) makes the connection [`Framer::opaque`]
//! from then on.

use std::time::Instant;

/// The largest head followed; actix-http refuses larger ones itself (431).
const MAX_HEAD: usize = 128 * 1024;

/// The most headers a head may have (actix-http's own limit).
const MAX_HEADERS: usize = 96;

/// See the module documentation.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// Request heads received whole.
    heads: u64,
    /// When each head received whole and not yet taken by the app began.
    starts: std::collections::VecDeque<Instant>,
}

#[derive(Debug)]
enum State {
    /// Between requests.
    Idle,
    /// A head is arriving.
    Head { since: Instant, buf: Vec<u8> },
    /// A `Content-Length` body with `left` bytes to come.
    Body { since: Instant, left: u64 },
    /// A chunked body.
    Chunked { since: Instant, at: Chunk },
    /// Framing that cannot be followed; `since` is when it began.
    Opaque { since: Instant },
}

#[derive(Debug)]
enum Chunk {
    /// The chunk-size line so far.
    Size(Vec<u8>),
    /// Data bytes left in the chunk.
    Data(u64),
    /// The CRLF after a chunk's data: bytes of it seen.
    DataEnd(u8),
    /// A trailer line so far (the last chunk's trailers end with an empty line).
    Trailer(Vec<u8>),
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            state: State::Idle,
            heads: 0,
            starts: std::collections::VecDeque::new(),
        }
    }
}

impl Framer {
    /// Since when the current request has been arriving; `None` between
    /// requests.
    pub fn receiving_since(&self) -> Option<Instant> {
        match &self.state {
            State::Idle => None,
            State::Head { since, .. }
            | State::Body { since, .. }
            | State::Chunked { since, .. }
            | State::Opaque { since } => Some(*since),
        }
    }

    /// How many request heads have arrived whole.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// When the oldest request received whole, and not yet taken, began.
    pub fn take_head_start(&mut self) -> Option<Instant> {
        self.starts.pop_front()
    }

    /// Whether a head is arriving (rather than a body).
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head { .. })
    }

    /// Whether the framing could not be followed.
    pub fn opaque(&self) -> bool {
        matches!(self.state, State::Opaque { .. })
    }

    /// Follows `bytes`, which arrived at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            bytes = match &mut self.state {
                State::Opaque { .. } => return,
                State::Idle => {
                    self.state = State::Head {
                        since: now,
                        buf: Vec::new(),
                    };
                    bytes
                }
                State::Head { since, buf } => {
                    let since = *since;
                    if buf.is_empty() {
                        // Blank lines before a head (httparse skips them):
                        // not kept, so a client dripping them costs nothing.
                        let blank = bytes
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        bytes = &bytes[blank..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    buf.extend_from_slice(bytes);
                    // A head can only have ended on a line end: parse then.
                    if !bytes.contains(&b'\n') {
                        if buf.len() > MAX_HEAD {
                            self.state = State::Opaque { since };
                        }
                        return;
                    }
                    match parse_head(buf, since) {
                        Head::Partial if buf.len() > MAX_HEAD => {
                            self.state = State::Opaque { since };
                            return;
                        }
                        Head::Partial => return,
                        Head::Refused => {
                            self.state = State::Opaque { since };
                            return;
                        }
                        Head::Done { len, next } => {
                            let rest = buf.len() - len;
                            self.heads += 1;
                            self.starts.push_back(since);
                            if self.starts.len() > 64 {
                                // Heads the app never took (refused by the
                                // dispatcher): only the newest matter.
                                self.starts.pop_front();
                            }
                            self.state = next;
                            &bytes[bytes.len() - rest..]
                        }
                    }
                }
                State::Body { left, .. } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                    &bytes[n..]
                }
                State::Chunked { since, at } => {
                    let since = *since;
                    match chunk_step(at, bytes) {
                        Ok((used, done)) => {
                            if done {
                                self.state = State::Idle;
                            }
                            &bytes[used..]
                        }
                        Err(()) => {
                            self.state = State::Opaque { since };
                            return;
                        }
                    }
                }
            };
        }
    }
}

/// A head so far, as httparse (the parser actix-http uses) reads it.
enum Head {
    Partial,
    /// Not a head actix-http will take: it answers 400 and closes.
    Refused,
    /// It ended after `len` bytes; `next` is what follows it.
    Done {
        len: usize,
        next: State,
    },
}

/// Reads the head in `buf`. A head actix-http will refuse (malformed,
/// conflicting lengths) or an upgrade makes the connection opaque.
fn parse_head(buf: &[u8], since: Instant) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Refused,
    };
    let next = body_after(&req, since);
    Head::Done { len, next }
}

/// What follows a complete head.
fn body_after(req: &httparse::Request<'_, '_>, since: Instant) -> State {
    if req.method == Some("CONNECT") {
        return State::Opaque { since };
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map(str::trim);
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return State::Opaque { since },
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            match value {
                Ok(v) => chunked = v.to_ascii_lowercase().trim_end().ends_with("chunked"),
                Err(_) => return State::Opaque { since },
            }
        } else if h.name.eq_ignore_ascii_case("upgrade")
            && value.is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
        {
            // What follows is another protocol's bytes.
            return State::Opaque { since };
        }
    }
    match (chunked, length) {
        (true, Some(_)) => State::Opaque { since },
        (true, None) => State::Chunked {
            since,
            at: Chunk::Size(Vec::new()),
        },
        (false, Some(n)) if n > 0 => State::Body { since, left: n },
        _ => State::Idle,
    }
}

/// Follows chunked framing through `bytes`: how many were used, and whether
/// the body ended. `Err` for framing that makes no sense.
fn chunk_step(at: &mut Chunk, bytes: &[u8]) -> Result<(usize, bool), ()> {
    let mut used = 0;
    while used < bytes.len() {
        if let Chunk::Data(left) = at {
            // Skip as much data as is here at once.
            let n = (*left).min((bytes.len() - used) as u64);
            *left -= n;
            used += n as usize;
            if *left == 0 {
                *at = Chunk::DataEnd(0);
            }
            continue;
        }
        let b = bytes[used];
        used += 1;
        match at {
            Chunk::Data(_) => unreachable!("handled above"),
            Chunk::Size(line) => {
                if b == b'\n' {
                    let text = std::str::from_utf8(line).map_err(|_| ())?;
                    let size = text.trim_end_matches('\r');
                    let size = size.split(';').next().unwrap_or("").trim();
                    let n = u64::from_str_radix(size, 16).map_err(|_| ())?;
                    *at = if n == 0 {
                        Chunk::Trailer(Vec::new())
                    } else {
                        Chunk::Data(n)
                    };
                } else if line.len() > 1024 {
                    return Err(());
                } else {
                    line.push(b);
                }
            }
            Chunk::DataEnd(seen) => {
                if b == b'\n' {
                    *at = Chunk::Size(Vec::new());
                } else if b == b'\r' && *seen == 0 {
                    *seen = 1;
                } else {
                    return Err(());
                }
            }
            Chunk::Trailer(line) => {
                if b == b'\n' {
                    if line.iter().all(|&c| c == b'\r') {
                        return Ok((used, true));
                    }
                    line.clear();
                } else if line.len() > 8 * 1024 {
                    return Err(());
                } else {
                    line.push(b);
                }
            }
        }
    }
    Ok((used, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(parts: &[&[u8]]) -> Framer {
        let mut f = Framer::default();
        for p in parts {
            f.feed(p, Instant::now());
        }
        f
    }

    #[test]
    fn a_request_without_a_body_ends_with_its_head() {
        let f = fed(&[b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert_eq!((f.heads(), f.receiving_since()), (1, None));
    }

    #[test]
    fn a_head_in_pieces_is_arriving_until_its_blank_line() {
        let mut f = fed(&[b"GET /health HT"]);
        assert!(f.receiving_since().is_some());
        f.feed(b"TP/1.1\r\nHost: x\r", Instant::now());
        f.feed(b"\n\r", Instant::now());
        assert!(f.receiving_since().is_some());
        f.feed(b"\n", Instant::now());
        assert_eq!((f.heads(), f.receiving_since()), (1, None));
    }

    #[test]
    fn a_body_is_arriving_until_its_last_byte() {
        let mut f = fed(&[b"POST /work HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345"]);
        assert!(f.receiving_since().is_some());
        f.feed(b"6789", Instant::now());
        assert!(f.receiving_since().is_some());
        f.feed(b"0GET /", Instant::now());
        assert_eq!(f.heads(), 1);
        assert!(f.receiving_since().is_some(), "the second head has begun");
    }

    #[test]
    fn pipelined_requests_in_one_read_are_each_counted() {
        let f = fed(&[b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n"]);
        assert_eq!((f.heads(), f.receiving_since()), (3, None));
    }

    #[test]
    fn bare_lf_heads_and_leading_blank_lines_are_followed_as_httparse_does() {
        let f = fed(&[b"\r\nGET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\n\n"]);
        assert_eq!((f.heads(), f.receiving_since()), (2, None));
        let blank = fed(&[b"\r\n\r\n"]);
        assert_eq!(blank.heads(), 0, "blank lines are no head");
        assert!(
            blank.receiving_since().is_some(),
            "and a head may still follow"
        );
    }

    #[test]
    fn a_chunked_body_ends_with_its_last_chunk_and_trailers() {
        let mut f = fed(&[b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab"]);
        assert!(f.receiving_since().is_some());
        f.feed(b"cd\r\n0;x=y\r\nTrailer: v\r\n", Instant::now());
        assert!(f.receiving_since().is_some());
        f.feed(b"\r\n", Instant::now());
        assert_eq!(
            (f.heads(), f.receiving_since(), f.opaque()),
            (1, None, false)
        );
    }

    #[test]
    fn framing_it_cannot_follow_is_opaque() {
        let both =
            fed(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert!(both.opaque());
        let twice = fed(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"]);
        assert!(twice.opaque());
        let upgrade = fed(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"]);
        assert!(upgrade.opaque());
        let h2c = fed(&[b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"]);
        assert!(!h2c.opaque(), "actix-http serves it as a plain request");
        let garbage = fed(&[b"\x00\x01 nonsense\r\n\r\n"]);
        assert!(garbage.opaque());
    }
}
