//! [`PoolBuilder`]: the pool's settings, and `build`, which starts the workers and the
//! pool's threads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mp_core::message::encode;
use mp_core::{Message, Shared};
use mp_process::{Context, StartMethod};
use mp_queue::Queue;

use super::feed::Feeds;
use super::{offset_of, Config, InitCfg, Inner, Pool, State, Table, WorkerEntry, Workers};
use crate::error::Error;
use crate::helpers::lock;
use crate::insights::Past;
use crate::wire::Slot;
use crate::worker::{self, EncodeInit, RunInit};

/// The default of [`PoolBuilder::max_backlog`].
pub const DEFAULT_MAX_BACKLOG: usize = 65_536;

/// Builds a [`Pool`]: Python's `Pool(processes, initializer, initargs, maxtasksperchild,
/// context)`.
///
/// ```
/// use mp_pool::Pool;
/// fn setup(greeting: String) { assert_eq!(greeting, "hi"); }
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(setup, "hi".to_string())
///     .max_tasks_per_child(100)
///     .build()?;
/// assert_eq!(pool.map(square, [1, 2, 3])?, [1, 4, 9]);
/// # Ok::<(), mp_pool::Error>(())
/// ```
pub struct PoolBuilder {
    /// See [`processes`](Self::processes).
    processes: Option<usize>,
    /// See [`initializer`](Self::initializer); an error computing its offsets is kept for
    /// `build`.
    init: Option<Result<InitCfg, Error>>,
    /// See [`max_tasks_per_child`](Self::max_tasks_per_child).
    max_tasks: Option<usize>,
    /// See [`start_method`](Self::start_method) and [`context`](Self::context).
    method: Option<StartMethod>,
    /// See [`max_backlog`](Self::max_backlog).
    max_backlog: Option<usize>,
    /// See [`max_in_flight_bytes`](Self::max_in_flight_bytes).
    max_in_flight_bytes: Option<u64>,
    /// See [`task_timeout`](Self::task_timeout).
    task_timeout: Option<Duration>,
    /// See [`worker_init_timeout`](Self::worker_init_timeout).
    init_timeout: Option<Duration>,
    /// See [`insights`](Self::insights).
    insights: bool,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.init.is_some())
            .field("max_tasks_per_child", &self.max_tasks)
            .field("start_method", &self.method)
            .field("max_backlog", &self.max_backlog)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("task_timeout", &self.task_timeout)
            .field("worker_init_timeout", &self.init_timeout)
            .field("insights", &self.insights)
            .finish()
    }
}

