//! [`Semaphore`] and [`BoundedSemaphore`].
//!
//! # Algorithm
//! The value is the futex word. `acquire` decrements it with a CAS while it is positive; a
//! waiter that finds it at zero spins a little, then counts itself in `waiters`, re-checks
//! the value and sleeps on it while it is zero. `release` increments the value and wakes one
//! sleeper when `waiters` is not zero. The `waiters` increment and the value re-check, and
//! the value increment and the `waiters` load, are all `SeqCst`: the Dekker pattern that
//! guarantees a release either sees the waiter or the waiter sees the release.
//!
//! # When a permit holder dies
//! A semaphore has no owner (as in Python, any process may release it), so mp cannot tell
//! which permits a dead process held: **the permits it held are lost**. Nobody hangs who uses
//! a timeout ([`acquire_timeout`](Semaphore::acquire_timeout) returns `false` after the
//! timeout); a process that knows the holder died may give the permit back with
//! [`release`](Semaphore::release). For mutual exclusion that survives the death of the holder,
//! use a [`Lock`](crate::Lock). (A waiter killed while asleep leaves the `waiters` count
//! raised: later releases then make one needless `FUTEX_WAKE` each, nothing worse.)
//!
//! A waiter killed just as a `release` wakes it takes that wake-up with it. So sleepers wait
//! in slices (5 ms, doubling up to 160 ms) and re-check the value: the permit reaches another
//! waiter within one slice.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mp_core::futex;
use mp_core::{Deadline, Shared, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::error::{Error, Result};
use mp_core::ident;
use mp_core::lock::{MAX_SLICE, SLICE};
use mp_core::wait::Spin;

/// The largest value a semaphore holds (Python's `SEM_VALUE_MAX` on Linux).
pub const SEM_VALUE_MAX: u32 = i32::MAX as u32;

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawSemaphore {
    /// The count of free permits; the futex word.
    value: AtomicU32,
    /// How many waiters may be asleep.
    waiters: AtomicU32,
    /// The largest value a release may reach (fixed at construction).
    limit: AtomicU32,
    _reserved: AtomicU32,
}
assert_eq_size!(RawSemaphore, [u32; 4]);
assert_eq_align!(RawSemaphore, u32);

// SAFETY: only atomics (1); any bit pattern is a valid count (2); no Drop (3); `#[repr(C)]`,
// size and alignment pinned above (4).
unsafe impl ShmSafe for RawSemaphore {}

impl RawSemaphore {
    #[inline]
    fn try_take(&self) -> bool {
        // SeqCst: the waiter's re-check in the Dekker pair with `release` (see module doc).
        let mut v = self.value.load(Ordering::SeqCst);
        while v > 0 {
            // Acquire pairs with the Release part of the increment in `release`.
            match self
                .value
                .compare_exchange_weak(v, v - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(x) => v = x,
            }
        }
        false
    }

    fn acquire(&self, deadline: Deadline) -> bool {
        if self.try_take() {
            return true;
        }
        let mut spin = Spin::new(self, deadline);
        while !deadline.expired() && spin.spin() {
            if self.try_take() {
                return true;
            }
        }
        // SeqCst: pairs with the SeqCst load of `waiters` in `release`.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Sleep in slices: `release` wakes one sleeper, and if that one dies before it takes
        // the permit (killed as it wakes), the wake is lost; the others find the permit at
        // their next check instead of sleeping forever.
        let mut slice = SLICE;
        let got = loop {
            if self.try_take() {
                break true;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                break false;
            }
            futex::wait(&self.value, 0, Some(left.map_or(slice, |l| l.min(slice))));
            slice = (slice * 2).min(MAX_SLICE);
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        got
    }

    fn release(&self) -> Result<()> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut v = self.value.load(Ordering::Relaxed);
        loop {
            if v >= limit {
                return Err(Error::TooManyReleases { limit });
            }
            // SeqCst: the releaser's half of the Dekker pair; Release for the next taker.
            match self
                .value
                .compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(x) => v = x,
            }
        }
        // SeqCst pairs with the waiter's SeqCst increment of `waiters`.
        if self.waiters.load(Ordering::SeqCst) != 0 {
            futex::wake(&self.value, 1);
        }
        Ok(())
    }
}

