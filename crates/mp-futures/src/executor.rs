//! [`ProcessPoolExecutor`]: a pending queue in this process, fed to an mp-pool `Pool`.
//!
//! Submitted work waits in `Sched::pending` (in this process) until it is handed to the pool
//! with `apply_async`, keeping at most `max_in_flight` tasks there (default: one more than the
//! workers, as Python's `EXTRA_QUEUED_CALLS`). Handing over first moves the future from
//! pending to running under its lock (`Core::set_running`), so a `cancel` either wins (the
//! task is dropped unrun) or sees it running (and refuses): cancellation of pending work is
//! exact.
//!
//! Whoever frees or finds room hands the next task over at once ([`Shared::fill`]): `submit`
//! on the caller's thread, and the pool's result callback (on its supervisor thread) the
//! moment a task completes, so that a worker's next task never waits for a third thread to
//! wake. The callbacks also push the task's id into `Sched::completed` and ring
//! `Shared::cv`; the executor's thread then takes the value (`AsyncResult::get`, ready right
//! after those callbacks) and completes the future, running its done callbacks there,
//! outside every lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use mp_core::Message;
use mp_pool::{AsyncResult, Pool, PoolBuilder};
use mp_process::StartMethod;

use crate::error::Error;
use crate::future::{lock, Core, Future};
use mp_core::util::{panic_message, unpoisoned};

type Submit<R> = Box<dyn FnOnce(&Pool) -> Result<AsyncResult<R>, mp_pool::Error> + Send>;

/// A task waiting in the executor.
trait Pending: Send {
    /// Hands the task to the pool (unless it was cancelled, then `None`): what to finish on
    /// the executor's thread once the pool's callback reports `id`, and whether it needs no
    /// callback (the hand-over failed: finishing reports that error).
    fn start(
        self: Box<Self>,
        pool: &Pool,
        id: u64,
        shared: &Arc<Shared>,
    ) -> Option<(Box<dyn Running>, bool)>;
    /// `shutdown(_, cancel_futures = true)`.
    fn cancel(self: Box<Self>);
}

/// A task in the pool.
trait Running: Send {
    /// Takes the outcome from the pool and completes the future.
    fn finish(self: Box<Self>);
}

struct Job<R> {
    core: Arc<Core<R>>,
    submit: Submit<R>,
}

struct InPool<R> {
    core: Arc<Core<R>>,
    result: AsyncResult<R>,
}

impl<R: Send + 'static> Pending for Job<R> {
    fn start(
        self: Box<Self>,
        pool: &Pool,
        id: u64,
        shared: &Arc<Shared>,
    ) -> Option<(Box<dyn Running>, bool)> {
        if !self.core.set_running() {
            return None; // cancelled while pending: never runs
        }
        let submit = self.submit;
        let err = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| submit(pool))) {
            Ok(Ok(result)) => {
                let (ok, err) = (shared.clone(), shared.clone());
                let result = result
                    .on_success(move |_| ok.completed(id))
                    .on_error(move |_| err.completed(id));
                let running = InPool {
                    core: self.core,
                    result,
                };
                return Some((Box::new(running), false));
            }
            Ok(Err(e)) => e,
            // The arguments' own `Serialize` panicked on this thread.
            Err(p) => mp_pool::Error::Unserializable {
                what: "arguments",
                message: panic_message(&*p),
            },
        };
        let failed = Failed {
            core: self.core,
            err: err.into(),
        };
        Some((Box::new(failed), true))
    }

    fn cancel(self: Box<Self>) {
        self.core.cancel();
    }
}

/// A task the pool refused: its future fails, on the executor's thread as any other.
struct Failed<R> {
    core: Arc<Core<R>>,
    err: Error,
}

impl<R: Send + 'static> Running for Failed<R> {
    fn finish(self: Box<Self>) {
        self.core.finish(Err(self.err));
    }
}

impl<R: Send + 'static> Running for InPool<R> {
    fn finish(self: Box<Self>) {
        let r = self.result.get().map_err(Error::from);
        self.core.finish(r);
    }
}

struct Sched {
    pending: VecDeque<Box<dyn Pending>>,
    /// Ids of tasks the pool reported done, for the executor's thread.
    completed: Vec<u64>,
    /// Tasks handed to the pool, by id, until the executor's thread finishes them.
    running: HashMap<u64, Box<dyn Running>>,
    /// Ids reported done before their hand-over registered them in `running` (a task can
    /// finish before `apply_async` returns).
    early: HashSet<u64>,
    /// Tasks handed over (or being handed over) whose completion was not reported yet.
    in_flight: usize,
    next_id: u64,
    shutdown: bool,
}

