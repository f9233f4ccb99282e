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

/// A failed `put`, with the item given back (`into_inner`). Python's `queue.Full`, without
/// losing the item.
pub enum PutError<T> {
    /// No room before the timeout (or at once, for `put_nowait`).
    Full(T),
    /// This handle was closed with `close()`.
    Closed(T),
    /// The item could not be serialized, or the oversized-message area could not be grown.
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
