//! The node protocol's wire format: newline-delimited JSON envelopes.
//!
//! [`parse_line`] turns one input line into a typed [`Inbound`] message, a
//! [`LineError::BadField`] (answered with an `error` of code 12), or a
//! [`LineError::Malformed`] (logged, never answered). [`Reply::to_line`]
//! writes a reply exactly as the published samples do: `", "` between items,
//! `": "` after keys, envelope keys src, dest, body, and body keys in the
//! documented order with `msg_id` last.
//!
//! This module is the codec only; it decides nothing about the drain.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::fields;

/// Error code for a message type the node does not know.
pub const CODE_NOT_SUPPORTED: u64 = 10;

/// Error code for a known message type with a bad field.
pub const CODE_MALFORMED_REQUEST: u64 = 12;

/// One parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Who sent it: replies go there.
    pub src: String,
    /// Whom it was sent to: the node's id until `init` names it.
    pub dest: String,
    /// The request's `msg_id`, echoed as `in_reply_to`.
    pub msg_id: u64,
    /// What it asks.
    pub request: Request,
}

/// The requests the node understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `init {node_id, node_ids}`.
    Init {
        /// The node's id from now on.
        node_id: String,
    },
    /// `tcp_request {data, latency_ms}`; a missing latency is 0.
    TcpRequest {
        /// Simulated processing time.
        latency_ms: u64,
    },
    /// `tcp_shutdown {drain_timeout_ms}`; missing means the configured timeout.
    TcpShutdown {
        /// How long in-flight requests may run.
        drain_timeout_ms: Option<u64>,
    },
    /// `tcp_drain_status`.
    TcpDrainStatus,
    /// Any other type: answered with error code 10.
    Unknown {
        /// The type as sent.
        kind: String,
    },
}

/// Why a line gets no normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not an envelope at all: logged, not answered, uses no msg_id.
    Malformed(String),
    /// A known type with a bad field: answered with error code 12.
    BadField {
        /// Reply to this sender…
        src: String,
        /// …from this id (until `init`)…
        dest: String,
        /// …in reply to this message.
        msg_id: u64,
        /// What is wrong, naming the field.
        text: String,
    },
}

/// Parses one input line.
pub fn parse_line(line: &[u8]) -> Result<Inbound, LineError> {
    let malformed = |why: &str| LineError::Malformed(why.to_string());
    let text = std::str::from_utf8(line).map_err(|_| malformed("not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(malformed("blank line"));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| LineError::Malformed(format!("not JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(malformed("not a JSON object"));
    };
    let src = take_string(&mut envelope, "src").ok_or_else(|| malformed("no src"))?;
    let dest = take_string(&mut envelope, "dest").ok_or_else(|| malformed("no dest"))?;
    let Some(Value::Object(mut body)) = envelope.remove("body") else {
        return Err(malformed("no body"));
    };
    let kind = take_string(&mut body, "type").ok_or_else(|| malformed("body without a type"))?;
    let msg_id = match body.remove("msg_id") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| malformed("msg_id is not a non-negative integer"))?,
        _ => return Err(malformed("body without a msg_id")),
    };
    let bad = |text: &str| LineError::BadField {
        src: src.clone(),
        dest: dest.clone(),
        msg_id,
        text: text.to_string(),
    };
    let request = match kind.as_str() {
        "init" => match body.remove("node_id") {
            Some(Value::String(node_id)) if !node_id.is_empty() => Request::Init { node_id },
            _ => return Err(bad("node_id must be a non-empty string")),
        },
        "tcp_request" => {
            let latency_ms = fields::latency_ms(body.remove("latency_ms")).map_err(bad)?;
            Request::TcpRequest { latency_ms }
        }
        "tcp_shutdown" => {
            let drain_timeout_ms = match body.remove("drain_timeout_ms") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(ms) => Some(ms),
                    None => return Err(bad("drain_timeout_ms must be a non-negative integer")),
                },
                Some(_) => return Err(bad("drain_timeout_ms must be a non-negative integer")),
            };
            Request::TcpShutdown { drain_timeout_ms }
        }
        "tcp_drain_status" => Request::TcpDrainStatus,
        _ => Request::Unknown { kind },
    };
    Ok(Inbound {
        src,
        dest,
        msg_id,
        request,
    })
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// What a reply says; the field order here is the order on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// `init_ok`.
    InitOk,
    /// `tcp_request_ok {result: "processed", duration_ms}`.
    TcpRequestOk {
        /// The latency that was asked for.
        duration_ms: u64,
    },
    /// `tcp_request_error {error}`.
    TcpRequestError {
        /// `server_shutting_down` or `drain_timeout`.
        error: &'static str,
    },
    /// `tcp_shutdown_ok {status, in_flight}`.
    TcpShutdownOk {
        /// The drain's status.
        status: &'static str,
        /// Requests in flight.
        in_flight: usize,
    },
    /// `tcp_drain_status_ok {status, remaining, took_ms}`.
    TcpDrainStatusOk {
        /// `active`, `draining`, `drained` or `timed_out`.
        status: &'static str,
        /// Requests in flight, or cut short.
        remaining: usize,
        /// See docs/protocol.md.
        took_ms: u64,
    },
    /// `error {code, text}`; on the wire: type, code, text, in_reply_to, msg_id.
    Error {
        /// 10 or 12.
        code: u64,
        /// What is wrong.
        text: String,
    },
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The node's id.
    pub src: String,
    /// The request's sender.
    pub dest: String,
    /// The request's `msg_id`.
    pub in_reply_to: u64,
    /// This line's own `msg_id`.
    pub msg_id: u64,
    /// What it says.
    pub body: ReplyBody,
}