/// Shared by the executor handle, its thread and the pool's callbacks.
struct Shared {
    sched: Mutex<Sched>,
    cv: Condvar,
    manager: Arc<OnceLock<ThreadId>>,
    max_in_flight: usize,
    /// The pool, for whoever hands work over (the executor owns it).
    pool: Weak<Pool>,
}

impl Shared {
    /// The pool's callback: task `id` completed. Its slot is free at once, and the next
    /// pending task goes to the pool from this very thread.
    fn completed(self: &Arc<Self>, id: u64) {
        let mut st = lock(&self.sched);
        st.completed.push(id);
        st.in_flight = st.in_flight.saturating_sub(1);
        drop(st);
        self.cv.notify_all();
        self.fill();
    }

    /// Hands pending tasks to the pool while there is room. Never holds the lock while
    /// handing over: a task may complete, and its callback run, before `apply_async` returns.
    fn fill(self: &Arc<Self>) {
        {
            // Most calls find nothing to do: they return without touching the pool (so a
            // completion callback that runs while the executor is going away holds no
            // reference to it).
            let st = lock(&self.sched);
            if st.pending.is_empty() || st.in_flight >= self.max_in_flight {
                return;
            }
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        loop {
            let mut st = lock(&self.sched);
            if st.in_flight >= self.max_in_flight {
                return;
            }
            let Some(job) = st.pending.pop_front() else {
                return;
            };
            st.in_flight += 1;
            st.next_id += 1;
            let id = st.next_id;
            drop(st);
            let started = job.start(&pool, id, self);
            let mut st = lock(&self.sched);
            match started {
                None => st.in_flight -= 1, // cancelled while pending
                Some((r, failed)) => {
                    st.running.insert(id, r);
                    if failed || st.early.remove(&id) {
                        if failed {
                            st.in_flight -= 1;
                        }
                        st.completed.push(id);
                        drop(st);
                        self.cv.notify_all();
                        continue;
                    }
                }
            }
            if st.shutdown && st.pending.is_empty() {
                drop(st);
                self.cv.notify_all();
            }
        }
    }

    fn on_manager(&self) -> bool {
        self.manager.get() == Some(&std::thread::current().id())
    }
}

/// The executor's thread: completes the futures of finished tasks (their done callbacks run
/// here); after `shutdown`, once nothing is pending nor running, closes and joins the pool.
fn manage(shared: Arc<Shared>, pool: Arc<Pool>) {
    let mut st = lock(&shared.sched);
    loop {
        if !st.completed.is_empty() {
            let ids = std::mem::take(&mut st.completed);
            let mut ready = Vec::with_capacity(ids.len());
            for id in ids {
                match st.running.remove(&id) {
                    Some(r) => ready.push(r),
                    None => {
                        st.early.insert(id);
                    }
                }
            }
            drop(st);
            for r in ready {
                r.finish();
            }
            st = lock(&shared.sched);
            continue;
        }
        // `early` too: a task reported done before its hand-over registered it is still to
        // be finished here (the hand-over pushes its id again once it registers it).
        if st.shutdown
            && st.pending.is_empty()
            && st.in_flight == 0
            && st.running.is_empty()
            && st.early.is_empty()
        {
            break;
        }
        st = unpoisoned(shared.cv.wait(st));
    }
    drop(st);
    pool.close();
    let _ = pool.join();
}

/// Builds a [`ProcessPoolExecutor`]: Python's `ProcessPoolExecutor(max_workers, mp_context,
/// initializer, initargs, max_tasks_per_child)`.
///
/// ```
/// use mp_futures::ProcessPoolExecutor;
/// use mp_process::StartMethod;
/// fn setup(greeting: String) { assert_eq!(greeting, "hi"); }
/// fn square(x: u64) -> u64 { x * x }
///
/// let ex = ProcessPoolExecutor::builder()
///     .max_workers(2)
///     .initializer(setup, "hi".to_string())
///     .max_tasks_per_child(100)
///     .start_method(StartMethod::Fork)
///     .build()?;
/// assert_eq!(ex.submit(square, 7)?.result(None)?, 49);
/// # Ok::<(), mp_futures::Error>(())
/// ```
pub struct ExecutorBuilder {
    pool: PoolBuilder,
    workers: Option<usize>,
    in_flight: Option<usize>,
}

impl std::fmt::Debug for ExecutorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorBuilder")
            .field("pool", &self.pool)
            .field("max_in_flight", &self.in_flight)
            .finish()
    }
}

