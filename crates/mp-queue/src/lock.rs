//! The queue's internal robust locks (the producer's and the consumer's), so that a holder
//! killed inside a critical section does not hang the others.
//!
//! The protocol is [`mp_core::lock`]'s, the same as mp-sync's locks: a 64-bit word holding the
//! holder process's [`ident`] token (0: free; with `CONTENDED` when sleepers may exist) and a
//! 32-bit wake sequence the sleepers wait on, both in the ring's header. A waiter checks the
//! holder's liveness after each sleep slice; a dead holder's lock is taken over by exactly one
//! waiter, which is told ([`Locked::recovered`]) so it can repair what the dead one left (see
//! `ring`). This layer adds the guard and the grace ([`LOCK_GRACE`]) of a timed caller.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use mp_core::ident::{self, CONTENDED};
use mp_core::lock::{self as robust, Acquire};
use mp_core::Deadline;

/// The least a timed caller waits for the lock, whatever its own deadline: critical sections
/// are short, so a `put_nowait` or a `get_timeout(0)` that finds the lock held waits for it
/// briefly (and for the liveness check that takes over a dead holder's lock) rather than
/// failing because another process was inside for a microsecond.
const LOCK_GRACE: Duration = Duration::from_millis(50);

/// Proof of holding the lock; releases it when dropped.
pub(crate) struct Locked<'a> {
    word: &'a AtomicU64,
    wake: &'a AtomicU32,
    /// The previous holder died holding the lock.
    pub(crate) recovered: bool,
}

/// This process's token, from the identity cache (no system call once cached). Never 0 (a
/// pid is never 0) and never with `CONTENDED` (`ident` keeps bit 63 free).
fn me() -> u64 {
    ident::process_token() & !CONTENDED
}

fn locked<'a>(word: &'a AtomicU64, wake: &'a AtomicU32, recovered: bool) -> Locked<'a> {
    Locked {
        word,
        wake,
        recovered,
    }
}

/// `deadline`, or [`LOCK_GRACE`] from now when that is later.
fn with_grace(deadline: Deadline) -> Deadline {
    match deadline.remaining() {
        Some(left) if left < LOCK_GRACE => Deadline::after(Some(LOCK_GRACE)),
        _ => deadline,
    }
}

/// Takes the lock whose state is `word` and whose sleepers wait on `wake`. Blocks until it is
/// free or its holder is found dead, or until `deadline` (but at least [`LOCK_GRACE`]): then
/// `None`. (A live holder keeps the lock for as long as it lives, and so does a word that
/// another process scribbled into naming some live process: the deadline is what bounds a
/// timed `get` or `put` then.)
pub(crate) fn lock_until<'a>(
    word: &'a AtomicU64,
    wake: &'a AtomicU32,
    deadline: Deadline,
) -> Option<Locked<'a>> {
    let me = me();
    // The fast path first: the grace costs a clock read only when the lock is held.
    if robust::try_lock_fast(word, me) {
        return Some(locked(word, wake, false));
    }
    match robust::lock(word, wake, me, with_grace(deadline)) {
        Acquire::Clean => Some(locked(word, wake, false)),
        Acquire::OwnerDied(_) => Some(locked(word, wake, true)),
        Acquire::Timeout => None,
    }
}

/// Takes the lock if it is free. Never from a dead holder: whoever takes one over must repair
/// its journal, which only the ring's `lock_producer` and `lock_consumer` do (the callers of
/// this one only help with reclaiming, and a dead holder is found by the next blocking caller).
pub(crate) fn try_lock<'a>(word: &'a AtomicU64, wake: &'a AtomicU32) -> Option<Locked<'a>> {
    robust::try_lock_fast(word, me()).then(|| locked(word, wake, false))
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        robust::unlock(self.word, self.wake);
    }
}
