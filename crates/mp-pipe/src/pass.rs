//! A connection sent through another: [`Connection::send_connection`] and
//! [`Connection::recv_connection`], over a socket connection on a Unix address (Python sends
//! a `Connection` through a `Connection` the same way, with `multiprocessing.reduction`).
//!
//! On the wire: one frame of [`BODY`] bytes (CPython's 4-byte length header, then the
//! description below), sent with one `sendmsg` that carries the end's descriptors as
//! `SCM_RIGHTS`: its socket, and for a pipe end its region's memfd. The receiver validates
//! everything before it uses anything: the frame's length and magic, the direction, the
//! number and kind of the descriptors, and (for a pipe end) the region's header, kind, ring
//! indices and capacity, as for a connection handed to a child.
//!
//! | bytes | what |
//! |---|---|
//! | 0..4 | magic `mpCN` |
//! | 4 | version (1) |
//! | 5 | the end's direction tag |
//! | 6 | 0: a socket end, 1: a pipe end |
//! | 7, 8 | a pipe end's send and receive ring indices |
//! | 9..16 | zero |
//! | 16..24 | a pipe end's ring capacity (little endian) |
//! | 24..32 | the end's largest accepted message (little endian) |

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mp_core::{Deadline, Region};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::connection::{CanRecv, CanSend, Connection, Direction, Transport};
use crate::error::{Error, Result};
use crate::local::{LocalEnd, LocalParts};
use crate::stream::StreamEnd;
use crate::sys;

const MAGIC: [u8; 4] = *b"mpCN";
const VERSION: u8 = 1;
/// The size of the description frame's body.
const BODY: usize = 32;
/// The frame: CPython's 4-byte big-endian length, then the body.
const FRAME: usize = 4 + BODY;

impl<T, D: Direction> Connection<T, D> {
    /// The socket of a socket connection on a Unix address, the only kind that carries
    /// descriptors.
    fn unix_stream(&self, what: &'static str) -> Result<&StreamEnd> {
        let Transport::Stream(s) = &self.t else {
            return Err(Error::InvalidArgument(what));
        };
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `domain`, a live local of that
        // size; the socket is borrowed, so open.
        let r = unsafe {
            libc::getsockopt(
                s.fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 && domain == libc::AF_UNIX {
            Ok(s)
        } else {
            Err(Error::InvalidArgument(what))
        }
    }
}

impl<T, D: CanSend> Connection<T, D> {
    /// Sends `end`, a connection of this process, to the peer, which takes it with
    /// [`recv_connection`](Self::recv_connection): afterwards the peer holds `end` and this
    /// process no longer does (its copy is closed). Only over a socket connection on a Unix
    /// address (a [`Client`](crate::Client) or [`Listener`](crate::Listener) one): anything
    /// else is [`Error::InvalidArgument`]. `end` may be either kind, a pipe end (its shared
    /// rings travel with it) or a socket connection.
    pub fn send_connection<U, E: Direction>(&self, end: Connection<U, E>) -> Result<()> {
        let s =
            self.unix_stream("only a socket connection on a Unix address carries connections")?;
        let mut frame = [0u8; FRAME];
        frame[..4].copy_from_slice(&(BODY as u32).to_be_bytes());
        let b = &mut frame[4..];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = E::TAG;
        let mut fds: Vec<RawFd> = vec![end.as_fd().as_raw_fd()];
        if let Transport::Local(l) = &end.t {
            let (region, tx, rx, cap) = l.describe();
            b[6] = 1;
            b[7] = tx;
            b[8] = rx;
            b[16..24].copy_from_slice(&(cap as u64).to_le_bytes());
            fds.push(region.fd().as_raw_fd());
        }
        b[24..32].copy_from_slice(&end.max_message_size().to_le_bytes());
        let sent = loop {
            let iov = [IoSlice::new(&frame)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            match sendmsg::<()>(
                s.fd().as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(
                    nix::errno::Errno::EPIPE
                    | nix::errno::Errno::ECONNRESET
                    | nix::errno::Errno::ENOTCONN,
                ) => return Err(Error::BrokenPipe),
                Err(nix::errno::Errno::EAGAIN) => return Err(Error::Timeout),
                Err(e) => return Err(Error::io("sendmsg", e.into())),
            }
        };
        // The descriptors went with the first byte; the rest of a short send follows.
        sys::write_all(s.fd(), &[&frame[sent..]])?;
        drop(end);
        Ok(())
    }
}

impl<T, D: CanRecv> Connection<T, D> {
    /// Receives a connection the peer sent with [`send_connection`](Self::send_connection),
    /// waiting at most `timeout` (`None`: for ever; [`Error::Timeout`] after it). The next
    /// message must be that connection: anything else is [`Error::Protocol`], and so is a
    /// direction other than `E`, or a description or descriptors that are not a valid
    /// connection's (what was received is closed, and this connection should be dropped: its
    /// stream of messages is out of step). Only over a socket connection on a Unix address.
    pub fn recv_connection<U, E: Direction>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Connection<U, E>> {
        let s =
            self.unix_stream("only a socket connection on a Unix address carries connections")?;
        if !s.at_frame_start() {
            return Err(Error::Protocol(
                "recv_connection after a message was partly read".into(),
            ));
        }
        let deadline = Deadline::after(timeout);
        let mut frame = [0u8; FRAME];
        let (mut got, fds) = recv_with_fds(s.fd(), &mut frame, deadline)?;
        while got < FRAME {
            // An ordinary message is refused as soon as its length says so (waiting for the
            // rest of a description that is not coming would hang).
            if got >= 4 && frame[..4] != (BODY as u32).to_be_bytes() {
                return Err(Error::Protocol(
                    "not a connection: the message is not a connection's description".into(),
                ));
            }
            if !sys::wait_readable(s.fd(), deadline)? {
                return Err(Error::Timeout);
            }
            let n = sys::read_some(s.fd(), &mut frame[got..]).map_err(|e| Error::io("read", e))?;
            if n == 0 {
                return Err(Error::Truncated {
                    received: got as u64,
                    expected: FRAME as u64,
                });
            }
            got += n;
        }
        from_description::<U, E>(&frame, fds)
    }
}

/// One `recvmsg` into `buf`, with the descriptors that came along (owned at once, so that an
/// error closes them). At most four descriptors are accepted; more is [`Error::Protocol`].
fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    deadline: Deadline,
) -> Result<(usize, Vec<OwnedFd>)> {
    loop {
        if !sys::wait_readable(fd, deadline)? {
            return Err(Error::Timeout);
        }
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Err(Error::Eof),
            Err(e) => return Err(Error::io("recvmsg", e.into())),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: the kernel just installed `r` in this process for us; nothing
                        // else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(Error::Protocol(
                "more descriptors than a connection has".into(),
            ));
        }
        if msg.bytes == 0 {
            return Err(Error::Eof);
        }
        return Ok((msg.bytes, fds));
    }
}

