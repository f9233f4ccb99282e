//! The errors of mp-queue.

use std::fmt;

/// What went wrong with a queue (other than a `put`, which gives its item back: [`PutError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing to get (Python's `queue.Empty`): the queue was empty for the whole timeout, or
    /// at once for `get_nowait`.
    #[error("the queue is empty")]
    Empty,
    /// This handle was closed with `close()`.
    #[error("the queue is closed (close() was called on this handle)")]
    Closed,
    /// `task_done()` was called more times than items were put.
    #[error("task_done() called more times than there were items put")]
    TaskDoneTooMany,
    /// `join_timeout` ran out before every item was marked done.
    #[error("timed out waiting for every item to be marked done")]
    Timeout,
    /// A configuration that cannot work.
    #[error("invalid queue configuration: {0}")]
    Config(String),
    /// The ring holds something no mp producer writes (a corrupted or hostile peer). The damage
    /// is skipped so the queue stays usable; the message says what was lost.
    #[error("the queue's shared ring is corrupted: {0}")]
    Corrupted(String),
    /// From mp-core: a message that is not a valid archive of `T`, a system call that failed.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

/// Why a message could not go beside the ring (the side channel for messages larger than
/// half of it). It reaches the caller inside [`PutError::Failed`] as the source of an
/// [`mp_core::Error::Io`] (so code that treats every `Io` failure of a put as "the shared
/// memory could not take it", as mp-pool does, keeps working); [`PutError::spill_error`] and
/// [`Error::spill_error`] find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// The message needs more side-channel memory than the queue's whole budget
    /// ([`QueueBuilder::max_spill_bytes`](crate::QueueBuilder::max_spill_bytes)): it could
    /// never be put, so it is refused at once instead of waiting forever.
    #[error(
        "a message of {size} bytes needs {needed} bytes beside the queue's ring, more than its          whole budget (max_spill_bytes = {budget}): raise max_spill_bytes or send smaller items"
    )]
    TooLarge {
        /// The message's encoded size.
        size: u64,
        /// The side-channel memory it needs (its size rounded up to whole pages).
        needed: u64,
        /// The queue's budget.
        budget: u64,
    },
    /// The system could not give the side channel the memory for the message: the shared
    /// memory is full (`ENOSPC`: `/dev/shm`'s or the machine's memory; `ENOMEM`), or a limit
    /// on file sizes was reached (`EFBIG`: `RLIMIT_FSIZE`). Nothing was put; the queue is
    /// unchanged and works for smaller messages.
    #[error(
        "the queue's shared memory is full: {needed} bytes for a message beside the ring could          not be allocated ({}): free some memory, or send smaller items",
        std::io::Error::from_raw_os_error(*errno)
    )]
    SharedMemoryFull {
        /// The side-channel memory the message needed.
        needed: u64,
        /// The system's error number (`ENOSPC`, `ENOMEM` or `EFBIG`).
        errno: i32,
    },
}

impl SpillError {
    /// The error as a put returns it: an `mp_core::Error::Io` whose source is this.
    pub(crate) fn into_core(self) -> mp_core::Error {
        let kind = match self {
            SpillError::TooLarge { .. } => std::io::ErrorKind::FileTooLarge,
            SpillError::SharedMemoryFull { errno, .. } if errno == libc::EFBIG => {
                std::io::ErrorKind::FileTooLarge
            }
            SpillError::SharedMemoryFull { .. } => std::io::ErrorKind::StorageFull,
        };
        mp_core::Error::Io {
            op: "putting a message beside the queue's ring",
            source: std::io::Error::new(kind, self),
        }
    }

    /// The `SpillError` inside `e`, if it holds one.
    fn find(e: &mp_core::Error) -> Option<&SpillError> {
        match e {
            mp_core::Error::Io { source, .. } => source.get_ref()?.downcast_ref::<SpillError>(),
            _ => None,
        }
    }
}

impl Error {
    /// The side-channel failure behind this error (a message larger than the budget, or
    /// shared memory that is full), if that is what it is; for example a [`BatchError`]'s.
    pub fn spill_error(&self) -> Option<&SpillError> {
        match self {
            Error::Core(e) => SpillError::find(e),
            _ => None,
        }
    }
}

/// A failed `put`, with the item given back (`into_inner`). Python's `queue.Full`, without
/// losing the item.
pub enum PutError<T> {
    /// No room before the timeout (or at once, for `put_nowait`).
    Full(T),
    /// This handle was closed with `close()`.
    Closed(T),
    /// The item could not be serialized, or could not go beside the ring: an
    /// [`mp_core::Error::Io`] whose source is a [`SpillError`] (see
    /// [`spill_error`](Self::spill_error)) when it exceeds the queue's whole side-channel
    /// budget or the shared memory is full.
    Failed(T, mp_core::Error),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t) | PutError::Closed(t) | PutError::Failed(t, _) => t,
        }
    }

    /// True for [`PutError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }

    /// The side-channel failure behind a [`PutError::Failed`], if that is what it is:
    /// [`SpillError::TooLarge`] (the message exceeds the queue's whole budget) or
    /// [`SpillError::SharedMemoryFull`] (`ENOSPC`, `ENOMEM`, `EFBIG`).
    pub fn spill_error(&self) -> Option<&SpillError> {
        match self {
            PutError::Failed(_, e) => SpillError::find(e),
            _ => None,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Failed(_, e) => f.debug_tuple("Failed").field(&"..").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Closed(_) => {
                f.write_str("the queue is closed (close() was called on this handle)")
            }
            PutError::Failed(_, e) => write!(f, "put failed: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Failed(_, e) => Some(e),
            _ => None,
        }
    }
}

/// A [`put_many`](crate::Queue::put_many) that stopped at an item it could not put: the
/// first `put` items are in the queue, the rest are not.
#[derive(Debug, thiserror::Error)]
#[error("put_many stopped after {put} items: {error}")]
pub struct BatchError {
    /// How many items, from the start of the slice, were put.
    pub put: usize,
    /// Why the next one could not be.
    #[source]
    pub error: Error,
}