impl ExecutorBuilder {
    /// The number of worker processes (Python's `max_workers`; default
    /// [`mp_process::cpu_count`]). 0 is [`Error::Config`].
    pub fn max_workers(mut self, n: usize) -> Self {
        self.pool = self.pool.processes(n);
        self.workers = Some(n);
        self
    }

    /// A function every worker runs once, with its own copy of `args`, before its first task
    /// (Python's `initializer`, `initargs`); see `mp_pool::PoolBuilder::initializer` for
    /// what happens when it fails (3 failures in a row break the executor's pool: every
    /// later future fails with that error).
    pub fn initializer<I: Message + Send + Sync + 'static>(mut self, f: fn(I), args: I) -> Self {
        self.pool = self.pool.initializer(f, args);
        self
    }

    /// Each worker is replaced by a fresh one after `n` tasks (Python's
    /// `max_tasks_per_child`); default: no limit. 0 is [`Error::Config`].
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.pool = self.pool.max_tasks_per_child(n);
        self
    }

    /// The workers' start method (Python's `mp_context`; default
    /// [`mp_process::get_start_method`]). Spawn and forkserver need `mp::init()` first
    /// thing in `main`.
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.pool = self.pool.start_method(m);
        self
    }

    /// How many tasks are handed to the pool at once (default: one more than the workers,
    /// as Python's executor). The rest waits in this process, where [`Future::cancel`] can
    /// still stop it; a task handed over is [`running`](Future::running) and can no longer be
    /// cancelled. A larger value keeps the workers busier between short tasks, at the cost of
    /// more futures that cannot be cancelled. 0 is [`Error::Config`].
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(n);
        self
    }

    /// Starts the workers and the executor's thread.
    pub fn build(self) -> Result<ProcessPoolExecutor, Error> {
        if self.in_flight == Some(0) {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        if self.workers == Some(0) {
            return Err(Error::Config("max_workers must be at least 1".into()));
        }
        let pool = Arc::new(self.pool.build()?);
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched {
                pending: VecDeque::new(),
                completed: Vec::new(),
                running: HashMap::new(),
                early: HashSet::new(),
                in_flight: 0,
                next_id: 0,
                shutdown: false,
            }),
            cv: Condvar::new(),
            manager: Arc::new(OnceLock::new()),
            max_in_flight: self.in_flight.unwrap_or_else(|| pool.processes() + 1),
            pool: Arc::downgrade(&pool),
        });
        let (s, p) = (shared.clone(), pool.clone());
        let thread = std::thread::Builder::new()
            .name("mp-futures-executor".into())
            .spawn(move || manage(s, p))
            .map_err(|e| {
                Error::Pool(Arc::new(mp_pool::Error::Start(format!(
                    "the executor's thread: {e}"
                ))))
            })?;
        let _ = shared.manager.set(thread.thread().id());
        Ok(ProcessPoolExecutor {
            shared,
            pool,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// Python's `concurrent.futures.ProcessPoolExecutor`: worker processes that run submitted
/// calls and hand back [`Future`]s.
///
/// See the [crate documentation](crate) for a tour. Dropping the executor is
/// `shutdown(true, false)`, what leaving Python's `with ProcessPoolExecutor() as ex:` block
/// does: it waits for the submitted work.
pub struct ProcessPoolExecutor {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared.sched);
        f.debug_struct("ProcessPoolExecutor")
            .field("max_workers", &self.pool.processes())
            .field("pending", &st.pending.len())
            .field("shutdown", &st.shutdown)
            .finish()
    }
}

impl ProcessPoolExecutor {
    /// An executor with `max_workers` workers and the default settings (Python's
    /// `ProcessPoolExecutor(max_workers)`); 0 is [`Error::Config`].
    pub fn new(max_workers: usize) -> Result<ProcessPoolExecutor, Error> {
        ProcessPoolExecutor::builder()
            .max_workers(max_workers)
            .build()
    }

