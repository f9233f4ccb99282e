//! The raw robust lock every lock-like primitive of this crate stands on: a 16-byte struct in
//! shared memory holding the two words of [`mp_core::lock`] (its module doc describes the
//! protocol: Drepper's futex mutex with the holder's token as its state word, and dead-holder
//! takeover told as [`Acquire::OwnerDied`]) and an `RLock`'s recursion count.
//!
//! The algorithm is mp-core's, shared with mp-queue's internal locks; this layer adds the
//! struct's layout, the recursion count, and the `tracing` event of a takeover (feature
//! `tracing`), emitted for every takeover whichever primitive made it.
//!
//! Nothing here is `unsafe` and the raw lock protects no Rust data by itself: every value
//! mp-sync guards lives in shared memory and is only copied in and out with atomic
//! operations, so even a misused lock (released by a third process, as Python allows) can
//! only produce a logically wrong value, never undefined behaviour.

// The loom shim: std's atomics in the normal build, loom's under `cfg(loom)` (the Condition
// models build a `RawLock` in ordinary memory).
use mp_core::lock::{self, Acquire};
use mp_core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use mp_core::{Deadline, ShmSafe};
#[cfg(not(loom))]
use static_assertions::{assert_eq_align, assert_eq_size};

/// The shared state of a robust lock: the two words of [`mp_core::lock`] and a count.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawLock {
    /// 0 when unlocked, else the holder's token, with `CONTENDED` when sleepers may exist.
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

/// Passes `a` on, after the `tracing` event of a takeover when it is one.
#[inline]
fn told(a: Acquire) -> Acquire {
    #[cfg(feature = "tracing")]
    if let Acquire::OwnerDied(pid) = a {
        tracing::warn!(target: "mp::sync", dead_pid = pid, "a dead holder's lock was taken over");
    }
    a
}

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

    /// Acquires, waiting until `deadline` ([`lock::lock`]).
    #[inline]
    pub(crate) fn lock(&self, me: u64, deadline: Deadline) -> Acquire {
        told(lock::lock(&self.owner, &self.seq, me, deadline))
    }

    /// A non-blocking attempt that also takes over from a dead holder ([`lock::try_lock`]).
    pub(crate) fn try_lock(&self, me: u64) -> Acquire {
        told(lock::try_lock(&self.owner, me))
    }

    /// [`lock`](Self::lock) without a deadline, for async callers (feature `async`):
    /// [`lock::lock_async`]. `keep` keeps the lock's mapping alive for the reactor.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) async fn lock_async(
        &self,
        me: u64,
        keep: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    ) -> Acquire {
        told(lock::lock_async(&self.owner, &self.seq, me, keep).await)
    }

    /// Releases the lock, whoever holds it; returns the previous owner word (0 when it was
    /// not locked, in which case nothing changed).
    #[inline]
    pub(crate) fn unlock(&self) -> u64 {
        lock::unlock(&self.owner, &self.seq)
    }

    /// The holder's token without the contention flag (0 when unlocked).
    #[inline]
    pub(crate) fn holder(&self) -> u64 {
        lock::holder(&self.owner)
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
