//! [`Connection<T, D>`], its directions, and [`Pipe`].

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use mp_core::message;
use mp_core::{Deadline, Message};

use crate::error::{Error, Result};
use crate::local::{LocalEnd, RecvBytes, DEFAULT_RING_CAPACITY};
use crate::stream::StreamEnd;

mod sealed {
    pub trait Sealed {}
}

/// What an end of a connection may do: [`Duplex`] (send and receive), [`ReadOnly`] or
/// [`WriteOnly`]. Sealed: these three are all there is.
pub trait Direction: sealed::Sealed + 'static {
    /// A tag recorded when a connection is handed to another process.
    #[doc(hidden)]
    const TAG: u8;
}

/// Directions that can send: [`Duplex`] and [`WriteOnly`].
pub trait CanSend: Direction {}
/// Directions that can receive: [`Duplex`] and [`ReadOnly`].
pub trait CanRecv: Direction {}

/// Both ways: the ends of `Pipe::new(Duplex)` and every Listener/Client connection. Also the
/// argument of [`Pipe::new`] that asks for a two-way pipe (Python's `Pipe(duplex=True)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Duplex;
/// The receiving end of a one-way pipe: it has no `send`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOnly;
/// The sending end of a one-way pipe: it has no `recv`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOnly;
/// The argument of [`Pipe::new`] that asks for a one-way pipe (Python's `Pipe(duplex=False)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OneWay;

impl sealed::Sealed for Duplex {}
impl sealed::Sealed for ReadOnly {}
impl sealed::Sealed for WriteOnly {}
impl sealed::Sealed for OneWay {}
impl Direction for Duplex {
    const TAG: u8 = 0;
}
impl Direction for ReadOnly {
    const TAG: u8 = 1;
}
impl Direction for WriteOnly {
    const TAG: u8 = 2;
}
impl CanSend for Duplex {}
impl CanSend for WriteOnly {}
impl CanRecv for Duplex {}
impl CanRecv for ReadOnly {}

/// The kind of pipe [`Pipe::new`] makes: [`Duplex`] or [`OneWay`].
pub trait PipeKind: sealed::Sealed {
    /// Direction of the first end returned.
    type First: Direction;
    /// Direction of the second end returned.
    type Second: Direction;
    /// True for two-way pipes.
    #[doc(hidden)]
    const DUPLEX: bool;
}

impl PipeKind for Duplex {
    type First = Duplex;
    type Second = Duplex;
    const DUPLEX: bool = true;
}

impl PipeKind for OneWay {
    type First = ReadOnly;
    type Second = WriteOnly;
    const DUPLEX: bool = false;
}

/// The two ends [`Pipe::new`] returns for a pipe of kind `K`.
pub type Ends<T, K> = (
    Connection<T, <K as PipeKind>::First>,
    Connection<T, <K as PipeKind>::Second>,
);

/// The receiving end of a one-way pipe.
pub type Reader<T> = Connection<T, ReadOnly>;
/// The sending end of a one-way pipe.
pub type Writer<T> = Connection<T, WriteOnly>;

/// Python's `multiprocessing.Pipe`: makes a connected pair of [`Connection`]s between this
/// process and the children it starts.
///
/// `Pipe::<T>::new(Duplex)` returns two ends that both send and receive `T`;
/// `Pipe::<T>::new(OneWay)` returns `(reader, writer)`, like Python's `Pipe(duplex=False)`,
/// except that misuse does not compile:
///
/// ```compile_fail
/// use mp_pipe::{OneWay, Pipe};
/// let (reader, _writer) = Pipe::<u32>::new(OneWay)?;
/// reader.send(&1)?; // a Reader has no `send`
/// # Ok::<(), mp_pipe::Error>(())
/// ```
///
/// ```compile_fail
/// use mp_pipe::{OneWay, Pipe};
/// let (_reader, writer) = Pipe::<u32>::new(OneWay)?;
/// let _ = writer.recv()?; // a Writer has no `recv`
/// # Ok::<(), mp_pipe::Error>(())
/// ```
pub struct Pipe<T>(PhantomData<fn(T) -> T>);

impl<T> Pipe<T> {
    /// A new pipe with rings of the default size (128 KiB each way).
    // `Pipe` is a factory, like Python's `Pipe()`: it returns the two ends, not a `Pipe`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<K: PipeKind>(kind: K) -> Result<Ends<T, K>> {
        Pipe::with_capacity(kind, DEFAULT_RING_CAPACITY)
    }

    /// A new pipe whose rings hold `ring_bytes` each (a power of two from 4 KiB to 1 GiB).
    /// Messages up to half a ring travel in one piece; larger ones are streamed.
    pub fn with_capacity<K: PipeKind>(kind: K, ring_bytes: usize) -> Result<Ends<T, K>> {
        let _ = kind;
        let (a, b) = LocalEnd::pair(K::DUPLEX, ring_bytes)?;
        Ok((
            Connection::from_transport(Transport::Local(a)),
            Connection::from_transport(Transport::Local(b)),
        ))
    }
}

