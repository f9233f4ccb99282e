//! The queue's internal robust lock: a 64-bit word holding the holder's identity token, so
//! that a holder killed inside a critical section does not hang the others.
//!
//! Word states: `0` free; `token` held; `token | CONTENDED` held with (possible) sleepers,
//! where `token` is the holder process's [`ident`] token (pid plus start time: a recycled pid
//! is not taken for the holder) and `CONTENDED` is its free top bit. This is Drepper's
//! "mutex2" ("Futexes Are Tricky", 2011) with the state word widened so that it *is* the
//! holder's identity, as mp-sync's `RawLock` does: taking the lock and recording the holder is
//! one compare-exchange, so there is no moment at which the lock is held by an unrecorded
//! holder. Sleepers wait on a separate 32-bit futex word, a wake sequence that a release which
//! saw `CONTENDED` bumps before it wakes one.
//!
//! A waiter sleeps with a timeout; each time the timeout runs out it asks
//! [`ident::is_alive`] about the token in the word. A dead holder's lock is taken over with a
//! compare-exchange on the exact word it observed (so only one waiter wins, and only while the
//! dead holder still holds it), and the new holder is told ([`Locked::recovered`]) so it can
//! repair what the dead one left (see `ring`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp_core::ident::{self, CONTENDED};
use mp_core::wait::Spin;
use mp_core::{futex, Deadline};

/// How long a waiter sleeps before it checks that the holder is alive.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);
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
    // Acquire pairs with the Release swap in `Locked::drop`: the previous holder's writes are
    // visible once we hold the word.
    if word
        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return lock_slow(word, wake, me, deadline);
    }
    Some(locked(word, wake, false))
}

#[cold]
fn lock_slow<'a>(
    word: &'a AtomicU64,
    wake: &'a AtomicU32,
    me: u64,
    deadline: Deadline,
) -> Option<Locked<'a>> {
    let bound = deadline
        .remaining()
        .map(|left| Instant::now() + left.max(LOCK_GRACE));
    // A spin first, as the wait policy allows: critical sections are a handful of stores, or
    // one serialization.
    let mut spin = Spin::new(word, deadline);
    while spin.spin() {
        if word.load(Ordering::Relaxed) == 0
            && word
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(locked(word, wake, false));
        }
    }
    loop {
        // Read the wake sequence before announcing ourselves: a release after our CAS below
        // bumps it, so the futex wait cannot miss that release. Acquire pairs with the
        // Release `fetch_add` in `Locked::drop`.
        let seq = wake.load(Ordering::Acquire);
        let v = word.load(Ordering::Relaxed);
        if v == 0 {
            // Take it marked CONTENDED: other sleepers may remain. Acquire as in `lock`.
            if word
                .compare_exchange(0, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(locked(word, wake, false));
            }
            continue;
        }
        let slice = match bound {
            None => LIVENESS_PERIOD,
            Some(b) => {
                let left = b.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                left.min(LIVENESS_PERIOD)
            }
        };
        if v & CONTENDED == 0
            && word
                .compare_exchange(v, v | CONTENDED, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        if futex::wait(wake, seq, Some(slice)) == futex::Wake::TimedOut {
            // Acquire, as the CAS below: pairs with the Release swap of the last clean release
            // (the RMWs on the word since then continue its release sequence). The token in
            // the word is the holder's whole identity, pid and start time: a pid recycled
            // since the holder died names another task, and `is_alive` says so.
            let cur = word.load(Ordering::Acquire);
            if cur != 0
                && !ident::is_alive(cur & !CONTENDED)
                && word
                    .compare_exchange(cur, me | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(locked(word, wake, true));
            }
        }
    }
}

/// Takes the lock if it is free.
pub(crate) fn try_lock<'a>(word: &'a AtomicU64, wake: &'a AtomicU32) -> Option<Locked<'a>> {
    // Acquire as in `lock`.
    word.compare_exchange(0, me(), Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    Some(locked(word, wake, false))
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Release pairs with the Acquire of the next holder.
        if self.word.swap(0, Ordering::Release) & CONTENDED != 0 {
            // Release pairs with the Acquire load of the sequence by sleepers.
            self.wake.fetch_add(1, Ordering::Release);
            futex::wake(self.wake, 1);
        }
    }
}
