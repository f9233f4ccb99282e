//! [`Condition`]: wait for a notification while holding a lock.
//!
//! # Algorithm
//! A notification goes only to waiters that were waiting when `notify` was called, as in
//! CPython (its `_woken_count` handshake). The waiters form two groups, as in glibc's
//! condition variable, but every change happens with the condition's lock held (except a
//! waiter taking a signal of its own group) and is one atomic step on one packed word:
//!
//! * the **current group**, number `epoch`: `pending` of its waiters are not notified yet,
//!   and `signals` notifications for it are not taken yet;
//! * the **newer group**, number `epoch + 1`: the `newer` waiters that registered since the
//!   current group was formed.
//!
//! `wait` registers in the newer group (`newer += 1`, remembering its number) while it holds
//! the lock, releases every level of the lock, sleeps, and re-acquires the lock.
//! `notify(n)` moves up to `n` waiters of the current group from `pending` to `signals`;
//! when the current group has no un-notified waiter left and `n` is not used up, the newer
//! group becomes the current one (`epoch += 1`, its `signals` start at 0) and is notified
//! the same way. A waiter of the current group returns notified when it takes one of its
//! group's `signals` (a CAS, without the lock); a waiter of an *older* group returns
//! notified at once, because a group is replaced only once all of it is notified. A waiter
//! of the newer group can take nothing: a notify issued before it registered is not for it.
//! A timed-out waiter, back under the lock, takes a signal of its group if one is left (it
//! was notified), or else takes itself out of `pending` or `newer`. So exactly `k` waits
//! return `true` for a `notify` that returned `k`.
//!
//! # Crash safety
//! The counts are one `AtomicU64` (`State`), so a notifier killed at any point has either
//! notified or not. The futex words (one per group parity, bumped when that group is
//! signalled) only carry wake-ups: a notifier killed after updating the counts and before
//! waking leaves the sleepers to find their signal at the end of their current sleep, which
//! is cut in slices (5 ms doubling to 160 ms) even for a wait without timeout; the next
//! notify that finds signals pending wakes their group again.
//!
//! A waiter killed inside `wait` stays counted: a later notify may count it as woken, and
//! one wait of its group may then return at once, as from a spurious wake-up. Loop on the
//! predicate ([`wait_for`](Condition::wait_for)) and such a wake-up does no harm. Groups
//! are numbered modulo 2^16 and hold at most 65 535 waiters; a waiter that finds the newer
//! group full returns at once, as from a spurious wake-up.

use std::fmt;
use std::marker::PhantomData;
#[cfg(feature = "testing")]
use std::sync::OnceLock;
use std::time::Duration;

// The loom shim: std's atomics and mp_core::futex in the normal build, loom's under
// `cfg(loom)` (the Condition model at the end of this file).
use mp_core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use mp_core::sync::futex;
use mp_core::{Deadline, Shared, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
#[cfg(not(loom))]
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::error::{Error, LockResult, OwnerDied, Result, TryLockResult};
use crate::lock::{Lock, RLock};
use crate::raw::{MAX_SLICE, SLICE};

#[cfg(feature = "testing")]
static NOTIFY_FAULT: OnceLock<fn()> = OnceLock::new();

/// Makes every later [`Condition::notify`] of this process that signals a waiter call `hook`
/// after it has updated the shared counts and before it wakes anyone, so that a test can kill
/// a notifier at the worst moment. Returns false when a hook was set already. Only with the
/// feature `testing` (re-exported as `mp_sync::testing::set_notify_fault`).
#[cfg(feature = "testing")]
pub fn set_notify_fault(hook: fn()) -> bool {
    NOTIFY_FAULT.set(hook).is_ok()
}

#[inline]
fn notify_fault() {
    #[cfg(feature = "testing")]
    if let Some(hook) = NOTIFY_FAULT.get() {
        hook();
    }
}

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
    /// The counts, packed ([`State`]).
    state: AtomicU64,
    /// The futex words: `wake[e & 1]` is bumped whenever group `e` is notified.
    wake: [AtomicU32; 2],
}
// Loom's atomics are larger: the layout is pinned for the real ones.
#[cfg(not(loom))]
assert_eq_size!(RawCondition, [u64; 2]);
#[cfg(not(loom))]
assert_eq_align!(RawCondition, u64);

// SAFETY: only atomics (1); every bit pattern is a valid state: four 16-bit counts, at worst
// causing spurious wake-ups or a lost notification (2); no Drop (3); `#[repr(C)]`, size and
// alignment pinned above (4).
unsafe impl ShmSafe for RawCondition {}

