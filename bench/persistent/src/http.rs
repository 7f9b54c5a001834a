//! Just enough HTTP/1.1 over a raw TCP stream: write a request, read a
//! response head, decode a chunked body incrementally.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 32;
const MAX_LINE: usize = 1024;

/// Connects and writes `GET path` with the given extra header lines
/// (each ending in `\r\n`).
pub async fn get(addr: &str, path: &str, extra_headers: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    write_get(&mut stream, addr, path, extra_headers).await?;
    Ok(stream)
}

pub async fn write_get(
    stream: &mut TcpStream,
    addr: &str,
    path: &str,
    extra_headers: &str,
) -> io::Result<()> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}\r\n");
    stream.write_all(request.as_bytes()).await
}

/// A response head.
/// Sends a GET for `path` and reads the head, which must have `status`:
/// the stream, the head, and the body bytes read along with it. An error
/// is a reason, as the reports name them.
pub async fn open(
    addr: &str,
    path: &str,
    extra_headers: &str,
    status: u16,
) -> Result<(TcpStream, Head, Vec<u8>), String> {
    let mut stream = get(addr, path, extra_headers)
        .await
        .map_err(|e| crate::support::io_reason(&e))?;
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf)
        .await
        .map_err(|e| crate::support::io_reason(&e))?;
    if head.status != status {
        return Err(format!("status_{}", head.status));
    }
    Ok((stream, head, buf))
}

pub struct Head {
    pub status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub fn is_chunked(&self) -> bool {
        self.header_has_token("transfer-encoding", "chunked")
    }

    pub fn connection_close(&self) -> bool {
        self.header_has_token("connection", "close")
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }
}

/// Reads a response head. `buf` holds bytes already read; on return it holds
/// the bytes that followed the head.
pub async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Head> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn parse_head(buf: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let head = Head {
        status: response.code.unwrap_or(0),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    buf.drain(..len);
    Ok(Some(head))
}

/// Reads a whole (small) response body per the head: chunked, by
/// Content-Length, or up to EOF. Leftover bytes stay in `buf`.
pub async fn read_body(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    head: &Head,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.is_chunked() {
        let mut decoder = Chunked::default();
        loop {
            let consumed = decoder.feed(buf, &mut body)?;
            buf.drain(..consumed);
            if decoder.is_done() {
                return Ok(body);
            }
            buf.reserve(4096);
            if stream.read_buf(buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
    match head.content_length() {
        Some(len) => {
            while buf.len() < len {
                buf.reserve(len - buf.len());
                if stream.read_buf(buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend(buf.drain(..len));
        }
        None => {
            body.append(buf);
            stream.read_to_end(&mut body).await?;
        }
    }
    Ok(body)
}

#[derive(Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// Incremental decoder of a chunked body; knows when it saw `0\r\n\r\n`.
#[derive(Default)]
pub struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input` into `out`; returns how many bytes of `input`
    /// were consumed (fewer than all only once the terminator was seen).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let mut rest = input;
        while !rest.is_empty() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let n = left.min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(line) = self.take_line(&mut rest)? else {
                        break;
                    };
                    self.state = self.after_line(&line)?;
                }
            }
        }
        Ok(input.len() - rest.len())
    }

    fn after_line(&self, line: &[u8]) -> io::Result<ChunkState> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        Ok(match self.state {
            ChunkState::Size => {
                let text = std::str::from_utf8(line).map_err(|_| bad("chunk size not text"))?;
                let hex = text.split(';').next().unwrap_or_default().trim();
                match usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))? {
                    0 => ChunkState::Trailer,
                    n => ChunkState::Data(n),
                }
            }
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(bad("chunk not followed by CRLF")),
            ChunkState::Trailer if line.is_empty() => ChunkState::Done,
            other => other,
        })
    }

    /// Takes one line (without its CRLF) off `rest`, or keeps the partial
    /// line for the next feed and returns None.
    fn take_line(&mut self, rest: &mut &[u8]) -> io::Result<Option<Vec<u8>>> {
        let found = rest.iter().position(|&b| b == b'\n');
        let end = found.unwrap_or(rest.len());
        self.line.extend_from_slice(&rest[..end]);
        *rest = &rest[(end + 1).min(rest.len())..];
        if self.line.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk line too long",
            ));
        }
        if found.is_none() {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::Chunked;

    #[test]
    fn chunked_byte_by_byte_sees_terminator() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nextra";
        let mut decoder = Chunked::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for i in 0..wire.len() {
            consumed += decoder
                .feed(&wire[i..=i], &mut out)
                .expect("valid chunking");
        }
        assert_eq!(out, b"hello world");
        assert!(decoder.is_done());
        assert_eq!(consumed, wire.len() - b"extra".len());
    }
}
