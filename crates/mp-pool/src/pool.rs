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
//! Callers put chunks on the task queue themselves (`put_nowait`) and ring the task
//! doorbell; when the queue is full, an `_async` call hands the rest to the feeder thread so
//! that it returns at once, and a blocking call keeps putting. While the feeder holds chunks
//! (the backlog), every new call goes behind them through the feeder, so that work is taken
//! in submission order; the backlog is bounded (`max_backlog`): past it, a call waits for
//! room. Workers ring the result
//! doorbell after each result; both doorbells are futex words in shared memory (see
//! `wire::Doorbell`), waited on after an adaptive spin. The supervisor thread is the only reader of the result
//! queue: it decodes each chunk's results into its job, runs callbacks, and every few
//! milliseconds (or whenever it has nothing to read) polls the workers' pidfds. When one is
//! readable it first drains the result queue (whatever the worker put before dying is there,
//! in order), then fails the task still recorded in the dead worker's slot and starts a
//! replacement.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use mp_core::message::encode;
use mp_core::{Message, Shared};
use mp_process::{Child, Context, Process, ProcessError, StartMethod};
use mp_queue::{PutError, Queue};

use crate::error::Error;
use crate::job::{lock, CollectJob, IMapJob, Job, Next};
use crate::result::{AsyncResult, Outcome};
use crate::wire::{
    kind, ArchivedResultMsg, Claim, Doorbell, Nested, Payload, ResultMsg, Slot, Spin, TaskMsg,
    TaskRef,
};
use crate::worker::{
    self, Call, EncodeInit, Fallible, InitArgs, InitSpec, Plain, RunChunk, RunInit, Star2,
    WorkerArgs,
};

/// How long the supervisor sleeps on an empty result queue before it looks at the workers.
const NAP: Duration = Duration::from_millis(20);
/// Initializer failures in a row (panics and crashes alike, with no initializer completing
/// in between) that break the pool.
const INIT_FAILURES: u32 = 3;
/// How often a busy supervisor looks at the workers.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// How long a blocking put waits before it checks whether the pool was terminated or broken.
const PUT_SLICE: Duration = Duration::from_millis(20);

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

thread_local! {
    /// On a pool's supervisor and feeder threads: the pool's id ([`Inner::id`]), else 0.
    static POOL_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// True on a thread of pool `id` (its supervisor or feeder, where callbacks run): a call
/// that waits for that pool would wait for this very thread.
pub(crate) fn on_pool_thread(id: usize) -> bool {
    id != 0 && POOL_THREAD.with(|t| t.get()) == id
}

/// The message of a panic payload.
fn panic_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The error of a chunk whose items' `Serialize` panicked.
fn serialize_panicked(p: &(dyn Any + Send)) -> Error {
    Error::Unserializable {
        what: "arguments",
        message: format!("serializing them panicked: {}", panic_text(p)),
    }
}

/// Python's default chunksize for `map`: `ceil(len / (4 × workers))`.
pub fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(4 * workers.max(1)).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Closed,
    Broken,
    Terminated,
    Joined,
}

struct Table {
    state: State,
    broken: Option<Error>,
    jobs: HashMap<u64, Arc<dyn Job>>,
    next_id: u64,
}

struct WorkerEntry {
    child: Option<Child<()>>,
    pid: u32,
    slot: Shared<Slot>,
}

struct Workers {
    list: Vec<WorkerEntry>,
    replace: bool,
    started: u64,
    /// Stop messages `join` put so far.
    stops: usize,
}

struct InitCfg {
    args: EncodeInit,
    tramp: i64,
    target: i64,
}

struct Config {
    processes: usize,
    method: StartMethod,
    init: Option<InitCfg>,
    max_tasks: u64,
    image_id: Vec<u8>,
    max_backlog: usize,
}

/// The supervisor's last looked-up job.
type JobCache = Option<(u64, Arc<dyn Job>)>;

type Chunks<'a> = Box<dyn ChunkSource + 'a>;

/// The default of [`PoolBuilder::max_backlog`].
pub const DEFAULT_MAX_BACKLOG: usize = 65_536;

/// The work waiting for the feeder thread, in submission order.
struct Feeds {
    queue: VecDeque<Feed>,
    /// Set by `stop_threads`: the feeder ends once the queue is empty.
    closed: bool,
}

/// A job's chunks that did not fit in the task queue, for the feeder thread.
struct Feed {
    id: u64,
    job: Arc<dyn Job>,
    chunks: Chunks<'static>,
    /// The chunks it added to the backlog.
    count: usize,
}

/// The state shared by the pool handle, its threads and its iterators.
pub(crate) struct Inner {
    tasks: Queue<TaskMsg>,
    results: Queue<ResultMsg>,
    /// Rung by the workers after each result; the supervisor sleeps on it.
    bell: Shared<Doorbell>,
    /// Rung by the parent after each task put; idle workers sleep on it.
    task_bell: Shared<Doorbell>,
    table: Mutex<Table>,
    idle: Condvar,
    workers: Mutex<Workers>,
    cfg: Config,
    /// Work for the feeder thread; the feeder sleeps on `feeds_cv`.
    feeds: Mutex<Feeds>,
    feeds_cv: Condvar,
    /// Callers waiting for room in the backlog sleep on it (with `feeds`).
    room_cv: Condvar,
    /// Chunks handed to the feeder and not put (nor dropped) yet. While it is not zero, new
    /// work goes behind them (FIFO); it is kept under `cfg.max_backlog`.
    backlog: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    supervisor: OnceLock<ThreadId>,
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
    processes: Option<usize>,
    init: Option<Result<InitCfg, Error>>,
    max_tasks: Option<usize>,
    method: Option<StartMethod>,
    max_backlog: Option<usize>,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.init.is_some())
            .field("max_tasks_per_child", &self.max_tasks)
            .field("start_method", &self.method)
            .field("max_backlog", &self.max_backlog)
            .finish()
    }
}