#[derive(Debug)]
pub(crate) enum Transport {
    Local(LocalEnd),
    Stream(StreamEnd),
}

/// One end of a connection that carries messages of type `T` (Python's
/// `multiprocessing.connection.Connection`).
///
/// * The ends of a [`Pipe`] talk through shared memory (a ring each way) and a socket pair for
///   wake-ups and end-of-file; the ends made by [`Listener`](crate::Listener) and
///   [`Client`](crate::Client) talk through a socket with CPython's framing.
/// * `D` says what the end may do: [`Duplex`], [`ReadOnly`] or [`WriteOnly`].
/// * A `Connection` is `Send` but not `Sync`: one thread at a time uses an end (move it, or
///   wrap it in a `Mutex`). Two processes must not use the same end at the same time either
///   (Python's rule too).
/// * Dropping (or [`close`](Self::close)-ing) the last copy of an end, in every process that
///   holds it, makes the other end see end-of-file.
/// * A `Connection` is a [`Message`] of the handle kind: pass it to a child as a process
///   argument under any start method (its descriptors travel with it); it cannot be sent
///   through another connection.
pub struct Connection<T, D: Direction = Duplex> {
    pub(crate) t: Transport,
    _p: Marker<T, D>,
}

/// `fn(T) -> T`: a connection neither owns nor borrows a `T`, so its auto traits do not
/// depend on `T`'s.
type Marker<T, D> = PhantomData<(fn(T) -> T, D)>;

impl<T, D: Direction> std::fmt::Debug for Connection<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("type", &std::any::type_name::<T>())
            .field("direction", &std::any::type_name::<D>())
            .field("transport", &self.t)
            .finish()
    }
}

/// Python's `send_bytes` argument checks, with its wording.
pub(crate) fn slice_args(buf: &[u8], offset: usize, size: Option<usize>) -> Result<&[u8]> {
    let n = buf.len();
    if n < offset {
        return Err(Error::InvalidArgument("buffer length < offset"));
    }
    let size = match size {
        None => n - offset,
        Some(s) => {
            if offset.checked_add(s).is_none_or(|end| end > n) {
                return Err(Error::InvalidArgument("buffer length < offset + size"));
            }
            s
        }
    };
    Ok(&buf[offset..offset + size])
}

impl<T, D: Direction> Connection<T, D> {
    pub(crate) fn from_transport(t: Transport) -> Self {
        Connection { t, _p: PhantomData }
    }

    /// The same end, carrying messages of another type (for connections whose peer speaks
    /// several, or bytes only).
    pub fn cast<U>(self) -> Connection<U, D> {
        Connection::from_transport(self.t)
    }

    /// Closes this end (dropping it does the same). The peer sees end-of-file once every copy
    /// of this end, in every process, is closed. Python's `close()`; using the end afterwards
    /// does not compile.
    pub fn close(self) -> Result<()> {
        drop(self);
        Ok(())
    }

    /// The descriptor to poll for this end (Python's `fileno()`): the socket that becomes
    /// readable when a message arrives or the peer is gone. For a pipe end it is reliable once
    /// the end is armed, which [`wait`](crate::wait) and [`poll`](Self::poll) do; an event loop
    /// of your own uses [`Waitable`](crate::Waitable)'s three calls around its poll.
    pub fn fileno(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }

    /// True for the ends of a [`Pipe`] (shared memory), false for socket connections.
    pub fn is_local(&self) -> bool {
        matches!(self.t, Transport::Local(_))
    }

    /// The largest message this end accepts from its peer, in bytes (socket connections:
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE) by default; pipe ends:
    /// unlimited, `u64::MAX`).
    pub fn max_message_size(&self) -> u64 {
        match &self.t {
            Transport::Local(_) => u64::MAX,
            Transport::Stream(s) => s.max(),
        }
    }

    /// Sets the largest message a socket connection accepts: a frame announcing more is
    /// refused with [`Error::FrameTooLarge`] before any memory is allocated for it. No effect on
    /// pipe ends (their peer shares our memory already).
    pub fn set_max_message_size(&self, bytes: u64) {
        if let Transport::Stream(s) = &self.t {
            s.set_max(bytes);
        }
    }

    /// Sets how long a send waits for the peer to make room (`None`, the default: for ever):
    /// past it the send fails with [`Error::Timeout`]. For a server whose client may stop
    /// reading. Python has no such setting. A send that timed out part way through a message
    /// leaves the connection unusable (the peer would see half a message): drop it then.
    pub fn set_send_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        match &self.t {
            Transport::Local(l) => {
                l.set_send_timeout(timeout);
                Ok(())
            }
            Transport::Stream(s) => s.set_send_timeout(timeout),
        }
    }
}

