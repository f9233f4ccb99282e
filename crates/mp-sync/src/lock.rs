//! [`Lock`] and [`RLock`]: robust locks in shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use mp_core::{Deadline, Shared};
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Error, LockResult, OwnerDied, Result, TryLockError, TryLockResult};
use crate::raw::RawLock;
use mp_core::ident;
use mp_core::lock::Acquire;

fn into_lock_result<G>(a: Acquire, guard: impl FnOnce() -> G) -> LockResult<G> {
    match a {
        Acquire::Clean => Ok(guard()),
        Acquire::OwnerDied(pid) => Err(OwnerDied::new(guard(), pid)),
        // Unreachable with a deadline of "never"; treat defensively as a clean acquire is
        // impossible, so report it the only way the type allows.
        Acquire::Timeout => unreachable_timeout(),
    }
}

#[cold]
fn unreachable_timeout() -> ! {
    // A wait without deadline only returns once the lock is held.
    unreachable!("a lock wait without deadline returned without the lock")
}

fn into_try_result<G>(a: Acquire, guard: impl FnOnce() -> G) -> TryLockResult<G> {
    match a {
        Acquire::Clean => Ok(guard()),
        Acquire::OwnerDied(pid) => Err(TryLockError::OwnerDied(OwnerDied::new(guard(), pid))),
        Acquire::Timeout => Err(TryLockError::Timeout),
    }
}

/// A non-recursive lock shared between processes (Python's `multiprocessing.Lock`).
///
/// As in Python, the lock has no owner in the API sense: any thread of any process may
/// [`release`](Lock::release) it. It does record the *process* that acquired it, so that when
/// that process dies while holding it the next acquirer gets it, told by
/// [`OwnerDied`](crate::OwnerDied). A process that acquires the lock and exits without
/// releasing it counts as dead in the same way, even if it meant another process to release
/// it later.
///
/// Cloning shares the same lock; a clone passed to a child (inherited under fork, or sent
/// as a process argument under spawn) is the same lock there.
///
/// ```
/// use mp_sync::Lock;
/// let lock = Lock::new()?;
/// {
///     let _guard = lock.lock().unwrap();
///     assert!(lock.try_lock().is_err());
/// } // released here
/// assert!(lock.try_lock().is_ok());
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct Lock {
    raw: Shared<RawLock>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.is_locked())
            .finish()
    }
}

impl Lock {
    /// A new, unlocked lock in a shared region of its own.
    pub fn new() -> Result<Lock> {
        ident::init();
        Ok(Lock {
            raw: Shared::new(RawLock::new())?,
        })
    }

    #[inline]
    fn acquire_until(&self, deadline: Deadline) -> Acquire {
        self.raw.lock(ident::process_token(), deadline)
    }

    /// [`acquire`](Self::acquire) for async code (feature `async`): resolves when the lock is
    /// held (`Err(OwnerDied)`: taken over from a dead holder, and held). The task waits without
    /// spinning and without a thread of its own: mp-core's reactor sleeps on the lock's wake
    /// word for every waiting future of the process. Dropping the future before it resolves
    /// takes nothing and passes on a wake-up it may have received.
    ///
    /// Release with [`release`](Self::release): the lock belongs to the process, not to the
    /// task or the thread, so it may be released from any thread.
    #[cfg(all(feature = "async", not(loom)))]
    pub async fn acquire_async(&self) -> LockResult<()> {
        let keep: std::sync::Arc<dyn std::any::Any + Send + Sync> =
            std::sync::Arc::new(self.raw.clone());
        into_lock_result(
            self.raw.lock_async(ident::process_token(), keep).await,
            || (),
        )
    }

    /// Blocks until the lock is acquired. `Err(OwnerDied)` still holds the lock.
    #[inline]
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        into_lock_result(self.acquire_until(Deadline::never()), || self.guard())
    }

    /// Acquires the lock if it is free (or its holder is dead), without waiting. When the lock
    /// is held, this reads `/proc` once to check the holder (a few microseconds), so that a
    /// loop of non-blocking attempts cannot spin forever on a dead holder.
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        into_try_result(self.raw.try_lock(ident::process_token()), || self.guard())
    }

    /// Waits at most `timeout` for the lock; `Err(TryLockError::Timeout)` when it stays held.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        into_try_result(self.acquire_until(Deadline::after(Some(timeout))), || {
            self.guard()
        })
    }

    fn guard(&self) -> LockGuard<'_> {
        LockGuard { lock: self }
    }

    /// Python's `acquire()`: blocks until acquired; release with [`release`](Lock::release).
    #[inline]
    pub fn acquire(&self) -> LockResult<()> {
        into_lock_result(self.acquire_until(Deadline::never()), || ())
    }

    /// Python's `acquire(block=False)`.
    pub fn try_acquire(&self) -> TryLockResult<()> {
        into_try_result(self.raw.try_lock(ident::process_token()), || ())
    }

    /// Python's `acquire(timeout=t)`.
    pub fn acquire_timeout(&self, timeout: Duration) -> TryLockResult<()> {
        into_try_result(self.acquire_until(Deadline::after(Some(timeout))), || ())
    }

    /// Python's `release()`: unlocks, whoever locked it. Releasing an unlocked lock is
    /// [`Error::NotLocked`].
    #[inline]
    pub fn release(&self) -> Result<()> {
        if self.raw.unlock() == 0 {
            return Err(Error::NotLocked);
        }
        Ok(())
    }

    /// True while some process holds the lock.
    pub fn is_locked(&self) -> bool {
        self.raw.holder() != 0
    }

    /// The pid of the process that holds the lock, if any (a diagnostic: it may change at
    /// once).
    pub fn holder_pid(&self) -> Option<u32> {
        match self.raw.holder() {
            0 => None,
            t => Some(ident::id_of(t)),
        }
    }

    /// True when this process holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.raw.holder() == ident::process_token()
    }

    pub(crate) fn raw(&self) -> &RawLock {
        &self.raw
    }
}

