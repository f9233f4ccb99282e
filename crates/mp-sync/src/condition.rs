//! [`Condition`]: wait for a notification while holding a lock.
//!
//! # Algorithm
//! The condition keeps two counters next to its futex word `seq`, both changed under the
//! condition's lock except where noted:
//!
//! * `waiters`: waiters that registered and were not notified yet;
//! * `signals`: notifications issued and not yet consumed (consumed without the lock, by CAS).
//!
//! `wait` registers (`waiters += 1`) while it holds the lock, releases every level of the
//! lock, then sleeps on `seq` until it can consume a signal or the timeout passes, and
//! re-acquires the lock. `notify(n)` moves `k = min(n, waiters)` from `waiters` to `signals`,
//! bumps `seq` and wakes `k` sleepers; exactly `k` waits then return `true`, because each
//! signal is consumed once and a timed-out waiter, back under the lock, either takes itself
//! out of `waiters` (it was not notified) or, when `waiters` is 0, consumes the signal meant
//! for it (it was). This is the semantics of CPython's `multiprocessing.Condition` (a
//! semaphore of sleepers): a waiter that arrives after a notify may take that notification in
//! place of an older waiter, which then keeps waiting; the count is exact either way.
//!
//! A waiter killed inside `wait` stays counted: a later `notify_all` then leaves one signal
//! unconsumed, and the next waiter returns at once, as from a spurious wake-up. Loop on the
//! predicate ([`wait_for`](Condition::wait_for)) and such a wake-up does no harm.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mp_core::futex;
use mp_core::{Deadline, Shared, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::error::{Error, LockResult, OwnerDied, Result, TryLockResult};
use crate::lock::{Lock, RLock};

/// The lock under a [`Condition`]: Python allows a `Lock` or an `RLock`.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub enum CondLock {
    /// A non-recursive lock; "held" means held by this process.
    Lock(Lock),
    /// A recursive lock; "held" means held by this thread.
    RLock(RLock),
}

impl From<Lock> for CondLock {
    fn from(l: Lock) -> CondLock {
        CondLock::Lock(l)
    }
}

impl From<RLock> for CondLock {
    fn from(l: RLock) -> CondLock {
        CondLock::RLock(l)
    }
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawCondition {
    /// The futex word; bumped by every notify.
    seq: AtomicU32,
    /// Registered waiters not notified yet (under the lock).
    waiters: AtomicU32,
    /// Notifications not consumed yet.
    signals: AtomicU32,
    _reserved: AtomicU32,
}
assert_eq_size!(RawCondition, [u32; 4]);
assert_eq_align!(RawCondition, u32);

// SAFETY: only atomics (1); any counts are valid, at worst causing spurious wake-ups (2); no
// Drop (3); `#[repr(C)]`, size and alignment pinned above (4).
unsafe impl ShmSafe for RawCondition {}

impl RawCondition {
    fn try_consume(&self) -> bool {
        let mut s = self.signals.load(Ordering::Relaxed);
        while s > 0 {
            // Acquire pairs with the Release increment in `notify`.
            match self
                .signals
                .compare_exchange_weak(s, s - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(x) => s = x,
            }
        }
        false
    }
}

/// A condition variable shared between processes (Python's `multiprocessing.Condition`).
///
/// Waiting needs the lock held, which the guard proves: [`wait`](Condition::wait) takes the
/// [`CondGuard`] from [`lock`](Condition::lock), releases every level of the lock while it
/// sleeps, and gives the guard back re-acquired. [`notify`](Condition::notify) without the
/// lock held is [`Error::NotOwner`], as Python's `RuntimeError`.
///
/// ```
/// use std::time::Duration;
/// use mp_sync::Condition;
/// let cond = Condition::new()?;
/// let guard = cond.lock().unwrap();
/// // Nobody notifies: the timed wait gives up and re-acquires the lock.
/// let (guard, notified) = cond.wait_timeout(guard, Duration::from_millis(10)).unwrap();
/// assert!(!notified);
/// assert_eq!(cond.notify_all()?, 0); // held: allowed, nobody to wake
/// drop(guard);
/// assert!(cond.notify(1).is_err()); // not held
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct Condition {
    lock: CondLock,
    raw: Shared<RawCondition>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("waiters", &self.raw.waiters.load(Ordering::Relaxed))
            .finish()
    }
}

