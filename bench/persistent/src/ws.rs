//! A well-behaved WebSocket client (tokio-tungstenite): answers pings, and
//! answers the server's Close, then waits for the server to close TCP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use crate::report::Outcome;
use crate::support::{io_reason, Stop};

pub type Ws = WebSocketStream<Probe>;

/// Opens `ws://addr/ws` with small buffers (thousands of sockets).
pub async fn open(addr: &str) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| io_reason(&e))?;
    tcp.set_nodelay(true).map_err(|e| io_reason(&e))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _response) =
        client_async_with_config(format!("ws://{addr}/ws"), Probe::new(tcp), Some(config))
            .await
            .map_err(|e| ws_reason(&e))?;
    Ok(ws)
}

/// Reads until the connection ends (or `stop`), and says how it ended.
/// Clean: Close 1001 received, our Close reply written, then TCP EOF
/// without a reset.
pub async fn run(mut ws: Ws, mut stop: Stop) -> Outcome {
    // When the server's Close arrived, its code, and our bytes written by then.
    let mut close: Option<(Instant, Option<u16>, u64)> = None;
    let error = loop {
        let item = tokio::select! {
            item = ws.next() => item,
            () = stop.wait() => {
                let kind = if close.is_some() { "timeout_after_close" } else { "timeout" };
                return Outcome::still_open(kind, close.map(|c| c.0));
            }
        };
        match item {
            Some(Ok(Message::Close(frame))) if close.is_none() => {
                let code = frame.map(|f| u16::from(f.code));
                close = Some((Instant::now(), code, ws.get_ref().written));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    let probe = ws.get_ref();
    let Some((at, code, written_at_close)) = close else {
        let kind = match &error {
            _ if probe.reset => "reset".to_owned(),
            Some(e) => ws_reason(e),
            None => "eof_without_close".to_owned(),
        };
        return Outcome::ended(false, kind, None).with_reset(probe.reset);
    };
    let kind = if probe.reset {
        "reset_after_close".to_owned()
    } else if let Some(e) = &error {
        format!("after_close_{}", ws_reason(e))
    } else if !probe.eof {
        "ended_without_eof".to_owned()
    } else if probe.written == written_at_close {
        "close_not_replied".to_owned()
    } else {
        match code {
            Some(1001) => "clean".to_owned(),
            Some(code) => format!("close_code_{code}"),
            None => "close_without_code".to_owned(),
        }
    };
    Outcome::ended(kind == "clean", kind, Some(at)).with_reset(probe.reset)
}

pub fn ws_reason(e: &WsError) -> String {
    match e {
        WsError::Io(e) => io_reason(e),
        WsError::Http(response) => format!("status_{}", response.status().as_u16()),
        WsError::Protocol(p) => {
            let name = format!("{p:?}");
            let name = name.split(['(', ' ', '{']).next().unwrap_or_default();
            format!("protocol_{name}")
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        _ => "ws_error".to_owned(),
    }
}

/// The TCP stream under the WebSocket, watched: tungstenite reports a reset
/// that follows a Close as a normal close, and we want to tell them apart.
pub struct Probe {
    inner: TcpStream,
    /// A read returned end of stream.
    pub eof: bool,
    /// A read or write failed with ECONNRESET.
    pub reset: bool,
    /// Bytes written so far.
    pub written: u64,
}

impl Probe {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            eof: false,
            reset: false,
            written: 0,
        }
    }
}

impl AsyncRead for Probe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if wanted && buf.filled().len() == before => this.eof = true,
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => this.reset = true,
            _ => {}
        }
        result
    }
}

impl AsyncWrite for Probe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        match &result {
            Poll::Ready(Ok(n)) => this.written += *n as u64,
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => this.reset = true,
            _ => {}
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