impl PoolBuilder {
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
                tramp: offset_of(worker::run_init::<I> as RunInit as usize)?,
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
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.method = Some(m);
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
        let init = self.init.transpose()?;
        worker::install_task_hook();
        let cfg = Config {
            processes,
            method: self.method.unwrap_or_else(mp_process::get_start_method),
            init,
            max_tasks: self.max_tasks.unwrap_or(0) as u64,
            image_id: mp_process::symbol::image_id().to_vec(),
            max_backlog: self.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG),
        };
        let inner = Arc::new(Inner {
            tasks: Queue::new()?,
            results: Queue::new()?,
            bell: Shared::new(Doorbell::new())?,
            task_bell: Shared::new(Doorbell::new())?,
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
            supervisor: OnceLock::new(),
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
                });
            }
        }
        let sup = inner.clone();
        let s = std::thread::Builder::new()
            .name("mp-pool-supervisor".into())
            .spawn(move || sup.guarded("supervisor", Inner::supervise))
            .map_err(|e| Error::Start(format!("the supervisor thread: {e}")))?;
        let _ = inner.supervisor.set(s.thread().id());
        let feed = inner.clone();
        let f = std::thread::Builder::new()
            .name("mp-pool-feeder".into())
            .spawn(move || feed.guarded("feeder", Inner::run_feeder))
            .map_err(|e| Error::Start(format!("the feeder thread: {e}")))?;
        lock(&inner.threads).extend([s, f]);
        Ok(pool)
    }
}

fn exit_of(r: &Result<Option<()>, ProcessError>) -> (Option<i32>, Option<i32>) {
    match r {
        Ok(_) => (None, Some(0)),
        Err(e @ ProcessError::Signaled { signal, .. }) => (Some(*signal), e.exitcode()),
        Err(e) => (None, e.exitcode()),
    }
}

impl Inner {
    fn start_worker(&self, slot: &Shared<Slot>, n: u64) -> Result<Child<()>, Error> {
        slot.reset();
        let init = self.cfg.init.as_ref().map(|i| InitSpec {
            args: InitArgs {
                encode: Some(i.args.clone()),
                bytes: None,
            },
            tramp: i.tramp,
            target: i.target,
        });
        let args = WorkerArgs {
            tasks: self.tasks.clone(),
            results: self.results.clone(),
            slot: slot.clone(),
            bell: self.bell.clone(),
            task_bell: self.task_bell.clone(),
            image_id: self.cfg.image_id.clone(),
            init,
            max_tasks: self.cfg.max_tasks,
            forked: self.cfg.method == StartMethod::Fork,
        };
        let prefix = match self.cfg.method {
            StartMethod::Fork => "ForkPoolWorker",
            StartMethod::Spawn => "SpawnPoolWorker",
            StartMethod::ForkServer => "ForkServerPoolWorker",
        };
        let child = Process::new(worker::worker_main, args)
            .name(format!("{prefix}-{n}"))
            .daemon(true)
            .start_method(self.cfg.method)
            .start()?;
        // The supervisor polls the workers' sentinels: open this one now, so that a failure
        // (no descriptor left) is a start error, not a worker nobody watches.
        if let Err(e) = child.sentinel() {
            let _ = child.kill();
            return Err(Error::Start(format!("the worker's sentinel: {e}")));
        }
        Ok(child)
    }

