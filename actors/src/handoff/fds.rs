//! File descriptors over a unix stream socket (`SCM_RIGHTS`): one message
//! line and the descriptors that go with it, in one `sendmsg`.
//!
//! A plain `read` of the stream would silently drop attached descriptors, so
//! the line that carries them is read with [`recv_with_fds`] alone, and a
//! truncated control message (`MSG_CTRUNC`) is an error, never a partial
//! set. Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 8;

/// The control-message buffer for [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 128],
}

fn space(fds: usize) -> usize {
    let len = u32::try_from(fds * std::mem::size_of::<RawFd>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE(len) as usize }
}

/// Sends `bytes` with `fds` attached, on the stream socket `socket`.
pub fn send_with_fds(socket: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let mut cmsg = CmsgBuf {
        _align: [],
        bytes: [0; 128],
    };
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cmsg.bytes.as_mut_ptr().cast();
        msg.msg_controllen = space(fds.len()) as _;
        // SAFETY: msg_control points at a buffer of msg_controllen bytes,
        // aligned for cmsghdr, large enough for one header and `fds`.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(header).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    let mut sent = 0;
    while sent < bytes.len() {
        msg.msg_iov = &mut iov;
        // SAFETY: msg describes live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
        // The descriptors went with the first byte; the rest is plain data.
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
        iov.iov_base = bytes[sent..].as_ptr() as *mut libc::c_void;
        iov.iov_len = bytes.len() - sent;
    }
    Ok(())
}

/// Receives into `buf` from the stream socket `socket`, with up to
/// [`MAX_FDS`] descriptors; answers the bytes read and the descriptors.
pub fn recv_with_fds(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = CmsgBuf {
        _align: [],
        bytes: [0; 128],
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.bytes.as_mut_ptr().cast();
    msg.msg_controllen = space(MAX_FDS) as _;
    let n = loop {
        // SAFETY: msg describes live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control; CMSG_* walk what it wrote, and
    // each SCM_RIGHTS descriptor is ours to own from now on.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors were truncated",
        ));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_their_line_and_work_on_the_other_side() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut left, mut right) = UnixStream::pair().expect("pair to pass");
        send_with_fds(&a, b"listeners\n", &[right.as_raw_fd()]).expect("sent");
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(&b, &mut buf).expect("received");
        assert_eq!(&buf[..n], b"listeners\n");
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same socket: what is written to it
        // reaches the other end of the passed pair.
        let mut passed = UnixStream::from(fds.into_iter().next().expect("one fd"));
        passed.write_all(b"hi").expect("write");
        let mut got = [0u8; 2];
        left.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hi");
        right.write_all(b"ok").expect("the original still works");
    }

    #[test]
    fn a_line_without_descriptors_is_received_alone() {
        let (a, b) = UnixStream::pair().expect("pair");
        send_with_fds(&a, b"ready\n", &[]).expect("sent");
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(&b, &mut buf).expect("received");
        assert_eq!(&buf[..n], b"ready\n");
        assert!(fds.is_empty());
    }
}
