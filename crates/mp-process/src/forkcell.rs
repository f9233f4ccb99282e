//! [`ForkCell`]: a process-global `Mutex` that a forked child replaces instead of inheriting.
//!
//! After `fork`, a lock that another thread of the parent held at that moment stays locked
//! forever in the child, where that thread does not exist. So each of mp-process's globals (the
//! registry of children, the launcher thread's channel, the fork server connection) lives
//! behind a pointer that the child's fork hook resets to null: the child builds a fresh value on
//! first use and the inherited one is leaked on purpose (it may be locked; it is never touched).

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// A lazily built, leaked `Mutex<T>`, replaced in forked children by [`ForkCell::reset`].
pub(crate) struct ForkCell<T> {
    ptr: AtomicPtr<Mutex<T>>,
}

impl<T> ForkCell<T> {
    /// An empty cell (the value is built by the first [`get`](Self::get)).
    pub(crate) const fn new() -> Self {
        ForkCell {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The current value, built with `init` on first use in this process.
    pub(crate) fn get(&'static self, init: impl FnOnce() -> T) -> &'static Mutex<T> {
        // Acquire pairs with the Release half of the compare_exchange below: the Mutex is
        // fully built before its pointer is seen.
        let p = self.ptr.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: non-null pointers here are leaked boxes, never freed.
            return unsafe { &*p };
        }
        let fresh = Box::into_raw(Box::new(Mutex::new(init())));
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: we just published `fresh`, a leaked box.
            Ok(_) => unsafe { &*fresh },
            Err(existing) => {
                // SAFETY: `fresh` lost the race and was never shared, so we may free it;
                // `existing` is a leaked box, never freed.
                unsafe {
                    drop(Box::from_raw(fresh));
                    &*existing
                }
            }
        }
    }

    /// Forgets the inherited value (leaking it): for the child side of a fork.
    pub(crate) fn reset(&self) {
        self.ptr.store(std::ptr::null_mut(), Ordering::Relaxed);
    }
}