    fn register(&self, job: Arc<dyn Job>) -> Result<u64, Error> {
        let mut t = lock(&self.table);
        match t.state {
            State::Running => {}
            State::Closed => return Err(Error::Closed),
            State::Terminated | State::Joined => return Err(Error::Terminated),
            State::Broken => {
                return Err(t
                    .broken
                    .as_ref()
                    .map_or(Error::Terminated, Error::duplicate))
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        t.jobs.insert(id, job);
        Ok(id)
    }

    /// Why puts stop: the error that broke the pool, or `Terminated`.
    fn halt_error(&self) -> Error {
        let t = lock(&self.table);
        match (t.state, &t.broken) {
            (State::Broken, Some(e)) => e.duplicate(),
            _ => Error::Terminated,
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        let t = lock(&self.table);
        match t.state {
            State::Running => Ok(()),
            State::Closed => Err(Error::Closed),
            State::Broken => Err(t
                .broken
                .as_ref()
                .map_or(Error::Terminated, Error::duplicate)),
            State::Terminated | State::Joined => Err(Error::Terminated),
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        let mut t = lock(&self.table);
        t.jobs.remove(&id);
        if t.jobs.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Job `id` needs nothing more: it leaves the table, then its callbacks run (they may
    /// close and join the pool) and its outcome becomes ready.
    fn finished(&self, id: u64, job: &dyn Job) {
        self.unregister(id);
        job.publish();
    }

    /// This pool's id, for [`on_pool_thread`].
    pub(crate) fn id(&self) -> usize {
        self as *const Inner as usize
    }

    fn job(&self, id: u64) -> Option<Arc<dyn Job>> {
        lock(&self.table).jobs.get(&id).cloned()
    }

    /// Puts a task, waiting for room, until the pool is terminated or broken (then the error
    /// is the pool's): `attempt` puts with the timeout it is given and says whether it did.
    /// With a `deadline`, [`Error::Timeout`] once it passed.
    fn put_waiting(
        &self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(Duration) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        // First without waiting (no clock read: with chunksize 1 this runs once per item);
        // when the queue is full, in slices of PUT_SLICE so that terminate is noticed.
        let mut timeout = Duration::ZERO;
        loop {
            if self.halted.load(Ordering::Relaxed) {
                return Err(self.halt_error());
            }
            if attempt(timeout)? {
                self.task_bell.ring();
                return Ok(());
            }
            timeout = match deadline {
                None => PUT_SLICE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout);
                    }
                    left.min(PUT_SLICE)
                }
            };
        }
    }

    /// Puts the next chunk of `chunks`, waiting for room, until the pool is halted or
    /// `deadline` passed. On an error the chunk is dropped from `chunks` (the caller fails
    /// it), except on [`Error::Timeout`]: then it is still the next one.
    fn put_next_blocking(
        &self,
        chunks: &mut (dyn ChunkSource + '_),
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let r = self.put_waiting(deadline, |t| chunks.put_next(&self.tasks, t));
        if matches!(r, Err(ref e) if !matches!(e, Error::Timeout)) {
            chunks.skip();
        }
        r
    }

    /// Puts a job's chunks: all of them when `wait`; otherwise as many as fit now, the rest
    /// through the feeder thread. Behind a backlog (chunks of earlier calls still waiting
    /// for room), everything goes through the feeder, after them.
    fn feed(&self, id: u64, job: &Arc<dyn Job>, mut chunks: Chunks<'static>, wait: bool) {
        let fail = |c: u64, e: Error| {
            if job.fail(c, e) {
                self.finished(id, &**job);
            }
        };
        // Acquire pairs with the Release increment in `enqueue`: a call that follows one that
        // left a backlog sees it.
        if self.backlog.load(Ordering::Acquire) != 0 {
            return self.enqueue(id, job, chunks);
        }
        let mut n = 0u32;
        while let Some(c) = chunks.peek() {
            // A failed job needs no more chunks (checked now and then: it takes a lock).
            if n % 16 == 0 && job.is_done() {
                return;
            }
            n = n.wrapping_add(1);
            if wait {
                if let Err(e) = self.put_next_blocking(&mut *chunks, None) {
                    return fail(c, e);
                }
                continue;
            }
            match chunks.put_next(&self.tasks, Duration::ZERO) {
                Ok(true) => self.task_bell.ring(),
                Ok(false) => return self.enqueue(id, job, chunks),
                Err(e) => return fail(c, e),
            }
        }
    }

    /// Runs a pool thread's body; should it panic (a bug), the pool is broken rather than
    /// left with callers waiting forever.
    fn guarded(self: Arc<Self>, what: &str, body: impl FnOnce(Arc<Self>)) {
        POOL_THREAD.with(|t| t.set(self.id()));
        let me = self.clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || body(me))) {
            let msg = panic_text(&*p);
            self.break_pool(Error::Start(format!(
                "the pool's {what} thread panicked ({msg}); the pool cannot go on"
            )));
        }
    }

    /// Hands a job's remaining chunks to the feeder, behind the work already there. When
    /// the backlog would pass `max_backlog` chunks, waits for room first (backpressure), but
    /// never on the pool's own threads (a callback), which the feeder may be waiting for;
    /// a backlog that is empty takes any number.
    fn enqueue(&self, id: u64, job: &Arc<dyn Job>, mut chunks: Chunks<'static>) {
        let n = chunks.remaining();
        let Some(c) = chunks.peek() else {
            return;
        };
        let mut f = lock(&self.feeds);
        loop {
            if f.closed || self.halted.load(Ordering::Relaxed) {
                drop(f);
                let e = self.halt_error();
                if job.fail(c, e) {
                    self.finished(id, &**job);
                }
                return;
            }
            let b = self.backlog.load(Ordering::Acquire);
            if b == 0 || b.saturating_add(n) <= self.cfg.max_backlog || on_pool_thread(self.id()) {
                break;
            }
            // Woken by the feeder as the backlog shrinks; the slice notices terminate.
            f = self
                .room_cv
                .wait_timeout(f, PUT_SLICE)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // Release pairs with the Acquire load in `feed`.
        self.backlog.fetch_add(n, Ordering::Release);
        f.queue.push_back(Feed {
            id,
            job: job.clone(),
            chunks,
            count: n,
        });
        drop(f);
        self.feeds_cv.notify_one();
    }

    fn run_feeder(self: Arc<Self>) {
        loop {
            let feed = {
                let mut f = lock(&self.feeds);
                loop {
                    if let Some(feed) = f.queue.pop_front() {
                        break feed;
                    }
                    if f.closed {
                        return;
                    }
                    f = self.feeds_cv.wait(f).unwrap_or_else(|p| p.into_inner());
                }
            };
            let Feed {
                id,
                job,
                mut chunks,
                count,
            } = feed;
            let mut put = 0usize;
            // A panic in the items' `Serialize` fails this job only (the pool goes on).
            let fed = catch_unwind(AssertUnwindSafe(|| {
                while let Some(c) = chunks.peek() {
                    if job.is_done() {
                        break;
                    }
                    if let Err(e) = self.put_next_blocking(&mut *chunks, None) {
                        if job.fail(c, e) {
                            self.finished(id, &*job);
                        }
                        break;
                    }
                    self.backlog.fetch_sub(1, Ordering::Release);
                    put += 1;
                    if put % 256 == 0 {
                        self.room_cv.notify_all();
                    }
                }
            }));
            if let Err(p) = fed {
                job.abort(serialize_panicked(&*p));
                self.finished(id, &*job);
            }
            // What was not put (the job failed, the pool halted) leaves the backlog too.
            self.backlog
                .fetch_sub(count.saturating_sub(put), Ordering::Release);
            self.room_cv.notify_all();
        }
    }

    fn supervise(self: Arc<Self>) {
        let mut last_check = Instant::now();
        let mut spin = Spin::new();
        let mut cache: JobCache = None;
        loop {
            let mut got = 0u32;
            while let Some(g) = self.next_result() {
                self.handle(&g, &mut cache);
                drop(g);
                got += 1;
                if got % 64 == 0 && last_check.elapsed() >= CHECK_EVERY {
                    break;
                }
            }
            // Acquire pairs with the Release store in `stop_threads`.
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if got == 0 {
                // Do not keep a finished job alive while idle.
                cache = None;
            }
            if got == 0 || last_check.elapsed() >= CHECK_EVERY {
                self.check_workers(&mut cache);
                last_check = Instant::now();
            }
            if got == 0 {
                self.bell.wait(|| self.results.empty(), &mut spin, NAP);
            }
        }
    }

    /// The next result if there is one now. The supervisor is the only reader of the result
    /// queue, so a queue that is not empty stays so until it reads: `get_ref` returns at once
    /// (and, unlike a zero timeout, reads no clock). A record the queue cannot read (it
    /// skips it) fails the pending work, and the next one is read.
    fn next_result(&self) -> Option<mp_queue::Received<'_, ResultMsg>> {
        loop {
            if self.results.empty() {
                return None;
            }
            match self.results.get_ref() {
                Ok(g) => return Some(g),
                Err(mp_queue::Error::Empty | mp_queue::Error::Closed) => return None,
                Err(e) => self.fail_pending(Error::QueueRead {
                    what: "result",
                    message: e.to_string(),
                }),
            }
        }
    }

    /// Handles one result. `cache` keeps the last job looked up (results of one job come in
    /// runs), sparing the table lock and the hash per result.
    fn handle(&self, m: &ArchivedResultMsg, cache: &mut JobCache) {
        let k = m.kind.to_native();
        let pid = m.pid.to_native();
        match k {
            kind::WAKE => return,
            kind::INIT_OK => {
                self.init_failures.store(0, Ordering::Relaxed);
                return;
            }
            kind::TASK_UNREADABLE => {
                self.fail_pending(Error::QueueRead {
                    what: "task",
                    message: format!("worker pid {pid}: {}", m.message.as_str()),
                });
                return;
            }
            kind::INIT_FAILED => {
                // Counted when the worker is seen dead (it exits now), like a crash.
                lock(&self.init_failed).push((pid, m.message.as_str().to_string()));
                return;
            }
            _ => {}
        }
        let id = m.job.to_native();
        let chunk = m.chunk.to_native();
        let job = match cache {
            Some((cid, j)) if *cid == id => j.clone(),
            _ => {
                let Some(j) = self.job(id) else {
                    return;
                };
                *cache = Some((id, j.clone()));
                j
            }
        };
        let message = || m.message.as_str().to_string();
        let finished = match k {
            kind::OK => job.deliver(chunk, m.payload.as_slice()),
            kind::PANICKED => job.fail(
                chunk,
                Error::Panicked {
                    pid,
                    message: message(),
                    location: m.location.as_str().to_string(),
                },
            ),
            kind::FAILED => job.fail(chunk, Error::Failed { message: message() }),
            kind::RESULT_NO_SPACE => job.fail(
                chunk,
                Error::SharedMemory {
                    what: "result",
                    message: message(),
                },
            ),
            kind::RESULT_UNSERIALIZABLE => job.fail(
                chunk,
                Error::Unserializable {
                    what: "result",
                    message: message(),
                },
            ),
            _ => job.fail(
                chunk,
                Error::Unserializable {
                    what: "arguments",
                    message: message(),
                },
            ),
        };
        if finished {
            *cache = None;
            self.finished(id, &*job);
        }
    }

    /// A task or a result was lost in a queue, and whose it was is unknown: every job
    /// pending now fails with `err` (rather than one of them waiting forever); the pool
    /// goes on.
    fn fail_pending(&self, err: Error) {
        let jobs: Vec<Arc<dyn Job>> = {
            let mut t = lock(&self.table);
            let jobs = t.jobs.drain().map(|(_, j)| j).collect();
            self.idle.notify_all();
            jobs
        };
        for j in jobs {
            j.abort(err.duplicate());
            j.publish();
        }
    }

    /// The initializer failed or a worker could not be started: fail everything, accept
    /// nothing more, replace no worker.
    fn break_pool(&self, err: Error) {
        let jobs: Vec<Arc<dyn Job>> = {
            let mut t = lock(&self.table);
            if matches!(t.state, State::Terminated | State::Joined | State::Broken) {
                return;
            }
            t.state = State::Broken;
            t.broken = Some(err.duplicate());
            let jobs = t.jobs.drain().map(|(_, j)| j).collect();
            self.idle.notify_all();
            jobs
        };
        // Waiting puts give up: no task may ever be taken again.
        self.halted.store(true, Ordering::Relaxed);
        lock(&self.workers).replace = false;
        for j in jobs {
            j.abort(err.duplicate());
            j.publish();
        }
    }

    fn check_workers(&self, cache: &mut JobCache) {
        let mut dead = Vec::new();
        {
            let mut w = lock(&self.workers);
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(w.list.len());
            let mut idx = Vec::with_capacity(w.list.len());
            for (i, e) in w.list.iter().enumerate() {
                // Opened when the worker started, so `sentinel` cannot fail here.
                if let Some(Ok(fd)) = e.child.as_ref().map(|c| c.sentinel()) {
                    fds.push(libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    idx.push(i);
                }
            }
            if fds.is_empty() {
                return;
            }
            // SAFETY: `fds` is a valid array of pollfds for the length passed; the pidfds stay
            // open while we hold the workers lock (their `Child`s are in the list).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            if n <= 0 {
                return;
            }
            for (f, &i) in fds.iter().zip(&idx) {
                if f.revents == 0 {
                    continue;
                }
                if let Some(mut c) = w.list[i].child.take() {
                    let status = c.join_timeout(Duration::from_millis(500));
                    if matches!(status, Ok(None)) {
                        w.list[i].child = Some(c);
                        continue;
                    }
                    dead.push((i, c.pid(), exit_of(&status)));
                }
            }
        }
        if dead.is_empty() {
            return;
        }
        // What the dead put before dying is in the result queue, in order: take it first,
        // so that only a task whose result never came is failed.
        while let Some(g) = self.next_result() {
            self.handle(&g, cache);
        }
        for (i, pid, (signal, exitcode)) in dead {
            let slot = lock(&self.workers).list[i].slot.clone();
            // Read after the worker died (its pidfd became readable), which orders its
            // SeqCst store in `worker_main` before this load.
            if self.cfg.init.is_some() && slot.ready.load(Ordering::SeqCst) == 0 {
                // Its initializer failed: it panicked (reported as INIT_FAILED, handled
                // above since the result queue was drained first) or the worker died in it.
                // Python restarts such workers forever; INIT_FAILURES in a row, with no
                // initializer completing in between (INIT_OK resets the count), break the
                // pool.
                let n = self.init_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let reported = {
                    let mut r = lock(&self.init_failed);
                    let i = r.iter().position(|(p, _)| *p == pid);
                    i.map(|i| r.swap_remove(i).1)
                };
                if n >= INIT_FAILURES {
                    let how = match reported {
                        Some(msg) => msg,
                        None => match (signal, exitcode) {
                            (Some(s), _) => format!("killed by signal {s}"),
                            (None, Some(c)) => format!("exited with code {c}"),
                            _ => "ended".into(),
                        },
                    };
                    self.break_pool(Error::Initializer(format!(
                        "{n} workers in a row failed in the initializer (the last, pid {pid}: {how})"
                    )));
                }
            }
            if let Some(Claim { job, chunk }) = slot.running() {
                if let Some(j) = self.job(job) {
                    let lost = Error::WorkerLost {
                        pid,
                        signal,
                        exitcode,
                    };
                    if j.fail(chunk, lost) {
                        self.finished(job, &*j);
                    }
                }
            }
            self.replace(i);
        }
    }

    fn replace(&self, i: usize) {
        let mut w = lock(&self.workers);
        // Acquire pairs with the Release store in `stop_threads`.
        if !w.replace || self.stopping.load(Ordering::Acquire) {
            return;
        }
        w.started += 1;
        let n = w.started;
        let slot = w.list[i].slot.clone();
        match self.start_worker(&slot, n) {
            Ok(c) => {
                w.list[i].pid = c.pid();
                w.list[i].child = Some(c);
            }
            Err(e) => {
                drop(w);
                self.break_pool(Error::Start(e.to_string()));
            }
        }
    }

    /// Stops the supervisor and feeder threads and waits for them (except for the calling
    /// thread, should a callback running on the supervisor call this).
    fn stop_threads(&self) {
        // Release pairs with the Acquire loads in `supervise` and `replace`.
        self.stopping.store(true, Ordering::Release);
        let wake = ResultMsg {
            payload: Payload::default(),
            job: 0,
            chunk: 0,
            kind: kind::WAKE,
            pid: std::process::id(),
            message: String::new(),
            location: String::new(),
        };
        let _ = self.results.put_nowait(wake);
        self.bell.ring_all();
        lock(&self.feeds).closed = true;
        self.feeds_cv.notify_all();
        self.room_cv.notify_all();
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }

    fn terminate(&self) {
        let jobs: Vec<Arc<dyn Job>> = {
            let mut t = lock(&self.table);
            if matches!(t.state, State::Terminated | State::Joined) {
                return;
            }
            t.state = State::Terminated;
            let jobs = t.jobs.drain().map(|(_, j)| j).collect();
            self.idle.notify_all();
            jobs
        };
        self.halted.store(true, Ordering::Relaxed);
        let children: Vec<Child<()>> = {
            let mut w = lock(&self.workers);
            w.replace = false;
            w.list.iter_mut().filter_map(|e| e.child.take()).collect()
        };
        for c in &children {
            let _ = c.kill();
        }
        for j in jobs {
            j.abort(Error::Terminated);
            j.publish();
        }
        for mut c in children {
            let _ = c.join_timeout(Duration::from_secs(5));
        }
        self.stop_threads();
    }

    /// Python's `join`, with an optional deadline ([`Error::Timeout`] when it passes; what
    /// was done so far is kept, and a later call goes on from there).
    fn join(&self, deadline: Option<Instant>) -> Result<(), Error> {
        if on_pool_thread(self.id()) {
            return Err(Error::InCallback);
        }
        {
            let mut t = lock(&self.table);
            match t.state {
                State::Running => return Err(Error::StillRunning),
                State::Terminated | State::Joined => {
                    drop(t);
                    self.stop_threads();
                    return Ok(());
                }
                State::Closed | State::Broken => {}
            }
            while !t.jobs.is_empty() && matches!(t.state, State::Closed | State::Broken) {
                t = match deadline {
                    None => self.idle.wait(t).unwrap_or_else(|p| p.into_inner()),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(Error::Timeout);
                        }
                        let waited = self.idle.wait_timeout(t, left);
                        waited.unwrap_or_else(|p| p.into_inner()).0
                    }
                };
            }
            if matches!(t.state, State::Terminated | State::Joined) {
                drop(t);
                self.stop_threads();
                return Ok(());
            }
        }
        let broken = lock(&self.table).state == State::Broken;
        let (live, stops) = {
            let mut w = lock(&self.workers);
            w.replace = false;
            let live = w.list.iter().filter(|e| e.child.is_some()).count();
            (live, w.stops)
        };
        if broken {
            // Every job was failed and no task will be taken from a full queue: a stop
            // message might never fit, so the workers left are killed.
            for e in lock(&self.workers).list.iter() {
                if let Some(c) = &e.child {
                    let _ = c.kill();
                }
            }
        } else {
            // One stop message per live worker, counted so that a join that timed out does
            // not send them again.
            for _ in stops..live {
                let stop = TaskMsg::stop();
                let put =
                    self.put_waiting(deadline, |t| put_outcome(self.tasks.put_as(&stop, Some(t))));
                match put {
                    Ok(()) => lock(&self.workers).stops += 1,
                    Err(Error::Timeout) => return Err(Error::Timeout),
                    Err(_) => break,
                }
            }
        }
        let children: Vec<(usize, Child<()>)> = lock(&self.workers)
            .list
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| e.child.take().map(|c| (i, c)))
            .collect();
        let mut left = Vec::new();
        for (i, mut c) in children {
            let done = match deadline {
                None => {
                    let _ = c.join();
                    true
                }
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    !matches!(c.join_timeout(wait), Ok(None))
                }
            };
            if !done {
                left.push((i, c));
            }
        }
        if !left.is_empty() {
            // Timed out: the workers still running go back on the books.
            let mut w = lock(&self.workers);
            for (i, c) in left {
                w.list[i].child = Some(c);
            }
            return Err(Error::Timeout);
        }
        lock(&self.table).state = State::Joined;
        self.stop_threads();
        Ok(())
    }
}

