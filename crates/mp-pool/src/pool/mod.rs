//! [`Pool`], its builder, the supervisor thread and the feeder thread.
//!
//! ```text
//!  caller threads ──put chunks──▶ task queue (shared) ──get──▶ worker processes
//!        ▲                                                          │
//!        │ AsyncResult / IMap                                       │ put results
//!  supervisor thread ◀──────────── result queue (shared) ◀──────────┘
//!        └── polls the workers' pidfds: a dead worker's task (its slot) fails with
//!            WorkerLost and the worker is replaced
//! ```
//!
//! Callers put chunks on the task queue themselves (`put_nowait`); when the queue is full, an `_async` call hands the rest to the feeder thread so
//! that it returns at once, and a blocking call keeps putting. While the feeder holds chunks
//! (the backlog), every new call goes behind them through the feeder, so that work is taken
//! in submission order; the backlog is bounded (`max_backlog`): past it, a call waits for
//! room. Workers and the supervisor wait in the queues' own `get` (the wait policy of
//! `mp_core::wait`: a spin only while it can help, then a futex sleep that the next put ends).
//! The supervisor thread is the only reader of the result queue: it decodes each chunk's results into its job, runs callbacks, and every few
//! milliseconds (or whenever it has nothing to read) polls the workers' pidfds. When one is
//! readable it first drains the result queue (whatever the worker put before dying is there,
//! in order), then fails the task still recorded in the dead worker's slot and starts a
//! replacement.
//!
//! The parts: [`Pool`] and its state here; the verbs in `tasks` ([`Tasks`]); the builder in
//! `builder`; the supervisor thread (results, worker loss, replacement, break, terminate,
//! join) in `supervisor`; the feeding of chunks (the feeder thread, the backlog, the chunk
//! sources) in `feed`; the `imap` iterator in `imap`; task and initializer timeouts (the
//! supervisor kills a worker past its deadline) in `deadline`.

mod builder;
mod deadline;
mod feed;
mod imap;
mod supervisor;
mod tasks;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mp_core::{Message, Shared};
use mp_process::{Child, StartMethod};
use mp_queue::Queue;

use crate::error::Error;
use crate::helpers::lock;
use crate::insights::{gather, Insights, Past};
use crate::job::Job;
use crate::result::AsyncResult;
use crate::track::Progress;
use crate::wire::{ResultMsg, Slot, TaskMsg};
use crate::worker::EncodeInit;

pub use builder::{PoolBuilder, DEFAULT_MAX_BACKLOG};
use feed::Feeds;
pub use imap::IMap;
pub use tasks::Tasks;

/// `fn` offsets computed on this thread (`dladdr` is not free).
fn offset_of(addr: usize) -> Result<i64, Error> {
    thread_local! {
        static KNOWN: RefCell<HashMap<usize, i64>> = RefCell::new(HashMap::new());
    }
    if let Some(o) = KNOWN.with(|k| k.borrow().get(&addr).copied()) {
        return Ok(o);
    }
    let o = mp_process::symbol::offset_of(addr)?;
    KNOWN.with(|k| k.borrow_mut().insert(addr, o));
    Ok(o)
}

/// What a task calls: a function of the executable (found again by offset under every start
/// method), or a closure at a raw address, which only a forked worker of the process that
/// holds the closure may call (see [`crate::FnPool`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Fn(usize),
    Raw(usize),
}

impl Target {
    fn encode(self) -> Result<(i64, bool), Error> {
        match self {
            Target::Fn(a) => Ok((offset_of(a)?, false)),
            Target::Raw(a) => Ok((a as i64, true)),
        }
    }
}

/// Python's default chunksize for `map`: `ceil(len / (4 × workers))`.
pub fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(4 * workers.max(1)).max(1)
}

/// Where the pool is in its life (Python's `RUN`, `CLOSE`, `TERMINATE`, and two more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Accepting work.
    Running,
    /// `close` was called: the submitted work goes on, new work is refused.
    Closed,
    /// Broken by its initializer or a failed start: everything fails (see `Table::broken`).
    Broken,
    /// `terminate` was called (or the pool was dropped): the workers are killed.
    Terminated,
    /// `join` returned: the work is done and the workers are gone.
    Joined,
}

