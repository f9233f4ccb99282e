//! Blocking on 32-bit words in shared memory: Linux futexes, never `FUTEX_PRIVATE`, so a wake
//! in one process reaches a waiter in another that maps the same page.
//!
//! Every other module blocks through this one, so a port to another Unix replaces this file
//! (with `__ulock_wait` on macOS or `_umtx_op` on FreeBSD) behind `cfg`.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

// In a module of its own so that the wait policy (`crate::wait`), which `wait_until` uses,
// can name it without importing this module back.
pub use crate::deadline::Deadline;

/// How a [`wait`] ended. Callers re-check their condition in every case: futex wake-ups may be
/// spurious.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken by [`wake`] (or spuriously).
    Woken,
    /// The word did not hold the expected value when the wait began.
    Changed,
    /// The timeout ran out.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (forever when `None`).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the u32 at `word` (a valid, aligned atomic that outlives the
    // call) and the optional timespec (on our stack); it writes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == 0 {
        return Wake::Woken;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Wake::Changed,
        Some(libc::ETIMEDOUT) => Wake::TimedOut,
        Some(libc::EINTR) => Wake::Interrupted,
        _ => Wake::Woken,
    }
}

/// Wakes up to `n` processes or threads waiting on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key; nothing is read or written
    // through it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(r).unwrap_or(0)
}

/// Wakes every waiter on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

/// Spins as the wait policy allows ([`crate::wait`]), then sleeps on `word` until
/// `done(current value)` holds or the deadline passes. Returns the last value seen, or
/// `Err(value)` on timeout.
pub fn wait_until(
    word: &AtomicU32,
    mut done: impl FnMut(u32) -> bool,
    deadline: Deadline,
) -> Result<u32, u32> {
    use std::sync::atomic::Ordering::Acquire;
    let mut spin = crate::wait::Spin::new(word, deadline);
    loop {
        let v = word.load(Acquire);
        if done(v) {
            return Ok(v);
        }
        if !spin.spin() {
            break;
        }
    }
    loop {
        // Acquire pairs with the Release store of whoever changes the word before waking.
        let v = word.load(Acquire);
        if done(v) {
            return Ok(v);
        }
        let left = deadline.remaining();
        if left == Some(Duration::ZERO) {
            return Err(v);
        }
        wait(word, v, left);
    }
}
