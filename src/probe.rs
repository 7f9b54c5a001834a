//! `drainer probe <url>`: one `GET`, exit 0 on a 2xx answer and 1 otherwise
//! — a container's `HEALTHCHECK` in an image that has no curl.
//!
//! Plain `http://` only (the probe asks its own container, on loopback). It
//! needs no database and no configuration, and never starts the engine.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// `drainer probe`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "drainer probe",
    about = "GET a URL: exit 0 on a 2xx answer, 1 otherwise (a HEALTHCHECK without curl)"
)]
pub struct ProbeArgs {
    /// The URL: http://, a host, an optional port and path, e.g. http://127.0.0.1:3000/livez.
    pub url: String,
    /// How long the whole probe may take (ms).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    /// Not an `http://host[:port][/path]` URL.
    #[error("not an http:// URL: {0}")]
    BadUrl(String),
    /// Not reached, or no complete status line in time.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Answered, but not 2xx.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
}

/// Runs `drainer probe` on `args` (the words after `probe`).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = match ProbeArgs::try_parse_from(std::iter::once("drainer probe".into()).chain(args))
    {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match probe(&args.url, Duration::from_millis(args.timeout_ms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drainer probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `host:port` and the path of an `http://` URL.
fn split(url: &str) -> Result<(String, String), ProbeError> {
    let bad = || ProbeError::BadUrl(url.to_owned());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// One `GET url`, within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let (authority, path) = split(url)?;
    let unreachable = |reason: String| ProbeError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    };
    let status = (|| -> io::Result<u16> {
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, left()?)?;
        stream.set_write_timeout(Some(left()?))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: drainer-probe\r\n\r\n"
        )?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") {
            stream.set_read_timeout(Some(left()?))?;
            let n = stream.read(&mut buf)?;
            if n == 0 || head.len() > 4096 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no status line"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
    })()
    .map_err(|e| unreachable(e.to_string()))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A server that answers one connection with `answer` and hands back
    /// what it was sent.
    fn answer_once(answer: &'static str) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/livez", listener.local_addr().expect("addr"));
        let served = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = vec![0u8; 1024];
            let n = conn.read(&mut got).expect("read");
            conn.write_all(answer.as_bytes()).expect("write");
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        (url, served)
    }

    #[test]
    fn a_2xx_answer_passes_and_the_request_is_a_get_of_the_path() {
        let (url, served) = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(probe(&url, Duration::from_secs(5)), Ok(()));
        let request = served.join().expect("server");
        assert!(request.starts_with("GET /livez HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn a_503_fails_with_its_status() {
        let (url, served) =
            answer_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            probe(&url, Duration::from_secs(5)),
            Err(ProbeError::Status {
                url: url.clone(),
                status: 503
            })
        );
        served.join().expect("server");
    }

    #[test]
    fn a_closed_port_fails_as_unreachable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let err = probe(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5));
        assert!(
            matches!(err, Err(ProbeError::Unreachable { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_silent_server_fails_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let started = Instant::now();
        let err = probe(&url, Duration::from_millis(300));
        assert!(
            matches!(err, Err(ProbeError::Unreachable { .. })),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bounded by the timeout"
        );
        drop(listener);
    }

    #[test]
    fn urls_are_split_into_authority_and_path() {
        assert_eq!(
            split("http://127.0.0.1:3000/livez"),
            Ok(("127.0.0.1:3000".into(), "/livez".into()))
        );
        assert_eq!(
            split("http://localhost"),
            Ok(("localhost:80".into(), "/".into()))
        );
        assert_eq!(
            split("http://[::1]:9/x"),
            Ok(("[::1]:9".into(), "/x".into()))
        );
        assert_eq!(
            split("http://[::1]/x"),
            Ok(("[::1]:80".into(), "/x".into()))
        );
        assert!(split("https://example.com/").is_err());
        assert!(split("http:///x").is_err());
    }
}