/// The connection a description frame and its descriptors make, validated.
fn from_description<U, E: Direction>(
    frame: &[u8; FRAME],
    mut fds: Vec<OwnedFd>,
) -> Result<Connection<U, E>> {
    let bad = |why: String| Error::Protocol(format!("not a connection: {why}"));
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let b = &frame[4..];
    if len as usize != BODY || b[..4] != MAGIC {
        return Err(bad("the message is not a connection's description".into()));
    }
    if b[4] != VERSION {
        return Err(bad(format!("description version {}", b[4])));
    }
    if b[5] != E::TAG {
        return Err(bad(format!(
            "its direction tag is {}, expected {}",
            b[5],
            std::any::type_name::<E>()
        )));
    }
    let local = match b[6] {
        0 => false,
        1 => true,
        k => return Err(bad(format!("transport {k}"))),
    };
    let want = if local { 2 } else { 1 };
    if fds.len() != want {
        return Err(bad(format!(
            "{} descriptors came with it, expected {want}",
            fds.len()
        )));
    }
    let cap = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
    let max_message = u64::from_le_bytes(b[24..32].try_into().unwrap_or([0; 8]));
    let region_fd = if local { fds.pop() } else { None };
    let sock = fds.pop().ok_or_else(|| bad("no socket".into()))?;
    // A descriptor that is no socket (a file, a memfd) would poll readable for ever.
    let is_socket = nix::sys::stat::fstat(sock.as_raw_fd())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    if !is_socket {
        return Err(bad("its first descriptor is no socket".into()));
    }
    let t = match region_fd {
        Some(rfd) => Transport::Local(LocalEnd::from_parts(LocalParts {
            sock,
            region: Region::from_fd(rfd, None)?,
            tx_index: b[7],
            rx_index: b[8],
            cap: usize::try_from(cap).unwrap_or(0),
        })?),
        None => {
            let s = StreamEnd::new(sock);
            s.set_max(max_message);
            Transport::Stream(s)
        }
    };
    Ok(Connection::from_transport(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Duplex, OneWay, Pipe};

    /// A connected pair of Unix socket connections.
    fn sockets() -> (Connection<u64>, Connection<u64>) {
        let (a, b) = sys::socketpair().unwrap();
        (Connection::from_socket(a), Connection::from_socket(b))
    }

    #[test]
    fn a_pipe_end_travels_and_works_on_the_other_side() {
        let (carrier, taker) = sockets();
        let (mine, theirs) = Pipe::<String>::new(Duplex).unwrap();
        carrier.send_connection(theirs).unwrap();
        let got: Connection<String> = taker.recv_connection(Some(Duration::from_secs(5))).unwrap();
        assert!(got.is_local());
        mine.send(&"ping".to_string()).unwrap();
        assert_eq!(got.recv().unwrap(), "ping");
        got.send(&"pong".to_string()).unwrap();
        assert_eq!(mine.recv().unwrap(), "pong");
        // The sender's copy was closed: dropping the received end is end-of-file for `mine`.
        drop(got);
        assert!(mine.recv().is_err());
    }

    #[test]
    fn a_socket_connection_travels_too() {
        let (carrier, taker) = sockets();
        let (near, far) = sockets();
        far.set_max_message_size(1000);
        carrier.send_connection(far).unwrap();
        let got: Connection<u64> = taker.recv_connection(None).unwrap();
        assert!(!got.is_local());
        assert_eq!(got.max_message_size(), 1000);
        near.send(&7).unwrap();
        assert_eq!(got.recv().unwrap(), 7);
    }

    #[test]
    fn a_wrong_direction_or_an_ordinary_message_is_refused() {
        let (carrier, taker) = sockets();
        let (reader, _writer) = Pipe::<u64>::new(OneWay).unwrap();
        carrier.send_connection(reader).unwrap();
        let e = taker
            .recv_connection::<u64, Duplex>(None)
            .expect_err("a ReadOnly end is no Duplex one");
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        carrier.send(&5).unwrap();
        let e = taker.recv_connection::<u64, Duplex>(None).unwrap_err();
        assert!(
            matches!(e, Error::Protocol(_) | Error::Truncated { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn forged_descriptions_are_refused() {
        let (carrier, taker) = sockets();
        // A description of a pipe end with a plain file in the place of its region.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let (a, _b) = sys::socketpair().unwrap();
        let mut frame = [0u8; FRAME];
        frame[..4].copy_from_slice(&(BODY as u32).to_be_bytes());
        frame[4..8].copy_from_slice(&MAGIC);
        frame[8] = VERSION;
        frame[9] = Duplex::TAG;
        frame[10] = 1;
        frame[11] = 0;
        frame[12] = 1;
        frame[20..28].copy_from_slice(&4096u64.to_le_bytes());
        let fds = [a.as_raw_fd(), file.as_raw_fd()];
        let sock = carrier.as_fd().as_raw_fd();
        let iov = [IoSlice::new(&frame)];
        sendmsg::<()>(
            sock,
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let e = taker.recv_connection::<u64, Duplex>(None).unwrap_err();
        assert!(matches!(e, Error::Core(_) | Error::Protocol(_)), "{e:?}");
        // A description without its descriptors.
        sendmsg::<()>(
            sock,
            &iov,
            &[] as &[ControlMessage<'_>],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let e = taker.recv_connection::<u64, Duplex>(None).unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        // Nothing comes: a timeout.
        let e = taker
            .recv_connection::<u64, Duplex>(Some(Duration::from_millis(10)))
            .unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e:?}");
    }

    #[test]
    fn only_unix_socket_connections_carry_connections() {
        let (a, _b) = Pipe::<u64>::new(Duplex).unwrap();
        let (x, _y) = Pipe::<u64>::new(Duplex).unwrap();
        assert!(matches!(
            a.send_connection(x),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            a.recv_connection::<u64, Duplex>(None),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_send_into_a_full_ring_times_out_when_asked_to() {
        let (tx, _rx) = Pipe::<u64>::with_capacity(Duplex, crate::MIN_RING_CAPACITY).unwrap();
        tx.set_send_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let chunk = vec![7u8; 1024];
        let e = loop {
            if let Err(e) = tx.send_bytes(&chunk, 0, None) {
                break e;
            }
        };
        assert!(matches!(e, Error::Timeout), "{e:?}");
        let (a, _b) = sockets();
        a.set_send_timeout(Some(Duration::from_millis(20))).unwrap();
        let big = vec![1u8; 1 << 16];
        let e = loop {
            if let Err(e) = a.send_bytes(&big, 0, None) {
                break e;
            }
        };
        assert!(matches!(e, Error::Timeout), "{e:?}");
    }
}
