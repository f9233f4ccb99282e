//! The frames a child and its parent exchange over their private socket.
//!
//! Each child has one `AF_UNIX` stream socket pair: the parent keeps one end, the child the
//! other. Under spawn and forkserver the parent first sends a [`Tag::Boot`] frame (what to run
//! and with which arguments); the child answers [`Tag::Started`] once it found its target, then
//! exactly one of [`Tag::Returned`], [`Tag::Panicked`], [`Tag::StartFailed`] or
//! [`Tag::ResultLost`], and exits. A frame is a 16-byte header (tag, reserved, payload length)
//! followed by the payload, an rkyv archive decoded with validation: a child is not trusted to
//! send well-formed bytes.

#[cfg(test)]
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, BorrowedFd};

use rkyv::util::AlignedVec;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Tag {
    /// Parent to child: a [`crate::process::Boot`] archive.
    Boot = 1,
    /// Child to parent: the target was found and is about to run (no payload).
    Started = 2,
    /// Child to parent: the target returned; the payload is the archived value.
    Returned = 3,
    /// Child to parent: the target panicked; the payload is an archived `(message, location)`.
    Panicked = 4,
    /// Child to parent: the target could not be started; the payload is an archived `String`.
    StartFailed = 5,
    /// Child to parent: the target returned a value that could not be serialized; the payload
    /// is an archived `String`.
    ResultLost = 6,
}

impl Tag {
    fn from_u32(v: u32) -> Option<Tag> {
        Some(match v {
            1 => Tag::Boot,
            2 => Tag::Started,
            3 => Tag::Returned,
            4 => Tag::Panicked,
            5 => Tag::StartFailed,
            6 => Tag::ResultLost,
            _ => return None,
        })
    }
}

pub(crate) const HEADER: usize = 16;
/// The largest frame accepted from a peer (1 GiB): a corrupted length is refused instead of
/// allocated.
const MAX_FRAME: u64 = 1 << 30;

fn header(tag: Tag, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&(tag as u32).to_le_bytes());
    h[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// Sends one frame, blocking until it is all written. Never raises SIGPIPE.
pub(crate) fn send(fd: BorrowedFd<'_>, tag: Tag, payload: &[u8]) -> std::io::Result<()> {
    let h = header(tag, payload.len());
    let mut iov = [
        libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: HEADER,
        },
        libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        },
    ];
    let mut first = 0;
    loop {
        // SAFETY: an all-zero msghdr is valid; it points at the iovecs above, which point at
        // `h` and `payload`, both alive and unchanged during the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov[first..].as_mut_ptr();
            msg.msg_iovlen = iov.len() - first;
            libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = n as usize;
        while first < iov.len() && n >= iov[first].iov_len {
            n -= iov[first].iov_len;
            first += 1;
        }
        if first == iov.len() {
            return Ok(());
        }
        // SAFETY: `n < iov_len`, so the advanced pointer stays inside the same buffer.
        iov[first].iov_base =
            unsafe { (iov[first].iov_base as *mut u8).add(n) } as *mut libc::c_void;
        iov[first].iov_len -= n;
    }
}