/// The counts of a condition, unpacked from its one atomic word (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    /// The number of the current group (modulo 2^16).
    epoch: u16,
    /// Waiters of the current group not notified yet.
    pending: u16,
    /// Notifications for the current group not taken yet.
    signals: u16,
    /// Waiters of the newer group (number `epoch + 1`).
    newer: u16,
}

/// Where a waiter of group `mine` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Its group was replaced: all of it was notified.
    Notified,
    /// It is in the current group.
    Current,
    /// It is in the newer group.
    Newer,
}

impl State {
    fn unpack(v: u64) -> State {
        State {
            epoch: v as u16,
            pending: (v >> 16) as u16,
            signals: (v >> 32) as u16,
            newer: (v >> 48) as u16,
        }
    }

    fn pack(self) -> u64 {
        u64::from(self.epoch)
            | u64::from(self.pending) << 16
            | u64::from(self.signals) << 32
            | u64::from(self.newer) << 48
    }

    fn standing(self, mine: u16) -> Standing {
        match self.epoch.wrapping_sub(mine) as i16 {
            d if d > 0 => Standing::Notified,
            0 => Standing::Current,
            _ => Standing::Newer,
        }
    }

    /// The state after `notify(n)`, how many it notified, and whether the newer group
    /// became the current one.
    fn notify(self, n: u32) -> (State, u32, bool) {
        let mut s = self;
        let k1 = n.min(u32::from(s.pending)) as u16;
        s.pending -= k1;
        s.signals = s.signals.saturating_add(k1);
        let mut k = u32::from(k1);
        let mut switched = false;
        if n > k && s.newer > 0 {
            // Every waiter of the current group is notified: the newer group takes its place.
            switched = true;
            s.epoch = s.epoch.wrapping_add(1);
            let k2 = (n - k).min(u32::from(s.newer)) as u16;
            s.pending = s.newer - k2;
            s.signals = k2;
            s.newer = 0;
            k += u32::from(k2);
        }
        (s, k, switched)
    }
}

impl RawCondition {
    fn load(&self) -> State {
        State::unpack(self.state.load(Ordering::Relaxed))
    }