/// What putting a chunk on the task queue did.
fn put_outcome<U>(put: Result<(), PutError<U>>) -> Result<bool, Error> {
    match put {
        Ok(()) => Ok(true),
        Err(PutError::Full(_)) => Ok(false),
        Err(PutError::Closed(_)) => Err(Error::Terminated),
        // A system call failed: the queue's shared memory could not grow or be mapped.
        Err(PutError::Failed(_, e @ mp_core::Error::Io { .. })) => Err(Error::SharedMemory {
            what: "arguments",
            message: e.to_string(),
        }),
        Err(PutError::Failed(_, e)) => Err(Error::Unserializable {
            what: "arguments",
            message: e.to_string(),
        }),
    }
}

/// A job's chunks, each encoded straight into the task queue from the items (no message is
/// built first).
pub(crate) trait ChunkSource: Send {
    /// The number of the next chunk, or `None` when there are no more.
    fn peek(&mut self) -> Option<u64>;
    /// Puts the next chunk, waiting at most `timeout` for room: `Ok(true)` put (the next one
    /// is the one after), `Ok(false)` no room, `Err` it cannot be put. In the last two cases
    /// it is still the next one: the caller [`skip`](Self::skip)s a chunk it fails.
    fn put_next(&mut self, tasks: &Queue<TaskMsg>, timeout: Duration) -> Result<bool, Error>;
    /// Drops the next chunk (it was failed).
    fn skip(&mut self);
    /// How many chunks are left (0 when unknown: a lazy source, which is never handed to
    /// the feeder).
    fn remaining(&self) -> usize;
}

