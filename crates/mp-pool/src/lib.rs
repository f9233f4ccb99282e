//! Python's `multiprocessing.Pool`, in Rust: worker processes that run `map`, `imap`,
//! `imap_unordered`, `starmap` and `apply`, and a pool that a dead worker cannot hang.
//!
//! # Hello, pool
//!
//! ```
//! use mp_pool::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), mp_pool::Error> {
//!     mp_process::init(); // first thing in main (mp::init() in the umbrella crate)
//!     let values: Vec<u64> = (1..=10).collect();
//!     let pool = Pool::new(4)?;
//!     assert_eq!(pool.map(square, values)?, [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]);
//!     Ok(())
//! }
//! ```
//!
//! A task is a plain `fn(T) -> R` (a closure that captures nothing coerces to one) whose
//! argument and result are [messages](mp_core::Message): any rkyv `Archive + Serialize +
//! Deserialize` type. Workers find the function again under every start method (fork, spawn,
//! forkserver; see `mp_process::symbol`), so the same code works with all three.
//!
//! Under the fork start method (the default), a pool may instead run one closure given when
//! it is made, which captures whatever it needs: see [`FnPool`] and
//! [`PoolBuilder::build_with`].
//!
//! ```
//! let threshold = 10u64;
//! let pool = mp_pool::Pool::builder().processes(2).build_with(move |x: u64| x > threshold)?;
//! assert_eq!(pool.map([5, 50])?, [false, true]);
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! # Settings
//!
//! [`Pool::builder`] takes Python's constructor arguments: the number of processes (default
//! [`mp_process::cpu_count`]), an initializer run once in each worker (its argument may hold
//! shared objects, such as a lock or a queue: they reach spawned workers too), the number of
//! tasks after which a worker is replaced, and the start method.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use mp_core::Shared;
//! use mp_pool::Pool;
//! use mp_process::StartMethod;
//!
//! fn count_worker(started: Shared<AtomicU64>) {
//!     started.fetch_add(1, Ordering::SeqCst);
//! }
//! fn pid(_: u32) -> u32 {
//!     std::process::id()
//! }
//!
//! # mp_process::init();
//! let started = Shared::new(AtomicU64::new(0))?;
//! let pool = Pool::builder()
//!     .processes(2)
//!     .initializer(count_worker, started.clone())
//!     .max_tasks_per_child(5)
//!     .start_method(StartMethod::Spawn)
//!     .build()?;
//! let pids = pool.chunksize(1).map(pid, 0..20)?;
//! pool.close();
//! pool.join()?;
//! // 20 tasks, at most 5 per worker: at least 4 workers ran, each initialized once.
//! assert!(started.load(Ordering::SeqCst) >= 4);
//! assert_eq!(pids.len(), 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ordered, lazy and unordered results
//!
//! [`Pool::map`] returns every result in input order; the work is cut in chunks of
//! CPython's default size (`ceil(len / (4 × processes))`; set it with
//! [`Pool::chunksize`]). [`Pool::imap`] and [`Pool::imap_unordered`] return iterators that
//! read their input lazily, keeping at most [`Tasks::in_flight`] chunks submitted ahead of
//! the consumer, so an endless input works in bounded memory (Python's `imap` reads its
//! whole input first).
//!
//! ```
//! use std::time::Duration;
//! # fn square(x: u64) -> u64 { x * x }
//! # let pool = mp_pool::Pool::new(2)?;
//! let mut squares = pool.chunksize(4).in_flight(2).imap(square, 0..)?; // endless input
//! assert_eq!(squares.next().unwrap()?, 0);
//! assert_eq!(squares.next_timeout(Duration::from_secs(10)).unwrap()?, 1);
//! let firsts: Vec<u64> = squares.take(3).collect::<Result<_, _>>()?;
//! assert_eq!(firsts, [4, 9, 16]);
//!
//! let mut any_order: Vec<u64> = pool
//!     .imap_unordered(square, 0..10)?
//!     .collect::<Result<_, _>>()?;
//! any_order.sort();
//! assert_eq!(any_order[9], 81);
//!
//! fn mul(a: u64, b: u64) -> u64 { a * b }
//! assert_eq!(pool.starmap(mul, [(2, 3), (4, 5)])?, [6, 20]);
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! # Asynchronous results and callbacks
//!
//! The `_async` variants return an [`AsyncResult`] at once: `get`, `get_timeout`
//! ([`Error::Timeout`]), `wait`, `ready`, `successful` ([`Error::NotReady`] before ready).
//! Python's `callback` and `error_callback` are [`AsyncResult::on_success`] and
//! [`AsyncResult::on_error`]; they run in the parent, on the pool's supervisor thread, once
//! the work has left the pool's books and with no lock held, before the result is `ready`.
//! A callback may submit more work (`apply_async`, `map_async`), but a call that would wait
//! for the pool (a blocking `map` or `apply`, `get` on a result that is not ready, an
//! `imap`'s `next`, `join`) waits for the very thread that runs it: there it fails at once
//! with [`Error::InCallback`] (Python deadlocks).
//!
//! ```
//! use std::sync::mpsc;
//! fn double(x: i64) -> i64 { 2 * x }
//!
//! let pool = mp_pool::Pool::new(2)?;
//! assert_eq!(pool.apply(double, 10)?, 20);
//! let (tx, rx) = mpsc::channel();
//! let r = pool
//!     .map_async(double, [1, 2, 3])?
//!     .on_success(move |v| tx.send(v.clone()).unwrap());
//! r.wait();
//! assert_eq!(rx.recv().unwrap(), [2, 4, 6]);
//! assert_eq!(r.get()?, [2, 4, 6]);
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! # Task errors
//!
//! A task that panics fails its call with [`Error::Panicked`], which carries the panic's
//! message and location (the worker does not print it, as Python's does not print a task's
//! exception); a fallible task (`fn(T) -> Result<R, E>` with `E: Display`, through
//! [`Pool::try_map`], [`Pool::try_apply`] and their `_async` forms) fails it with
//! [`Error::Failed`]; a result that cannot be serialized fails it with
//! [`Error::Unserializable`]. In every case the worker survives and the pool stays usable.
//!
//! ```
//! fn parse(s: String) -> Result<u64, std::num::ParseIntError> { s.parse() }
//! fn checked(x: u64) -> u64 { assert!(x != 3, "three is not allowed"); x }
//!
//! let pool = mp_pool::Pool::new(2)?;
//! match pool.try_map(parse, ["1".to_string(), "one".to_string()]) {
//!     Err(mp_pool::Error::Failed { message }) => assert_eq!(message, "invalid digit found in string"),
//!     other => panic!("{other:?}"),
//! }
//! match pool.map(checked, 0..5) {
//!     Err(mp_pool::Error::Panicked { message, .. }) => assert_eq!(message, "three is not allowed"),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(pool.map(checked, [1, 2])?, [1, 2]);
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! # When a worker dies
//!
//! A worker killed mid-task (SIGKILL, a segfault, the OOM killer, `exit`) fails that task
//! with [`Error::WorkerLost`] (its pid and signal), the worker is replaced, and the other
//! tasks complete: nothing hangs (Python's pool waits forever there). Each worker records
//! the task it is running in a slot of shared memory, in the same step that takes the task
//! from the queue; the supervisor thread watches the workers' pidfds, and when one ends it
//! first reads every result the worker sent, then fails the task left in its slot. (A
//! worker killed in the few instructions between recording a task and the queue removing
//! it leaves the task both failed and queued: another worker then runs it, and its result
//! is ignored.)
//!
//! ```
//! use std::time::Duration;
//! fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
//!
//! let pool = mp_pool::Pool::new(1)?;
//! let r = pool.apply_async(nap, 60_000)?;
//! std::thread::sleep(Duration::from_millis(100));
//! let pid = pool.worker_pids()[0];
//! // SAFETY (of the example): kill(2) has no memory-safety preconditions.
//! unsafe { libc::kill(pid as i32, libc::SIGKILL) };
//! match r.get_timeout(Duration::from_secs(10)) {
//!     Err(mp_pool::Error::WorkerLost { pid: p, signal: Some(9), .. }) => assert_eq!(p, pid),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(pool.apply(nap, 1)?, 1); // a replacement worker took over
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! Workers are daemon processes: they die with the pool's process, even when it is
//! SIGKILLed, and Ctrl-C (SIGINT to the process group) ends them with the program. The same
//! under every start method: a worker starts with the default action for SIGINT, SIGTERM,
//! SIGHUP and SIGQUIT and no signal blocked, as a re-executed process does, even when forked
//! from a program that catches them. So in a program that catches SIGINT, Ctrl-C ends the
//! workers and a running `map` fails at once with [`Error::WorkerLost`] (`signal: Some(2)`),
//! an error the program can handle; the pool replaces the workers and stays usable.
//!
//! # Closing, terminating, dropping
//!
//! [`Pool::close`] refuses new work ([`Error::Closed`]) and lets the submitted work finish;
//! [`Pool::join`] then waits for it, running tasks included (as in Python, a task that never
//! ends makes `join` wait forever), and for the workers ([`Error::StillRunning`] before
//! `close` or `terminate`); [`Pool::join_timeout`] bounds that wait ([`Error::Timeout`],
//! nothing lost: join again, or terminate). [`Pool::terminate`] kills the workers at once,
//! however much work is pending, and fails it with [`Error::Terminated`]; an `imap` then
//! yields what had come, one `Err(Terminated)`, and ends, reading no more input. **Dropping
//! a pool terminates it**, as leaving Python's `with Pool() as p:` block does: close and join
//! first to wait for pending `_async` work.
//!
//! ```
//! fn double(x: i64) -> i64 { 2 * x }
//! let pool = mp_pool::Pool::new(2)?;
//! let r = pool.map_async(double, 0..100)?;
//! pool.close();
//! assert!(matches!(pool.apply(double, 1), Err(mp_pool::Error::Closed)));
//! pool.join()?;
//! assert_eq!(r.get()?.len(), 100);
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! # When things go wrong
//!
//! Every path ends with an error the caller gets, never a hang or a lost result:
//!
//! - **A broken pool.** When the initializer fails in 3 workers in a row (panics and crashes
//!   alike; one that completes in between resets the count; see
//!   [`PoolBuilder::initializer`]), every pending call fails with [`Error::Initializer`],
//!   new work is refused with it, calls waiting for room in the task queue give up with it,
//!   and `join` kills the workers left and returns.
//! - **A `Serialize` that panics** (the items' own code) on the caller's thread: the panic
//!   reaches the caller, and the call's work is failed and dropped first (a later `join`
//!   does not wait for it; an `imap` yields an [`Error::Unserializable`] in the chunk's place
//!   and goes on). On the feeder thread it fails that call only.
//! - **A record the queues cannot read** (an oversized message that cannot be mapped, a
//!   damaged record): whose it was is unknown, so the work pending then fails with
//!   [`Error::QueueRead`]; the pool goes on.
//! - **Shared memory that cannot grow** (`/dev/shm` or the memory full, a limit reached):
//!   [`Error::SharedMemory`], for the arguments or the result, not a serialization error.
//! - **Backpressure.** Work that does not fit in the task queue waits in this process, in
//!   submission order (a later call goes behind it, FIFO); past
//!   [`PoolBuilder::max_backlog`] chunks, the next call waits for room. The task queue
//!   itself holds 4 MiB of small chunks; a chunk larger than half of it goes beside the
//!   queue, in shared memory bounded by [`PoolBuilder::max_in_flight_bytes`] (1 GiB by
//!   default): past it, submitting waits for the workers, and a chunk larger than the whole
//!   budget fails with [`Error::SharedMemory`] at once. [`IMap::next_timeout`]'s timeout
//!   covers waiting for room to submit the next chunks.
//! - **Callbacks** that call back into the pool: see above ([`Error::InCallback`]).
//! - **Ctrl-C**: see "When a worker dies".
//!
//! # Timeouts
//!
//! A task that may hang (a network call, a solver) can be given a timeout, for the pool
//! ([`PoolBuilder::task_timeout`]) or for one call ([`Pool::timeout`]): a task (one call of
//! the function on one item) that runs longer is stopped: its worker is killed with SIGKILL,
//! which the task cannot block or catch, and replaced; the task's chunk fails with
//! [`Error::TaskTimeout`] (the worker's pid and the timeout), and the other tasks go on.
//! [`PoolBuilder::worker_init_timeout`] bounds the initializer: past it, the pool is broken
//! with [`Error::InitTimeout`], so the calls fail instead of waiting for workers that never
//! get ready.
//!
//! ```
//! use std::time::Duration;
//! fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
//!
//! let pool = mp_pool::Pool::new(2)?;
//! let r = pool.timeout(Duration::from_millis(200)).chunksize(1).map(nap, [1, 60_000]);
//! assert!(matches!(r, Err(mp_pool::Error::TaskTimeout { .. })));
//! assert_eq!(pool.map(nap, [1, 2])?, [1, 2]); // the pool goes on
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! # Insights
//!
//! A pool built with [`PoolBuilder::insights`] measures, in each worker, the time spent
//! starting, running tasks, waiting for work and sending results, counts the tasks, and
//! keeps the slowest ones; [`Pool::insights`] returns them ([`Insights`], whose `Display`
//! is a table). See the example there.
//!
//! # Progress
//!
//! A [`Progress`] tracker follows one call or several ([`Pool::track`]): a `map`, an
//! `imap_unordered`, a batch of `apply_async` calls. Its callback gets a [`ProgressState`]
//! (done, failed, total, elapsed, ETA) after every change; see its example. With the cargo
//! feature `progress`, `pool.progress().map(f, items)` (and `imap`, `imap_unordered`) shows
//! an [indicatif](https://docs.rs/indicatif) progress bar on stderr, with the ETA when the
//! input's length is known, and `Progress::bar` draws a tracker.
//!
//! # Performance
//!
//! Per chunk the parent makes one queue put and one get, both in shared memory (no pipe, no
//! pickling): a chunk's items travel as one encoded `Vec<T>` and its results as one
//! `Vec<R>`. Whoever waits (an idle worker, the supervisor, an `imap` consumer) follows
//! mp-core's one wait policy ([`mp_core::wait`]): it spins only while answers come within
//! microseconds and the machine has a CPU to spare, then sleeps on a futex, so that the
//! parent takes no CPU from busy workers. `cargo run --release -p mp-pool
//! --example throughput` prints rough rates and the CPU each side spends per item; `cargo
//! xtask bench` compares them with CPython.
//!
//! # Python names
//!
//! | Python | mp |
//! |---|---|
//! | `Pool(processes, initializer, initargs, maxtasksperchild, context)` | `Pool::builder().processes(n).initializer(f, args).max_tasks_per_child(k).context(ctx).build()?` |
//! | `pool.map(f, it, chunksize)` | `pool.map(f, it)?`, `pool.chunksize(c).map(f, it)?` |
//! | `map_async(f, it, callback=cb, error_callback=ecb)` | `pool.map_async(f, it)?.on_success(cb).on_error(ecb)` |
//! | `starmap(f, pairs)`, `starmap_async` | same names, for `fn(A, B) -> R` |
//! | `apply(f, (x,))`, `apply_async` | `pool.apply(f, x)?`, `pool.apply_async(f, x)?` |
//! | `imap(f, it, chunksize)`, `imap_unordered` | same names, lazy iterators of `Result<R, Error>` |
//! | `it.next(timeout)` | [`IMap::next_timeout`] |
//! | `AsyncResult.get(timeout)`, `wait`, `ready`, `successful` | `get`, `get_timeout`, `wait`, `wait_timeout`, `ready`, `successful` |
//! | `close`, `terminate`, `join`, `with Pool() as p:` | same names; `Drop` terminates; [`Pool::join_timeout`] |
//! | mpire's `task_timeout`, `worker_init_timeout` | [`PoolBuilder::task_timeout`], [`Pool::timeout`], [`PoolBuilder::worker_init_timeout`] |
//! | mpire's `enable_insights`, `print_insights` | [`PoolBuilder::insights`], [`Pool::insights`] and `Display` |
//! | mpire's progress bar | [`Progress`], [`Pool::track`]; feature `progress`: `pool.progress()` |

mod closure;
mod error;
mod helpers;
mod insights;
mod job;
mod meter;
mod pool;
#[cfg(feature = "progress")]
mod progress;
mod result;
mod slot;
mod track;
mod wire;
mod worker;

pub use closure::{FnPool, FnTasks};
pub use error::Error;
pub use insights::{Insights, SlowTask, WorkerInsights};
pub use pool::{default_chunksize, IMap, Pool, PoolBuilder, Tasks, DEFAULT_MAX_BACKLOG};
pub use result::AsyncResult;
pub use track::{Progress, ProgressState};
