//! The robust lock every lock-like primitive stands on: its protocol over two shared atomics.
//!
//! mp-sync's `Lock`, `RLock`, `Condition` and `Barrier` (in one 16-byte struct) and mp-queue's
//! producer and consumer locks (in the ring's header) all call these functions; a new primitive
//! whose shared state needs a lock that survives a dead holder calls them too. The functions
//! take references to the two words, wherever they live: an owner word ([`AtomicU64`]) and a
//! wake sequence ([`AtomicU32`], the futex word), both zero for an unlocked lock.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, AtomicU64};
//! use mp_core::lock::{self, Acquire};
//! use mp_core::{ident, Deadline};
//!
//! let (owner, seq) = (AtomicU64::new(0), AtomicU32::new(0));
//! let me = ident::process_token();
//! assert_eq!(lock::lock(&owner, &seq, me, Deadline::never()), Acquire::Clean);
//! assert_eq!(lock::holder(&owner), me);
//! // ... the critical section ...
//! lock::unlock(&owner, &seq);
//! assert_eq!(lock::holder(&owner), 0);
//! ```
//!
//! # Algorithm
//!
//! Drepper's futex mutex ("Futexes are tricky", 2011, mutex take 2) with the state word widened
//! to 64 bits so that it *is* the holder's identity:
//!
//! * `owner == 0`: unlocked; otherwise the holder's [token](crate::ident) (pid + start time
//!   for a process, tid + start time for a thread), with bit 63 ([`CONTENDED`]) set when a
//!   waiter may be asleep.
//! * Acquire: one `compare_exchange(0, me)`. Release: one `swap(0)`; only when the old value
//!   had `CONTENDED` does the releaser bump `seq` and `FUTEX_WAKE` one sleeper.
//! * A waiter spins as the wait policy allows ([`crate::wait`]; only while nobody sleeps),
//!   then reads `seq`, sets `CONTENDED` on the current owner value with a CAS, and sleeps on
//!   `seq` while it is unchanged. A woken waiter takes the lock as `me | CONTENDED` (others may
//!   still sleep), so the flag clears itself at the first release that has no sleeper behind it.
//!
//! Because taking the lock and recording the holder is one atomic write, there is no window
//! in which the lock is held by an unknown task. A waiter sleeps in slices of [`SLICE`]
//! (doubling up to [`MAX_SLICE`] while the holder stays alive, so that a lock held for long
//! does not make its waiters read `/proc` hundreds of times a second); after a slice that timed
//! out, it checks whether the holder is still alive ([`ident::is_alive`]) and, if not, replaces
//! the dead token by its own with a CAS ([`take_if_dead`]). The CAS succeeds only if the dead
//! task still holds the lock, and exactly one waiter wins it: that one is told
//! [`Acquire::OwnerDied`], with the dead holder's id, so that it can repair what the dead one
//! left half done (and its caller can report it). Liveness is never checked on the fast path.
//!
//! Nothing here is `unsafe`, and the lock protects no Rust data by itself: what a caller guards
//! with it lives in shared memory and is read and written with atomic operations, so even a
//! misused lock (released by a third process, as Python allows) can only produce a logically
//! wrong value, never undefined behaviour.
//!
//! The atomics and the futex calls come from [`crate::sync`], so the loom models at the end of
//! this file check this very code (docs/reliability.md, "Model checking").

use std::time::Duration;

use crate::futex::Deadline;
use crate::ident::{self, CONTENDED};
// The loom shim: std's atomics and crate::futex in the normal build, loom's under `cfg(loom)`.
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use crate::sync::futex;
use crate::wait::Spin;

/// How long a waiter first sleeps before it checks whether the holder is still alive.
pub const SLICE: Duration = Duration::from_millis(5);
/// The longest sleep between two liveness checks (the slices double up to it): a dead holder
/// is found within this.
pub const MAX_SLICE: Duration = Duration::from_millis(160);