impl PoolBuilder {
    /// The builder with every setting at its default (see [`Pool::builder`]).
    pub(super) fn new() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            init: None,
            max_tasks: None,
            method: None,
            max_backlog: None,
            max_in_flight_bytes: None,
            task_timeout: None,
            init_timeout: None,
            insights: false,
        }
    }

    /// The default timeout of every task (mpire's `task_timeout`; Python's Pool has none):
    /// a task (one call of the function on one item) that runs longer is stopped: the
    /// worker running it is killed with SIGKILL (which the task cannot block or catch) and
    /// replaced, and the task's chunk fails with [`Error::TaskTimeout`]; the other tasks go
    /// on. One call can set its own with [`Pool::timeout`](crate::Pool::timeout). The
    /// supervisor looks at the running tasks every few milliseconds, so a task is stopped
    /// shortly after its timeout, never before. Zero is an error.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = mp_pool::Pool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// match pool.apply(nap, 60_000) {
    ///     Err(mp_pool::Error::TaskTimeout { timeout, .. }) => {
    ///         assert_eq!(timeout, Duration::from_millis(200))
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// assert_eq!(pool.apply(nap, 1)?, 1); // a replacement worker took over
    /// # Ok::<(), mp_pool::Error>(())
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long a worker's initializer may run (mpire's `worker_init_timeout`), counted
    /// from the worker's start. A worker still in its initializer then is killed and the
    /// pool is broken with [`Error::InitTimeout`]: pending and new work fail with it at
    /// once (a pool whose workers never get ready would otherwise hang its callers, or
    /// retry forever as Python's does). Zero is an error.
    pub fn worker_init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = Some(timeout);
        self
    }

    /// Collects insights (mpire's `enable_insights`): each worker measures where its time
    /// goes (starting, running tasks, waiting for work, sending results), counts its tasks
    /// and keeps its slowest ones; [`Pool::insights`](crate::Pool::insights) reads them.
    /// Off by default: it costs a few clock reads per chunk and two per item.
    pub fn insights(mut self, on: bool) -> Self {
        self.insights = on;
        self
    }

    /// How many chunks may wait in this process for room in the task queue (default
    /// [`DEFAULT_MAX_BACKLOG`]; 0 is an error). When the task queue is full, an `_async`
    /// call leaves its chunks to the pool's feeder thread and returns; once that backlog
    /// holds this many chunks, the next `_async` call waits for room first, as a blocking
    /// call does (backpressure: `apply_async` in a loop cannot queue without limit; Python's
    /// queues without limit). A call whose chunks alone pass the bound waits until the
    /// backlog is empty. [`Pool::terminate`] ends the wait ([`Error::Terminated`]).
    pub fn max_backlog(mut self, chunks: usize) -> Self {
        self.max_backlog = Some(chunks);
        self
    }

    /// How many bytes of large messages (task chunks and results larger than half a queue's
    /// ring, which travel beside it in shared memory) may wait in each of the pool's two queues
    /// at once (default [`mp_queue::DEFAULT_MAX_SPILL_BYTES`], 1 GiB). Past it, submitting
    /// waits for the workers to take what is there, as when the ring is full; a chunk larger
    /// than the whole budget fails with [`Error::SharedMemory`] at once. So a `map` over large
    /// items cannot copy its whole input into shared memory, and a full `/dev/shm` is reported
    /// as such ([`Error::SharedMemory`]) when the pages are reserved, not as a crash later.
    pub fn max_in_flight_bytes(mut self, bytes: u64) -> Self {
        self.max_in_flight_bytes = Some(bytes);
        self
    }

    /// The number of worker processes (default: [`mp_process::cpu_count`]). 0 is an error.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function every worker runs once, with its own copy of `args`, before its first
    /// task (Python's `initializer` and `initargs`). A worker whose initializer fails (it
    /// panics, or the worker dies in it) is replaced; when it fails in 3 workers in a row,
    /// with no initializer completing in between, the pool is broken: pending and new work
    /// fail with [`Error::Initializer`], naming the last failure (Python restarts such
    /// workers forever).
    pub fn initializer<I: Message + Send + Sync + 'static>(mut self, f: fn(I), args: I) -> Self {
        let cfg = (|| {
            let args: EncodeInit = Arc::new(move || encode(&args));
            Ok(InitCfg {
                args,
                trampoline: offset_of(worker::run_init::<I> as RunInit as usize)?,
                target: offset_of(f as usize)?,
            })
        })();
        self.init = Some(cfg);
        self
    }

    /// Each worker exits after running `n` tasks (chunks) and is replaced by a fresh one
    /// (Python's `maxtasksperchild`); default: no limit. 0 is an error.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// The start method of the workers, from a context (Python's `context=`).
    pub fn context(mut self, ctx: Context) -> Self {
        self.method = Some(ctx.start_method());
        self
    }

    /// The start method of the workers (default: [`mp_process::get_start_method`]).
    /// Spawn and forkserver need `mp::init()` first thing in `main`.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    pub(crate) fn method_or_default(&self) -> StartMethod {
        self.method.unwrap_or_else(mp_process::get_start_method)
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Pool, Error> {
        let processes = self.processes.unwrap_or_else(mp_process::cpu_count);
        if processes == 0 {
            return Err(Error::Config("processes must be at least 1".into()));
        }
        if self.max_tasks == Some(0) {
            return Err(Error::Config(
                "max_tasks_per_child must be at least 1 (leave it unset for no limit)".into(),
            ));
        }
        if self.max_backlog == Some(0) {
            return Err(Error::Config("max_backlog must be at least 1 chunk".into()));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "task_timeout must be longer than zero".into(),
            ));
        }
        if self.init_timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "worker_init_timeout must be longer than zero".into(),
            ));
        }
        let init = self.init.transpose()?;
        let spill = self
            .max_in_flight_bytes
            .unwrap_or(mp_queue::DEFAULT_MAX_SPILL_BYTES);
        worker::install_task_hook();
        let cfg = Config {
            processes,
            method: self.method.unwrap_or_else(mp_process::get_start_method),
            init,
            max_tasks: self.max_tasks.unwrap_or(0) as u64,
            image_id: mp_process::symbol::image_id().to_vec(),
            max_backlog: self.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG),
            task_timeout: self.task_timeout,
            init_timeout: self.init_timeout,
            insights: self.insights,
        };
        let inner = Arc::new(Inner {
            tasks: Queue::builder().max_spill_bytes(spill).build()?,
            results: Queue::builder().max_spill_bytes(spill).build()?,
            table: Mutex::new(Table {
                state: State::Running,
                broken: None,
                jobs: HashMap::new(),
                next_id: 1,
            }),
            idle: Condvar::new(),
            workers: Mutex::new(Workers {
                list: Vec::new(),
                replace: true,
                started: 0,
                stops: 0,
            }),
            cfg,
            feeds: Mutex::new(Feeds {
                queue: VecDeque::new(),
                closed: false,
            }),
            feeds_cv: Condvar::new(),
            room_cv: Condvar::new(),
            backlog: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            init_failures: AtomicU32::new(0),
            init_failed: Mutex::new(Vec::new()),
        });
        let pool = Pool {
            inner: inner.clone(),
        };
        {
            let mut w = lock(&inner.workers);
            for _ in 0..processes {
                let slot = Shared::new(Slot::new())?;
                w.started += 1;
                let child = inner.start_worker(&slot, w.started)?;
                w.list.push(WorkerEntry {
                    pid: child.pid(),
                    child: Some(child),
                    slot,
                    init_timed_out: false,
                    past: Past::default(),
                    started: 1,
                });
            }
        }
        // The pool is returned once both its threads run: a thread that the scheduler starts
        // late sets up its own stack and signal stack only then, and could meet limits the
        // caller set after `build` returned (an address-space limit made such a thread abort
        // the process).
        let started = Arc::new(std::sync::Barrier::new(2));
        let sup = inner.clone();
        let go = started.clone();
        let s = std::thread::Builder::new()
            .name("mp-pool-supervisor".into())
            .spawn(move || {
                go.wait();
                sup.guarded("supervisor", Inner::supervise)
            })
            .map_err(|e| Error::Start(format!("the supervisor thread: {e}")))?;
        started.wait();
        let feed = inner.clone();
        let go = started.clone();
        let f = std::thread::Builder::new()
            .name("mp-pool-feeder".into())
            .spawn(move || {
                go.wait();
                feed.guarded("feeder", Inner::run_feeder)
            })
            .map_err(|e| Error::Start(format!("the feeder thread: {e}")))?;
        started.wait();
        lock(&inner.threads).extend([s, f]);
        Ok(pool)
    }
}
