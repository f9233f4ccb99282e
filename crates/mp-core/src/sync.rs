//! The atomics and futex calls of the protocols that the loom models check, behind one name.
//!
//! In the normal build this module is nothing but re-exports: [`atomic`] is
//! `std::sync::atomic` and [`futex`] is [`crate::futex`], so the code compiles to
//! exactly what it would with those paths. Built with `RUSTFLAGS="--cfg loom"`, the same names
//! are [loom](https://docs.rs/loom)'s atomics and a model of the futex calls, and the models
//! (`loom_*` unit tests of mp-core, mp-sync and mp-pipe) run the real protocol functions on
//! loom threads, with the shared structs built in ordinary memory. This is tokio's `loom`
//! module in small (`tokio/src/loom/`: `std` re-exports, `mocked` for loom). See
//! docs/reliability.md, "Model checking", for what each model proves and how to run them.
//!
//! Only the protocols under model (the robust lock of [`crate::lock`], Condition's counts, the
//! pipe ring) use this module; every other primitive keeps `std::sync::atomic` and
//! [`crate::futex`], which work unchanged in the loom build (they are simply not modelled).

/// `std::sync::atomic`, or loom's atomics under `cfg(loom)`.
pub mod atomic {
    #[cfg(not(loom))]
    pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

    #[cfg(loom)]
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
}

/// [`crate::futex`]'s `wait` and `wake` on the atomics of [`atomic`], or a model of them under
/// `cfg(loom)`.
///
/// The model keeps the kernel's promise and nothing more: `wait` compares the word and queues
/// the caller in one step with respect to `wake` (the kernel does both under its hash-bucket
/// lock), and a queued waiter returns only when a `wake` on the same word picks it. A timed
/// wait also ends with [`Wake::TimedOut`](crate::futex::Wake) once a model task has died
/// (`expire_timed_waits`, called by `ident::loom_dead::mark_dead`): the sleep slice after
/// which a real waiter notices a dead peer. Before any death, timeouts never fire (a slice
/// that ends while every task lives only makes the waiter look again and sleep again), so a
/// protocol that loses a wake-up leaves its sleeper blocked for ever, which loom reports as a
/// deadlock: a model cannot pass on the strength of a sleep that ends by itself.
pub mod futex {
    pub use crate::futex::Wake;

    #[cfg(not(loom))]
    pub use crate::futex::{wait, wake, wake_all};

    #[cfg(loom)]
    pub use self::model::{expire_timed_waits, wait, wake, wake_all};

    #[cfg(loom)]
    mod model {
        use std::time::Duration;

        use loom::sync::{Condvar, Mutex};

        use super::super::atomic::{AtomicU32, Ordering};
        use super::Wake;

        /// The futex queue: who waits on which word, each waiter with a ticket of its own.
        struct Queue {
            /// `(address of the word, ticket, timed)` of every queued waiter, oldest first.
            waiters: Vec<(usize, u64, bool)>,
            /// Tickets of timed waiters whose sleep a death ended.
            expired: Vec<u64>,
            next_ticket: u64,
            /// True once a model task has died: timed waits end at once from then on.
            deaths: bool,
        }

        loom::lazy_static! {
            /// One queue per execution, like every loom static.
            static ref QUEUE: (Mutex<Queue>, Condvar) = (
                Mutex::new(Queue {
                    waiters: Vec::new(),
                    expired: Vec::new(),
                    next_ticket: 0,
                    deaths: false,
                }),
                Condvar::new(),
            );
        }

        fn key(word: &AtomicU32) -> usize {
            word as *const AtomicU32 as usize
        }

        /// Sleeps while `word` holds `expected` (the model of [`crate::futex::wait`]).
        pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
            let (lock, cv) = &*QUEUE;
            let mut q = lock.lock().unwrap();
            // Relaxed: the kernel's read gives the caller no ordering; the callers' own
            // Acquire loads (before and after the wait) are what their protocols rely on.
            if word.load(Ordering::Relaxed) != expected {
                return Wake::Changed;
            }
            if timeout.is_some() && q.deaths {
                drop(q);
                // A waiter that keeps timing out polls: let the others run.
                loom::thread::yield_now();
                return Wake::TimedOut;
            }
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.waiters.push((key(word), ticket, timeout.is_some()));
            loop {
                if let Some(i) = q.expired.iter().position(|&t| t == ticket) {
                    q.expired.swap_remove(i);
                    return Wake::TimedOut;
                }
                if !q.waiters.iter().any(|&(_, t, _)| t == ticket) {
                    return Wake::Woken;
                }
                q = cv.wait(q).unwrap();
            }
        }

        /// Wakes up to `n` waiters queued on `word`, oldest first; returns how many.
        pub fn wake(word: &AtomicU32, n: u32) -> usize {
            let (lock, cv) = &*QUEUE;
            let mut q = lock.lock().unwrap();
            let k = key(word);
            let mut woken = 0;
            q.waiters.retain(|&(a, _, _)| {
                if a == k && woken < n as usize {
                    woken += 1;
                    false
                } else {
                    true
                }
            });
            if woken > 0 {
                cv.notify_all();
            }
            woken
        }

        /// Wakes every waiter on `word`.
        pub fn wake_all(word: &AtomicU32) -> usize {
            wake(word, u32::MAX)
        }

        /// A model task died: every timed wait, now and later, times out.
        pub fn expire_timed_waits() {
            let (lock, cv) = &*QUEUE;
            let mut q = lock.lock().unwrap();
            q.deaths = true;
            let mut expired = Vec::new();
            q.waiters.retain(|&(_, t, timed)| {
                if timed {
                    expired.push(t);
                }
                !timed
            });
            q.expired.extend(expired);
            cv.notify_all();
        }
    }
}

/// Gives the processor to another thread (a loom thread under `cfg(loom)`, so that a model's
/// spin loop lets the others run).
#[inline]
pub fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}
