//! The socket transport of [`Listener`](crate::Listener) and [`Client`](crate::Client)
//! connections: CPython's `multiprocessing.connection` framing, byte for byte.
//!
//! A message is a frame: its length as a 4-byte big-endian signed integer, then its bytes.
//! A message of more than `0x7fffffff` bytes is sent as the length `-1`, then the real length as
//! an 8-byte big-endian unsigned integer, then its bytes (CPython 3.8+; `_send_bytes` and
//! `_recv_bytes` in `Lib/multiprocessing/connection.py`).
//!
//! Receiving is a resumable state machine: a timeout in the middle of a frame keeps what was
//! read, and a message refused for its size (`recv_bytes(max)`, `recv_bytes_into` with a small
//! buffer) stays first in line. A frame larger than the connection's limit is refused before
//! anything is allocated ([`Error::FrameTooLarge`]), and the body buffer grows with the bytes
//! that actually arrive, so a hostile peer cannot make us allocate what it does not send.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use mp_core::message;
use mp_core::rkyv::util::AlignedVec;
use mp_core::{Deadline, Message};

use crate::error::{Error, Result};
use crate::sys;

/// Default largest message a socket connection accepts (1 GiB). Raise it with
/// [`Connection::set_max_message_size`](crate::Connection::set_max_message_size) for a
/// trusted peer.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1 << 30;

/// How much the body buffer grows at a time while a frame arrives.
const GROW_STEP: usize = 1 << 20;

/// The frame header of a message of `n` bytes.
pub(crate) fn frame_header(n: u64) -> ([u8; 12], usize) {
    let mut h = [0u8; 12];
    if n > 0x7fff_ffff {
        h[..4].copy_from_slice(&(-1i32).to_be_bytes());
        h[4..].copy_from_slice(&n.to_be_bytes());
        (h, 12)
    } else {
        h[..4].copy_from_slice(&(n as i32).to_be_bytes());
        (h, 4)
    }
}

#[derive(Default)]
struct Rx {
    hdr: [u8; 12],
    hdr_len: usize,
    /// The size announced by a complete header.
    size: Option<u64>,
    body: AlignedVec<16>,
    /// Body bytes received so far (`body.len()` may be larger: zero-filled room).
    filled: usize,
}

/// One end of a socket connection.
pub(crate) struct StreamEnd {
    sock: OwnedFd,
    rx: RefCell<Rx>,
    max: Cell<u64>,
    eof: Cell<bool>,
    /// Set when a frame was refused for its size: the stream cannot be resynchronised.
    poisoned: Cell<Option<(u64, u64)>>,
}

impl std::fmt::Debug for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEnd")
            .field("sock", &self.sock)
            .field("max_message_size", &self.max.get())
            .finish()
    }
}