impl<T, D: CanSend> Connection<T, D> {
    /// Sends `buf[offset..offset + size]` (all of `buf` from `offset` when `size` is `None`) as
    /// one message: Python's `send_bytes(buf, offset, size)`, with its checks
    /// ([`Error::InvalidArgument`] `"buffer length < offset"` or
    /// `"buffer length < offset + size"`; negative values cannot be written in Rust).
    pub fn send_bytes(&self, buf: &[u8], offset: usize, size: Option<usize>) -> Result<()> {
        let bytes = slice_args(buf, offset, size)?;
        match &self.t {
            Transport::Local(l) => l.send_raw(bytes),
            Transport::Stream(s) => s.send_raw(bytes),
        }
    }
}

impl<T: Message, D: CanSend> Connection<T, D> {
    /// Sends a value. Small values are serialized straight into shared memory; values of any
    /// size work. Blocks while the peer's ring is full; [`Error::BrokenPipe`] when the peer's
    /// end is gone (noticed when the ring fills up or the peer needs waking).
    pub fn send(&self, value: &T) -> Result<()> {
        match &self.t {
            Transport::Local(l) => l.send_value(value),
            Transport::Stream(s) => s.send_value(value),
        }
    }
}

impl<T, D: CanRecv> Connection<T, D> {
    fn next_bytes(&self, deadline: Deadline, check: &dyn Fn(u64) -> Result<()>) -> Result<Vec<u8>> {
        match &self.t {
            Transport::Local(l) => {
                let msg = l.next_message(deadline, check)?;
                let mut v = vec![0u8; msg.len()];
                l.deliver_into(msg, &mut v);
                Ok(v)
            }
            Transport::Stream(s) => Ok(s.recv_frame(deadline, check)?.to_vec()),
        }
    }

    /// Receives one message as bytes: Python's `recv_bytes(maxlength)`. With `Some(max)`, a
    /// longer message is refused with [`Error::MessageTooLong`] and stays first in line (Python
    /// closes the connection instead). [`Error::Eof`] once the peer is gone and nothing is
    /// left.
    pub fn recv_bytes(&self, max: Option<usize>) -> Result<Vec<u8>> {
        self.next_bytes(Deadline::never(), &|size| match max {
            Some(max) if size > max as u64 => Err(Error::MessageTooLong { size, max }),
            _ => Ok(()),
        })
    }

    /// Like [`recv_bytes`](Self::recv_bytes) but gives up with [`Error::Timeout`] after
    /// `timeout` (nothing is lost: a message half-received stays buffered).
    pub fn recv_bytes_timeout(&self, max: Option<usize>, timeout: Duration) -> Result<Vec<u8>> {
        self.next_bytes(Deadline::after(Some(timeout)), &|size| match max {
            Some(max) if size > max as u64 => Err(Error::MessageTooLong { size, max }),
            _ => Ok(()),
        })
    }

    /// Receives one message into `buf` at `offset` and returns its length: Python's
    /// `recv_bytes_into(buf, offset)`. `offset > buf.len()` is [`Error::InvalidArgument`]
    /// (`"offset too large"`); a message that does not fit is [`Error::BufferTooShort`] and
    /// stays first in line, so a larger buffer can take it.
    pub fn recv_bytes_into(&self, buf: &mut [u8], offset: usize) -> Result<usize> {
        if offset > buf.len() {
            return Err(Error::InvalidArgument("offset too large"));
        }
        let available = buf.len() - offset;
        let check = |size: u64| {
            if size > available as u64 {
                Err(Error::BufferTooShort {
                    needed: usize::try_from(size).unwrap_or(usize::MAX),
                    available,
                })
            } else {
                Ok(())
            }
        };
        match &self.t {
            Transport::Local(l) => {
                let msg = l.next_message(Deadline::never(), &check)?;
                let n = msg.len();
                l.deliver_into(msg, &mut buf[offset..offset + n]);
                Ok(n)
            }
            Transport::Stream(s) => {
                let f = s.recv_frame(Deadline::never(), &check)?;
                buf[offset..offset + f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
        }
    }

    /// True when a message (or end-of-file) can be received without blocking, after waiting up
    /// to `timeout` (`None`: as long as it takes; `Some(Duration::ZERO)`: Python's default
    /// `poll()`). Does not consume anything.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = Deadline::after(timeout);
        match &self.t {
            Transport::Local(l) => l.poll(deadline),
            Transport::Stream(s) => s.poll(deadline),
        }
    }
}

impl<T: Message, D: CanRecv> Connection<T, D> {
    /// Receives one value, blocking until one arrives: Python's `recv()`. [`Error::Eof`] once
    /// the peer is gone and every message it sent has been received.
    pub fn recv(&self) -> Result<T> {
        self.recv_deadline(Deadline::never())
    }