    /// Registers a waiter in the newer group (under the lock); its group number, or `None`
    /// when the group is full.
    fn register(&self) -> Option<u16> {
        let old = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let mut s = State::unpack(v);
                s.newer = s.newer.checked_add(1)?;
                Some(s.pack())
            })
            .ok()?;
        Some(State::unpack(old).epoch.wrapping_add(1))
    }

    /// One step of a sleeping waiter of group `mine`: true when it is notified (taking a
    /// signal of its group if it is in the current one).
    fn try_consume(&self, mine: u16) -> bool {
        // Acquire pairs with the Release update in `notify`.
        let mut v = self.state.load(Ordering::Acquire);
        loop {
            let mut s = State::unpack(v);
            match s.standing(mine) {
                Standing::Notified => return true,
                Standing::Newer => return false,
                Standing::Current if s.signals == 0 => return false,
                Standing::Current => {
                    s.signals -= 1;
                    // Acquire pairs with the Release update in `notify`.
                    match self.state.compare_exchange_weak(
                        v,
                        s.pack(),
                        Ordering::Acquire,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return true,
                        Err(x) => v = x,
                    }
                }
            }
        }
    }

    /// A waiter of group `mine` that stopped waiting without a signal, back under the lock:
    /// true when it was notified after all (it takes its signal), else it takes itself out.
    fn settle(&self, mine: u16) -> bool {
        let mut notified = false;
        let _ = self
            .state
            .fetch_update(Ordering::Acquire, Ordering::Acquire, |v| {
                let mut s = State::unpack(v);
                notified = true;
                match s.standing(mine) {
                    Standing::Notified => return None,
                    Standing::Current if s.signals > 0 => s.signals -= 1,
                    Standing::Current => {
                        notified = false;
                        s.pending = s.pending.saturating_sub(1);
                    }
                    Standing::Newer => {
                        notified = false;
                        s.newer = s.newer.saturating_sub(1);
                    }
                }
                Some(s.pack())
            });
        notified
    }

    /// Bumps the futex word of group `epoch` and wakes `n` of its sleepers.
    fn wake(&self, epoch: u16, n: u32) {
        let word = &self.wake[usize::from(epoch & 1)];
        // Release pairs with the Acquire load of the word in `wait`.
        word.fetch_add(1, Ordering::Release);
        futex::wake(word, n);
    }

    /// The waiter's side, called with the lock held: registers, lets `unlock` release every
    /// level of the lock (it returns the depth to restore), sleeps until notified or
    /// `deadline`, lets `relock(depth)` take the lock back (`Err(pid)` when from a dead
    /// holder), and settles under it. Returns whether it was notified and `relock`'s result;
    /// when the newer group is full it returns `(false, Ok(()))` at once, the lock still held.
    fn wait(
        &self,
        deadline: Deadline,
        unlock: impl FnOnce() -> u32,
        relock: impl FnOnce(u32) -> Result<(), u32>,
    ) -> (bool, Result<(), u32>) {
        // Under the lock: the lock's release below publishes it to the next notifier.
        let Some(mine) = self.register() else {
            // The newer group is full: return at once, as from a spurious wake-up, with
            // the lock still held.
            return (false, Ok(()));
        };
        let depth = unlock();
        let word = &self.wake[usize::from(mine & 1)];
        let mut slice = SLICE;
        let mut notified = loop {
            // Read the word before the counts: a notify after the check below bumps it, so
            // the futex wait cannot miss that notify. Acquire pairs with the Release bump
            // in `RawCondition::wake`.
            let w = word.load(Ordering::Acquire);
            if self.try_consume(mine) {
                break true;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                break false;
            }
            // In slices even without a deadline: a notifier killed between its count update
            // and its wake-up leaves the signal to be found here.
            let nap = left.map_or(slice, |l| l.min(slice));
            if futex::wait(word, w, Some(nap)) == futex::Wake::TimedOut {
                slice = (slice * 2).min(MAX_SLICE);
            }
        };
        let reacquired = relock(depth);
        if !notified {
            // Back under the lock: either a notify counted us (take its signal), or we are
            // still counted as a waiter (take ourselves out).
            notified = self.settle(mine);
        }
        (notified, reacquired)
    }

    /// The notifier's side, called with the lock held: notifies up to `n` of the waiters
    /// registered now and wakes them; returns how many it notified.
    fn notify(&self, n: u32) -> u32 {
        let mut v = self.state.load(Ordering::Relaxed);
        let (old, new, k, switched) = loop {
            let old = State::unpack(v);
            let (new, k, switched) = old.notify(n);
            if k == 0 {
                break (old, new, k, switched);
            }
            // The one step that notifies: a notifier killed before it notified nobody, one
            // killed after it notified `k` (the sleepers' slices find the signals).
            // Release pairs with the Acquire loads and CASes of `state` by waiters.
            match self.state.compare_exchange_weak(
                v,
                new.pack(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break (old, new, k, switched),
                Err(x) => v = x,
            }
        };
        if new.signals == 0 {
            // Nobody to wake (and nothing left unwoken by a dead notifier).
            return k;
        }
        notify_fault();
        if switched && (old.signals > 0 || old.pending > 0) {
            // The replaced group's members that have not taken their signal are notified:
            // wake them all.
            self.wake(old.epoch, u32::MAX);
        }
        // Wakes the current group: the `k` just notified, plus any left unwoken by a notifier
        // killed before its wake-up.
        self.wake(new.epoch, u32::from(new.signals));
        k
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
            .field("waiters", &{
                let st = self.raw.load();
                u32::from(st.pending) + u32::from(st.newer)
            })
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
                state: AtomicU64::new(0),
                wake: [AtomicU32::new(0), AtomicU32::new(0)],
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
        self.raw.wait(
            deadline,
            || match &self.lock {
                CondLock::Lock(l) => {
                    l.raw().unlock();
                    1
                }
                CondLock::RLock(l) => l.release_all(),
            },
            |depth| {
                match &self.lock {
                    CondLock::Lock(l) => l.acquire(),
                    CondLock::RLock(l) => {
                        let r = l.acquire();
                        l.restore(depth);
                        r
                    }
                }
                .map_err(|e| e.pid())
            },
        )
    }

    /// Wakes `n` of the waiters that are waiting now (fewer if fewer wait); returns how many.
    /// A process that waits after this call cannot take one of these notifications.
    /// [`Error::NotOwner`] when the caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<u32> {
        if !self.is_held() {
            return Err(Error::NotOwner);
        }
        Ok(self.raw.notify(n))
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

#[cfg(all(test, not(loom)))]
mod tests;

/// The loom model of Condition's counts (docs/reliability.md, "Model checking"). Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p mp-sync --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_model;
