//! The error type of mp-pipe.

use std::io;

/// Everything that can go wrong with a [`Connection`](crate::Connection), [`wait`](crate::wait),
/// a [`Listener`](crate::Listener) or a [`Client`](crate::Client).
///
/// Where Python raises `EOFError`, `BufferTooShort`, `AuthenticationError`, `ValueError` or
/// `OSError`, mp returns the variant of the same meaning; every message says what happened and
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer closed its end (or died) and every message it sent has been received.
    /// Python's `EOFError`.
    #[error("end of file: the other end of the connection is closed (or its process died) and no message is left")]
    Eof,
    /// The peer died or closed its end in the middle of a message: the part received is dropped.
    #[error(
        "the other end closed in the middle of a message ({received} of {expected} bytes received)"
    )]
    Truncated {
        /// Bytes of the message that arrived.
        received: u64,
        /// The size the message announced.
        expected: u64,
    },
    /// The peer's receiving end is gone: what is sent cannot be delivered. Python's
    /// `BrokenPipeError`.
    #[error("broken pipe: the other end of the connection no longer receives (closed, or its process died)")]
    BrokenPipe,
    /// This end was closed with [`close`](crate::Connection::close). Python's `OSError: handle is closed`.
    #[error("the connection is closed")]
    Closed,
    /// A timed call ran out of time; nothing was received or sent.
    #[error("timed out")]
    Timeout,
    /// `recv_bytes_into`: the message does not fit after `offset`. The message is **not** lost:
    /// it stays first in line for the next receive. Python's `BufferTooShort`.
    #[error("buffer too short: the message is {needed} bytes, the buffer has {available} after the offset (the message is kept for the next receive)")]
    BufferTooShort {
        /// The message's size.
        needed: usize,
        /// Room in the buffer after the offset.
        available: usize,
    },
    /// `recv_bytes(Some(max))`: the next message is longer than `max`. The message is kept for
    /// the next receive (Python closes the connection instead).
    #[error("bad message length: the message is {size} bytes, more than the {max} asked for (it is kept for the next receive)")]
    MessageTooLong {
        /// The message's size.
        size: u64,
        /// The limit given.
        max: usize,
    },
    /// A frame announced more bytes than this connection accepts (see
    /// [`set_max_message_size`](crate::Connection::set_max_message_size)); the stream cannot
    /// be resynchronised, so the connection is closed.
    #[error("frame of {size} bytes refused: this connection accepts at most {limit} (raise it with set_max_message_size if the peer is trusted); the connection was closed")]
    FrameTooLarge {
        /// The size the frame announced.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The peer sent bytes that break the protocol (a malformed frame or ring record).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An argument out of range, with Python's wording (`"buffer length < offset"`,
    /// `"buffer length < offset + size"`, `"offset too large"`, ...). Python's `ValueError`.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The challenge-response handshake failed: wrong authkey on either side, or a peer that
    /// does not speak the protocol. Python's `AuthenticationError`.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The peer closed the connection, or its process died, in the middle of the
    /// challenge-response handshake (end of file, `ECONNRESET`, `EPIPE`): nothing is known of
    /// its key. Not a failed authentication: Python raises `EOFError` or
    /// `ConnectionResetError` here, not `AuthenticationError`.
    #[error(
        "the peer closed the connection (or its process died) during the authentication handshake"
    )]
    HandshakeClosed,
    /// The address is taken already (`bind`). Python's `OSError: [Errno 98] Address already in use`.
    #[error("address already in use: {0}")]
    AddressInUse(String),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What mp was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An error of mp-core: a value that could not be encoded, received bytes that are not a
    /// valid message of the expected type, a shared region that could not be made or mapped.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

impl Error {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Error {
        Error::Io { op, source }
    }

    pub(crate) fn last_os(op: &'static str) -> Error {
        Error::Io {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// True for [`Error::Eof`], [`Error::Truncated`] and [`Error::HandshakeClosed`]: the peer
    /// is gone (Python's `EOFError`).
    pub fn is_eof(&self) -> bool {
        matches!(
            self,
            Error::Eof | Error::Truncated { .. } | Error::HandshakeClosed
        )
    }
}

/// The result type of mp-pipe.
pub type Result<T, E = Error> = std::result::Result<T, E>;