/// What every chunk of a job says besides its items.
#[derive(Debug, Clone, Copy)]
struct ChunkHead {
    job: u64,
    tramp: i64,
    target: (i64, bool),
}

impl ChunkHead {
    fn put<T: Message>(
        &self,
        tasks: &Queue<TaskMsg>,
        chunk: u64,
        items: &[T],
        timeout: Duration,
    ) -> Result<bool, Error> {
        let msg = TaskRef {
            items: Nested(items),
            claim: Claim {
                job: self.job,
                chunk,
            },
            tramp: self.tramp,
            target: self.target.0,
            raw: self.target.1,
        };
        put_outcome(tasks.put_as(&msg, Some(timeout)))
    }
}

/// Cuts an iterator of items into chunks, lazily (one chunk's items buffered at a time).
struct ChunkIter<I: Iterator> {
    items: I,
    chunksize: usize,
    next: u64,
    head: ChunkHead,
    buf: Vec<I::Item>,
}

impl<T: Message + Send, I: Iterator<Item = T> + Send> ChunkSource for ChunkIter<I> {
    fn peek(&mut self) -> Option<u64> {
        if self.buf.is_empty() {
            self.buf.extend(self.items.by_ref().take(self.chunksize));
        }
        (!self.buf.is_empty()).then_some(self.next)
    }

