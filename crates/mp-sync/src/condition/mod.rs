//! [`Condition`]: wait for a notification while holding a lock.
//!
//! # Algorithm
//! A notification goes only to waiters that were waiting when `notify` was called, as in
//! CPython (its `_woken_count` handshake), and never to a waiter that has died. Every waiter
//! has a record of its own in the condition's shared memory: a table of `SLOTS` (128) slots,
//! each the waiter's process [token](mp_core::ident) (pid + start time) and one 32-bit word,
//! its *state* (free, waiting or notified) packed with a *ticket*, the number of its
//! registration. Every change of a slot is made with the condition's lock held, and is one
//! atomic store or CAS of the state word; the only step without the lock is a sleeping
//! waiter reading its own word.
//!
//! * `wait`, under the lock, claims a free slot: it writes its token, then the state word
//!   `waiting | ticket` (the step that registers it). It releases every level of the lock
//!   and sleeps on its own state word (a futex word) until that word says notified, or
//!   `deadline`. It re-acquires the lock and frees its slot: a waiter whose word says
//!   notified returns notified (also one whose timeout ran out meanwhile), one whose word
//!   still says waiting returns not notified.
//! * `notify(n)`, under the lock, takes the waiting slots oldest ticket first. It checks
//!   that the slot's process is alive ([`ident::is_alive`]: not a zombie, same start time;
//!   a task `/proc` does not show is alive unless `kill(pid, 0)` says `ESRCH`). A dead
//!   waiter's slot is freed and counts for nothing; a living waiter's word is set to
//!   notified with a CAS and its futex woken, until `n` are notified. It returns how many.
//!
//! So exactly `k` waits return `true` for a `notify` that returned `k`, and each of those
//! `k` waiters was alive when it was notified. A waiter that registers after a notify has a
//! slot that notify never saw: it cannot take a notification issued before it waited.
//!
//! # Crash safety
//! Each step is one atomic write of a state word, so a process killed at any instruction
//! leaves every slot free, waiting or notified, never half of one:
//!
//! * A waiter killed before its registering store leaves the slot free (its token write is
//!   ignored). Killed while it waits (registered, asleep, or back under the lock before it
//!   freed its slot), its slot says waiting with a dead token: the next notify that reaches
//!   it frees it and notifies a living waiter instead. That is the fault campaign's
//!   `condition_waiter` finding, fixed; CPython's Condition would even hang in `notify`.
//!   Killed after it was notified, it took its notification with it, as a waiter killed
//!   just after `wait` returned would: it was alive when `notify` counted it.
//! * A notifier killed between a CAS and its futex wake leaves a notified waiter asleep;
//!   waiters sleep in slices (5 ms doubling to 160 ms), even without a timeout, and look at
//!   their word after each, so they find the notification.
//! * A process killed holding the lock leaves it to the next taker as `OwnerDied`, as for
//!   any lock; the table is consistent after each of its single stores.
//! * Slots of dead processes that no notify reclaimed (a notified waiter killed before it
//!   freed its slot, a dead waiter no notify reached) are reclaimed by the first `wait` that
//!   finds the table full.
//!
//! Beyond `SLOTS` waiters at once (living, or dead and not reclaimed), a `wait` that finds
//! no slot waits without a record: it sleeps on a word that every `notify` bumps (at most
//! 160 ms or its deadline) and returns not notified, as from a spurious wake-up; a `notify`
//! does not count it. Loop on the predicate ([`wait_for`](Condition::wait_for)) and this does
//! no harm.

use std::fmt;
use std::marker::PhantomData;
#[cfg(feature = "testing")]
use std::sync::OnceLock;
use std::time::Duration;

