//! [`Event`]: a flag that processes wait for.
//!
//! # Algorithm
//! The futex word is a counter whose lowest bit is the flag: odd is set, even is clear.
//! `set` makes an even word odd (one `fetch_or`), `clear` makes an odd word even (one CAS,
//! and none when it is clear already), so the word changes exactly when the flag does and
//! never comes back to a value it had (until it wraps, after 2^31 set/clear pairs). `wait`
//! notes the word when it starts and returns once it differs: a `set` came, even if a
//! `clear` followed at once (a pulse), as with Python's `Event`. It returns at once when the
//! flag is set, else spins a little (an event set by a peer on another core within
//! microseconds is caught without sleeping), then counts itself in `waiters` and sleeps
//! while the word is unchanged. `set` makes the `FUTEX_WAKE` syscall only when `waiters` is
//! not zero (the same `SeqCst` Dekker pair as the semaphore's).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mp_core::futex;
use mp_core::{Deadline, Shared, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::error::Result;
use mp_core::ident;
use mp_core::wait::Spin;

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawEvent {
    /// The futex word: odd when set; changes with every set and every clear.
    word: AtomicU32,
    /// How many waiters may be asleep.
    waiters: AtomicU32,
}
assert_eq_size!(RawEvent, u64);
assert_eq_align!(RawEvent, u32);

// SAFETY: only atomics (1); any value of `word` is a flag (its low bit) and a count, any
// `waiters` value is a count (2); no Drop (3); `#[repr(C)]`, size and alignment pinned above (4).
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
                word: AtomicU32::new(0),
                waiters: AtomicU32::new(0),
            })?,
        })
    }

    /// True when the flag is set.
    #[inline]
    pub fn is_set(&self) -> bool {
        // Acquire pairs with the SeqCst (so Release) `fetch_or` in `set`: what the setter
        // wrote before setting is visible.
        self.raw.word.load(Ordering::Acquire) & 1 != 0
    }

    /// Sets the flag and wakes every waiter.
    #[inline]
    pub fn set(&self) {
        // SeqCst: the setter's half of the Dekker pair with `wait_until`.
        let was = self.raw.word.fetch_or(1, Ordering::SeqCst);
        // SeqCst pairs with the waiter's SeqCst increment.
        if was & 1 == 0 && self.raw.waiters.load(Ordering::SeqCst) != 0 {
            futex::wake_all(&self.raw.word);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        let w = self.raw.word.load(Ordering::Relaxed);
        if w & 1 != 0 {
            // Odd to the next even value. A set does not change an odd word, so a failed CAS
            // means another clear came first (and maybe a set after it, which then counts
            // as coming after this clear).
            let _ = self.raw.word.compare_exchange(
                w,
                w.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Blocks until the flag is set (or was set while this call waited, even if cleared
    /// since).
    pub fn wait(&self) {
        self.wait_until(Deadline::never());
    }

    /// Waits at most `timeout` for the flag; returns whether it is set, or was set while this
    /// call waited (Python's `wait(t)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    /// [`wait`](Self::wait) for async code (feature `async`): resolves once the flag is set
    /// (or was set while this waited). The task waits without spinning and without a thread of
    /// its own (mp-core's reactor sleeps on the event's word for every waiting future of the
    /// process); dropping the future is harmless.
    #[cfg(feature = "async")]
    pub async fn wait_async(&self) {
        // Acquire: as in `is_set`.
        let start = self.raw.word.load(Ordering::Acquire);
        if start & 1 != 0 {
            return;
        }
        /// Counts this future out of `waiters` when it resolves or is dropped.
        struct Counted<'a>(&'a AtomicU32);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // SeqCst: pairs with the SeqCst load of `waiters` in `set` (as `wait_until`).
        self.raw.waiters.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&self.raw.waiters);
        let keep: std::sync::Arc<dyn std::any::Any + Send + Sync> =
            std::sync::Arc::new(self.raw.clone());
        while self.raw.word.load(Ordering::SeqCst) == start {
            mp_core::reactor::changed(&self.raw.word, start, keep.clone(), Duration::from_secs(1))
                .await;
        }
    }

    fn wait_until(&self, deadline: Deadline) -> bool {
        // Acquire: as in `is_set`.
        let start = self.raw.word.load(Ordering::Acquire);
        if start & 1 != 0 {
            return true;
        }
        let changed = || self.raw.word.load(Ordering::Acquire) != start;
        let mut spin = Spin::new(&*self.raw, deadline);
        while !deadline.expired() && spin.spin() {
            if changed() {
                return true;
            }
        }
        // SeqCst: pairs with the SeqCst load of `waiters` in `set`.
        self.raw.waiters.fetch_add(1, Ordering::SeqCst);
        let set = loop {
            // SeqCst: the waiter's re-check in the Dekker pair.
            if self.raw.word.load(Ordering::SeqCst) != start {
                break true;
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                break false;
            }
            futex::wait(&self.raw.word, start, left);
        };
        self.raw.waiters.fetch_sub(1, Ordering::Relaxed);
        set
    }
}
