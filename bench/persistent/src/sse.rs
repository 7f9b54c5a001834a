//! A server-sent-events subscriber over raw TCP: chunked decoding, event
//! parsing, and how the stream ended.

use std::io;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::{self, Chunked};
use crate::report::Outcome;
use crate::support::{io_reason, Stop};

pub struct Subscriber {
    stream: TcpStream,
    /// Body bytes read along with the head.
    buf: Vec<u8>,
    /// None when the body is not chunked (then it ends at EOF).
    chunked: Option<Chunked>,
}

/// Sends `GET /events` and confirms a 200 head.
pub async fn open(addr: &str) -> Result<Subscriber, String> {
    let headers = "Accept: text/event-stream\r\nCache-Control: no-cache\r\n";
    let (stream, head, buf) = http::open(addr, "/events", headers, 200).await?;
    let chunked = head.is_chunked().then(Chunked::default);
    Ok(Subscriber {
        stream,
        buf,
        chunked,
    })
}

/// Reads events until the stream ends (or `stop`). Returns how it ended and
/// the number of `event: job` events. Clean: the reconnect event, then the
/// chunked terminator, then EOF.
pub async fn run(mut sub: Subscriber, mut stop: Stop) -> (Outcome, u64) {
    let mut parser = Parser::default();
    let mut events = Vec::new();
    let mut decoded = Vec::new();
    let mut jobs = 0;
    let mut reconnect: Option<Instant> = None;
    let mut raw = std::mem::take(&mut sub.buf);
    loop {
        decoded.clear();
        let body = match &mut sub.chunked {
            Some(decoder) => match decoder.feed(&raw, &mut decoded) {
                Ok(consumed) if consumed < raw.len() => {
                    return (
                        Outcome::ended(false, "data_after_terminator", reconnect),
                        jobs,
                    );
                }
                Ok(_) => &decoded,
                Err(_) => return (Outcome::ended(false, "bad_chunking", reconnect), jobs),
            },
            None => &raw,
        };
        parser.feed(body, &mut events);
        for event in events.drain(..) {
            match event.as_str() {
                "job" => jobs += 1,
                "reconnect" => {
                    reconnect.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
        let terminated = sub.chunked.as_ref().is_none_or(Chunked::is_done);
        raw.clear();
        raw.reserve(8192);
        let read = tokio::select! {
            read = sub.stream.read_buf(&mut raw) => read,
            () = stop.wait() => {
                let kind = match (reconnect, terminated) {
                    (Some(_), true) => "timeout_after_terminator",
                    (Some(_), false) => "timeout_after_reconnect",
                    (None, _) => "timeout",
                };
                return (Outcome::still_open(kind, reconnect), jobs);
            }
        };
        let outcome = match read {
            Ok(0) => match (reconnect, terminated) {
                (Some(at), true) => Outcome::ended(true, "clean", Some(at)),
                (Some(at), false) => Outcome::ended(false, "eof_without_terminator", Some(at)),
                (None, _) => Outcome::ended(false, "eof_before_reconnect", None),
            },
            Ok(_) => continue,
            Err(e) => {
                let reset = e.kind() == io::ErrorKind::ConnectionReset;
                let kind = match reconnect {
                    Some(_) => format!("{}_after_reconnect", io_reason(&e)),
                    None => io_reason(&e),
                };
                Outcome::ended(false, kind, reconnect).with_reset(reset)
            }
        };
        return (outcome, jobs);
    }
}

/// An incremental text/event-stream parser that yields event types
/// ("message" when none was given); data, id and retry are not kept.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    event: Option<String>,
    has_fields: bool,
}

impl Parser {
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..newline]);
            bytes = &bytes[newline + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.on_line(&line, out);
            line.clear();
            self.line = line;
        }
        self.line.extend_from_slice(bytes);
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            if std::mem::take(&mut self.has_fields) {
                out.push(self.event.take().unwrap_or_else(|| "message".to_owned()));
            }
            return;
        }
        if line[0] == b':' {
            return; // a comment, e.g. ": keepalive"
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        self.has_fields = true;
        if field == b"event" {
            self.event = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Parser;

    #[test]
    fn parses_events_split_anywhere() {
        let wire = b"id: 1\nevent: job\ndata: {\"a\":1}\n\n: keepalive\n\n\
            data: x\r\n\r\nretry: 1000\nevent: reconnect\ndata: {}\n\n";
        for split in 0..wire.len() {
            let mut parser = Parser::default();
            let mut out = Vec::new();
            parser.feed(&wire[..split], &mut out);
            parser.feed(&wire[split..], &mut out);
            assert_eq!(out, ["job", "message", "reconnect"], "split at {split}");
        }
    }
}