/// The pool's state and its pending jobs, under one lock (`Inner::table`).
struct Table {
    /// Where the pool is in its life.
    state: State,
    /// The error that broke the pool (with `State::Broken`): new work fails with it.
    broken: Option<Error>,
    /// The jobs still waiting for chunks' results, by job id.
    jobs: HashMap<u64, Arc<dyn Job>>,
    /// The id of the next job registered (ids start at 1: 0 marks the stop message).
    next_id: u64,
}

/// One worker: its process and its slot in shared memory.
struct WorkerEntry {
    /// The worker process; `None` once it was seen dead (or taken to be killed or joined).
    child: Option<Child<()>>,
    /// The worker's pid (kept after `child` is taken, for errors).
    pid: u32,
    /// Which task the worker runs: read after it died to fail that task.
    slot: Shared<Slot>,
    /// The supervisor killed the worker because its initializer ran past
    /// `worker_init_timeout`.
    init_timed_out: bool,
    /// What the workers that ran in this place before did (insights).
    past: Past,
    /// Workers started in this place.
    started: u64,
}

/// The workers, under one lock (`Inner::workers`).
struct Workers {
    /// One entry per worker place; a replacement takes over its place (and slot).
    list: Vec<WorkerEntry>,
    /// Whether a dead worker is replaced (false once the pool is closing down or broken).
    replace: bool,
    /// Workers started so far, replacements included (for their names).
    started: u64,
    /// Stop messages `join` put so far.
    stops: usize,
}

/// The initializer every worker runs before its first task.
struct InitCfg {
    /// Encodes the initializer's argument (again for every worker started).
    args: EncodeInit,
    /// The offset of the trampoline `worker::run_init::<I>`.
    trampoline: i64,
    /// The offset of the user's initializer function.
    target: i64,
}

/// The pool's settings, fixed by the builder.
struct Config {
    /// The number of workers.
    processes: usize,
    /// How the workers are started.
    method: StartMethod,
    /// The initializer, if any.
    init: Option<InitCfg>,
    /// Chunks a worker runs before it is replaced (0: no limit).
    max_tasks: u64,
    /// This executable's identity, checked by spawned workers before they resolve offsets.
    image_id: Vec<u8>,
    /// The bound on the backlog, in chunks (see `PoolBuilder::max_backlog`).
    max_backlog: usize,
    /// The default task timeout (see `PoolBuilder::task_timeout`).
    task_timeout: Option<Duration>,
    /// The initializer's timeout (see `PoolBuilder::worker_init_timeout`).
    init_timeout: Option<Duration>,
    /// Workers collect insights (see `PoolBuilder::insights`).
    insights: bool,
}

/// The supervisor's last looked-up job.
type JobCache = Option<(u64, Arc<dyn Job>)>;

/// The state shared by the pool handle, its threads and its iterators.
pub(crate) struct Inner {
    /// Chunks for the workers (and their stop messages).
    tasks: Queue<TaskMsg>,
    /// The workers' results; the supervisor is its only reader.
    results: Queue<ResultMsg>,
    /// The pool's state and pending jobs.
    table: Mutex<Table>,
    /// Notified (with `table`) when the table has no job left: `join` waits on it.
    idle: Condvar,
    /// The worker processes.
    workers: Mutex<Workers>,
    /// The settings.
    cfg: Config,
    /// Work for the feeder thread; the feeder sleeps on `feeds_cv`.
    feeds: Mutex<Feeds>,
    /// Notified (with `feeds`) when work is handed to the feeder or it must stop.
    feeds_cv: Condvar,
    /// Callers waiting for room in the backlog sleep on it (with `feeds`).
    room_cv: Condvar,
    /// Chunks handed to the feeder and not put (nor dropped) yet. While it is not zero, new
    /// work goes behind them (FIFO); it is kept under `cfg.max_backlog`.
    backlog: AtomicUsize,
    /// The supervisor and feeder threads, joined by `stop_threads`.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `stop_threads`: the supervisor ends, and no worker is replaced.
    stopping: AtomicBool,
    /// Set by `terminate` and `break_pool`: a put waiting for room gives up (nobody may ever
    /// take a task again).
    halted: AtomicBool,
    /// Workers whose initializer failed (panicked, or the worker died in it) since the last
    /// one that completed.
    init_failures: AtomicU32,
    /// Initializer failures the workers reported themselves (pid and message), until each
    /// worker is seen dead: for the error that breaks the pool.
    init_failed: Mutex<Vec<(u32, String)>>,
}