impl Condition {
    /// A condition over a new [`RLock`] (Python's default).
    pub fn new() -> Result<Condition> {
        Condition::with_lock(RLock::new()?)
    }

    /// A condition over the given lock.
    pub fn with_lock(lock: impl Into<CondLock>) -> Result<Condition> {
        Ok(Condition {
            lock: lock.into(),
            raw: Shared::new(RawCondition {
                seq: AtomicU32::new(0),
                waiters: AtomicU32::new(0),
                signals: AtomicU32::new(0),
                _reserved: AtomicU32::new(0),
            })?,
        })
    }

    /// The lock under this condition.
    pub fn get_lock(&self) -> &CondLock {
        &self.lock
    }

    fn guard(&self) -> CondGuard<'_> {
        CondGuard {
            cond: self,
            _not_send: PhantomData,
        }
    }

    /// Acquires the lock (one more level, for an `RLock` this thread owns).
    pub fn lock(&self) -> LockResult<CondGuard<'_>> {
        let r = match &self.lock {
            CondLock::Lock(l) => l.acquire(),
            CondLock::RLock(l) => l.acquire(),
        };
        match r {
            Ok(()) => Ok(self.guard()),
            Err(e) => Err(e.map(|()| self.guard())),
        }
    }

    /// Acquires the lock without waiting.
    pub fn try_lock(&self) -> TryLockResult<CondGuard<'_>> {
        let r = match &self.lock {
            CondLock::Lock(l) => l.try_acquire(),
            CondLock::RLock(l) => l.try_acquire(),
        };
        r.map(|()| self.guard())
            .map_err(|e| e.map(|()| self.guard()))
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<CondGuard<'_>> {
        let r = match &self.lock {
            CondLock::Lock(l) => l.acquire_timeout(timeout),
            CondLock::RLock(l) => l.acquire_timeout(timeout),
        };
        r.map(|()| self.guard())
            .map_err(|e| e.map(|()| self.guard()))
    }

    /// True when the caller holds the lock (this thread for an `RLock`, this process for a
    /// `Lock`).
    pub fn is_held(&self) -> bool {
        match &self.lock {
            CondLock::Lock(l) => l.held_by_me(),
            CondLock::RLock(l) => l.is_owned(),
        }
    }

    /// Waits for a notification, then re-acquires the lock.
    ///
    /// # Panics
    /// When `guard` belongs to another condition.
    pub fn wait<'a>(&'a self, guard: CondGuard<'a>) -> LockResult<CondGuard<'a>> {
        match self.wait_until(guard, Deadline::never()) {
            (_, Ok(())) => Ok(self.guard()),
            (_, Err(pid)) => Err(OwnerDied::new(self.guard(), pid)),
        }
    }

    /// Waits at most `timeout` for a notification, then re-acquires the lock (however long
    /// that takes, as Python does). The flag says whether it was notified.
    ///
    /// # Panics
    /// When `guard` belongs to another condition.
    pub fn wait_timeout<'a>(
        &'a self,
        guard: CondGuard<'a>,
        timeout: Duration,
    ) -> LockResult<(CondGuard<'a>, bool)> {
        match self.wait_until(guard, Deadline::after(Some(timeout))) {
            (n, Ok(())) => Ok((self.guard(), n)),
            (n, Err(pid)) => Err(OwnerDied::new((self.guard(), n), pid)),
        }
    }

    /// Waits until `predicate()` holds (checked under the lock, first before waiting), at
    /// most `timeout` in all (`None`: no limit). Returns the last value of the predicate.
    ///
    /// # Panics
    /// When `guard` belongs to another condition.
    pub fn wait_for<'a>(
        &'a self,
        mut guard: CondGuard<'a>,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> LockResult<(CondGuard<'a>, bool)> {
        let deadline = Deadline::after(timeout);
        loop {
            if predicate() {
                return Ok((guard, true));
            }
            if deadline.expired() {
                return Ok((guard, false));
            }
            match self.wait_until(guard, deadline) {
                (_, Ok(())) => guard = self.guard(),
                (_, Err(pid)) => return Err(OwnerDied::new((self.guard(), predicate()), pid)),
            }
        }
    }

    /// The core of every wait: returns whether it was notified, and `Err(pid)` when the
    /// lock was re-acquired from a dead holder. The lock is held again on return.
    fn wait_until(&self, guard: CondGuard<'_>, deadline: Deadline) -> (bool, Result<(), u32>) {
        assert!(
            std::ptr::eq(guard.cond, self),
            "Condition::wait: the guard belongs to another condition"
        );
        // The lock is released below by hand, level by level; the guard must not release it
        // again when dropped.
        std::mem::forget(guard);
        // Under the lock: the lock's release below publishes it to the next notifier.
        self.raw.waiters.fetch_add(1, Ordering::Relaxed);
        let depth = match &self.lock {
            CondLock::Lock(l) => {
                l.raw().unlock();
                1
            }
            CondLock::RLock(l) => l.release_all(),
        };
        let mut notified = loop {
            // Acquire pairs with the Release bump in `notify`.
            let seq = self.raw.seq.load(Ordering::Acquire);
            if self.raw.try_consume() {
                break true;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                break false;
            }
            futex::wait(&self.raw.seq, seq, left);
        };
        let reacquired = match &self.lock {
            CondLock::Lock(l) => l.acquire(),
            CondLock::RLock(l) => {
                let r = l.acquire();
                l.restore(depth);
                r
            }
        };
        if !notified {
            // Back under the lock: either we are still counted as a waiter (take ourselves
            // out), or a notify counted us already and left a signal for us (take it).
            let w = self.raw.waiters.load(Ordering::Relaxed);
            if w > 0 {
                self.raw.waiters.store(w - 1, Ordering::Relaxed);
            } else {
                notified = self.raw.try_consume();
            }
        }
        (notified, reacquired.map_err(|e| e.pid()))
    }

    /// Wakes `n` waiters (fewer if fewer wait); returns how many. [`Error::NotOwner`] when
    /// the caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<u32> {
        if !self.is_held() {
            return Err(Error::NotOwner);
        }
        let w = self.raw.waiters.load(Ordering::Relaxed);
        let k = n.min(w);
        if k == 0 {
            return Ok(0);
        }
        self.raw.waiters.store(w - k, Ordering::Relaxed);
        // Release pairs with the Acquire CAS in `try_consume`.
        self.raw.signals.fetch_add(k, Ordering::Release);
        // Release pairs with the Acquire load of `seq` in `wait_until`.
        self.raw.seq.fetch_add(1, Ordering::Release);
        futex::wake(&self.raw.seq, k);
        Ok(k)
    }

    /// Wakes every waiter; returns how many.
    pub fn notify_all(&self) -> Result<u32> {
        self.notify(u32::MAX)
    }
}

/// Proof that the caller holds a [`Condition`]'s lock (one level); releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct CondGuard<'a> {
    cond: &'a Condition,
    _not_send: PhantomData<*const ()>,
}

impl CondGuard<'_> {
    /// Releases this level of the lock now.
    pub fn unlock(self) {
        drop(self)
    }
}

impl Drop for CondGuard<'_> {
    fn drop(&mut self) {
        match &self.cond.lock {
            CondLock::Lock(l) => {
                l.raw().unlock();
            }
            CondLock::RLock(l) => {
                let _ = l.release();
            }
        }
    }
}

impl fmt::Debug for CondGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CondGuard").finish_non_exhaustive()
    }
}
