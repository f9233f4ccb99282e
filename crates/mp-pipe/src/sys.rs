//! The system calls mp-pipe makes, in one place: socket pairs, wake-up tokens, `ppoll`,
//! vectored writes without `SIGPIPE`, and OS randomness.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mp_core::Deadline;

use crate::error::{Error, Result};

/// A connected pair of Unix stream sockets, close-on-exec.
pub(crate) fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, an array of two ints on our stack.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Error::last_os("socketpair"));
    }
    // SAFETY: the call succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What came of writing a wake-up token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// Written (or the socket buffer is full of tokens already, which wakes the peer as well).
    Sent,
    /// The peer's end is closed: nobody will ever read it.
    PeerGone,
}

/// Writes one wake-up byte to the peer, without blocking and without `SIGPIPE`.
pub(crate) fn send_token(fd: BorrowedFd<'_>) -> Token {
    loop {
        // SAFETY: send reads one byte from a static; the descriptor is borrowed, so open.
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                b"!".as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Token::Sent;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                return Token::PeerGone
            }
            // EAGAIN: the buffer is full of unread tokens, so the peer has a wake-up already.
            _ => return Token::Sent,
        }
    }
}

/// Reads every wake-up byte waiting on `fd` without blocking. Returns true when the peer's
/// end is closed (end of file after the tokens).
pub(crate) fn drain_tokens(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into our stack buffer.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r == 0 {
            return true;
        }
        if r > 0 {
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => return true,
            _ => return false,
        }
    }
}

/// `ppoll` on `fds` until one is ready or the deadline passes; returns how many are ready
/// (0 on timeout). Restarts after signals with the time left.
pub(crate) fn poll(fds: &mut [libc::pollfd], deadline: Deadline) -> Result<usize> {
    loop {
        for p in fds.iter_mut() {
            p.revents = 0;
        }
        let left = deadline.remaining();
        let ts = left.map(|d: Duration| libc::timespec {
            tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` is a valid slice of pollfd that ppoll may update; the timespec lives on
        // our stack for the call; no signal mask is passed.
        let r = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            if deadline.expired() {
                return Ok(0);
            }
            continue;
        }
        return Err(Error::io("ppoll", e));
    }
}

/// Waits until `fd` is readable (or hung up) or the deadline passes; true when readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Deadline) -> Result<bool> {
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    Ok(poll(&mut p, deadline)? > 0)
}

/// One `read` that restarts after signals.
pub(crate) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`, which we own mutably.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `bufs`, in order, with as few `sendmsg` calls as the kernel allows and
/// without `SIGPIPE`. A closed peer is [`Error::BrokenPipe`].
pub(crate) fn write_all(fd: BorrowedFd<'_>, bufs: &[&[u8]]) -> Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        if off == bufs[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len() - idx);
        iov.push(libc::iovec {
            iov_base: bufs[idx][off..].as_ptr() as *mut libc::c_void,
            iov_len: bufs[idx].len() - off,
        });
        for b in &bufs[idx + 1..] {
            iov.push(libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            });
        }
        // SAFETY: an all-zero msghdr is a valid empty header; we then point it at `iov`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: every iovec points into a slice borrowed for this call; sendmsg only reads
        // them. The descriptor is borrowed, so open.
        let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                    return Err(Error::BrokenPipe)
                }
                // The socket's send timeout (`SO_SNDTIMEO`) passed.
                Some(libc::EAGAIN) => return Err(Error::Timeout),
                _ => return Err(Error::io("sendmsg", e)),
            }
        }
        let mut n = r as usize;
        while n > 0 && idx < bufs.len() {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Fills `buf` from the kernel's random source (`getrandom`).
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes at `buf[filled..]`.
        let r =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("getrandom", e));
        }
        filled += r as usize;
    }
    Ok(())
}
