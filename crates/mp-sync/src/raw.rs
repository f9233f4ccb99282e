//! The raw robust lock every lock-like primitive stands on.
//!
//! # Algorithm
//!
//! [`RawLock`] is Drepper's futex mutex ("Futexes are tricky", mutex take 2) with the state
//! word widened to 64 bits so that it *is* the holder's identity:
//!
//! * `owner == 0`: unlocked; otherwise the holder's [token](mp_core::ident) (pid + start time
//!   for a `Lock`, tid + start time for an `RLock`), with bit 63 ([`CONTENDED`]) set when a
//!   waiter may be asleep.
//! * Acquire: one `compare_exchange(0, me)`. Release: one `swap(0)`; only when the old value
//!   had `CONTENDED` does the releaser bump `seq` and `FUTEX_WAKE` one sleeper.
//! * A waiter spins as mp-core's wait policy allows ([`mp_core::wait`]; only while nobody
//!   sleeps), then reads `seq`, sets `CONTENDED`
//!   on the current owner value with a CAS, and sleeps on `seq` while it is unchanged. A
//!   woken waiter takes the lock as `me | CONTENDED` (others may still sleep), so the flag
//!   clears itself at the first release that has no sleeper behind it.
//!
//! Because taking the lock and recording the holder is one atomic write, there is no window
//! in which the lock is held by an unknown task. A waiter sleeps in slices of [`SLICE`] (doubling
//! up to [`MAX_SLICE`] while the holder stays alive, so that a lock held for long does not
//! make its waiters read `/proc` hundreds of times a second); after a slice that timed out,
//! it checks whether the holder is still alive
//! ([`ident::is_alive`]) and, if not, replaces the dead token by its own with a CAS. The CAS
//! succeeds only if the dead task still holds the lock, and exactly one waiter wins it: that
//! one is told [`Acquire::OwnerDied`]. Liveness is never checked on the fast path.
//!
//! Nothing here is `unsafe` and the raw lock protects no Rust data by itself: every value
//! mp-sync guards lives in shared memory and is only copied in and out with atomic
//! operations, so even a misused lock (released by a third process, as Python allows) can
//! only produce a logically wrong value, never undefined behaviour.

use std::time::Duration;

// The loom shim: std's atomics and mp_core::futex in the normal build, loom's under
// `cfg(loom)` (the lock model at the end of this file).
use mp_core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use mp_core::sync::futex;
use mp_core::wait::Spin;
use mp_core::{Deadline, ShmSafe};
#[cfg(not(loom))]
use static_assertions::{assert_eq_align, assert_eq_size};

use mp_core::ident::{self, CONTENDED};

/// How long a waiter sleeps before it checks whether the holder is still alive.
pub(crate) const SLICE: Duration = Duration::from_millis(5);
/// The longest sleep between two liveness checks: a dead holder is found within this.
pub(crate) const MAX_SLICE: Duration = Duration::from_millis(160);

/// How a lock attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquire {
    /// Acquired from a clean release.
    Clean,
    /// Acquired from a dead holder whose id is given.
    OwnerDied(u32),
    /// Not acquired before the deadline.
    Timeout,
}

/// The shared state of a robust lock. See the module doc for the protocol.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawLock {
    /// 0 when unlocked, else the holder's token, with [`CONTENDED`] when sleepers may exist.
    owner: AtomicU64,
    /// The futex word sleepers wait on; bumped by a release that saw `CONTENDED`.
    seq: AtomicU32,
    /// Recursion depth of an `RLock` (written only by the holder); unused by `Lock`.
    count: AtomicU32,
}
// Loom's atomics are larger: the layout is pinned for the real ones.
#[cfg(not(loom))]
assert_eq_size!(RawLock, [u64; 2]);
#[cfg(not(loom))]
assert_eq_align!(RawLock, u64);

// SAFETY: only atomics (point 1); every bit pattern is a valid state: an unknown owner token is
// just a holder that is checked for liveness like any other (point 2); no Drop (point 3);
// `#[repr(C)]` with size and alignment pinned above (point 4).
unsafe impl ShmSafe for RawLock {}

impl RawLock {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> RawLock {
        RawLock {
            owner: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            count: AtomicU32::new(0),
        }
    }

    /// As above: loom's atomics have no `const` constructor.
    #[cfg(loom)]
    pub(crate) fn new() -> RawLock {
        RawLock {
            owner: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            count: AtomicU32::new(0),
        }
    }