    fn put_next(&mut self, tasks: &Queue<TaskMsg>, timeout: Duration) -> Result<bool, Error> {
        let Some(c) = self.peek() else {
            return Ok(false);
        };
        let r = self.head.put(tasks, c, &self.buf, timeout);
        if matches!(r, Ok(true)) {
            self.skip();
        }
        r
    }

    fn skip(&mut self) {
        if self.peek().is_some() {
            self.buf.clear();
            self.next += 1;
        }
    }

    fn remaining(&self) -> usize {
        0
    }
}

/// Cuts a `Vec` of items into chunks, encoding each straight from the `Vec`.
struct SliceChunks<T> {
    items: Vec<T>,
    pos: usize,
    chunksize: usize,
    next: u64,
    head: ChunkHead,
}

impl<T> SliceChunks<T> {
    fn end(&self) -> usize {
        self.pos
            .saturating_add(self.chunksize)
            .min(self.items.len())
    }
}

impl<T: Message + Send> ChunkSource for SliceChunks<T> {
    fn peek(&mut self) -> Option<u64> {
        (self.pos < self.items.len()).then_some(self.next)
    }

    fn put_next(&mut self, tasks: &Queue<TaskMsg>, timeout: Duration) -> Result<bool, Error> {
        if self.pos >= self.items.len() {
            return Ok(false);
        }
        let items = &self.items[self.pos..self.end()];
        let r = self.head.put(tasks, self.next, items, timeout);
        if matches!(r, Ok(true)) {
            self.skip();
        }
        r
    }

    fn skip(&mut self) {
        if self.pos < self.items.len() {
            self.pos = self.end();
            self.next += 1;
        }
    }

    fn remaining(&self) -> usize {
        (self.items.len() - self.pos.min(self.items.len())).div_ceil(self.chunksize.max(1))
    }
}

fn identity<R>(v: Vec<R>) -> Result<Vec<R>, Error> {
    Ok(v)
}

/// The one result of an `apply`.
pub(crate) fn single<R>(v: Vec<R>) -> Result<R, Error> {
    v.into_iter().next().ok_or_else(|| Error::Unserializable {
        what: "result",
        message: "the task's result is missing".into(),
    })
}

/// Settings for the next call on a pool: the chunksize, how many chunks an `imap` keeps in
/// flight, and (with the `progress` feature) a progress bar. Made by [`Pool::chunksize`],
/// [`Pool::in_flight`] and (feature `progress`) `Pool::progress`; it has the pool's methods.
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
/// let pool = mp_pool::Pool::new(2)?;
/// let v = pool.chunksize(20).map(square, 0..100)?;
/// assert_eq!(v[99], 9801);
/// let first: Vec<u64> = pool.chunksize(1).in_flight(4).imap(square, 0..)?.take(5)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(first, [0, 1, 4, 9, 16]);
/// # Ok::<(), mp_pool::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Tasks<'p> {
    pool: &'p Pool,
    chunksize: Option<usize>,
    in_flight: Option<usize>,
    #[cfg(feature = "progress")]
    progress: bool,
}

impl<'p> Tasks<'p> {
    fn new(pool: &'p Pool) -> Tasks<'p> {
        Tasks {
            pool,
            chunksize: None,
            in_flight: None,
            #[cfg(feature = "progress")]
            progress: false,
        }
    }

    /// Items per task (Python's `chunksize`). Default for `map`-like calls: CPython's
    /// `ceil(len / (4 × processes))`; for `imap`: 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// For `imap`/`imap_unordered`: at most `n` chunks submitted and not yet consumed
    /// (default: 16 × processes, at least 64: enough to keep the workers busy while the
    /// consumer sleeps and wakes). The input is read only as results are consumed, so an
    /// endless iterator works with bounded memory (`in_flight × chunksize` items).
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(n);
        self
    }

