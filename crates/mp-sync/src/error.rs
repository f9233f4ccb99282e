//! Errors of mp-sync, and the `OwnerDied` outcome of taking over a dead holder's lock.

use std::fmt;

/// Everything that can go wrong in mp-sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A timed or non-blocking call gave up (Python's `False` from `acquire`).
    #[error("timed out")]
    Timeout,
    /// The previous holder of a lock died while holding it; the caller now holds the lock.
    /// Whatever the lock protects may be half-updated: check it.
    #[error(
        "the holder of the lock (pid {pid}) died while holding it; the lock was taken over: \
         check the state it protects"
    )]
    OwnerDied {
        /// The pid (for an `RLock`, the thread id) of the dead holder.
        pid: u32,
    },
    /// `release()` of a lock that is not locked (Python's `ValueError`/`RuntimeError`).
    #[error("release of an unlocked lock: acquire it first")]
    NotLocked,
    /// A call that needs the lock held by the caller (an `RLock` release, a `Condition`
    /// notify) made by a thread that does not hold it.
    #[error("the lock is not held by this thread: acquire it first")]
    NotOwner,
    /// A `BoundedSemaphore` released more often than acquired (or a `Semaphore` at `u32::MAX`).
    #[error("semaphore released too many times (above its initial value {limit})")]
    TooManyReleases {
        /// The largest value the semaphore may hold.
        limit: u32,
    },
    /// The barrier was aborted, reset, timed out, or one of its parties died.
    #[error("the barrier is broken (aborted, reset, timed out, or a party died): reset() it")]
    BrokenBarrier,
    /// An argument out of range (a barrier of 0 parties, an index past the end...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Creating or mapping the shared region failed.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

/// The result type of mp-sync.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The lock was acquired, but its previous holder died while holding it (like a robust
/// mutex's `EOWNERDEAD`).
///
/// The caller holds the lock: [`into_inner`](OwnerDied::into_inner) gives the guard back (the
/// same shape as `std::sync::PoisonError`). Whoever gets this is the only one told, so it is
/// the one to repair the protected state. Converting it into an [`Error`] (with `?`) drops the
/// guard and so releases the lock.
pub struct OwnerDied<G = ()> {
    guard: G,
    pid: u32,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G, pid: u32) -> Self {
        OwnerDied { guard, pid }
    }

    /// The guard (the caller holds the lock).
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// The pid of the dead holder (for an `RLock` or a `Condition` over one: its thread id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> OwnerDied<H> {
        OwnerDied {
            guard: f(self.guard),
            pid: self.pid,
        }
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the previous holder (pid {}) died while holding the lock; it is yours now",
            self.pid
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

impl<G> From<OwnerDied<G>> for Error {
    fn from(e: OwnerDied<G>) -> Error {
        Error::OwnerDied { pid: e.pid }
    }
}

/// Why a non-blocking or timed lock attempt did not give a clean guard.
pub enum TryLockError<G = ()> {
    /// The lock stayed held until the timeout (or was held, for a non-blocking attempt).
    Timeout,
    /// The lock was acquired from a dead holder: the caller holds it.
    OwnerDied(OwnerDied<G>),
}

impl<G> TryLockError<G> {
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> TryLockError<H> {
        match self {
            TryLockError::Timeout => TryLockError::Timeout,
            TryLockError::OwnerDied(o) => TryLockError::OwnerDied(o.map(f)),
        }
    }
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::Timeout => f.write_str("Timeout"),
            TryLockError::OwnerDied(o) => f.debug_tuple("OwnerDied").field(o).finish(),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::Timeout => f.write_str("timed out"),
            TryLockError::OwnerDied(o) => fmt::Display::fmt(o, f),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

impl<G> From<TryLockError<G>> for Error {
    fn from(e: TryLockError<G>) -> Error {
        match e {
            TryLockError::Timeout => Error::Timeout,
            TryLockError::OwnerDied(o) => o.into(),
        }
    }
}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(e: OwnerDied<G>) -> TryLockError<G> {
        TryLockError::OwnerDied(e)
    }
}

/// The result of a blocking lock: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = std::result::Result<G, OwnerDied<G>>;
/// The result of a non-blocking or timed lock.
pub type TryLockResult<G> = std::result::Result<G, TryLockError<G>>;