    /// One attempt, no waiting and no liveness check.
    #[inline]
    pub(crate) fn try_lock_fast(&self, me: u64) -> bool {
        // Acquire pairs with the Release swap in `unlock`: what the previous holder wrote
        // before releasing is visible to us.
        self.owner
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Acquires, waiting until `deadline`.
    #[inline]
    pub(crate) fn lock(&self, me: u64, deadline: Deadline) -> Acquire {
        if self.try_lock_fast(me) {
            return Acquire::Clean;
        }
        self.lock_slow(me, deadline)
    }

    /// A non-blocking attempt that also takes over from a dead holder.
    pub(crate) fn try_lock(&self, me: u64) -> Acquire {
        if self.try_lock_fast(me) {
            return Acquire::Clean;
        }
        match self.take_if_dead(me) {
            Some(a) => a,
            None if self.try_lock_fast(me) => Acquire::Clean,
            None => Acquire::Timeout,
        }
    }

    #[cold]
    fn lock_slow(&self, me: u64, deadline: Deadline) -> Acquire {
        let mut spin = Spin::new(self, deadline);
        loop {
            let cur = self.owner.load(Ordering::Relaxed);
            if cur == 0 {
                if self.try_lock_fast(me) {
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
            // Read the wake sequence before announcing ourselves: a release after our CAS
            // below bumps it, so the futex wait cannot miss that release.
            // Acquire pairs with the Release `fetch_add` in `unlock`.
            let seq = self.seq.load(Ordering::Acquire);
            let cur = self.owner.load(Ordering::Relaxed);
            if cur == 0 {
                // A sleeper that takes the lock keeps CONTENDED set: others may still sleep.
                // Acquire pairs with the Release swap in `unlock`.
                if self
                    .owner
                    .compare_exchange(0, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Acquire::Clean;
                }
                continue;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                // Before giving up, make sure we are not waiting for a dead task.
                return self.take_if_dead(me).unwrap_or(Acquire::Timeout);
            }
            if cur & CONTENDED == 0
                && self
                    .owner
                    .compare_exchange(cur, cur | CONTENDED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let slice = left.map_or(check_after, |l| l.min(check_after));
            if futex::wait(&self.seq, seq, Some(slice)) == futex::Wake::TimedOut {
                if let Some(a) = self.take_if_dead(me) {
                    return a;
                }
                check_after = (check_after * 2).min(MAX_SLICE);
            }
        }
    }

    /// Replaces the holder's token by ours if the holder is dead.
    #[cold]
    fn take_if_dead(&self, me: u64) -> Option<Acquire> {
        let cur = self.owner.load(Ordering::Relaxed);
        if cur == 0 || ident::is_alive(cur) {
            return None;
        }
        // The dead task cannot release or re-acquire, so the CAS succeeds only for one waiter,
        // and only if the lock is still the dead task's. CONTENDED: others may sleep too.
        // Acquire pairs with the Release swap of the last clean release (the dead holder never
        // released, so what it wrote may be half done: that is what OwnerDied tells).
        let taken = self
            .owner
            .compare_exchange(cur, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Acquire::OwnerDied(ident::id_of(cur)));
        #[cfg(feature = "tracing")]
        if taken.is_some() {
            tracing::warn!(target: "mp::sync", dead_pid = ident::id_of(cur), "a dead holder's lock was taken over");
        }
        taken
    }

    /// [`lock`](Self::lock) without a deadline, for async callers (feature `async`): the same
    /// protocol (announce with `CONTENDED`, wait on `seq`, check the holder's liveness after
    /// each slice that passed without a release), awaiting `seq` through mp-core's reactor
    /// instead of sleeping in `futex::wait`. No spin: an async task must not hold its thread.
    /// `keep` keeps the lock's mapping alive for the reactor.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) async fn lock_async(
        &self,
        me: u64,
        keep: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    ) -> Acquire {
        if self.try_lock_fast(me) {
            return Acquire::Clean;
        }
        let mut check_after = SLICE;
        loop {
            // As in `lock_slow`: read `seq` before announcing ourselves.
            let seq = self.seq.load(Ordering::Acquire);
            let cur = self.owner.load(Ordering::Relaxed);
            if cur == 0 {
                if self
                    .owner
                    .compare_exchange(0, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Acquire::Clean;
                }
                continue;
            }
            if cur & CONTENDED == 0
                && self
                    .owner
                    .compare_exchange(cur, cur | CONTENDED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let slept = std::time::Instant::now();
            mp_core::reactor::changed(&self.seq, seq, keep.clone(), check_after).await;
            if self.seq.load(Ordering::Acquire) == seq && slept.elapsed() >= check_after {
                if let Some(a) = self.take_if_dead(me) {
                    return a;
                }
                check_after = (check_after * 2).min(MAX_SLICE);
            }
        }
    }

    /// Releases the lock, whoever holds it; returns the previous owner word (0 when it was
    /// not locked, in which case nothing changed).
    #[inline]
    pub(crate) fn unlock(&self) -> u64 {
        // Release pairs with the Acquire CAS of the next holder.
        let old = self.owner.swap(0, Ordering::Release);
        if old & CONTENDED != 0 {
            self.wake_one();
        }
        old
    }

    #[cold]
    fn wake_one(&self) {
        // Release pairs with the Acquire load of `seq` by sleepers.
        self.seq.fetch_add(1, Ordering::Release);
        futex::wake(&self.seq, 1);
    }

    /// The holder's token without the contention flag (0 when unlocked).
    #[inline]
    pub(crate) fn holder(&self) -> u64 {
        self.owner.load(Ordering::Relaxed) & !CONTENDED
    }

    /// Recursion depth (meaningful to the holder of an `RLock` only).
    #[inline]
    pub(crate) fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sets the recursion depth; only the holder calls this.
    #[inline]
    pub(crate) fn set_count(&self, n: u32) {
        self.count.store(n, Ordering::Relaxed);
    }
}

/// The loom model of the lock word (docs/reliability.md, "Model checking"). Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p mp-sync --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use mp_core::ident::loom_dead;

    /// A token for model task `id` (the low half stands for a start time).
    fn token(id: u32) -> u64 {
        (u64::from(id) << 32) | 7
    }

    /// The lock and a counter that only its holder may touch: loom reports any two accesses
    /// to the counter that the lock does not order (a broken mutual exclusion, or an
    /// ordering too weak to publish the holder's writes).
    struct Guarded {
        lock: RawLock,
        counter: UnsafeCell<u32>,
    }

    // SAFETY: `counter` is touched only by the lock's holder (that is what the model checks;
    // loom's cell reports any access the lock does not order).
    unsafe impl Sync for Guarded {}

    impl Guarded {
        fn new() -> Guarded {
            Guarded {
                lock: RawLock::new(),
                counter: UnsafeCell::new(0),
            }
        }

        /// A read-modify-write of the counter in two steps; loom reports a second holder's
        /// access as a race even when no thread switch falls between the two. Only the lock's
        /// holder calls this.
        fn bump(&self) {
            // SAFETY: the caller holds the lock (what the model checks).
            let v = self.counter.with(|p| unsafe { *p });
            // SAFETY: as above.
            self.counter.with_mut(|p| unsafe { *p = v + 1 });
        }

        fn count(&self) -> u32 {
            // SAFETY: called once every other thread has been joined.
            self.counter.with(|p| unsafe { *p })
        }
    }

    /// Three tasks take the lock in turn, each once, through the fast path, the spin-free slow
    /// path and the futex sleep. With the model's timeouts off a sleeper wakes only through
    /// `unlock`'s `FUTEX_WAKE`, so a lost wake-up is a deadlock that loom reports. Proves:
    /// mutual exclusion (no torn or lost increment, no unordered access), every acquisition
    /// is `Clean`, no wake-up is lost, and the word ends unlocked.
    #[test]
    fn loom_lock_mutual_exclusion() {
        loom::model(|| {
            let g = Arc::new(Guarded::new());
            let threads: Vec<_> = (1..=2)
                .map(|id| {
                    let g = g.clone();
                    loom::thread::spawn(move || {
                        assert_eq!(g.lock.lock(token(id), Deadline::never()), Acquire::Clean);
                        g.bump();
                        assert_ne!(g.lock.unlock() & !CONTENDED, 0);
                    })
                })
                .collect();
            assert_eq!(g.lock.lock(token(3), Deadline::never()), Acquire::Clean);
            g.bump();
            g.lock.unlock();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(g.count(), 3);
            assert_eq!(g.lock.owner.load(Ordering::Relaxed), 0);
        });
    }

    /// A holder takes the lock, writes, and dies holding it (at any point of the others'
    /// runs); two waiters want the lock (their sleep slices end once the holder is dead, and
    /// only a waiter whose slice ended checks liveness). Proves: a waiter is told `OwnerDied` only once the
    /// holder is dead and only with the dead holder's id; at most one waiter takes over, and
    /// exactly one when the dead task still held the lock; what the holder wrote before dying
    /// is ordered before the taker's access; both waiters get the lock.
    #[test]
    fn loom_lock_takeover_of_dead_holder() {
        // The waiters poll (their sleeps time out) while the holder lives: long paths.
        let mut model = loom::model::Builder::new();
        model.max_branches = 100_000;
        model.check(|| {
            let g = Arc::new(Guarded::new());
            let holder = {
                let g = g.clone();
                loom::thread::spawn(move || {
                    assert_eq!(g.lock.lock(token(1), Deadline::never()), Acquire::Clean);
                    g.bump();
                    // Dies holding the lock.
                    loom_dead::mark_dead(token(1));
                })
            };
            let waiter = |id: u32| {
                let g = g.clone();
                loom::thread::spawn(move || {
                    let r = g.lock.lock(token(id), Deadline::never());
                    if let Acquire::OwnerDied(pid) = r {
                        assert_eq!(pid, 1, "the dead holder's id");
                        assert!(
                            loom_dead::is_dead(token(1)),
                            "taken over from a live holder"
                        );
                    }
                    g.bump();
                    g.lock.unlock();
                    r
                })
            };
            let (a, b) = (waiter(2), waiter(3));
            holder.join().unwrap();
            let results = [a.join().unwrap(), b.join().unwrap()];
            let took_over = results
                .iter()
                .filter(|r| matches!(r, Acquire::OwnerDied(_)))
                .count();
            assert!(results.iter().all(|r| *r != Acquire::Timeout));
            assert_eq!(g.count(), 3);
            // The holder took the lock and never released it: either a waiter took it over
            // (exactly one), or both waiters were done before the holder took it.
            let owner = g.lock.owner.load(Ordering::Relaxed) & !CONTENDED;
            if owner == token(1) {
                assert_eq!(took_over, 0);
            } else {
                assert_eq!((owner, took_over), (0, 1));
            }
        });
    }
}