/// How a lock attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Acquired from a clean release.
    Clean,
    /// Acquired from a dead holder whose id (pid or tid) is given: what it guarded may be
    /// half written.
    OwnerDied(u32),
    /// Not acquired before the deadline.
    Timeout,
}

/// One attempt to take a free lock: no waiting, no liveness check. `me` is the caller's token
/// (from [`ident`]: never 0, never with [`CONTENDED`]).
#[inline]
pub fn try_lock_fast(owner: &AtomicU64, me: u64) -> bool {
    // Acquire pairs with the Release swap in `unlock`: what the previous holder wrote before
    // releasing is visible to us.
    owner
        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Takes the lock, waiting until `deadline`: [`Acquire::Timeout`] when it stays held by a live
/// holder until then. A deadline that has already passed still takes a free lock, or a dead
/// holder's. `me` as for [`try_lock_fast`].
///
/// A live holder keeps the lock for as long as it lives, and so does a word that another
/// process scribbled into naming some live task: the deadline is what bounds the wait then.
#[inline]
pub fn lock(owner: &AtomicU64, seq: &AtomicU32, me: u64, deadline: Deadline) -> Acquire {
    if try_lock_fast(owner, me) {
        return Acquire::Clean;
    }
    lock_slow(owner, seq, me, deadline)
}

/// A non-blocking attempt that also takes over from a dead holder: when the lock is held,
/// this reads `/proc` once to check the holder, so that a loop of attempts cannot spin forever
/// on a dead one.
pub fn try_lock(owner: &AtomicU64, me: u64) -> Acquire {
    if try_lock_fast(owner, me) {
        return Acquire::Clean;
    }
    match take_if_dead(owner, me) {
        Some(a) => a,
        None if try_lock_fast(owner, me) => Acquire::Clean,
        None => Acquire::Timeout,
    }
}

#[cold]
fn lock_slow(owner: &AtomicU64, seq: &AtomicU32, me: u64, deadline: Deadline) -> Acquire {
    // The owner word is the key of the wait policy's per-object budget.
    let mut spin = Spin::new(owner, deadline);
    loop {
        let cur = owner.load(Ordering::Relaxed);
        if cur == 0 {
            if try_lock_fast(owner, me) {
                return Acquire::Clean;
            }
            continue;
        }
        // Spinning while others sleep would only steal the lock from them.
        if cur & CONTENDED != 0 || deadline.expired() || !spin.spin() {
            break;
        }
    }
    let mut check_after = SLICE;
    loop {
        // Read the wake sequence before announcing ourselves: a release after our CAS below
        // bumps it, so the futex wait cannot miss that release.
        // Acquire pairs with the Release `fetch_add` in `wake_one`.
        let s = seq.load(Ordering::Acquire);
        let cur = owner.load(Ordering::Relaxed);
        if cur == 0 {
            if take_contended(owner, me) {
                return Acquire::Clean;
            }
            continue;
        }
        let left = deadline.remaining();
        if left == Some(Duration::ZERO) {
            // Before giving up, make sure we are not waiting for a dead task.
            return take_if_dead(owner, me).unwrap_or(Acquire::Timeout);
        }
        if !announce(owner, cur) {
            continue;
        }
        let slice = left.map_or(check_after, |l| l.min(check_after));
        if futex::wait(seq, s, Some(slice)) == futex::Wake::TimedOut {
            if let Some(a) = take_if_dead(owner, me) {
                return a;
            }
            check_after = (check_after * 2).min(MAX_SLICE);
        }
    }
}

/// Takes a free lock as a former sleeper: with `CONTENDED` kept set, since others may still
/// sleep.
#[inline]
fn take_contended(owner: &AtomicU64, me: u64) -> bool {
    // Acquire pairs with the Release swap in `unlock`.
    owner
        .compare_exchange(0, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Sets `CONTENDED` on the owner value `cur` (a no-op when it is set); false when the word
/// changed meanwhile (the caller looks again).
#[inline]
fn announce(owner: &AtomicU64, cur: u64) -> bool {
    // Relaxed: the flag orders nothing by itself; the sleeper's Acquire load of `seq` (read
    // before this) and the releaser's RMW on the word are what make the wake-up certain.
    cur & CONTENDED != 0
        || owner
            .compare_exchange(cur, cur | CONTENDED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Replaces the holder's token by `me` (with `CONTENDED`: others may sleep) if the holder is
/// dead: then `Some(Acquire::OwnerDied(its id))`, and the caller holds the lock. `None` when
/// the lock is free, its holder alive, or another waiter took it over first.
#[cold]
pub fn take_if_dead(owner: &AtomicU64, me: u64) -> Option<Acquire> {
    let cur = owner.load(Ordering::Relaxed);
    if cur == 0 || ident::is_alive(cur) {
        return None;
    }
    // The dead task cannot release or re-acquire, so the CAS succeeds only for one waiter,
    // and only if the lock is still the dead task's. The token in the word is the holder's
    // whole identity, pid and start time: a pid recycled since the holder died names another
    // task, and `is_alive` says so.
    // Acquire pairs with the Release swap of the last clean release (the RMWs on the word since
    // then continue its release sequence; the dead holder never released, so what it wrote may
    // be half done: that is what OwnerDied tells).
    owner
        .compare_exchange(cur, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
        .ok()
        .map(|_| Acquire::OwnerDied(ident::id_of(cur)))
}

/// [`lock`] without a deadline, for async callers (feature `async`): the same protocol
/// (announce with `CONTENDED`, wait on `seq`, check the holder's liveness after each slice
/// that passed without a release), awaiting `seq` through the [reactor](crate::reactor)
/// instead of sleeping in `futex::wait`. No spin: an async task must not hold its thread.
/// `keep` keeps the mapping of the two words alive for the reactor.
///
/// Dropping the future before it resolves takes nothing.
#[cfg(all(feature = "async", not(loom)))]
pub async fn lock_async(
    owner: &AtomicU64,
    seq: &AtomicU32,
    me: u64,
    keep: std::sync::Arc<dyn std::any::Any + Send + Sync>,
) -> Acquire {
    if try_lock_fast(owner, me) {
        return Acquire::Clean;
    }
    let mut check_after = SLICE;
    loop {
        // As in `lock_slow`: read `seq` before announcing ourselves.
        // Acquire pairs with the Release `fetch_add` in `wake_one`.
        let s = seq.load(Ordering::Acquire);
        let cur = owner.load(Ordering::Relaxed);
        if cur == 0 {
            if take_contended(owner, me) {
                return Acquire::Clean;
            }
            continue;
        }
        if !announce(owner, cur) {
            continue;
        }
        let slept = std::time::Instant::now();
        crate::reactor::changed(seq, s, keep.clone(), check_after).await;
        // Acquire as above.
        if seq.load(Ordering::Acquire) == s && slept.elapsed() >= check_after {
            if let Some(a) = take_if_dead(owner, me) {
                return a;
            }
            check_after = (check_after * 2).min(MAX_SLICE);
        }
    }
}

/// Releases the lock, whoever holds it, and wakes one sleeper if any may sleep. Returns the
/// previous owner word (0 when it was not locked, in which case nothing changed).
#[inline]
pub fn unlock(owner: &AtomicU64, seq: &AtomicU32) -> u64 {
    // Release pairs with the Acquire CAS of the next holder.
    let old = owner.swap(0, Ordering::Release);
    if old & CONTENDED != 0 {
        wake_one(seq);
    }
    old
}

#[cold]
fn wake_one(seq: &AtomicU32) {
    // Release pairs with the Acquire load of `seq` by sleepers.
    seq.fetch_add(1, Ordering::Release);
    futex::wake(seq, 1);
}

/// The holder's token without the contention flag (0 when unlocked).
#[inline]
pub fn holder(owner: &AtomicU64) -> u64 {
    owner.load(Ordering::Relaxed) & !CONTENDED
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_model;
