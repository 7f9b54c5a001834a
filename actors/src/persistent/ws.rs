//! A WebSocket session drained on purpose, over actix-http's WebSocket codec.
//!
//! [`websocket`] answers the upgrade (101) and runs a session beside the
//! connection: every text or binary frame goes to the application's
//! callback, whose answer is sent back; pings are answered. At the goodbye
//! the session sends Close 1001 ("going away") and keeps reading until the
//! client's Close reply, for at most `WS_CLOSE_TIMEOUT_MS` from its own
//! goodbye; then it ends its body, and the connection closes server first
//! (RFC 6455 §7.1.1) — a client never sees a reset after a clean handshake.
//! (actix-ws 0.4 closes TCP right after sending its Close frame, so it
//! cannot wait for the reply.) An idle peer is pinged after `WS_PING_MS` and
//! closed with 1011 if it has not answered within twice that.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame};
use actix_web::body::BodyStream;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use super::{Class, Farewell, Held, Persistence, PersistentSettings};
use crate::http::EngineError;

/// How many encoded frames may wait to be written: a client that sends
/// faster than it reads is slowed down, not buffered without bound.
const OUTBOX: usize = 16;

/// A data frame, as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// Upgrades `req` into a drained WebSocket session: each data frame the
/// client sends goes to `on_message`, and what it answers is sent back.
///
/// An upgrade after the listener has closed is answered 503
/// `{"error":"server_shutting_down"}`; one that is not a valid WebSocket
/// handshake, 400 `{"error":"websocket_upgrade_required"}`.
///
/// ```no_run
/// use actix_web::{web, HttpRequest, HttpResponse};
/// use drainer_engine::persistent::ws;
///
/// async fn echo(req: HttpRequest, body: web::Payload) -> HttpResponse {
///     ws::websocket(&req, body, Some)
/// }
/// ```
pub fn websocket<F>(req: &HttpRequest, payload: web::Payload, on_message: F) -> HttpResponse
where
    F: FnMut(Message) -> Option<Message> + 'static,
{
    let Some(persistence) = Persistence::of(req) else {
        return EngineError::NotServed.error_response();
    };
    if persistence.goodbye_said() {
        return EngineError::ShuttingDown.error_response();
    }
    let Ok(mut handshake) = actix_http::ws::handshake(req.head()) else {
        return EngineError::NotAnUpgrade.error_response();
    };
    let held = persistence.hold(req, Class::WebSocket);
    let (outbox, frames) = mpsc::channel(OUTBOX);
    let session = Session {
        codec: Codec::new(),
        outbox,
        settings: persistence.settings,
        farewell: persistence.farewell.clone(),
        clean: held.clean_flag(),
        on_message,
        goodbye_at: None,
    };
    persistence.census.spawn(session.run(payload));
    let body = BodyStream::new(Frames { frames, held });
    match handshake.message_body(body) {
        Ok(res) => HttpResponse::from(res.map_into_boxed_body()),
        Err(_) => EngineError::NotAnUpgrade.error_response(),
    }
}

/// The 101's body: the session's encoded frames. Ending it (the session is
/// over) ends the connection, which closes once the end is written.
struct Frames {
    frames: mpsc::Receiver<Bytes>,
    held: Held,
}

