//! Python's synchronisation primitives, in shared memory, for processes: [`Lock`], [`RLock`],
//! [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`], [`Value`],
//! [`Array`] (and [`SharedMemory`], re-exported from mp-core).
//!
//! Each primitive lives in a shared-memory region of its own and is used through a handle:
//! cloning a handle shares the primitive, a fork child inherits it, and a child started by
//! spawn receives it as an argument (every type here is a [`Message`](mp_core::Message)
//! whose handles carry the region's descriptor). Unlike Python's, none of them hangs its
//! users when a process dies at the wrong moment: see [When a holder dies](#when-a-holder-dies).
//!
//! # Hello, Lock
//!
//! Two forked children add to a shared counter under a lock; no update is lost:
//!
//! ```
//! use mp_process::Process;
//! use mp_sync::{Lock, Value};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let lock = Lock::new()?;
//!     let total = Value::new(0u64)?; // a Value has its own lock; here we use ours
//!     let mut children = Vec::new();
//!     for _ in 0..2 {
//!         let (lock, total) = (lock.clone(), total.get_obj().clone());
//!         children.push(Process::fork(move || {
//!             for _ in 0..1000 {
//!                 let _guard = lock.lock().unwrap();
//!                 total.set(total.get() + 1);
//!             }
//!         })?);
//!     }
//!     for mut c in children {
//!         c.join()?;
//!     }
//!     assert_eq!(total.get(), 2000);
//!     Ok(())
//! }
//! ```
//!
//! # Sharing with a spawned child
//!
//! Under the spawn start method the child is a new program image; primitives reach it as
//! arguments of its (plain `fn`) target. Nothing else changes:
//!
//! ```
//! use mp_process::{Process, StartMethod};
//! use mp_sync::{Event, Value};
//!
//! fn worker((ready, answer): (Event, Value<i64>)) {
//!     answer.set(42);
//!     ready.set();
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mp_process::init(); // lets this program act as its own spawned child
//!     let ready = Event::new()?;
//!     let answer = Value::new(0i64)?;
//!     let mut child = Process::new(worker, (ready.clone(), answer.clone()))
//!         .start_method(StartMethod::Spawn)
//!         .start()?;
//!     assert!(ready.wait_timeout(std::time::Duration::from_secs(10)));
//!     assert_eq!(answer.get(), 42);
//!     child.join()?;
//!     Ok(())
//! }
//! ```
//!
//! A handle can only travel at process start, not through a queue or a pipe later (as in
//! Python); a handle decoded as another type, or pointing at a region of another layout, is
//! refused with an error.
//!
//! # When a holder dies
//!
//! [`Lock`], [`RLock`] and the lock of a [`Condition`] record who holds them: the process (for
//! `Lock`) or thread (for `RLock`) id together with its start time, so that a later process
//! that happens to get the same pid is not mistaken for the holder. A waiter that has waited a
//! few milliseconds checks whether the holder is still alive; if it is not, the waiter takes
//! the lock and is told with [`OwnerDied`], the way a robust mutex returns `EOWNERDEAD`. The
//! state the lock protects may be half-updated: the one who is told repairs it.
//!
//! ```
//! use mp_process::Process;
//! use mp_sync::Lock;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lock = Lock::new()?;
//! let l = lock.clone();
//! // The child takes the lock and exits without releasing it (a crash, a SIGKILL...).
//! Process::fork(move || std::mem::forget(l.lock()))?.join()?;
//! match lock.lock() {
//!     Ok(_guard) => unreachable!("the holder died: we are told"),
//!     Err(died) => {
//!         // `died.pid()` is the dead holder; we hold the lock.
//!         let _guard = died.into_inner();
//!     }
//! }
//! assert!(lock.lock().is_ok()); // the next acquirer is not told again
//! # Ok(())
//! # }
//! ```
//!
//! The results follow `std::sync::Mutex`'s poisoning: [`LockResult`] is
//! `Result<Guard, OwnerDied<Guard>>`, so `.unwrap()` panics on a dead holder and
//! `.unwrap_or_else(|e| e.into_inner())` goes on regardless.
//!
//! A [`Barrier`] whose party process dies while the others wait for it (also one killed
//! while it runs the barrier's action) breaks ([`Error::BrokenBarrier`]) instead of hanging.
//! A [`Condition`] notifier killed inside `notify` has notified or not, never half, and its
//! waiters do not sleep on a wake-up it never sent; a waiter killed inside `wait` takes no
//! notification from the living (every waiter has a record, and `notify` passes over the
//! dead). A [`Semaphore`] has no owner (any process may release it, as in Python), so the
//! permits of a dead holder are lost: those who wait with a timeout time out, and whoever
//! knows may [`release`](Semaphore::release) them (see [`semaphore`]).
//!
//! # Timeouts
//!
//! Every blocking call has a timed form, and running out of time is a value, never a panic:
//! `Err(TryLockError::Timeout)` for locks, `false` for [`Semaphore::acquire_timeout`] and
//! [`Event::wait_timeout`], `(guard, false)` for [`Condition::wait_timeout`],
//! [`Error::BrokenBarrier`] for a barrier (which breaks, as in Python).
//!
//! ```
//! use std::time::Duration;
//! use mp_sync::{Lock, Semaphore, TryLockError};
//!
//! let lock = Lock::new()?;
//! let _held = lock.lock().unwrap();
//! assert!(matches!(lock.lock_timeout(Duration::from_millis(10)), Err(TryLockError::Timeout)));
//! let sem = Semaphore::new(0)?;
//! assert!(!sem.acquire_timeout(Duration::from_millis(10)));
//! # Ok::<(), mp_sync::Error>(())
//! ```
//!
//! # RLock and Condition
//!
//! An [`RLock`] may be taken again by the thread that holds it. A [`Condition`] (over an
//! `RLock` by default) lets a process wait, lock released, until another changes the state
//! and notifies:
//!
//! ```
//! use std::time::Duration;
//! use mp_process::Process;
//! use mp_sync::{Condition, RawValue};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cond = Condition::new()?;
//! let items = RawValue::new(0u32)?; // protected by the condition's lock
//! let (c, i) = (cond.clone(), items.clone());
//! let mut producer = Process::fork(move || {
//!     for _ in 0..3 {
//!         let _g = c.lock().unwrap();
//!         i.set(i.get() + 1);
//!         c.notify(1).unwrap();
//!     }
//! })?;
//! let guard = cond.lock().unwrap();
//! let (_guard, ready) = cond
//!     .wait_for(guard, || items.get() == 3, Some(Duration::from_secs(10)))
//!     .unwrap();
//! assert!(ready);
//! # drop(_guard);
//! producer.join()?;
//! # Ok(())
//! # }
//! ```
//!
//! `notify(n)` wakes exactly `n` of the waiters (fewer if fewer wait), across processes.
//!
//! # Semaphore, Event, Barrier
//!
//! ```
//! use mp_process::Process;
//! use mp_sync::{Barrier, Event, Semaphore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let slots = Semaphore::new(2)?; // at most two at a time
//! let go = Event::new()?;
//! let meet = Barrier::new(3)?;
//! let mut kids = Vec::new();
//! for _ in 0..2 {
//!     let (slots, go, meet) = (slots.clone(), go.clone(), meet.clone());
//!     kids.push(Process::fork(move || {
//!         go.wait();
//!         let _permit = slots.permit();
//!         meet.wait().unwrap()
//!     })?);
//! }
//! go.set();
//! let mine = meet.wait()?;
//! let mut indices = vec![mine];
//! for mut k in kids {
//!     indices.push(k.join()?);
//! }
//! indices.sort();
//! assert_eq!(indices, [0, 1, 2]); // one index per party and cycle
//! # Ok(())
//! # }
//! ```
//!
//! # Value and Array
//!
//! [`Value<T>`] and [`Array<T>`] hold plain old data ([`Pod`]: integers, floats, arrays of
//! them, `#[repr(C)]` structs declared with [`impl_pod!`]) with a lock; [`RawValue<T>`] and
//! [`RawArray<T>`] without one. A read-modify-write holds the lock across:
//!
//! ```
//! use mp_sync::{Array, Value};
//! let hits = Value::new(0u32)?;
//! *hits.lock().unwrap() += 1;
//! let a = Array::from_slice(&[1.5f64, 2.5])?;
//! a.set(1, 3.5)?;
//! assert_eq!((hits.get(), a.to_vec()), (1, vec![1.5, 3.5]));
//! # Ok::<(), mp_sync::Error>(())
//! ```
//!
//! A type whose bytes could be invalid (`bool`, `String`, references...) is refused at compile
//! time, since another process may leave any bytes in shared memory:
//!
//! ```compile_fail
//! let v = mp_sync::Value::new(vec![1, 2, 3]); // Vec<i32> is not Pod
//! ```
//!
//! # Async (feature `async`)
//!
//! `Lock::acquire_async` and `Event::wait_async` are the same waits for async code, on any
//! runtime: the task neither spins nor holds a thread. One thread of mp-core's reactor
//! (`mp_core::reactor`, `futex_waitv`) sleeps on the wake words of up to 127 waiting futures
//! of the process at once, and wakes each future when a release or a `set` (in any process)
//! reaches its word; a dead holder is found after the same slices as the blocking path.
//!
//! ```ignore
//! let lock = mp_sync::Lock::new()?;
//! lock.acquire_async().await?;    // Err(OwnerDied): taken over from a dead holder
//! // ... the critical section ...
//! lock.release()?;
//! ```
//!
//! # Speed
//!
//! An uncontended acquire + release is two atomic instructions (a compare-and-swap that
//! stores the holder's identity, and a swap), no system call. A waiter spins a bounded while
//! (a few `pause` rounds, then `sched_yield`) before it sleeps on a futex, because a futex
//! wake across cores is far slower than a spin that succeeds; a release or `set` makes
//! the wake system call only when someone sleeps. Liveness checks (reading `/proc`) happen
//! only after a waiter has slept a few milliseconds.
//!
//! # Fork safety
//!
//! Every operation of this crate, once the primitive exists, is async-signal-safe: atomics,
//! futex calls, and `/proc` reads into stack buffers, no allocation and no lock of the
//! process. A child forked from a multi-threaded parent may use the primitives it inherited
//! (the barrier's action is whatever code you give it). A forked child never takes itself
//! for its parent: the cached identity lives in a `MADV_WIPEONFORK` page, which the kernel
//! zeroes in every child, however it was created (libc's `fork`, or the raw `clone` of a
//! fork server).

mod barrier;
mod block;
mod condition;
mod error;
mod event;
mod lock;
mod raw;
pub mod semaphore;
mod value;

/// Fault hooks for tests (cargo feature `testing`, off by default): they make a primitive
/// stop at its worst moment so that a test can kill it there. Not for programs.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::condition::set_notify_fault;
}

pub use barrier::{Barrier, BarrierAction};
pub use condition::{CondGuard, CondLock, Condition};
pub use error::{Error, LockResult, OwnerDied, Result, TryLockError, TryLockResult};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use mp_core::SharedMemory;
pub use semaphore::{BoundedSemaphore, Permit, Semaphore, SEM_VALUE_MAX};
pub use value::{Array, ArrayGuard, Pod, RawArray, RawValue, Value, ValueGuard};
