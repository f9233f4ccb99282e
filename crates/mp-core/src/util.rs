//! Small chores that every mp crate does the same way: taking a `std` lock whose holder
//! panicked, and turning a panic payload into the text that is reported.
//!
//! They live here, in the one crate that every other depends on, so that each chore is written
//! once.

use std::any::Any;
use std::sync::{LockResult, Mutex, MutexGuard};

/// Locks `m`, going on when a thread panicked while holding it.
///
/// mp's `std` mutexes guard tables and queues whose every update is complete before anything
/// can panic, so a poisoned one holds consistent data and the poison is ignored.
pub fn lock_unpoisoned<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    unpoisoned(m.lock())
}

/// The guard of a lock or condition-variable result, poisoned or not (see [`lock_unpoisoned`]):
/// for `Condvar::wait` and `Condvar::wait_timeout`.
pub fn unpoisoned<G>(r: LockResult<G>) -> G {
    r.unwrap_or_else(|p| p.into_inner())
}

/// The text of a panic payload: the `&str` or `String` that `panic!` was given, or a fixed
/// sentence for any other payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_taken() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock_unpoisoned(&m) += 1;
        assert_eq!(*lock_unpoisoned(&m), 2);
    }

    #[test]
    fn payloads_become_text() {
        let s: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(&*s), "static");
        let s: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&*s), "owned");
        let s: Box<dyn Any + Send> = Box::new(7u8);
        assert!(panic_message(&*s).contains("not a string"));
    }
}
