//! One control connection: newline-delimited JSON messages, each with a
//! `type`, and the listeners' descriptors attached to one of them.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::fds;

/// The longest message line.
const MAX_LINE: usize = 64 * 1024;

/// See the module documentation.
pub struct Channel {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// A message's `type`.
pub fn kind(message: &Value) -> &str {
    message.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A message's `reason` (a refusal's, an abort's), or "".
pub fn reason(message: &Value) -> &str {
    message.get("reason").and_then(Value::as_str).unwrap_or("")
}

/// A message's `pid`.
pub fn pid(message: &Value) -> Option<u32> {
    message
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
}

impl Channel {
    /// Over `stream`.
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Value) -> io::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).await
    }

    /// Sends one message with `fds` attached.
    pub async fn send_with_fds(&mut self, message: &Value, fds: &[RawFd]) -> io::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        loop {
            self.stream.writable().await?;
            match self.stream.try_io(Interest::WRITABLE, || {
                fds::send_with_fds(&self.stream, line.as_bytes(), fds)
            }) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one message; `None` at the end of the stream.
    pub async fn recv(&mut self) -> io::Result<Option<Value>> {
        loop {
            if let Some(message) = self.take_line()? {
                return Ok(Some(message));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Receives one message and the descriptors attached to it.
    pub async fn recv_with_fds(&mut self) -> io::Result<Option<(Value, Vec<OwnedFd>)>> {
        let mut received = Vec::new();
        loop {
            if let Some(message) = self.take_line()? {
                return Ok(Some((message, received)));
            }
            self.stream.readable().await?;
            let mut chunk = [0u8; 4096];
            match self.stream.try_io(Interest::READABLE, || {
                fds::recv_with_fds(&self.stream, &mut chunk)
            }) {
                Ok((0, _)) => return Ok(None),
                Ok((n, fds)) => {
                    received.extend(fds);
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn take_line(&mut self) -> io::Result<Option<Value>> {
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message too long",
                ));
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        serde_json::from_slice(&line[..end])
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not a message: {e}")))
    }

    /// The peer's user, as the kernel says (`SO_PEERCRED`).
    pub fn peer_uid(&self) -> io::Result<u32> {
        Ok(self.stream.peer_cred()?.uid())
    }
}