/// Reads exactly `buf.len()` bytes, blocking. `Ok(false)` on end of file before the first
/// byte.
fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`, valid for writes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
    }
    Ok(true)
}

/// Receives one whole frame, blocking (used by a child for its boot frame).
pub(crate) fn recv_blocking(fd: BorrowedFd<'_>) -> std::io::Result<Option<(Tag, AlignedVec<16>)>> {
    let mut h = [0u8; HEADER];
    if !read_exact(fd, &mut h)? {
        return Ok(None);
    }
    let (tag, len) = parse_header(&h).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed frame header")
    })?;
    let mut payload = AlignedVec::<16>::with_capacity(len);
    payload.resize(len, 0);
    read_exact(fd, &mut payload)?;
    Ok(Some((tag, payload)))
}

fn parse_header(h: &[u8]) -> Option<(Tag, usize)> {
    let tag = Tag::from_u32(u32::from_le_bytes(h[0..4].try_into().ok()?))?;
    let len = u64::from_le_bytes(h[8..16].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    Some((tag, len as usize))
}

/// Frames received so far from a child, read without blocking.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) buf: Vec<u8>,
    /// The child found its target.
    pub(crate) started: bool,
    /// The final frame, once whole.
    pub(crate) last: Option<(Tag, AlignedVec<16>)>,
    /// The bytes were not valid frames.
    pub(crate) malformed: bool,
    /// The peer closed its end.
    pub(crate) eof: bool,
}

impl Inbox {
    /// Reads whatever is available on `fd` without blocking and parses whole frames.
    pub(crate) fn pump(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // SAFETY: `chunk` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    chunk.as_mut_ptr() as *mut libc::c_void,
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => break,
                    // The child is gone and the kernel dropped what was unread: nothing more.
                    std::io::ErrorKind::ConnectionReset => {
                        self.eof = true;
                        break;
                    }
                    _ => return Err(e),
                }
            }
            if n == 0 {
                self.eof = true;
                break;
            }
            self.buf.extend_from_slice(&chunk[..n as usize]);
            if (n as usize) < chunk.len() {
                break;
            }
        }
        self.parse();
        Ok(())
    }

    fn parse(&mut self) {
        let mut at = 0;
        while !self.malformed && self.buf.len() - at >= HEADER {
            let Some((tag, len)) = parse_header(&self.buf[at..at + HEADER]) else {
                self.malformed = true;
                break;
            };
            if self.buf.len() - at - HEADER < len {
                break;
            }
            let body = &self.buf[at + HEADER..at + HEADER + len];
            match tag {
                Tag::Started => self.started = true,
                Tag::Boot => self.malformed = true,
                _ if self.last.is_none() => {
                    let mut v = AlignedVec::<16>::with_capacity(len);
                    v.extend_from_slice(body);
                    self.last = Some((tag, v));
                }
                _ => self.malformed = true,
            }
            at += HEADER + len;
        }
        self.buf.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u32, len: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn feed(bytes: &[u8]) -> Inbox {
        let mut inbox = Inbox::default();
        // Byte by byte: frames may arrive in any split.
        for b in bytes {
            inbox.buf.push(*b);
            inbox.parse();
        }
        inbox
    }

    #[test]
    fn frames_parse_in_any_split() {
        let mut bytes = frame(2, 0, &[]);
        bytes.extend(frame(3, 5, b"hello"));
        let inbox = feed(&bytes);
        assert!(inbox.started);
        assert!(!inbox.malformed);
        let (tag, body) = inbox.last.unwrap();
        assert_eq!(tag, Tag::Returned);
        assert_eq!(&body[..], b"hello");
    }

    #[test]
    fn malformed_frames_are_flagged() {
        assert!(feed(&frame(99, 0, &[])).malformed, "unknown tag");
        assert!(feed(&frame(3, u64::MAX, &[])).malformed, "absurd length");
        assert!(
            feed(&frame(1, 0, &[])).malformed,
            "a child never sends Boot"
        );
        let mut two = frame(3, 1, b"a");
        two.extend(frame(4, 1, b"b"));
        assert!(feed(&two).malformed, "two final frames");
        // A truncated frame is simply incomplete.
        let t = feed(&frame(3, 10, b"abc"));
        assert!(!t.malformed && t.last.is_none());
    }

    #[test]
    fn send_and_receive_over_a_socket() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let big = vec![7u8; 1 << 20];
        let t = std::thread::spawn(move || send(a.as_fd(), Tag::Boot, &big).unwrap());
        let (tag, body) = recv_blocking(b.as_fd()).unwrap().unwrap();
        t.join().unwrap();
        assert_eq!(tag, Tag::Boot);
        assert_eq!(body.len(), 1 << 20);
        assert!(body.iter().all(|x| *x == 7));
        assert!(recv_blocking(b.as_fd()).unwrap().is_none(), "end of file");
    }
}