/// Python's `multiprocessing.Pool`: worker processes that run tasks, with results in order
/// (`map`, `imap`), in completion order (`imap_unordered`) or one at a time (`apply`).
///
/// See the [crate documentation](crate) for a tour. Dropping a pool terminates it (Python's
/// `with Pool() as p:` does the same on exit): pending work fails with
/// [`Error::Terminated`] and the workers are killed; call [`close`](Pool::close) and
/// [`join`](Pool::join) to let the work finish first.
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.inner.cfg.processes)
            .field("start_method", &self.inner.cfg.method)
            .field("state", &lock(&self.inner.table).state)
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers with the default settings (Python's `Pool(processes)`).
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.inner.cfg.processes
    }

    /// The workers' start method.
    pub fn start_method(&self) -> StartMethod {
        self.inner.cfg.method
    }

    /// The pids of the live workers now (they change when a worker is replaced).
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.inner.workers)
            .list
            .iter()
            .filter(|e| e.child.is_some())
            .map(|e| e.pid)
            .collect()
    }

    /// The default settings, to change some for one call: see [`Tasks`].
    pub fn tasks(&self) -> Tasks<'_> {
        Tasks::new(self)
    }

    /// Sets the chunksize for one call: `pool.chunksize(10).map(f, items)`.
    pub fn chunksize(&self, n: usize) -> Tasks<'_> {
        Tasks::new(self).chunksize(n)
    }

    /// Sets a task timeout for one call: `pool.timeout(d).map(f, items)`; see
    /// [`Tasks::timeout`].
    pub fn timeout(&self, timeout: Duration) -> Tasks<'_> {
        Tasks::new(self).timeout(timeout)
    }

    /// Reports one call's progress to `progress`: `pool.track(&p).apply_async(f, x)`; see
    /// [`Tasks::track`] and [`Progress`].
    pub fn track<'p>(&'p self, progress: &'p Progress) -> Tasks<'p> {
        Tasks::new(self).track(progress)
    }

    /// What the workers did so far (mpire's `insights`): per worker place, the time spent
    /// starting, running tasks, waiting for work and sending results, the tasks done, and
    /// the slowest tasks. `None` unless the pool was built with
    /// [`PoolBuilder::insights`]. `Display` prints a table. Workers publish their counters
    /// after each chunk: a chunk still running is not counted yet, and a worker killed in
    /// a chunk keeps what it did before it.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = mp_pool::Pool::builder().processes(2).insights(true).build()?;
    /// pool.map(square, 0..100)?;
    /// let insights = pool.insights().expect("built with insights");
    /// assert_eq!(insights.tasks(), 100);
    /// println!("{insights}");
    /// # Ok::<(), mp_pool::Error>(())
    /// ```
    pub fn insights(&self) -> Option<Insights> {
        if !self.inner.cfg.insights {
            return None;
        }
        let w = lock(&self.inner.workers);
        let places = w
            .list
            .iter()
            .enumerate()
            .map(|(i, e)| e.past.with(i, e.pid, e.started, &e.slot.stats.read()));
        Some(gather(places.collect()))
    }

    /// Sets the number of chunks an `imap` keeps in flight: `pool.in_flight(4).imap(f, it)`.
    pub fn in_flight(&self, n: usize) -> Tasks<'_> {
        Tasks::new(self).in_flight(n)
    }

    /// A progress bar for one `map`/`imap` call (cargo feature `progress`).
    #[cfg(feature = "progress")]
    pub fn progress(&self) -> Tasks<'_> {
        Tasks::new(self).progress()
    }

    /// Python's `map`; see [`Tasks::map`].
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = mp_pool::Pool::new(2)?;
    /// assert_eq!(pool.map(square, 0..5)?, [0, 1, 4, 9, 16]);
    /// # Ok::<(), mp_pool::Error>(())
    /// ```
    pub fn map<T, R>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().map(f, items)
    }

    /// Python's `map_async`; see [`Tasks::map_async`].
    pub fn map_async<T, R>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().map_async(f, items)
    }

    /// `map` for a fallible function; see [`Tasks::try_map`].
    pub fn try_map<T, R, E>(
        &self,
        f: fn(T) -> Result<R, E>,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.tasks().try_map(f, items)
    }

    /// `map_async` for a fallible function; see [`Tasks::try_map_async`].
    pub fn try_map_async<T, R, E>(
        &self,
        f: fn(T) -> Result<R, E>,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.tasks().try_map_async(f, items)
    }

    /// Python's `starmap`; see [`Tasks::starmap`].
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>, Error>
    where
        A: Message + Send + 'static,
        B: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().starmap(f, items)
    }

    /// Python's `starmap_async`; see [`Tasks::starmap_async`].
    pub fn starmap_async<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        A: Message + Send + 'static,
        B: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().starmap_async(f, items)
    }

    /// Python's `imap`; see [`Tasks::imap`].
    pub fn imap<'a, T, R>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().imap(f, items)
    }

    /// Python's `imap_unordered`; see [`Tasks::imap_unordered`].
    pub fn imap_unordered<'a, T, R>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().imap_unordered(f, items)
    }

    /// Python's `apply`; see [`Tasks::apply`].
    pub fn apply<T, R>(&self, f: fn(T) -> R, arg: T) -> Result<R, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().apply(f, arg)
    }

    /// Python's `apply_async`; see [`Tasks::apply_async`].
    pub fn apply_async<T, R>(&self, f: fn(T) -> R, arg: T) -> Result<AsyncResult<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().apply_async(f, arg)
    }

    /// `apply` for a fallible function; see [`Tasks::try_apply`].
    pub fn try_apply<T, R, E>(&self, f: fn(T) -> Result<R, E>, arg: T) -> Result<R, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.tasks().try_apply(f, arg)
    }

    /// `apply_async` for a fallible function; see [`Tasks::try_apply_async`].
    pub fn try_apply_async<T, R, E>(
        &self,
        f: fn(T) -> Result<R, E>,
        arg: T,
    ) -> Result<AsyncResult<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.tasks().try_apply_async(f, arg)
    }

    /// Python's `close`: no new work is accepted; the work already submitted goes on, and
    /// [`join`](Self::join) waits for it and for the workers to exit.
    pub fn close(&self) {
        let mut t = lock(&self.inner.table);
        if t.state == State::Running {
            t.state = State::Closed;
        }
    }

    /// Python's `terminate`: kills the workers now; pending work fails with
    /// [`Error::Terminated`]. Returns once the workers are gone, however much work was
    /// pending.
    pub fn terminate(&self) {
        self.inner.terminate()
    }

    /// Python's `join`: after [`close`](Self::close), waits for the submitted work to finish
    /// (running tasks included: as in Python, a task that never ends makes `join` wait
    /// forever; see [`join_timeout`](Self::join_timeout)) and the workers to exit; after
    /// [`terminate`](Self::terminate), returns at once; on a pool broken by its initializer,
    /// kills the workers left and returns. [`Error::StillRunning`] before `close` or
    /// `terminate`. An `imap` iterator that is still alive counts as unfinished work.
    pub fn join(&self) -> Result<(), Error> {
        self.inner.join(None)
    }

    /// [`join`](Self::join), waiting at most `timeout`: [`Error::Timeout`] when the work or
    /// the workers are not done by then. Nothing is lost: the work goes on, and a later
    /// `join`, `join_timeout` or [`terminate`](Self::terminate) takes over from there.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = mp_pool::Pool::new(1)?;
    /// let r = pool.apply_async(nap, 60_000)?;
    /// pool.close();
    /// assert!(matches!(pool.join_timeout(Duration::from_millis(10)), Err(mp_pool::Error::Timeout)));
    /// pool.terminate(); // the task is stuck: give up on it
    /// pool.join()?;
    /// assert!(matches!(r.get(), Err(mp_pool::Error::Terminated)));
    /// # Ok::<(), mp_pool::Error>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        // A timeout too large for the clock waits without a deadline.
        self.inner.join(Instant::now().checked_add(timeout))
    }
}

impl Drop for Pool {
    /// Terminates the pool (what Python's `with Pool() as p:` does on exit): use `close` and
    /// `join` first to let submitted work finish.
    fn drop(&mut self) {
        self.inner.terminate();
    }
}