    /// Shows an `indicatif` progress bar on stderr for this `map`/`imap` (cargo feature
    /// `progress`).
    #[cfg(feature = "progress")]
    pub fn progress(mut self) -> Self {
        self.progress = true;
        self
    }

    pub(crate) fn collect_async<C: Call, Out: Send + 'static>(
        self,
        target: Target,
        items: Vec<C::In>,
        finish: fn(Vec<C::Out>) -> Result<Out, Error>,
        wait: bool,
    ) -> Result<AsyncResult<Out>, Error>
    where
        C::In: Send,
        C::Out: Send,
    {
        let inner = &self.pool.inner;
        if wait && on_pool_thread(inner.id()) {
            return Err(Error::InCallback);
        }
        let outcome = Outcome::<Out>::new(inner.id());
        let len = items.len();
        if len == 0 {
            inner.check_open()?;
            outcome.set(finish(Vec::new()));
            return Ok(AsyncResult::new(outcome));
        }
        let chunksize = match self.chunksize {
            Some(0) => return Err(Error::Config("chunksize must be at least 1".into())),
            Some(n) => n,
            None => default_chunksize(len, inner.cfg.processes),
        };
        let tramp = offset_of(worker::run_chunk::<C> as RunChunk as usize)?;
        let target = target.encode()?;
        #[allow(unused_mut)]
        let mut job = CollectJob::<C::Out, Out>::new(outcome.clone(), len, chunksize, finish);
        #[cfg(feature = "progress")]
        if self.progress {
            job.bar = Some(crate::progress::bar(Some(len as u64)));
        }
        let job: Arc<dyn Job> = Arc::new(job);
        let id = inner.register(job.clone())?;
        let chunks = SliceChunks {
            items,
            pos: 0,
            chunksize,
            next: 0,
            head: ChunkHead {
                job: id,
                tramp,
                target,
            },
        };
        // A panic in the items' `Serialize` (the caller's code) reaches the caller, and the
        // job is failed and dropped first so that nothing waits for it (`join` would).
        let fed = catch_unwind(AssertUnwindSafe(|| {
            inner.feed(id, &job, Box::new(chunks), wait)
        }));
        if let Err(p) = fed {
            job.abort(serialize_panicked(&*p));
            inner.finished(id, &*job);
            resume_unwind(p);
        }
        Ok(AsyncResult::new(outcome))
    }

    pub(crate) fn imap_impl<'a, C: Call>(
        self,
        target: Target,
        items: impl IntoIterator<Item = C::In, IntoIter: Send + 'a>,
        ordered: bool,
    ) -> Result<IMap<'a, C::Out>, Error>
    where
        C::In: Send,
        C::Out: Send,
    {
        let inner = &self.pool.inner;
        let chunksize = match self.chunksize {
            Some(0) => return Err(Error::Config("chunksize must be at least 1".into())),
            Some(n) => n,
            None => 1,
        };
        let limit = match self.in_flight {
            Some(0) => return Err(Error::Config("in_flight must be at least 1".into())),
            Some(n) => n,
            None => (16 * inner.cfg.processes).max(64),
        };
        let tramp = offset_of(worker::run_chunk::<C> as RunChunk as usize)?;
        let target = target.encode()?;
        #[allow(unused_mut)]
        let mut job = IMapJob::<C::Out>::new(ordered);
        #[cfg(feature = "progress")]
        if self.progress {
            job.bar = Some(crate::progress::bar(None));
        }
        let job = Arc::new(job);
        let id = inner.register(job.clone())?;
        Ok(IMap {
            inner: inner.clone(),
            job,
            id,
            source: Box::new(ChunkIter {
                items: items.into_iter(),
                chunksize,
                next: 0,
                head: ChunkHead {
                    job: id,
                    tramp,
                    target,
                },
                buf: Vec::new(),
            }),
            exhausted: false,
            cut: false,
            in_flight: 0,
            limit,
            next_out: 0,
            current: Vec::new().into_iter(),
            finished: false,
            spin: Spin::new(),
        })
    }

    /// Python's `map`: `f` applied to every item, results in input order. The first task
    /// error (a panic, an unserializable result, a lost worker) fails the call, and the pool
    /// stays usable.
    pub fn map<T, R>(
        self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let items: Vec<T> = items.into_iter().collect();
        self.collect_async::<Plain<T, R>, Vec<R>>(Target::Fn(f as usize), items, identity, true)?
            .get()
    }

    /// Python's `map_async`: returns at once; attach callbacks with
    /// [`AsyncResult::on_success`] / [`on_error`](AsyncResult::on_error).
    pub fn map_async<T, R>(
        self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let items: Vec<T> = items.into_iter().collect();
        self.collect_async::<Plain<T, R>, Vec<R>>(Target::Fn(f as usize), items, identity, false)
    }

    /// `map` for a fallible function: an `Err` returned by a task fails the call with
    /// [`Error::Failed`] carrying the error's message.
    pub fn try_map<T, R, E>(
        self,
        f: fn(T) -> Result<R, E>,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        let items: Vec<T> = items.into_iter().collect();
        self.collect_async::<Fallible<T, R, E>, Vec<R>>(
            Target::Fn(f as usize),
            items,
            identity,
            true,
        )?
        .get()
    }

    /// `map_async` for a fallible function.
    pub fn try_map_async<T, R, E>(
        self,
        f: fn(T) -> Result<R, E>,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        let items: Vec<T> = items.into_iter().collect();
        self.collect_async::<Fallible<T, R, E>, Vec<R>>(
            Target::Fn(f as usize),
            items,
            identity,
            false,
        )
    }

    /// Python's `starmap`: `f(a, b)` for every pair, results in input order.
    pub fn starmap<A, B, R>(
        self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>, Error>
    where
        A: Message + Send + 'static,
        B: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let items: Vec<(A, B)> = items.into_iter().collect();
        self.collect_async::<Star2<A, B, R>, Vec<R>>(Target::Fn(f as usize), items, identity, true)?
            .get()
    }

    /// Python's `starmap_async`.
    pub fn starmap_async<A, B, R>(
        self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        A: Message + Send + 'static,
        B: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let items: Vec<(A, B)> = items.into_iter().collect();
        self.collect_async::<Star2<A, B, R>, Vec<R>>(Target::Fn(f as usize), items, identity, false)
    }

    /// Python's `imap`: a lazy iterator of results in input order. The input is read only
    /// as results are consumed (at most [`in_flight`](Self::in_flight) chunks ahead). A
    /// failed chunk yields one `Err` in its place and the iteration goes on.
    pub fn imap<'a, T, R>(
        self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_impl::<Plain<T, R>>(Target::Fn(f as usize), items, true)
    }

    /// Python's `imap_unordered`: like [`imap`](Self::imap), results in completion order
    /// (by chunk).
    pub fn imap_unordered<'a, T, R>(
        self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.imap_impl::<Plain<T, R>>(Target::Fn(f as usize), items, false)
    }
}

