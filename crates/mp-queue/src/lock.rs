//! The queue's internal robust lock: a futex word holding the holder's pid, so that a holder
//! killed inside a critical section does not hang the others.
//!
//! Word states: `0` free; `pid` held; `pid | CONTENDED` held with (possible) sleepers. This is
//! Drepper's "mutex2" ("Futexes Are Tricky", 2011) with the pid in place of the constant 1.
//! A waiter sleeps with a timeout; each time the timeout runs out it checks that the holder is
//! alive (its token, pid plus start time, see `mp_core::ident`). A dead holder's lock is taken over with
//! a compare-exchange on the exact word it observed, and the new holder is told
//! ([`Locked::recovered`]) so it can repair what the dead one left (see `ring`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mp_core::{futex, ident};

const CONTENDED: u32 = 1 << 31;
/// How long a waiter sleeps before it checks that the holder is alive.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);

/// Proof of holding the lock; releases it when dropped.
pub(crate) struct Locked<'a> {
    word: &'a AtomicU32,
    start: &'a AtomicU64,
    /// The previous holder died holding the lock.
    pub(crate) recovered: bool,
}

/// This process's pid and token, from the identity cache (no system call once cached).
fn me() -> (u32, u64) {
    let token = ident::process_token();
    (ident::id_of(token) & !CONTENDED, token)
}

/// Takes the lock. Blocks until it is free or its holder is found dead.
pub(crate) fn lock<'a>(word: &'a AtomicU32, start: &'a AtomicU64) -> Locked<'a> {
    let (pid, token) = me();
    // Acquire pairs with the Release swap in `Locked::drop`: the previous holder's writes are
    // visible once we hold the word.
    if word
        .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return lock_slow(word, start, pid, token);
    }
    start.store(token, Ordering::Relaxed);
    Locked {
        word,
        start,
        recovered: false,
    }
}

#[cold]
fn lock_slow<'a>(word: &'a AtomicU32, start: &'a AtomicU64, pid: u32, token: u64) -> Locked<'a> {
    // A short spin first: critical sections are a handful of stores, or one serialization.
    for _ in 0..200 {
        std::hint::spin_loop();
        if word.load(Ordering::Relaxed) == 0
            && word
                .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            start.store(token, Ordering::Relaxed);
            return Locked {
                word,
                start,
                recovered: false,
            };
        }
    }
    let mut recovered = false;
    loop {
        let v = word.load(Ordering::Relaxed);
        if v == 0 {
            // Take it marked CONTENDED: other sleepers may remain. Acquire as above.
            if word
                .compare_exchange(0, pid | CONTENDED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
            continue;
        }
        if v & CONTENDED == 0
            && word
                .compare_exchange(v, v | CONTENDED, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        if futex::wait(word, v | CONTENDED, Some(LIVENESS_PERIOD)) == futex::Wake::TimedOut {
            let holder = v & !CONTENDED;
            // The holder's token, if it has stored it yet (and it is this holder's): a token
            // also checks the start time, so a reused pid is not taken for the holder.
            let t = start.load(Ordering::Relaxed);
            let holder_token = if t != 0 && ident::id_of(t) == holder {
                t
            } else {
                u64::from(holder) << 32
            };
            if !ident::is_alive(holder_token)
                && word
                    .compare_exchange(
                        v | CONTENDED,
                        pid | CONTENDED,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                recovered = true;
                break;
            }
        }
    }
    start.store(token, Ordering::Relaxed);
    Locked {
        word,
        start,
        recovered,
    }
}

/// Takes the lock if it is free.
pub(crate) fn try_lock<'a>(word: &'a AtomicU32, start: &'a AtomicU64) -> Option<Locked<'a>> {
    let (pid, token) = me();
    // Acquire as in `lock`.
    word.compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    start.store(token, Ordering::Relaxed);
    Some(Locked {
        word,
        start,
        recovered: false,
    })
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Cleared before release, so that a later holder never shows a stale start time.
        self.start.store(0, Ordering::Relaxed);
        // Release pairs with the Acquire of the next holder.
        if self.word.swap(0, Ordering::Release) & CONTENDED != 0 {
            futex::wake(self.word, 1);
        }
    }
}