impl Reply {
    /// The reply as one line, without the newline.
    pub fn to_line(&self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str("{\"src\": ");
        push_str(&mut out, &self.src);
        out.push_str(", \"dest\": ");
        push_str(&mut out, &self.dest);
        out.push_str(", \"body\": {\"type\": ");
        let in_reply_to = self.in_reply_to;
        // `write!` into a String cannot fail.
        match &self.body {
            ReplyBody::InitOk => {
                let _ = write!(out, "\"init_ok\", \"in_reply_to\": {in_reply_to}");
            }
            ReplyBody::TcpRequestOk { duration_ms } => {
                let _ = write!(
                    out,
                    "\"tcp_request_ok\", \"in_reply_to\": {in_reply_to}, \"result\": \"processed\", \"duration_ms\": {duration_ms}"
                );
            }
            ReplyBody::TcpRequestError { error } => {
                let _ = write!(
                    out,
                    "\"tcp_request_error\", \"in_reply_to\": {in_reply_to}, \"error\": "
                );
                push_str(&mut out, error);
            }
            ReplyBody::TcpShutdownOk { status, in_flight } => {
                let _ = write!(
                    out,
                    "\"tcp_shutdown_ok\", \"in_reply_to\": {in_reply_to}, \"status\": "
                );
                push_str(&mut out, status);
                let _ = write!(out, ", \"in_flight\": {in_flight}");
            }
            ReplyBody::TcpDrainStatusOk {
                status,
                remaining,
                took_ms,
            } => {
                let _ = write!(
                    out,
                    "\"tcp_drain_status_ok\", \"in_reply_to\": {in_reply_to}, \"status\": "
                );
                push_str(&mut out, status);
                let _ = write!(out, ", \"remaining\": {remaining}, \"took_ms\": {took_ms}");
            }
            ReplyBody::Error { code, text } => {
                let _ = write!(out, "\"error\", \"code\": {code}, \"text\": ");
                push_str(&mut out, text);
                let _ = write!(out, ", \"in_reply_to\": {in_reply_to}");
            }
        }
        let _ = write!(out, ", \"msg_id\": {}}}}}", self.msg_id);
        out
    }
}