    /// Receives one value, or [`Error::Timeout`] after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_deadline(Deadline::after(Some(timeout)))
    }

    fn recv_deadline(&self, deadline: Deadline) -> Result<T> {
        match &self.t {
            Transport::Local(l) => l.recv_value(deadline),
            Transport::Stream(s) => s.recv_value(deadline),
        }
    }

    /// Receives one message and gives access to it as rkyv's archived `T`, checked but not
    /// deserialized: no allocation for its strings and vectors (the zero-copy receive). The
    /// guard derefs to `&T::Archived`; [`Received::deserialize`] makes an owned `T` when
    /// needed.
    ///
    /// ```
    /// use mp_pipe::{Duplex, Pipe};
    /// let (a, b) = Pipe::<Vec<String>>::new(Duplex)?;
    /// a.send(&vec!["zero".into(), "copy".into()])?;
    /// let msg = b.recv_ref()?;
    /// assert_eq!(msg.len(), 2);
    /// assert_eq!(msg[1].as_str(), "copy");
    /// # Ok::<(), mp_pipe::Error>(())
    /// ```
    pub fn recv_ref(&self) -> Result<Received<'_, T>> {
        self.recv_ref_deadline(Deadline::never())
    }

    /// [`recv_ref`](Self::recv_ref), or [`Error::Timeout`] after `timeout`.
    pub fn recv_ref_timeout(&self, timeout: Duration) -> Result<Received<'_, T>> {
        self.recv_ref_deadline(Deadline::after(Some(timeout)))
    }

    fn recv_ref_deadline(&self, deadline: Deadline) -> Result<Received<'_, T>> {
        let bytes = match &self.t {
            Transport::Local(l) => l.recv_buf(deadline)?,
            Transport::Stream(s) => RecvBytes::Owned(s.recv_frame(deadline, &|_| Ok(()))?),
        };
        message::access::<T>(bytes.as_slice())?;
        Ok(Received {
            bytes,
            _t: PhantomData,
        })
    }
}

/// A message received by [`Connection::recv_ref`]: its bytes, checked as an archive of `T`,
/// in a buffer private to this process. Derefs to `&T::Archived`.
pub struct Received<'a, T: Message> {
    bytes: RecvBytes<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> Received<'_, T> {
    /// Deserializes the message to an owned `T`.
    pub fn deserialize(&self) -> Result<T> {
        Ok(message::deserialize::<T>(self)?)
    }

    /// The archive's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

impl<T: Message> std::ops::Deref for Received<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: `recv_ref_deadline` checked these exact bytes with `access::<T>` before
        // making the guard; they sit in a buffer of this process that nothing writes while
        // the guard lives (it owns the buffer or holds the only borrow of the scratch buffer),
        // 16-aligned (an `AlignedVec<16>`).
        unsafe { mp_core::rkyv::access_unchecked::<T::Archived>(self.bytes.as_slice()) }
    }
}

impl<T: Message> std::fmt::Debug for Received<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("type", &std::any::type_name::<T>())
            .field("bytes", &self.as_bytes().len())
            .finish()
    }
}

impl<T, D: Direction> AsFd for Connection<T, D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.t {
            Transport::Local(l) => l.fd(),
            Transport::Stream(s) => s.fd(),
        }
    }
}

impl<T, D: Direction> AsRawFd for Connection<T, D> {
    fn as_raw_fd(&self) -> RawFd {
        self.fileno()
    }
}

impl<T> Connection<T, Duplex> {
    /// A socket connection over an already connected stream socket (a `UnixStream` or
    /// `TcpStream` turned into an `OwnedFd`), with no authentication. Listener and Client
    /// build theirs this way after the handshake.
    pub fn from_socket(sock: OwnedFd) -> Connection<T, Duplex> {
        Connection::from_transport(Transport::Stream(StreamEnd::new(sock)))
    }
}