    /// A builder for the other settings.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder {
            pool: Pool::builder(),
            workers: None,
            in_flight: None,
        }
    }

    /// The number of worker processes.
    pub fn max_workers(&self) -> usize {
        self.pool.processes()
    }

    /// The pids of the live workers now (they change when a worker is replaced).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool.worker_pids()
    }

    fn push<R: Send + 'static>(&self, submit: Submit<R>) -> Result<Future<R>, Error> {
        let core = Core::new(self.shared.manager.clone());
        let mut st = lock(&self.shared.sched);
        if st.shutdown {
            return Err(Error::Shutdown);
        }
        st.pending.push_back(Box::new(Job {
            core: core.clone(),
            submit,
        }));
        drop(st);
        self.shared.fill();
        Ok(Future::from_core(core))
    }

    /// Python's `submit(fn, x)`: schedules `f(arg)` and returns its [`Future`] at once.
    /// `f` is a plain `fn` (a closure that captures nothing coerces to one); `arg` and the
    /// result are messages (several arguments: a tuple). [`Error::Shutdown`] after
    /// [`shutdown`](Self::shutdown). A panic in `f` fails the future with
    /// [`Error::Panicked`].
    pub fn submit<T, R>(&self, f: fn(T) -> R, arg: T) -> Result<Future<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.push(Box::new(move |pool: &Pool| pool.apply_async(f, arg)))
    }

    /// [`submit`](Self::submit) for a fallible function: an `Err` fails the future with
    /// [`Error::Failed`] (its `Display`).
    pub fn try_submit<T, R, E>(&self, f: fn(T) -> Result<R, E>, arg: T) -> Result<Future<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.push(Box::new(move |pool: &Pool| pool.try_apply_async(f, arg)))
    }

    /// Python's `map(fn, iterable, timeout)`: submits `f(item)` for every item now, and
    /// returns an iterator of the results in input order. `timeout` (from this call; `None`:
    /// no limit) bounds the whole iteration: a result not there by then yields one
    /// `Err(Error::Timeout)`, and the iterator cancels what it has not yielded and ends, as
    /// Python's does. A failed task yields its `Err` in its place and iteration goes on
    /// (`collect::<Result<Vec<_>, _>>()` stops at the first, as Python's `map` raises it).
    /// Dropping the iterator cancels the futures it has not yielded (those still pending).
    pub fn map<T, R>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Map<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        let deadline = timeout.into().and_then(|t| Instant::now().checked_add(t));
        let mut m = Map {
            futures: VecDeque::new(),
            deadline,
        };
        for x in items {
            m.futures.push_back(self.submit(f, x)?); // on error, `m`'s drop cancels the rest
        }
        Ok(m)
    }

    /// Python's `shutdown(wait, cancel_futures)`: no new work is accepted
    /// ([`Error::Shutdown`]). With `cancel_futures`, the futures still pending (not handed to
    /// the pool) are cancelled now, their done callbacks running on this thread; the others
    /// run to the end. With `wait`, returns once all the work is done and the workers have
    /// exited (a task that never ends makes it wait forever, as in Python); without, at once,
    /// and the executor's thread closes the pool when the work is done. Called again, or
    /// from a done callback (where it cannot wait for the thread running it), it does what
    /// is left to do.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        let mut st = lock(&self.shared.sched);
        st.shutdown = true;
        let cancelled: Vec<_> = if cancel_futures {
            st.pending.drain(..).collect()
        } else {
            Vec::new()
        };
        drop(st);
        self.shared.cv.notify_all();
        for job in cancelled {
            job.cancel();
        }
        if wait && !self.shared.on_manager() {
            if let Some(h) = lock(&self.thread).take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for ProcessPoolExecutor {
    /// `shutdown(true, false)`, as leaving Python's `with` block: waits for the work.
    fn drop(&mut self) {
        self.shutdown(true, false);
    }
}

/// The iterator of [`ProcessPoolExecutor::map`]: each result in input order.
pub struct Map<R> {
    futures: VecDeque<Future<R>>,
    deadline: Option<Instant>,
}

impl<R> std::fmt::Debug for Map<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("left", &self.futures.len())
            .finish()
    }
}

impl<R> Map<R> {
    fn cancel_rest(&mut self) {
        for f in self.futures.drain(..) {
            f.cancel();
        }
    }
}

impl<R> Iterator for Map<R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let f = self.futures.pop_front()?;
        let timeout = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        match f.take(timeout) {
            Err(Error::Timeout) => {
                f.cancel();
                self.cancel_rest();
                Some(Err(Error::Timeout))
            }
            r => Some(r),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.futures.len()))
    }
}

impl<R> Drop for Map<R> {
    fn drop(&mut self) {
        self.cancel_rest();
    }
}
