//! A lock's live holder stays the holder when `/proc` hides it (issue 13, item 2).
//!
//! The waiter is a forked child that sees a `/proc` mounted `hidepid=2` in a mount namespace of
//! its own and runs as an unprivileged user (uid 65534), so the root parent that holds the lock
//! has no `/proc` entry for it. It used to take that for death and take the lock over
//! (`OwnerDied`) from a live holder. Needs root (as in CI); skipped otherwise.

use std::time::Duration;

use mp_sync::{Lock, RLock, TryLockError};

/// Runs `check` in a forked child behind a `hidepid=2` `/proc`, as uid 65534, and returns its
/// exit code (0: the check held; 1: it did not; 10-14: the setup failed).
fn in_hidden_proc_child(check: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the child makes system calls, runs `check` (a timed lock attempt: futex waits,
    // `/proc` reads and `kill` on the stack) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls with NUL-terminated literals.
        let code = unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                10
            } else if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                11
            } else if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                0,
                c"hidepid=2".as_ptr().cast(),
            ) != 0
            {
                12
            } else if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                13
            } else if libc::access(c"/proc/1/stat".as_ptr(), libc::F_OK) == 0 {
                14
            } else if check() {
                0
            } else {
                1
            }
        };
        // SAFETY: ends the child without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    libc::WEXITSTATUS(status)
}

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
    });
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