/// A counting semaphore shared between processes (Python's `multiprocessing.Semaphore`).
///
/// `release` may raise the value above the initial one (up to [`SEM_VALUE_MAX`]). The
/// permits of a process that dies while holding them are lost: see the module doc of
/// [`semaphore`](crate::semaphore) for why, and use timeouts where that matters.
///
/// ```
/// use mp_sync::Semaphore;
/// let sem = Semaphore::new(2)?;
/// sem.acquire();
/// assert_eq!(sem.get_value(), 1);
/// {
///     let _permit = sem.permit();
///     assert!(!sem.try_acquire());
/// }
/// sem.release()?;
/// assert_eq!(sem.get_value(), 2);
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct Semaphore {
    raw: Shared<RawSemaphore>,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .finish()
    }
}

impl Semaphore {
    /// A semaphore holding `value` permits ([`Error::InvalidArgument`] above
    /// [`SEM_VALUE_MAX`]).
    pub fn new(value: u32) -> Result<Semaphore> {
        Self::with_limit(value, SEM_VALUE_MAX)
    }

    fn with_limit(value: u32, limit: u32) -> Result<Semaphore> {
        if value > SEM_VALUE_MAX {
            return Err(Error::InvalidArgument(
                "a semaphore value must be at most SEM_VALUE_MAX (2^31 - 1)",
            ));
        }
        ident::init();
        Ok(Semaphore {
            raw: Shared::new(RawSemaphore {
                value: AtomicU32::new(value),
                waiters: AtomicU32::new(0),
                limit: AtomicU32::new(limit),
                _reserved: AtomicU32::new(0),
            })?,
        })
    }

    /// Blocks until a permit is free and takes it.
    #[inline]
    pub fn acquire(&self) {
        self.raw.acquire(Deadline::never());
    }

    /// Takes a permit if one is free, without waiting (Python's `acquire(False)`).
    #[inline]
    pub fn try_acquire(&self) -> bool {
        self.raw.try_take()
    }

    /// Waits at most `timeout` for a permit; false when none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.raw.acquire(Deadline::after(Some(timeout)))
    }

    /// Gives a permit back, waking one waiter. Fails only at [`SEM_VALUE_MAX`].
    #[inline]
    pub fn release(&self) -> Result<()> {
        self.raw.release()
    }

    /// The number of free permits now (Python's `get_value()`).
    pub fn get_value(&self) -> u32 {
        self.raw.value.load(Ordering::Relaxed)
    }

    /// Blocks until a permit is free; the permit goes back when the guard drops.
    pub fn permit(&self) -> Permit<'_> {
        self.acquire();
        Permit { release: self }
    }

    /// Waits at most `timeout` for a permit guard.
    pub fn permit_timeout(&self, timeout: Duration) -> Option<Permit<'_>> {
        self.acquire_timeout(timeout)
            .then_some(Permit { release: self })
    }
}

/// A semaphore that refuses to be released above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`): such a release is [`Error::TooManyReleases`].
///
/// ```
/// use mp_sync::{BoundedSemaphore, Error};
/// let sem = BoundedSemaphore::new(1)?;
/// assert!(matches!(sem.release(), Err(Error::TooManyReleases { limit: 1 })));
/// sem.acquire();
/// sem.release()?;
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct BoundedSemaphore {
    inner: Semaphore,
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("value", &self.get_value())
            .field("limit", &self.inner.raw.limit.load(Ordering::Relaxed))
            .finish()
    }
}

impl BoundedSemaphore {
    /// A semaphore holding `value` permits, never more.
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            inner: Semaphore::with_limit(value, value)?,
        })
    }

    /// Blocks until a permit is free and takes it.
    #[inline]
    pub fn acquire(&self) {
        self.inner.acquire()
    }

    /// Takes a permit without waiting.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Waits at most `timeout` for a permit.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.inner.acquire_timeout(timeout)
    }

    /// Gives a permit back; [`Error::TooManyReleases`] above the initial value.
    #[inline]
    pub fn release(&self) -> Result<()> {
        self.inner.release()
    }

    /// The number of free permits now.
    pub fn get_value(&self) -> u32 {
        self.inner.get_value()
    }

    /// Blocks until a permit is free; the permit goes back when the guard drops.
    pub fn permit(&self) -> Permit<'_> {
        self.inner.permit()
    }

    /// Waits at most `timeout` for a permit guard.
    pub fn permit_timeout(&self, timeout: Duration) -> Option<Permit<'_>> {
        self.inner.permit_timeout(timeout)
    }
}

/// A semaphore permit, given back when dropped.
#[must_use = "the permit is given back as soon as the guard is dropped"]
pub struct Permit<'a> {
    release: &'a Semaphore,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Only fails if others released past the limit meanwhile; nothing to do then.
        let _ = self.release.release();
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}
