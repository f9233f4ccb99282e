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
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rkyv::util::AlignedVec;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Tag {
    /// Parent to child: a [`crate::boot::Boot`] archive.
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

/// Header flag: the payload is not inline but in a memfd attached with `SCM_RIGHTS`.
const FLAG_MEMFD: u32 = 1;
/// The largest payload a child sends inline; larger ones go in a memfd. Far below a socket's
/// send buffer, so a child never blocks on its socket and the parent need not read before
/// the child exits: `join` sleeps once, until the child has exited.
pub(crate) const INLINE_MAX: usize = 32 * 1024;

fn header(tag: Tag, flags: u32, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&(tag as u32).to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// Sends a child's frame without ever blocking on the socket: a payload larger than
/// [`INLINE_MAX`] is written to a sealed memfd whose descriptor travels with the header.
pub(crate) fn send_final(fd: BorrowedFd<'_>, tag: Tag, payload: &[u8]) -> std::io::Result<()> {
    if payload.len() <= INLINE_MAX {
        return send(fd, tag, payload);
    }
    let memfd =
        nix::sys::memfd::memfd_create(c"mp-result", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
    let mut off = 0;
    while off < payload.len() {
        // SAFETY: write(2) reads from the live tail of `payload`.
        let n = unsafe {
            libc::write(
                memfd.as_raw_fd(),
                payload[off..].as_ptr() as *const libc::c_void,
                payload.len() - off,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        off += n as usize;
    }
    let h = header(tag, FLAG_MEMFD, payload.len());
    let fds = [memfd.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        fd.as_raw_fd(),
        &[std::io::IoSlice::new(&h)],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Sends one frame, blocking until it is all written. Never raises SIGPIPE.
pub(crate) fn send(fd: BorrowedFd<'_>, tag: Tag, payload: &[u8]) -> std::io::Result<()> {
    let h = header(tag, 0, payload.len());
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
            // Through `syscall` rather than `sendmsg`: see `crate::sys::exit_now`.
            libc::syscall(
                libc::SYS_sendmsg,
                fd.as_raw_fd(),
                &msg as *const libc::msghdr,
                libc::MSG_NOSIGNAL,
            )
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
    let (tag, _flags, len) = parse_header(&h).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed frame header")
    })?;
    let mut payload = AlignedVec::<16>::with_capacity(len);
    payload.resize(len, 0);
    read_exact(fd, &mut payload)?;
    Ok(Some((tag, payload)))
}

fn parse_header(h: &[u8]) -> Option<(Tag, u32, usize)> {
    let tag = Tag::from_u32(u32::from_le_bytes(h[0..4].try_into().ok()?))?;
    let flags = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let len = u64::from_le_bytes(h[8..16].try_into().ok()?);
    if len > MAX_FRAME || flags & !FLAG_MEMFD != 0 {
        return None;
    }
    Some((tag, flags, len as usize))
}

/// Reads `len` bytes from the start of a memfd a child sent, refusing anything that is not
/// a regular file of at least that size (a hostile child could send a pipe).
fn read_memfd(fd: &OwnedFd, len: usize) -> Option<AlignedVec<16>> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_size as u64) < len as u64 {
        return None;
    }
    let mut v = AlignedVec::<16>::with_capacity(len);
    v.resize(len, 0);
    let mut off = 0;
    while off < len {
        // SAFETY: pread writes into the live tail of `v`.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                v[off..].as_mut_ptr() as *mut libc::c_void,
                len - off,
                off as libc::off_t,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return None;
        }
        off += n as usize;
    }
    Some(v)
}

/// Frames received so far from a child, read without blocking.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) buf: Vec<u8>,
    /// Descriptors received with the bytes, in order.
    pub(crate) fds: std::collections::VecDeque<OwnedFd>,
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
        loop {
            // Read straight into the buffer (no large stack chunk: after a fork every page
            // the parent writes costs a copy-on-write fault). Small first, then doubling: most
            // children send one short frame, and a small block is usually carved from a heap
            // page this start already wrote.
            if self.buf.capacity() - self.buf.len() < 64 {
                self.buf.reserve(self.buf.len().max(256));
            }
            let spare = self.buf.spare_capacity_mut();
            let cap = spare.len();
            let mut iov = libc::iovec {
                iov_base: spare.as_mut_ptr() as *mut libc::c_void,
                iov_len: cap,
            };
            let mut space = nix::cmsg_space!([RawFd; 4]);
            // SAFETY: an all-zero msghdr is valid; it points at `iov` (the buffer's spare
            // capacity, valid for writes of `cap` bytes) and at `space`, both alive during
            // the call.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = space.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = space.capacity();
                let n = libc::recvmsg(
                    fd.as_raw_fd(),
                    &mut msg,
                    libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
                );
                if n > 0 {
                    self.take_fds(&msg);
                }
                n
            };
            if n < 0 {
                match std::io::Error::last_os_error() {
                    e if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    e if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // The child is gone and the kernel dropped what was unread.
                    e if e.raw_os_error() == Some(libc::ECONNRESET) => {
                        self.eof = true;
                        break;
                    }
                    e => return Err(e),
                }
            }
            if n == 0 {
                self.eof = true;
                break;
            }
            // SAFETY: recvmsg initialised the first `n <= cap` bytes of the spare capacity.
            unsafe { self.buf.set_len(self.buf.len() + n as usize) };
        }
        self.parse();
        Ok(())
    }

    /// Takes ownership of the descriptors in `msg`'s control data.
    ///
    /// # Safety
    /// `msg` was just filled by a successful `recvmsg`.
    unsafe fn take_fds(&mut self, msg: &libc::msghdr) {
        // SAFETY: per the contract, the control buffer holds what the kernel wrote; the
        // CMSG macros walk it within `msg_controllen`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const RawFd;
                    let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    for i in 0..n {
                        // The kernel just installed these descriptors for us; nothing else
                        // owns them.
                        self.fds
                            .push_back(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(msg, c);
            }
        }
    }

    fn parse(&mut self) {
        let mut at = 0;
        while !self.malformed && self.buf.len() - at >= HEADER {
            let Some((tag, flags, len)) = parse_header(&self.buf[at..at + HEADER]) else {
                self.malformed = true;
                break;
            };
            if flags & FLAG_MEMFD != 0 {
                at += HEADER;
                let body = self.fds.pop_front().and_then(|fd| read_memfd(&fd, len));
                match body {
                    Some(v) if self.last.is_none() && tag != Tag::Boot && tag != Tag::Started => {
                        self.last = Some((tag, v))
                    }
                    _ => self.malformed = true,
                }
                continue;
            }
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