// The loom shim: std's atomics and mp_core::futex in the normal build, loom's under
// `cfg(loom)` (the Condition model at the end of this file).
use mp_core::ident;
use mp_core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use mp_core::sync::futex;
use mp_core::{Deadline, Shared, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
#[cfg(not(loom))]
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::error::{Error, LockResult, OwnerDied, Result, TryLockResult};
use crate::lock::{Lock, RLock};
use mp_core::lock::{MAX_SLICE, SLICE};

#[cfg(feature = "testing")]
static NOTIFY_FAULT: OnceLock<fn()> = OnceLock::new();

/// Makes every later [`Condition::notify`] of this process that signals a waiter call `hook`
/// after it has marked a waiter notified and before it wakes it, so that a test can kill
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

/// How many waiters a condition records at once (module doc, "Algorithm"). The loom model's
/// table is smaller: loom explores every slot a notify reads.
#[cfg(not(loom))]
pub(crate) const SLOTS: usize = 128;
/// How many waiters a condition records at once (the loom model's table).
#[cfg(loom)]
pub(crate) const SLOTS: usize = 3;

/// A slot's state, in the low two bits of its word: no waiter (also the unused value 3).
const FREE: u32 = 0;
/// A registered waiter, not notified yet.
const WAITING: u32 = 1;
/// A registered waiter that a notify counted.
const NOTIFIED: u32 = 2;
/// The bits of the state in a slot's word; the ticket is the other 30.
const STATE_BITS: u32 = 3;
/// Tickets are counted modulo 2^30.
const TICKET_MASK: u32 = u32::MAX >> 2;

/// A slot's word: `state` with `ticket` above it.
fn slot_word(state: u32, ticket: u32) -> u32 {
    state | (ticket & TICKET_MASK) << 2
}

fn state_of(word: u32) -> u32 {
    word & STATE_BITS
}

fn ticket_of(word: u32) -> u32 {
    word >> 2
}

/// One waiter's record (module doc).
#[repr(C)]
#[derive(Debug)]
struct Slot {
    /// The waiter's process token; meaningful only while `word` is not free.
    token: AtomicU64,
    /// State and ticket ([`slot_word`]); the futex word its waiter sleeps on.
    word: AtomicU32,
    /// Padding to 16 bytes, unused.
    _pad: AtomicU32,
}
// Loom's atomics are larger: the layout is pinned for the real ones.
#[cfg(not(loom))]
assert_eq_size!(Slot, [u64; 2]);
#[cfg(not(loom))]
assert_eq_align!(Slot, u64);

impl Slot {
    fn new() -> Slot {
        Slot {
            token: AtomicU64::new(0),
            word: AtomicU32::new(FREE),
            _pad: AtomicU32::new(0),
        }
    }

    /// True when the word names a registered waiter (waiting or notified).
    fn taken(word: u32) -> bool {
        matches!(state_of(word), WAITING | NOTIFIED)
    }
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawCondition {
    /// The next registration's ticket (modulo 2^30), bumped under the lock.
    next: AtomicU32,
    /// The futex word of waiters that found no free slot; bumped by a notify that sees one.
    overflow: AtomicU32,
    /// How many waiters sleep on `overflow` (a hint: one killed asleep leaves it too high,
    /// which costs a needless wake-up per notify, nothing else).
    unrecorded: AtomicU32,
    /// Padding to 16 bytes, unused.
    _pad: AtomicU32,
    /// The waiters' records.
    slots: [Slot; SLOTS],
}
// Loom's atomics are larger: the layout is pinned for the real ones.
#[cfg(not(loom))]
assert_eq_size!(RawCondition, [u64; 2 + 2 * SLOTS]);
#[cfg(not(loom))]
assert_eq_align!(RawCondition, u64);

// SAFETY: only atomics (1); every bit pattern is a valid state: an unknown token is a waiter
// checked for liveness like any other, a state word of 3 is a free slot, any ticket only
// orders the waiters (at worst a lost or a spurious notification) (2); no Drop (3);
// `#[repr(C)]`, size and alignment pinned above (4).
unsafe impl ShmSafe for RawCondition {}

impl RawCondition {
    pub(crate) fn new() -> RawCondition {
        RawCondition {
            next: AtomicU32::new(0),
            overflow: AtomicU32::new(0),
            unrecorded: AtomicU32::new(0),
            _pad: AtomicU32::new(0),
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }

    /// How many registered waiters have not been notified.
    fn waiting(&self) -> u32 {
        let waiting = self
            .slots
            .iter()
            .filter(|s| state_of(s.word.load(Ordering::Relaxed)) == WAITING)
            .count();
        waiting as u32
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| !Slot::taken(s.word.load(Ordering::Relaxed)))
    }

    /// Frees the slots of dead processes (under the lock).
    fn reclaim(&self) {
        for s in &self.slots {
            // Acquire pairs with the Release store in `register`: the token is the waiter's.
            let w = s.word.load(Ordering::Acquire);
            if Slot::taken(w) && !ident::is_alive(s.token.load(Ordering::Relaxed)) {
                let _ = s
                    .word
                    .compare_exchange(w, FREE, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// Records a waiter of process `me` (under the lock): its slot and the word it waits on,
    /// or `None` when every slot holds a living waiter.
    fn register(&self, me: u64) -> Option<(usize, u32)> {
        let i = match self.free_slot() {
            Some(i) => i,
            None => {
                self.reclaim();
                self.free_slot()?
            }
        };
        let slot = &self.slots[i];
        let ticket = self.next.load(Ordering::Relaxed) & TICKET_MASK;
        self.next
            .store(ticket.wrapping_add(1) & TICKET_MASK, Ordering::Relaxed);
        slot.token.store(me, Ordering::Relaxed);
        let armed = slot_word(WAITING, ticket);
        // The step that registers: before it the slot is free (a token written by a waiter
        // killed here is ignored). Release pairs with the Acquire loads of the word in
        // `notify` and `reclaim`: they read this token.
        slot.word.store(armed, Ordering::Release);
        Some((i, armed))
    }

    /// A waiter back under the lock frees its slot `i`, registered as `armed`: true when a
    /// notify counted it.
    fn leave(&self, i: usize, armed: u32) -> bool {
        let word = &self.slots[i].word;
        let notified = slot_word(NOTIFIED, ticket_of(armed));
        // Acquire pairs with the Release CAS in `notify`.
        if word
            .compare_exchange(notified, FREE, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return true;
        }
        // Still waiting: not notified. Any other value means that a notify judged this
        // process dead and the slot is another waiter's now: leave it alone.
        let _ = word.compare_exchange(armed, FREE, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// The waiter's side, called with the lock held by process `me`: registers, lets
    /// `unlock` release every level of the lock (it returns the depth to restore), sleeps
    /// until notified or `deadline`, lets `relock(depth)` take the lock back (`Err(pid)` when
    /// from a dead holder), and frees its slot under it. Returns whether it was notified and
    /// `relock`'s result. When no slot is free it waits without a record (module doc).
    fn wait(
        &self,
        me: u64,
        deadline: Deadline,
        unlock: impl FnOnce() -> u32,
        relock: impl FnOnce(u32) -> Result<(), u32>,
    ) -> (bool, Result<(), u32>) {
        let Some((i, armed)) = self.register(me) else {
            return self.wait_unrecorded(deadline, unlock, relock);
        };
        let word = &self.slots[i].word;
        let depth = unlock();
        let mut slice = SLICE;
        loop {
            // Only a notify changes the word while we are registered. Acquire pairs with the
            // Release CAS in `notify`.
            if word.load(Ordering::Acquire) != armed {
                break;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                break;
            }
            // In slices even without a deadline: a notifier killed between its CAS and its
            // wake-up leaves the notification to be found here. The futex compares the word
            // with `armed` as it queues us, so a notify after the check above is not missed.
            let nap = left.map_or(slice, |l| l.min(slice));
            if futex::wait(word, armed, Some(nap)) == futex::Wake::TimedOut {
                slice = (slice * 2).min(MAX_SLICE);
            }
        }
        let reacquired = relock(depth);
        // Back under the lock: our word says whether a notify counted us.
        (self.leave(i, armed), reacquired)
    }

    /// A wait without a slot (every slot holds a living waiter): sleeps at most one long
    /// slice or until a notify, and returns not notified, as from a spurious wake-up.
    fn wait_unrecorded(
        &self,
        deadline: Deadline,
        unlock: impl FnOnce() -> u32,
        relock: impl FnOnce(u32) -> Result<(), u32>,
    ) -> (bool, Result<(), u32>) {
        self.unrecorded.fetch_add(1, Ordering::Relaxed);
        // Read under the lock: a notify after our unlock bumps it. Acquire pairs with the
        // Release bump in `notify`.
        let w = self.overflow.load(Ordering::Acquire);
        let depth = unlock();
        let nap = deadline.remaining().map_or(MAX_SLICE, |l| l.min(MAX_SLICE));
        if !nap.is_zero() {
            futex::wait(&self.overflow, w, Some(nap));
        }
        let reacquired = relock(depth);
        let _ = self
            .unrecorded
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        (false, reacquired)
    }

    /// The notifier's side, called with the lock held by process `me`: notifies up to `n` of
    /// the living waiters registered now, oldest first, freeing the slots of dead waiters it
    /// meets on the way; returns how many it notified.
    fn notify(&self, me: u64, n: u32) -> u32 {
        let next = self.next.load(Ordering::Relaxed);
        // The waiting slots, as (age of the ticket, slot, word).
        let mut order = [(0u32, 0usize, 0u32); SLOTS];
        let mut m = 0;
        for (i, s) in self.slots.iter().enumerate() {
            // Acquire pairs with the Release store in `register`: the token is the waiter's.
            let w = s.word.load(Ordering::Acquire);
            if state_of(w) == WAITING {
                order[m] = (next.wrapping_sub(ticket_of(w)) & TICKET_MASK, i, w);
                m += 1;
            }
        }
        // Oldest first: the largest age.
        order[..m].sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
        let mut k = 0;
        for &(_, i, w) in &order[..m] {
            if k == n {
                break;
            }
            let s = &self.slots[i];
            let token = s.token.load(Ordering::Relaxed);
            if token != me && !ident::is_alive(token) {
                // A waiter killed inside `wait`: out of the table, it takes no notification.
                let _ = s
                    .word
                    .compare_exchange(w, FREE, Ordering::Relaxed, Ordering::Relaxed);
                continue;
            }
            // The one step that notifies this waiter: a notifier killed before it has not
            // notified it, one killed after it has (the waiter's slices find the word).
            // Release pairs with the Acquire loads of the word in `wait` and `leave`.
            if s.word
                .compare_exchange(
                    w,
                    slot_word(NOTIFIED, ticket_of(w)),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                k += 1;
                notify_fault();
                futex::wake(&s.word, 1);
            }
        }
        if self.unrecorded.load(Ordering::Relaxed) > 0 {
            // Waiters without a slot look again. Release pairs with the Acquire load in
            // `wait_unrecorded`.
            self.overflow.fetch_add(1, Ordering::Release);
            futex::wake_all(&self.overflow);
        }
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
            .field("waiters", &{ self.raw.waiting() })
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
            raw: Shared::new(RawCondition::new())?,
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
            ident::process_token(),
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
        Ok(self.raw.notify(ident::process_token(), n))
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
