//! A WebSocket client that ignores the server's Close: it upgrades by hand,
//! then keeps reading (to see the Close and the end of the connection) but
//! never writes another byte — no Close reply, no Pong.

use std::io;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http;
use crate::report::Outcome;
use crate::support::{io_reason, Stop};

/// A fixed key is fine: we do not check Sec-WebSocket-Accept.
const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

const MAX_FRAME: usize = 1 << 20;

pub struct Ignoring {
    stream: TcpStream,
    /// Bytes read after the 101 head.
    buf: Vec<u8>,
}

pub async fn open(addr: &str) -> Result<Ignoring, String> {
    let (stream, _, buf) = http::open(addr, "/ws", UPGRADE, 101).await?;
    Ok(Ignoring { stream, buf })
}

/// Waits for the server to end the connection. Clean here means: Close
/// 1001 received, then the server closed the TCP connection (EOF or reset).
pub async fn run(mut conn: Ignoring, mut stop: Stop) -> Outcome {
    let mut close: Option<(Instant, Option<u16>)> = None;
    loop {
        match next_frame(&mut conn.buf) {
            Ok(Some((opcode, payload))) => {
                if opcode == 0x8 && close.is_none() {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    close = Some((Instant::now(), code));
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => return Outcome::ended(false, io_reason(&e), close.map(|c| c.0)),
        }
        conn.buf.reserve(4096);
        let read = tokio::select! {
            read = conn.stream.read_buf(&mut conn.buf) => read,
            () = stop.wait() => {
                let kind = if close.is_some() { "timeout_after_close" } else { "timeout" };
                return Outcome::still_open(kind, close.map(|c| c.0));
            }
        };
        let reset = match read {
            Ok(0) => false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) => return Outcome::ended(false, io_reason(&e), close.map(|c| c.0)),
        };
        let ending = if reset { "reset" } else { "eof" };
        return match close {
            Some((at, Some(1001))) => Outcome::ended(true, format!("closed_{ending}"), Some(at)),
            Some((at, code)) => {
                let code = code.map_or("none".to_owned(), |c| c.to_string());
                Outcome::ended(false, format!("close_code_{code}_then_{ending}"), Some(at))
            }
            None => Outcome::ended(false, format!("{ending}_without_close"), None),
        }
        .with_reset(reset);
    }
}

/// Takes one complete server frame off `buf`: (opcode, unmasked payload).
fn next_frame(buf: &mut Vec<u8>) -> io::Result<Option<(u8, Vec<u8>)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        126 | 127 => return Ok(None),
        len => (u64::from(len), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    let mask = if masked {
        let Some(key) = buf.get(start..start + 4) else {
            return Ok(None);
        };
        let key = [key[0], key[1], key[2], key[3]];
        start += 4;
        Some(key)
    } else {
        None
    };
    if buf.len() < start + len {
        return Ok(None);
    }
    let mut payload: Vec<u8> = buf[start..start + len].to_vec();
    if let Some(key) = mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    buf.drain(..start + len);
    Ok(Some((opcode, payload)))
}