impl Stream for Frames {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                self.held.body_ended();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What the session does after a frame.
enum Next {
    Continue,
    End,
}

struct Session<F> {
    codec: Codec,
    outbox: mpsc::Sender<Bytes>,
    settings: PersistentSettings,
    farewell: watch::Receiver<Farewell>,
    /// Set once the close handshake has completed.
    clean: Rc<std::cell::Cell<bool>>,
    on_message: F,
    /// When this socket's goodbye went out.
    goodbye_at: Option<Instant>,
}

impl<F> Session<F>
where
    F: FnMut(Message) -> Option<Message>,
{
    /// Reads frames until the session ends; dropping the outbox then ends the body.
    async fn run(mut self, mut payload: web::Payload) {
        let mut buf = BytesMut::new();
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut watching = true;
        if *self.farewell.borrow() != Farewell::Serving {
            // The goodbye came while the upgrade was answered.
            if let Next::End = self.goodbye().await {
                return;
            }
        }
        loop {
            let ping = self.settings.ws_ping;
            let ping_due = match ping_sent {
                None => last_heard + ping,
                Some(sent) => sent + 2 * ping,
            };
            let close_by = self
                .goodbye_at
                .map(|at| at + self.settings.ws_close_timeout);
            let wake = close_by.map_or(ping_due, |by| by.min(ping_due));
            tokio::select! {
                chunk = payload.next() => {
                    let Some(Ok(bytes)) = chunk else {
                        // The client is gone (or its stream broke).
                        return;
                    };
                    last_heard = Instant::now();
                    ping_sent = None;
                    buf.extend_from_slice(&bytes);
                    loop {
                        match self.codec.decode(&mut buf) {
                            Ok(Some(frame)) => {
                                if let Next::End = self.frame(frame).await {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {
                                self.close(CloseCode::Protocol).await;
                                return;
                            }
                        }
                    }
                }
                changed = self.farewell.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                    }
                    if let Next::End = self.goodbye().await {
                        return;
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    if close_by.is_some_and(|by| now >= by) {
                        // No Close reply in time: forced.
                        return;
                    }
                    match ping_sent {
                        Some(sent) if now >= sent + 2 * ping => {
                            self.close(CloseCode::Error).await;
                            return;
                        }
                        Some(_) => {}
                        None if now >= last_heard + ping => {
                            if let Next::End = self.send(actix_http::ws::Message::Ping(Bytes::new())).await {
                                return;
                            }
                            ping_sent = Some(now);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// The farewell changed: say goodbye once (and end now if forced).
    async fn goodbye(&mut self) -> Next {
        let farewell = *self.farewell.borrow();
        match farewell {
            Farewell::Serving => Next::Continue,
            Farewell::Goodbye if self.goodbye_at.is_some() => Next::Continue,
            Farewell::Goodbye | Farewell::Forced => {
                if self.goodbye_at.is_none() {
                    let away = CloseReason {
                        code: CloseCode::Away,
                        description: Some("server shutting down".into()),
                    };
                    if let Next::End = self.send(actix_http::ws::Message::Close(Some(away))).await {
                        return Next::End;
                    }
                    self.goodbye_at = Some(Instant::now());
                }
                if farewell == Farewell::Forced {
                    Next::End
                } else {
                    Next::Continue
                }
            }
        }
    }

    async fn frame(&mut self, frame: Frame) -> Next {
        use actix_http::ws::Message as Wire;
        let said_goodbye = self.goodbye_at.is_some();
        match frame {
            // After our Close, no data frame is sent (RFC 6455 §5.5.1).
            Frame::Text(_) | Frame::Binary(_) if said_goodbye => Next::Continue,
            Frame::Text(bytes) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => self.deliver(Message::Text(text)).await,
                Err(_) => {
                    self.close(CloseCode::Invalid).await;
                    Next::End
                }
            },
            Frame::Binary(bytes) => self.deliver(Message::Binary(bytes)).await,
            Frame::Ping(bytes) => self.send(Wire::Pong(bytes)).await,
            Frame::Pong(_) => Next::Continue,
            Frame::Close(reason) => {
                if !said_goodbye {
                    // The client began the close: answer it.
                    let _ = self.send(Wire::Close(reason)).await;
                }
                self.clean.set(true);
                Next::End
            }
            Frame::Continuation(_) => {
                self.close(CloseCode::Unsupported).await;
                Next::End
            }
        }
    }

    async fn deliver(&mut self, message: Message) -> Next {
        match (self.on_message)(message) {
            Some(Message::Text(text)) => {
                self.send(actix_http::ws::Message::Text(text.into())).await
            }
            Some(Message::Binary(bytes)) => self.send(actix_http::ws::Message::Binary(bytes)).await,
            None => Next::Continue,
        }
    }

    /// Sends Close with `code`; the session then ends.
    async fn close(&mut self, code: CloseCode) {
        let reason = CloseReason {
            code,
            description: None,
        };
        let _ = self
            .send(actix_http::ws::Message::Close(Some(reason)))
            .await;
    }

    async fn send(&mut self, message: actix_http::ws::Message) -> Next {
        let mut out = BytesMut::new();
        if self.codec.encode(message, &mut out).is_err() {
            return Next::End;
        }
        match self.outbox.send(out.freeze()).await {
            Ok(()) => Next::Continue,
            // The body is gone: the connection was closed.
            Err(_) => Next::End,
        }
    }
}
