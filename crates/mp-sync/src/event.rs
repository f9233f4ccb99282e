//! [`Event`]: a flag that processes wait for.
//!
//! # Algorithm
//! The flag (0 or 1) is the futex word. `wait` returns at once when it is set, else spins a
//! little (an event set by a peer on another core within microseconds is caught without
//! sleeping), then counts itself in `waiters` and sleeps while the flag is 0. `set` stores 1
//! and makes the `FUTEX_WAKE` syscall only when `waiters` is not zero (the same `SeqCst`
//! Dekker pair as the semaphore's).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mp_core::futex;
use mp_core::{Deadline, Shared, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::error::Result;
use crate::raw::Spin;
use mp_core::ident;

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawEvent {
    /// 1 when set; the futex word.
    flag: AtomicU32,
    /// How many waiters may be asleep.
    waiters: AtomicU32,
}
assert_eq_size!(RawEvent, u64);
assert_eq_align!(RawEvent, u32);

// SAFETY: only atomics (1); any value of `flag` other than 0 reads as set, any `waiters`
// value is a count (2); no Drop (3); `#[repr(C)]`, size and alignment pinned above (4).
unsafe impl ShmSafe for RawEvent {}

/// A flag shared between processes (Python's `multiprocessing.Event`).
///
/// ```
/// use std::time::Duration;
/// use mp_sync::Event;
/// let ev = Event::new()?;
/// assert!(!ev.wait_timeout(Duration::ZERO));
/// ev.set();
/// assert!(ev.is_set());
/// ev.wait(); // returns at once
/// ev.clear();
/// assert!(!ev.is_set());
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct Event {
    raw: Shared<RawEvent>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event> {
        ident::init();
        Ok(Event {
            raw: Shared::new(RawEvent {
                flag: AtomicU32::new(0),
                waiters: AtomicU32::new(0),
            })?,
        })
    }

    /// True when the flag is set.
    #[inline]
    pub fn is_set(&self) -> bool {
        // Acquire pairs with the SeqCst (so Release) swap in `set`: what the setter wrote
        // before setting is visible.
        self.raw.flag.load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    #[inline]
    pub fn set(&self) {
        // SeqCst: the setter's half of the Dekker pair with `wait_until`.
        let was = self.raw.flag.swap(1, Ordering::SeqCst);
        // SeqCst pairs with the waiter's SeqCst increment.
        if was == 0 && self.raw.waiters.load(Ordering::SeqCst) != 0 {
            futex::wake_all(&self.raw.flag);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.raw.flag.store(0, Ordering::Relaxed);
    }

    /// Blocks until the flag is set.
    pub fn wait(&self) {
        self.wait_until(Deadline::never());
    }

    /// Waits at most `timeout` for the flag; returns whether it is set (Python's `wait(t)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    fn wait_until(&self, deadline: Deadline) -> bool {
        if self.is_set() {
            return true;
        }
        let mut spin = Spin::new();
        while !deadline.expired() && spin.spin() {
            if self.is_set() {
                return true;
            }
        }
        // SeqCst: pairs with the SeqCst load of `waiters` in `set`.
        self.raw.waiters.fetch_add(1, Ordering::SeqCst);
        let set = loop {
            // SeqCst: the waiter's re-check in the Dekker pair.
            let v = self.raw.flag.load(Ordering::SeqCst);
            if v != 0 {
                break true;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                break false;
            }
            futex::wait(&self.raw.flag, 0, left);
        };
        self.raw.waiters.fetch_sub(1, Ordering::Relaxed);
        set
    }
}