/// Appends `s` as a JSON string literal.
fn push_str(out: &mut String, s: &str) {
    // Serialising a &str into JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: ReplyBody) -> String {
        Reply {
            src: "n1".into(),
            dest: "c1".into(),
            in_reply_to: 2,
            msg_id: 1,
            body,
        }
        .to_line()
    }

    #[test]
    fn replies_are_byte_exact() {
        assert_eq!(
            reply(ReplyBody::TcpRequestOk { duration_ms: 0 }),
            r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_request_ok", "in_reply_to": 2, "result": "processed", "duration_ms": 0, "msg_id": 1}}"#
        );
        assert_eq!(
            reply(ReplyBody::InitOk),
            r#"{"src": "n1", "dest": "c1", "body": {"type": "init_ok", "in_reply_to": 2, "msg_id": 1}}"#
        );
        assert_eq!(
            reply(ReplyBody::TcpRequestError {
                error: "server_shutting_down"
            }),
            r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_request_error", "in_reply_to": 2, "error": "server_shutting_down", "msg_id": 1}}"#
        );
        assert_eq!(
            reply(ReplyBody::TcpShutdownOk {
                status: "draining",
                in_flight: 2
            }),
            r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_shutdown_ok", "in_reply_to": 2, "status": "draining", "in_flight": 2, "msg_id": 1}}"#
        );
        assert_eq!(
            reply(ReplyBody::TcpDrainStatusOk {
                status: "drained",
                remaining: 0,
                took_ms: 500
            }),
            r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_drain_status_ok", "in_reply_to": 2, "status": "drained", "remaining": 0, "took_ms": 500, "msg_id": 1}}"#
        );
        assert_eq!(
            reply(ReplyBody::Error {
                code: 10,
                text: "unsupported type \"x\"".into()
            }),
            r#"{"src": "n1", "dest": "c1", "body": {"type": "error", "code": 10, "text": "unsupported type \"x\"", "in_reply_to": 2, "msg_id": 1}}"#
        );
    }

    #[test]
    fn parses_the_known_requests() {
        let p = |s: &str| parse_line(s.as_bytes()).map(|m| m.request);
        assert_eq!(
            p(
                r#"{"src":"c1","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#
            ),
            Ok(Request::Init {
                node_id: "n1".into()
            })
        );
        assert_eq!(
            p(
                r#"{"src":"c1","dest":"n1","body":{"type":"tcp_request","msg_id":2,"data":"x","latency_ms":500}}"#
            ),
            Ok(Request::TcpRequest { latency_ms: 500 })
        );
        assert_eq!(
            p(r#"{"src":"c1","dest":"n1","body":{"type":"tcp_request","msg_id":2}}"#),
            Ok(Request::TcpRequest { latency_ms: 0 })
        );
        assert_eq!(
            p(
                r#"{"src":"c1","dest":"n1","body":{"type":"tcp_shutdown","msg_id":3,"drain_timeout_ms":5000}}"#
            ),
            Ok(Request::TcpShutdown {
                drain_timeout_ms: Some(5000)
            })
        );
        assert_eq!(
            p(r#"{"src":"c1","dest":"n1","body":{"type":"tcp_drain_status","msg_id":4}}"#),
            Ok(Request::TcpDrainStatus)
        );
        assert_eq!(
            p(r#"{"src":"c1","dest":"n1","body":{"type":"echo","msg_id":5}}"#),
            Ok(Request::Unknown {
                kind: "echo".into()
            })
        );
    }

    #[test]
    fn bad_fields_name_the_field_and_malformed_lines_are_not_answered() {
        let bad = |s: &str| match parse_line(s.as_bytes()) {
            Err(LineError::BadField { text, msg_id, .. }) => (msg_id, text),
            other => panic!("{s}: {other:?}"),
        };
        for latency in ["-1", "1.5", "\"10\"", "600001"] {
            let line = format!(
                r#"{{"src":"c1","dest":"n1","body":{{"type":"tcp_request","msg_id":7,"latency_ms":{latency}}}}}"#
            );
            assert_eq!(
                bad(&line),
                (7, "latency_ms must be an integer from 0 to 600000".into())
            );
        }
        for timeout in ["-1", "2.5", "\"5\""] {
            let line = format!(
                r#"{{"src":"c1","dest":"n1","body":{{"type":"tcp_shutdown","msg_id":8,"drain_timeout_ms":{timeout}}}}}"#
            );
            assert_eq!(
                bad(&line),
                (8, "drain_timeout_ms must be a non-negative integer".into())
            );
        }
        for line in [
            "",
            "   ",
            "not json",
            "[1,2]",
            r#"{"dest":"n1","body":{"type":"x","msg_id":1}}"#,
            r#"{"src":"c1","body":{"type":"x","msg_id":1}}"#,
            r#"{"src":"c1","dest":"n1"}"#,
            r#"{"src":"c1","dest":"n1","body":{"msg_id":1}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"x"}}"#,
        ] {
            assert!(
                matches!(parse_line(line.as_bytes()), Err(LineError::Malformed(_))),
                "{line:?}"
            );
        }
    }

    /// Keys and message types the parser looks at: generated input favours them.
    const KEYS: [&str; 9] = [
        "src",
        "dest",
        "body",
        "type",
        "msg_id",
        "latency_ms",
        "drain_timeout_ms",
        "node_id",
        "data",
    ];
    const TYPES: [&str; 5] = [
        "init",
        "tcp_request",
        "tcp_shutdown",
        "tcp_drain_status",
        "x",
    ];

    /// xorshift64: a deterministic stream of pseudo-random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// An arbitrary JSON value, nested up to `depth`, biased towards the
        /// keys and types the parser looks at.
        fn value(&mut self, depth: u32) -> Value {
            match self.below(if depth == 0 { 6 } else { 8 }) {
                0 => Value::Null,
                1 => Value::Bool(self.next().is_multiple_of(2)),
                2 => serde_json::json!(self.next() as i64 >> self.below(64)),
                3 => serde_json::json!((self.next() as f64) / 1e15 - 1e3),
                4 => Value::String(TYPES[self.below(TYPES.len())].to_string()),
                5 => Value::String(
                    (0..self.below(8))
                        .map(|_| char::from_u32(self.next() as u32 % 0x3000).unwrap_or('?'))
                        .collect(),
                ),
                6 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
                _ => Value::Object(
                    (0..self.below(6))
                        .map(|_| {
                            (
                                KEYS[self.below(KEYS.len())].to_string(),
                                self.value(depth - 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
    }

    /// Arbitrary JSON values, nested and at every position of the envelope:
    /// the parser answers every one of them with a value, never a panic.
    #[test]
    fn the_parser_never_panics_on_arbitrary_json_values() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..20_000 {
            let envelope = if rng.below(4) == 0 {
                rng.value(4)
            } else {
                serde_json::json!({
                    "src": rng.value(1),
                    "dest": rng.value(1),
                    "body": rng.value(3),
                })
            };
            let line = envelope.to_string();
            let _ = parse_line(line.as_bytes());
            // Truncated lines too.
            let cut = rng.below(line.len() + 1);
            let _ = parse_line(&line.as_bytes()[..cut]);
        }
    }

    /// A small deterministic generator: arbitrary bytes and arbitrary JSON
    /// values never make the parser panic, and every reply it leads to is one
    /// line of valid JSON.
    #[test]
    fn the_parser_never_panics_on_arbitrary_input() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let atoms = [
            "null",
            "true",
            "-1",
            "0",
            "1.5",
            "600001",
            "\"\"",
            "\"n1\"",
            "[]",
            "{}",
            "\"\\u0000\"",
            "18446744073709551616",
        ];
        for _ in 0..20_000 {
            // Arbitrary bytes.
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse_line(&bytes);
            // Arbitrary envelopes of plausible shape.
            let mut body = format!("\"type\": \"{}\"", TYPES[rng.below(TYPES.len())]);
            for _ in 0..rng.below(4) {
                let k = KEYS[rng.below(KEYS.len())];
                let v = atoms[rng.below(atoms.len())];
                body.push_str(&format!(", \"{k}\": {v}"));
            }
            let line = format!(r#"{{"src": "c1", "dest": "n1", "body": {{{body}}}}}"#);
            match parse_line(line.as_bytes()) {
                Err(LineError::BadField {
                    src,
                    dest,
                    msg_id,
                    text,
                }) => {
                    let out = Reply {
                        src: dest,
                        dest: src,
                        in_reply_to: msg_id,
                        msg_id: 0,
                        body: ReplyBody::Error {
                            code: CODE_MALFORMED_REQUEST,
                            text,
                        },
                    }
                    .to_line();
                    assert!(!out.contains('\n'));
                    assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
                }
                Ok(_) | Err(LineError::Malformed(_)) => {}
            }
        }
    }
}
