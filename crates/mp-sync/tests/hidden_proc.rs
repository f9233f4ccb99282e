//! A lock's live holder stays the holder when `/proc` hides it (issue 13, item 2).
//!
//! The waiter is a forked child that sees a `/proc` mounted `hidepid=2` in a mount namespace of
//! its own and runs as an unprivileged user (uid 65534), so the root parent that holds the lock
//! has no `/proc` entry for it. It used to take that for death and take the lock over
//! (`OwnerDied`) from a live holder. Needs root (as in CI); skipped otherwise.

use std::time::Duration;

use mp_core::testing::in_hidden_proc_child;
use mp_sync::{Lock, RLock, TryLockError};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// In the hidden-`/proc` child, a timed take of a lock this (root) process holds must time
/// out: "the holder is alive", never `OwnerDied`.
fn assert_not_taken_over(take: impl FnOnce(Duration) -> Result<(), TryLockError>) {
    // Long enough for several liveness checks (the first after 5 ms, then doubling).
    let code = in_hidden_proc_child(|| {
        matches!(take(Duration::from_millis(400)), Err(TryLockError::Timeout))
    })
    .expect("the callers checked for root");
    assert_eq!(
        code, 0,
        "1: the live holder was taken over; 10-14: setup failed"
    );
}

#[test]
fn lock_held_by_a_hidden_live_process_is_not_taken_over() {
    if !is_root() {
        eprintln!("skipped: building a hidepid child needs root");
        return;
    }
    let lock = Lock::new().unwrap();
    lock.acquire().unwrap();
    assert_not_taken_over(|t| lock.acquire_timeout(t));
    assert!(lock.is_locked());
    lock.release().unwrap();
}

#[test]
fn rlock_held_by_a_hidden_live_thread_is_not_taken_over() {
    if !is_root() {
        eprintln!("skipped: building a hidepid child needs root");
        return;
    }
    let lock = RLock::new().unwrap();
    lock.acquire().unwrap();
    assert_not_taken_over(|t| lock.acquire_timeout(t));
    lock.release().unwrap();
}
