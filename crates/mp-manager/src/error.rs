//! The error type of mp-manager.

use crate::wire::{Kind, Refused};

/// Everything a [`Manager`](crate::Manager) or a proxy can report.
///
/// The errors a Python manager's objects raise come back as the variant of the same meaning
/// (`KeyError`, `IndexError`, `AttributeError`, `queue.Empty`, `queue.Full`, releasing an
/// unlocked lock); a server that died is [`Error::ServerGone`], never a hang.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A dict has no such key (Python's `KeyError`).
    #[error("KeyError: the dict has no such key")]
    KeyError,
    /// A list index out of range (Python's `IndexError`).
    #[error("IndexError: index {index} is out of range for a list of {len}")]
    IndexError {
        /// The index asked for (negative counts from the end, as in Python).
        index: i64,
        /// The list's length.
        len: u64,
    },
    /// A namespace has no such attribute (Python's `AttributeError`).
    #[error("AttributeError: the namespace has no attribute {0:?}")]
    AttributeError(String),
    /// `Queue::get` found nothing before the timeout (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// `Queue::put` found no room before the timeout (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,
    /// `Lock::release` of a lock that is not held (Python's `RuntimeError`).
    #[error("release of an unlocked lock")]
    NotLocked,
    /// Releasing (or waiting on, or notifying) an `RLock` or `Condition` that this connection
    /// does not hold (Python's `RuntimeError: cannot release un-acquired lock`).
    #[error("the lock is not held by this thread of this process")]
    NotOwner,
    /// A `BoundedSemaphore` released more often than acquired (Python's `ValueError`).
    #[error("the bounded semaphore was released too many times")]
    TooManyReleases,
    /// A barrier was broken (aborted, or a wait timed out) while or before this party waited
    /// (Python's `threading.BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// The object is not (or no longer) in the server: it was freed (the last proxy to it
    /// went before this one was decoded), the proxy belongs to another manager, or the
    /// server was restarted.
    #[error("the manager holds no object {0}")]
    NoSuchObject(u64),
    /// A name was first used for an object of another kind.
    #[error("the name refers to a {found}, not a {expected}")]
    WrongKind {
        /// The kind the proxy expects.
        expected: Kind,
        /// The kind the name was made with.
        found: Kind,
    },
    /// The server process is gone (killed, or shut down) or the connection to it broke.
    #[error("the manager's server is gone: {0}")]
    ServerGone(String),
    /// No type was registered under this typeid ([`ManagerBuilder::register`](crate::ManagerBuilder::register)).
    #[error("no type is registered as {0:?} with this manager")]
    UnknownType(String),
    /// A custom object used through a proxy of another Rust type.
    #[error("the object is a {found}, the proxy expects a {expected}")]
    WrongType {
        /// The proxy's type.
        expected: String,
        /// The registered type.
        found: String,
    },
    /// A custom object's `handle` panicked (what Python reports by re-raising the exception);
    /// the message is the panic's.
    #[error("the managed object raised: {0}")]
    Raised(String),
    /// The server and this process do not share the authkey.
    #[error("authentication with the manager failed (wrong authkey)")]
    Authentication,
    /// An argument out of range (a barrier of 0 parties).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The server could not be started.
    #[error("the manager's server could not start: {0}")]
    Start(String),
    /// A count the server keeps would pass its largest value (a re-entrant lock acquired
    /// `u32::MAX` times); the server refused the operation.
    #[error("{0} would overflow: the server refused the operation")]
    Overflow(String),
    /// The server serves as many connections as it allows
    /// ([`ManagerBuilder::max_connections`](crate::ManagerBuilder::max_connections)); it
    /// closed this one. Retry later, or use fewer threads per process.
    #[error("the manager's server refused the connection: it serves {0} connections already")]
    TooManyConnections(u64),
    /// Bytes that do not decode as the proxy's type (a name used with two different types),
    /// or a reply the protocol does not allow.
    #[error("malformed data from the manager: {0}")]
    Malformed(String),
    /// Any other failure of the connection.
    #[error(transparent)]
    Pipe(mp_pipe::Error),
    /// A value that cannot be serialized.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

impl From<mp_pipe::Error> for Error {
    fn from(e: mp_pipe::Error) -> Error {
        match e {
            mp_pipe::Error::Authentication(_) => Error::Authentication,
            e @ (mp_pipe::Error::Eof
            | mp_pipe::Error::Truncated { .. }
            | mp_pipe::Error::BrokenPipe
            | mp_pipe::Error::HandshakeClosed
            | mp_pipe::Error::Closed) => Error::ServerGone(e.to_string()),
            mp_pipe::Error::Io { op, source }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::NotFound
                ) =>
            {
                Error::ServerGone(format!("{op}: {source}"))
            }
            e => Error::Pipe(e),
        }
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        match r {
            Refused::KeyError => Error::KeyError,
            Refused::IndexError { index, len } => Error::IndexError { index, len },
            Refused::AttributeError(a) => Error::AttributeError(a),
            Refused::Empty => Error::Empty,
            Refused::Full => Error::Full,
            Refused::NotLocked => Error::NotLocked,
            Refused::NotOwner => Error::NotOwner,
            Refused::TooManyReleases => Error::TooManyReleases,
            Refused::BrokenBarrier => Error::BrokenBarrier,
            Refused::NoSuchObject(id) => Error::NoSuchObject(id),
            Refused::WrongKind { expected, found } => Error::WrongKind { expected, found },
            Refused::UnknownType(t) => Error::UnknownType(t),
            Refused::WrongType { expected, found } => Error::WrongType { expected, found },
            Refused::Raised(m) => Error::Raised(m),
            Refused::Malformed(m) => Error::Malformed(m),
            Refused::Overflow(what) => Error::Overflow(what),
            Refused::TooManyConnections(n) => Error::TooManyConnections(n),
        }
    }
}

/// The result type of mp-manager.
pub type Result<T, E = Error> = std::result::Result<T, E>;