impl Pool {
    /// A pool of `processes` workers with the default settings (Python's `Pool(processes)`).
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            init: None,
            max_tasks: None,
            method: None,
            max_backlog: None,
        }
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

    /// Python's `apply`: runs `f(arg)` in a worker and waits for the result.
    pub fn apply<T, R>(&self, f: fn(T) -> R, arg: T) -> Result<R, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks()
            .collect_async::<Plain<T, R>, R>(Target::Fn(f as usize), vec![arg], single, true)?
            .get()
    }

    /// Python's `apply_async`: returns at once with an [`AsyncResult`].
    pub fn apply_async<T, R>(&self, f: fn(T) -> R, arg: T) -> Result<AsyncResult<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.tasks().collect_async::<Plain<T, R>, R>(
            Target::Fn(f as usize),
            vec![arg],
            single,
            false,
        )
    }

    /// `apply` for a fallible function: an `Err` becomes [`Error::Failed`].
    pub fn try_apply<T, R, E>(&self, f: fn(T) -> Result<R, E>, arg: T) -> Result<R, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.tasks()
            .collect_async::<Fallible<T, R, E>, R>(Target::Fn(f as usize), vec![arg], single, true)?
            .get()
    }

    /// `apply_async` for a fallible function.
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
        self.tasks().collect_async::<Fallible<T, R, E>, R>(
            Target::Fn(f as usize),
            vec![arg],
            single,
            false,
        )
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

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`]: yields each
/// result (`Err` for a failed chunk), reading the input lazily.
///
/// When the pool is terminated (or broken) while the iterator runs, it reads no more
/// input: it yields the results that had already come, then one `Err`
/// ([`Error::Terminated`], or the error that broke the pool), then ends.
pub struct IMap<'a, R> {
    inner: Arc<Inner>,
    job: Arc<IMapJob<R>>,
    id: u64,
    source: Chunks<'a>,
    exhausted: bool,
    /// The input was cut short by the job's abort: the iteration ends with its error.
    cut: bool,
    in_flight: usize,
    limit: usize,
    next_out: u64,
    current: std::vec::IntoIter<R>,
    finished: bool,
    spin: Spin,
}

impl<R> std::fmt::Debug for IMap<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("in_flight", &self.in_flight)
            .field("limit", &self.limit)
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

impl<R: Message + Send + 'static> IMap<'_, R> {
    /// Submits chunks up to the limit, waiting for room in the task queue until `deadline`:
    /// `Err(Timeout)` when it passed first (the chunk that did not fit is still the next).
    fn top_up(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        while !self.exhausted && self.in_flight < self.limit {
            match self.source.peek() {
                None => self.exhausted = true,
                Some(c) => {
                    if !self.job.submitted(c) {
                        // Aborted (terminate, a broken pool): submit nothing more, and end
                        // with the abort's error, not as if the input had ended.
                        self.exhausted = true;
                        self.cut = true;
                        return Ok(());
                    }
                    self.in_flight += 1;
                    let put = catch_unwind(AssertUnwindSafe(|| {
                        self.inner.put_next_blocking(&mut *self.source, deadline)
                    }));
                    match put {
                        Ok(Ok(())) => {}
                        Ok(Err(Error::Timeout)) => {
                            // Not submitted: it goes again on the next call.
                            self.job.unsubmitted(c);
                            self.in_flight -= 1;
                            return Err(Error::Timeout);
                        }
                        Ok(Err(e)) => self.job.answer(c, Err(e)),
                        Err(p) => {
                            // The items' `Serialize` panicked: the panic reaches the caller,
                            // and the chunk is an error in its place (nothing waits for it).
                            self.source.skip();
                            self.job.answer(c, Err(serialize_panicked(&*p)));
                            resume_unwind(p);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R, Error>> {
        loop {
            if let Some(x) = self.current.next() {
                return Some(Ok(x));
            }
            if self.finished {
                return None;
            }
            if on_pool_thread(self.inner.id()) {
                return Some(Err(Error::InCallback));
            }
            if let Err(e) = self.top_up(deadline) {
                return Some(Err(e));
            }
            if self.in_flight == 0 && !self.cut {
                self.finished = true;
                return None;
            }
            match self.job.next(self.next_out, deadline, &mut self.spin) {
                Next::Timeout => return Some(Err(Error::Timeout)),
                Next::Aborted(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Next::Chunk(r) => {
                    self.in_flight -= 1;
                    self.next_out += 1;
                    // A chunk came: it is returned now, and what did not fit by the deadline
                    // is submitted on the next call.
                    let _ = self.top_up(deadline);
                    match r {
                        Ok(v) => self.current = v.into_iter(),
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }

    /// The next result, waiting at most `timeout`: `Some(Err(Error::Timeout))` when none
    /// came in time (nothing is lost: call again), `None` at the end.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, Error>> {
        self.next_until(Instant::now().checked_add(timeout))
    }
}

impl<R: Message + Send + 'static> Iterator for IMap<'_, R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Result<R, Error>> {
        self.next_until(None)
    }
}

impl<R> Drop for IMap<'_, R> {
    fn drop(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.job.bar {
            bar.finish_and_clear();
        }
        self.inner.unregister(self.id);
    }
}