/// Holds a [`Lock`] until dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Releases the lock now (the same as dropping the guard).
    pub fn unlock(self) {
        drop(self)
    }

    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Releasing an already released lock (someone called `release()` from elsewhere,
        // which Python allows) is not an error worth panicking in a destructor for.
        self.lock.raw.unlock();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

/// A recursive lock shared between processes (Python's `multiprocessing.RLock`).
///
/// Owned by one thread of one process: the owner may acquire it again, and must release it
/// as many times. A release by a thread that does not own it is [`Error::NotOwner`]. When the
/// owning thread dies (or its process does) while holding it, the next acquirer gets it with
/// [`OwnerDied`](crate::OwnerDied), whatever the recursion depth was.
///
/// ```
/// use mp_sync::RLock;
/// let rlock = RLock::new()?;
/// let a = rlock.lock().unwrap();
/// let b = rlock.lock().unwrap(); // the owner may lock again
/// drop(b);
/// drop(a);
/// assert!(matches!(rlock.release(), Err(mp_sync::Error::NotOwner)));
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct RLock {
    raw: Shared<RawLock>,
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("locked", &(self.raw.holder() != 0))
            .field("owned_by_me", &self.is_owned())
            .finish()
    }
}

impl RLock {
    /// A new, unlocked recursive lock.
    pub fn new() -> Result<RLock> {
        ident::init();
        Ok(RLock {
            raw: Shared::new(RawLock::new())?,
        })
    }

    #[inline]
    fn acquire_with(&self, attempt: impl FnOnce(u64) -> Acquire) -> Acquire {
        let me = ident::thread_token();
        if self.raw.holder() == me {
            // Only the owner writes `count`, and we are the owner. The word is in shared memory,
            // where a broken peer may have written anything: saturate rather than panic (no
            // thread recurses 2^32 times).
            let n = self.raw.count();
            self.raw.set_count(n.saturating_add(1));
            return Acquire::Clean;
        }
        let a = attempt(me);
        if a != Acquire::Timeout {
            self.raw.set_count(1);
        }
        a
    }

    #[inline]
    fn acquire_until(&self, deadline: Deadline) -> Acquire {
        self.acquire_with(|me| self.raw.lock(me, deadline))
    }

    /// Blocks until this thread owns the lock (at once if it already does).
    #[inline]
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        into_lock_result(self.acquire_until(Deadline::never()), || self.guard())
    }

    /// Acquires without waiting.
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        into_try_result(self.acquire_with(|me| self.raw.try_lock(me)), || {
            self.guard()
        })
    }

    /// Waits at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        into_try_result(self.acquire_until(Deadline::after(Some(timeout))), || {
            self.guard()
        })
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Python's `acquire()`.
    pub fn acquire(&self) -> LockResult<()> {
        into_lock_result(self.acquire_until(Deadline::never()), || ())
    }

    /// Python's `acquire(block=False)`.
    pub fn try_acquire(&self) -> TryLockResult<()> {
        into_try_result(self.acquire_with(|me| self.raw.try_lock(me)), || ())
    }

    /// Python's `acquire(timeout=t)`.
    pub fn acquire_timeout(&self, timeout: Duration) -> TryLockResult<()> {
        into_try_result(self.acquire_until(Deadline::after(Some(timeout))), || ())
    }

    /// Python's `release()`: one level; the last one unlocks. [`Error::NotOwner`] when this
    /// thread does not own the lock (including one release too many).
    #[inline]
    pub fn release(&self) -> Result<()> {
        if !self.is_owned() {
            return Err(Error::NotOwner);
        }
        let n = self.raw.count();
        if n > 1 {
            self.raw.set_count(n - 1);
        } else {
            self.raw.set_count(0);
            self.raw.unlock();
        }
        Ok(())
    }

    /// True when the calling thread owns the lock.
    pub fn is_owned(&self) -> bool {
        self.raw.holder() == ident::thread_token()
    }

    /// How many times the calling thread holds the lock (0 when it does not own it).
    pub fn depth(&self) -> u32 {
        if self.is_owned() {
            self.raw.count()
        } else {
            0
        }
    }

    /// Releases every level at once (the owner only); returns the depth, for
    /// [`restore`](RLock::restore). Used by `Condition::wait`.
    pub(crate) fn release_all(&self) -> u32 {
        let n = self.raw.count();
        self.raw.set_count(0);
        self.raw.unlock();
        n
    }

    /// Sets the depth after a re-acquire.
    pub(crate) fn restore(&self, depth: u32) {
        self.raw.set_count(depth.max(1));
    }
}

/// Holds one level of an [`RLock`] until dropped. Not `Send`: the owning thread releases it.
#[must_use = "the lock level is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl RLockGuard<'_> {
    /// Releases this level now.
    pub fn unlock(self) {
        drop(self)
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        // The guard proves this thread owns a level; an error is impossible here.
        let _ = self.lock.release();
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}
