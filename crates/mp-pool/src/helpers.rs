//! The small chores every part of the crate does: take a lock or wait on a condition
//! variable ignoring poison (a panicking callback or task must not wedge the pool: the state
//! under these locks stays consistent at every unlock), read the text of a panic payload, and
//! tell whether this thread is one of a pool's own.

use std::cell::Cell;
use std::sync::{Condvar, MutexGuard};
use std::time::Duration;

use mp_core::util::unpoisoned;

/// Locks a mutex, ignoring poison (mp-core's one helper for it).
pub(crate) use mp_core::util::lock_unpoisoned as lock;
/// The text of a panic payload (mp-core's one helper for it).
pub(crate) use mp_core::util::panic_message as panic_text;

/// Waits on `cv` with `guard`, ignoring poison.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    unpoisoned(cv.wait(guard))
}

/// Waits on `cv` with `guard` at most `timeout`, ignoring poison.
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    unpoisoned(cv.wait_timeout(guard, timeout)).0
}

thread_local! {
    /// On a pool's supervisor and feeder threads: the pool's id (`Inner::id`), else 0.
    static POOL_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as one of pool `id`'s own (its supervisor or feeder).
pub(crate) fn set_pool_thread(id: usize) {
    POOL_THREAD.with(|t| t.set(id));
}

/// True on a thread of pool `id` (its supervisor or feeder, where callbacks run): a call
/// that waits for that pool would wait for this very thread.
pub(crate) fn on_pool_thread(id: usize) -> bool {
    id != 0 && POOL_THREAD.with(|t| t.get()) == id
}