impl StreamEnd {
    pub(crate) fn new(sock: OwnedFd) -> StreamEnd {
        StreamEnd {
            sock,
            rx: RefCell::new(Rx::default()),
            max: Cell::new(DEFAULT_MAX_MESSAGE_SIZE),
            eof: Cell::new(false),
            poisoned: Cell::new(None),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// True when no frame is partly read (the next bytes are a frame's first).
    pub(crate) fn at_frame_start(&self) -> bool {
        let rx = self.rx.borrow();
        rx.hdr_len == 0 && rx.size.is_none()
    }

    /// `SO_SNDTIMEO`: a send blocked longer fails with [`Error::Timeout`] (see `write_all`).
    pub(crate) fn set_send_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        // Zero means "no timeout" to the kernel: the smallest real one is a microsecond.
        let t = timeout.map_or(Duration::ZERO, |t| t.max(Duration::from_micros(1)));
        let tv = libc::timeval {
            tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt reads a timeval from a live local of the size passed; the socket
        // is ours and open.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(Error::io(
                "setsockopt(SO_SNDTIMEO)",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub(crate) fn set_max(&self, n: u64) {
        self.max.set(n);
    }

    pub(crate) fn max(&self) -> u64 {
        self.max.get()
    }

    fn check_poisoned(&self) -> Result<()> {
        match self.poisoned.get() {
            Some((size, limit)) => Err(Error::FrameTooLarge { size, limit }),
            None => Ok(()),
        }
    }

    /// Sends one frame.
    pub(crate) fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        let (h, n) = frame_header(bytes.len() as u64);
        sys::write_all(self.fd(), &[&h[..n], bytes])
    }

    pub(crate) fn send_value<T: Message>(&self, value: &T) -> Result<()> {
        let buf = message::encode(value)?;
        self.send_raw(&buf)
    }

    /// Reads until `want` is satisfied or the deadline passes.
    fn read_into(&self, buf: &mut [u8], deadline: Deadline) -> Result<usize> {
        if !sys::wait_readable(self.fd(), deadline)? {
            return Err(Error::Timeout);
        }
        match sys::read_some(self.fd(), buf) {
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(0),
            Err(e) => Err(Error::io("read", e)),
        }
    }

    /// Reads the next frame's header (if not read yet) and returns the size it announces.
    fn header(&self, rx: &mut Rx, deadline: Deadline) -> Result<u64> {
        loop {
            if let Some(s) = rx.size {
                return Ok(s);
            }
            let want = if rx.hdr_len < 4 {
                4
            } else if rx.hdr[..4] == [0xff; 4] {
                12
            } else {
                4
            };
            if rx.hdr_len == want {
                let size = if want == 12 {
                    u64::from_be_bytes(rx.hdr[4..12].try_into().unwrap_or([0; 8]))
                } else {
                    let n = i32::from_be_bytes([rx.hdr[0], rx.hdr[1], rx.hdr[2], rx.hdr[3]]);
                    u64::try_from(n)
                        .map_err(|_| Error::Protocol(format!("frame with negative length {n}")))?
                };
                if size > self.max.get() {
                    let limit = self.max.get();
                    self.poisoned.set(Some((size, limit)));
                    // SAFETY: shutdown on a descriptor we own has no memory-safety preconditions.
                    unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
                    return Err(Error::FrameTooLarge { size, limit });
                }
                rx.size = Some(size);
                rx.body.clear();
                rx.filled = 0;
                return Ok(size);
            }
            let at = rx.hdr_len;
            let n = self.read_into(&mut rx.hdr[at..want], deadline)?;
            if n == 0 {
                self.eof.set(true);
                return Err(if at == 0 {
                    Error::Eof
                } else {
                    Error::Truncated {
                        received: at as u64,
                        expected: want as u64,
                    }
                });
            }
            rx.hdr_len += n;
        }
    }

    /// Reads the body of the current frame.
    fn body(&self, rx: &mut Rx, size: u64, deadline: Deadline) -> Result<()> {
        let size = usize::try_from(size).map_err(|_| Error::FrameTooLarge {
            size,
            limit: usize::MAX as u64,
        })?;
        while rx.filled < size {
            if rx.body.len() == rx.filled {
                let grow = (size - rx.filled).min(GROW_STEP);
                rx.body.resize(rx.filled + grow, 0);
            }
            let (at, end) = (rx.filled, rx.body.len());
            let n = self.read_into(&mut rx.body[at..end], deadline)?;
            if n == 0 {
                self.eof.set(true);
                let got = rx.filled as u64;
                *rx = Rx::default();
                return Err(Error::Truncated {
                    received: got,
                    expected: size as u64,
                });
            }
            rx.filled += n;
        }
        Ok(())
    }

    /// The next whole frame, once `check(size)` accepts its size.
    fn frame(
        &self,
        deadline: Deadline,
        check: &dyn Fn(u64) -> Result<()>,
    ) -> Result<AlignedVec<16>> {
        self.check_poisoned()?;
        if self.eof.get() && self.rx.borrow().hdr_len == 0 {
            return Err(Error::Eof);
        }
        let mut rx = self.rx.borrow_mut();
        let size = self.header(&mut rx, deadline)?;
        check(size)?;
        self.body(&mut rx, size, deadline)?;
        let mut body = std::mem::take(&mut rx.body);
        body.truncate_to(rx.filled);
        *rx = Rx::default();
        Ok(body)
    }

    pub(crate) fn recv_frame(
        &self,
        deadline: Deadline,
        check: &dyn Fn(u64) -> Result<()>,
    ) -> Result<AlignedVec<16>> {
        self.frame(deadline, check)
    }

    pub(crate) fn recv_value<T: Message>(&self, deadline: Deadline) -> Result<T> {
        let f = self.frame(deadline, &|_| Ok(()))?;
        Ok(message::decode::<T>(&f)?)
    }

    /// True when a frame (or end-of-file) can be read now or before the deadline.
    pub(crate) fn poll(&self, deadline: Deadline) -> Result<bool> {
        self.check_poisoned()?;
        if self.eof.get() || self.has_buffered() {
            return Ok(true);
        }
        sys::wait_readable(self.fd(), deadline)
    }

    /// True when a whole frame is buffered already.
    pub(crate) fn has_buffered(&self) -> bool {
        let rx = self.rx.borrow();
        rx.size.is_some_and(|s| rx.filled as u64 == s)
    }
}

/// `AlignedVec` has no `truncate`; this shortens without reallocating.
trait TruncateTo {
    fn truncate_to(&mut self, len: usize);
}

impl TruncateTo for AlignedVec<16> {
    fn truncate_to(&mut self, len: usize) {
        if len < self.len() {
            // SAFETY: shrinking the length keeps every remaining byte initialised.
            unsafe { self.set_len(len) };
        }
    }
}
