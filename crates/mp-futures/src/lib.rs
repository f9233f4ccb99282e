//! Python's `concurrent.futures.ProcessPoolExecutor`, in Rust, over mp-pool: submit calls
//! to worker processes, get [`Future`]s back, wait for them one by one, as they complete
//! ([`as_completed`]) or in groups ([`wait`]).
//!
//! # Hello, executor
//!
//! ```
//! use std::time::Duration;
//! use mp_futures::ProcessPoolExecutor;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), mp_futures::Error> {
//!     mp_process::init(); // first thing in main (mp::init() in the umbrella crate)
//!     let ex = ProcessPoolExecutor::new(2)?;
//!     let f = ex.submit(square, 12)?;
//!     assert_eq!(f.result(Duration::from_secs(10))?, 144);
//!     let squares: Vec<u64> = ex.map(square, 1..=5, None)?.collect::<Result<_, _>>()?;
//!     assert_eq!(squares, [1, 4, 9, 16, 25]);
//!     ex.shutdown(true, false); // what dropping it does too
//!     Ok(())
//! }
//! ```
//!
//! A task is a plain `fn(T) -> R` (a closure that captures nothing coerces to one) whose
//! argument and result are [messages](mp_core::Message), as in mp-pool; it runs under every
//! start method. [`ProcessPoolExecutor::builder`] takes Python's other arguments:
//! `initializer`, `max_tasks_per_child`, the start method (`mp_context`).
//!
//! # Futures
//!
//! A [`Future`] is pending (in this process), running (handed to the pool), then done.
//! [`Future::result`] waits, with a timeout or without (`None`), and gives a copy of the
//! value each time, as Python does ([`Future::take`] moves it out instead, for a result
//! that is not `Clone`); [`Future::error`] is Python's `exception()`.
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use mp_futures::{Error, ProcessPoolExecutor};
//!
//! fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
//! fn checked(x: u64) -> u64 { assert!(x != 3, "three is not allowed"); x }
//!
//! let ex = ProcessPoolExecutor::new(1)?;
//! let slow = ex.submit(nap, 1_000)?;
//! let next = ex.submit(nap, 1)?; // handed over too (one more than the workers, as Python)
//! let queued = ex.submit(nap, 2)?; // one worker: this one waits in the executor
//! assert!(!next.cancel()); // running: it will run
//! assert!(queued.cancel()); // pending: cancelled, it never runs
//! assert!(matches!(queued.result(None), Err(Error::Cancelled)));
//! assert!(matches!(slow.result(Duration::from_millis(1)), Err(Error::Timeout)));
//!
//! let (tx, rx) = mpsc::channel();
//! slow.add_done_callback(move |f| tx.send(f.result(None).unwrap()).unwrap());
//! assert_eq!(rx.recv().unwrap(), 1_000);
//! assert!(!slow.cancel()); // done: too late
//!
//! let bad = ex.submit(checked, 3)?;
//! match bad.error(None)? {
//!     Some(Error::Panicked { message, .. }) => assert_eq!(message, "three is not allowed"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Error>(())
//! ```
//!
//! # Cancellation is exact
//!
//! The executor keeps the submitted work in this process and hands it to the pool as
//! workers free up, at most [`ExecutorBuilder::max_in_flight`] tasks at a time (default:
//! one more than the workers, as Python's executor hands one call more than its workers to
//! its call queue). A future becomes [`running`](Future::running) when it is handed over,
//! in the same step that makes [`cancel`](Future::cancel) refuse it: a task that `cancel`
//! accepted never runs, and one it refused runs to the end. `shutdown(wait, true)` cancels
//! every future still pending.
//!
//! # Done callbacks
//!
//! [`Future::add_done_callback`] runs its callback once, with the future, when it is done;
//! at once on the caller's thread if it is done already. Callbacks run on the executor's
//! own thread (or the thread of `cancel`/`shutdown` for the futures those cancel) with no
//! lock held: they may call `result`, `done`, `submit`. Waiting there for another future
//! that is not done fails at once with [`Error::InCallback`] (that thread is the one that
//! would complete it; Python deadlocks).
//!
//! # Waiting for many
//!
//! [`as_completed`] yields futures in completion order (those done already first) and one
//! `Err(Error::Timeout)` if its deadline passes; [`wait`] returns the done and not done
//! futures once [`FIRST_COMPLETED`], [`FIRST_EXCEPTION`] or [`ALL_COMPLETED`] holds, or the
//! timeout ran out.
//!
//! ```
//! use std::time::Duration;
//! use mp_futures::{as_completed, wait, ProcessPoolExecutor, FIRST_COMPLETED};
//!
//! fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
//!
//! let ex = ProcessPoolExecutor::new(2)?;
//! let fs = [ex.submit(nap, 2_000)?, ex.submit(nap, 1)?];
//! let first = wait(&fs, Duration::from_secs(30), FIRST_COMPLETED);
//! assert_eq!(first.done[0].result(None)?, 1);
//! let order: Vec<u64> = as_completed(&fs, Duration::from_secs(30))
//!     .map(|f| f?.result(None))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(order, [1, 2_000]);
//! # Ok::<(), mp_futures::Error>(())
//! ```
//!
//! # When a worker dies
//!
//! A worker killed mid-task (SIGKILL, a segfault, the OOM killer, `exit`) fails **only its
//! own future**, with [`Error::WorkerLost`]: the pool replaces the worker and every other
//! future goes on, and the executor takes new work. Python's `ProcessPoolExecutor` instead
//! marks itself broken: every pending future fails with `BrokenProcessPool` and the
//! executor refuses all new work.
//!
//! # Shutting down
//!
//! [`ProcessPoolExecutor::shutdown`]`(wait, cancel_futures)` refuses new work
//! ([`Error::Shutdown`]); with `cancel_futures` it cancels what is pending; with `wait` it
//! returns once the rest is done and the workers have exited. Dropping the executor is
//! `shutdown(true, false)`, as leaving Python's `with` block.
//!
//! # Python names
//!
//! | Python | mp |
//! |---|---|
//! | `ProcessPoolExecutor(max_workers, mp_context, initializer, initargs, max_tasks_per_child)` | `ProcessPoolExecutor::new(n)?`, `ProcessPoolExecutor::builder().max_workers(n).start_method(m).initializer(f, args).max_tasks_per_child(k).build()?` |
//! | `ex.submit(fn, x)` | `ex.submit(f, x)? -> Future<R>`; `try_submit` for `fn(T) -> Result<R, E>` |
//! | `ex.map(fn, it, timeout=t)` | `ex.map(f, it, t)?`, an iterator of `Result<R, Error>` |
//! | `ex.shutdown(wait, cancel_futures=c)`, `with` | `ex.shutdown(wait, c)`; `Drop` |
//! | `f.result(timeout)`, `f.exception(timeout)` | `f.result(t)`, `f.take(t)`, `f.error(t)` |
//! | `f.done()`, `running()`, `cancelled()`, `cancel()`, `add_done_callback(cb)` | same names |
//! | `as_completed(fs, timeout)`, `wait(fs, timeout, return_when)` | same names |
//! | `CancelledError`, `TimeoutError`, `BrokenProcessPool` | [`Error::Cancelled`], [`Error::Timeout`], (none: [`Error::WorkerLost`] for one future) |

mod error;
mod executor;
mod future;

pub use error::Error;
pub use executor::{ExecutorBuilder, Map, ProcessPoolExecutor};
pub use future::{
    as_completed, wait, AsCompleted, DoneAndNotDone, Future, ReturnWhen, ALL_COMPLETED,
    FIRST_COMPLETED, FIRST_EXCEPTION,
};
