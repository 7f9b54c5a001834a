//! The listening socket: bound before anything else, closed without resets.
//!
//! Closing a listener with `close(2)` makes the kernel reset every connection
//! that finished its handshake but was not accepted yet, and pausing the
//! accept loop is not enough either: the kernel keeps completing handshakes
//! into the backlog. [`close_gracefully`] does it in three steps:
//!
//! 1. attach a socket filter that drops every packet, so no new handshake
//!    completes (a new client's SYN goes unanswered, and once the socket is
//!    closed its retry is refused);
//! 2. accept everything already queued, so those clients get an answer
//!    (a 503 with `Connection: close`) instead of a reset;
//! 3. close the socket: new connections are refused from now on.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of the listening socket.
const BACKLOG: i32 = 1024;

/// Binds `addr` with SO_REUSEADDR (a restart need not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Stops new handshakes, hands every queued connection to `take`, closes the
/// listener. Answers how many queued connections were taken.
pub fn close_gracefully(listener: TcpListener, mut take: impl FnMut(TcpStream)) -> usize {
    let socket = Socket::from(listener);
    // A one-instruction classic BPF program, "return 0": drop the packet.
    let drop_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    if let Err(e) = socket.attach_filter(&drop_all) {
        // Without the filter a handshake may still slip in between the last
        // accept and the close; that client sees a reset.
        log::info!("listener: socket filter unavailable ({e}); closing without it");
    }
    let _ = socket.set_nonblocking(true);
    let mut taken = 0;
    loop {
        match socket.accept() {
            Ok((stream, _)) => {
                take(stream.into());
                taken += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(_) => break, // WouldBlock: the queue is empty.
        }
    }
    drop(socket);
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Clients whose handshake completed before the close are accepted and can
    /// be answered; a client after the close is refused.
    #[test]
    fn queued_connections_are_taken_not_reset_and_new_ones_are_refused() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Three clients complete their handshake; nobody has accepted them.
        let mut clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("hello {i}").as_bytes()).expect("write");
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
        }
        let mut taken = Vec::new();
        assert_eq!(close_gracefully(listener, |s| taken.push(s)), 3);

        // Each queued client is answered on the stream that was taken for it.
        for mut server_side in taken {
            server_side.set_nonblocking(false).expect("blocking");
            let mut buf = [0u8; 7];
            server_side.read_exact(&mut buf).expect("read");
            server_side.write_all(b"answer").expect("write");
        }
        for c in &mut clients {
            let mut buf = [0u8; 6];
            c.read_exact(&mut buf).expect("answered, not reset");
            assert_eq!(&buf, b"answer");
        }
        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect_err("the listener is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }
}
