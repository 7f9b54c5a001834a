//! A long-poll client over raw TCP with keep-alive: re-polls after a 200,
//! and counts a 204 as the drain's goodbye.

use std::io;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http;
use crate::report::Outcome;
use crate::support::{io_reason, Stop};

pub struct Poller {
    stream: TcpStream,
    path: String,
    addr: String,
}

const KEEP_ALIVE: &str = "Connection: keep-alive\r\n";

/// Connects and sends the first `GET /poll?timeout_ms=N`. The poll counts
/// as open once the request is written.
pub async fn open(addr: &str, timeout_ms: u64) -> Result<Poller, String> {
    let path = format!("/poll?timeout_ms={timeout_ms}");
    let stream = http::get(addr, &path, KEEP_ALIVE)
        .await
        .map_err(|e| io_reason(&e))?;
    Ok(Poller {
        stream,
        path,
        addr: addr.to_owned(),
    })
}

/// Waits for the 204 (re-polling after any 200), then for the server to
/// close the connection. Clean: a 204. Notes on clean ones:
/// `204_then_reset`, `204_without_connection_close`, `204_open_at_deadline`.
pub async fn run(mut poller: Poller, mut stop: Stop) -> Outcome {
    let mut buf = Vec::new();
    let head = loop {
        let head = tokio::select! {
            head = http::read_head(&mut poller.stream, &mut buf) => head,
            () = stop.wait() => return Outcome::still_open("timeout", None),
        };
        let head = match head {
            Ok(head) => head,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && buf.is_empty() => {
                return Outcome::ended(false, "eof_before_response", None);
            }
            Err(e) => return error_outcome(&e),
        };
        if head.status != 200 {
            break head;
        }
        // Events arrived before the drain: take them and poll again.
        let repoll = async {
            http::read_body(&mut poller.stream, &mut buf, &head).await?;
            http::write_get(&mut poller.stream, &poller.addr, &poller.path, KEEP_ALIVE).await
        };
        if let Err(e) = repoll.await {
            return error_outcome(&e);
        }
    };
    let at = Instant::now();
    if head.status != 204 {
        return Outcome::ended(false, format!("status_{}", head.status), Some(at));
    }
    if !head.connection_close() {
        return Outcome::ended(true, "204_without_connection_close", Some(at));
    }
    let mut rest = [0u8; 512];
    loop {
        let read = tokio::select! {
            read = poller.stream.read(&mut rest) => read,
            () = stop.wait() => {
                let open = Outcome::still_open("204_open_at_deadline", Some(at));
                return Outcome { clean: true, ..open };
            }
        };
        return match read {
            Ok(0) => Outcome::ended(true, "clean", Some(at)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                Outcome::ended(true, "204_then_reset", Some(at)).with_reset(true)
            }
            Err(e) => Outcome::ended(true, format!("204_then_{}", io_reason(&e)), Some(at)),
        };
    }
}

fn error_outcome(e: &io::Error) -> Outcome {
    let reset = e.kind() == io::ErrorKind::ConnectionReset;
    Outcome::ended(false, io_reason(e), None).with_reset(reset)
}
