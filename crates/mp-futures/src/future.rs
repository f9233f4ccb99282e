//! [`Future`], and the free functions [`as_completed`] and [`wait`].
//!
//! A future's state lives in a `Core` behind a mutex: `Pending` (in the executor's queue),
//! `Running` (handed to the pool), then one of `Ok`, `Err`, `Cancelled`. Whoever moves it to
//! a final state (the executor's thread, or the thread of `cancel`/`shutdown`) takes the done
//! callbacks and the registered waiters out under the lock, releases it, then wakes the
//! waiters and runs the callbacks: no callback runs under a lock.
//!
//! Lock order: a `Core`'s lock may be taken before a `Waiter`'s only by `register` (which
//! never takes the waiter's lock under it: it returns what the caller pushes afterwards), so
//! the two are never held in opposite orders.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::error::Error;
use mp_core::util::unpoisoned;

type Callback<R> = Box<dyn FnOnce(&Future<R>) + Send>;

pub(crate) use mp_core::util::lock_unpoisoned as lock;

fn run_callback(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        eprintln!("mp-futures: a done callback panicked (ignored)");
    }
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    // A timeout too large for the clock waits without a deadline.
    timeout.and_then(|t| Instant::now().checked_add(t))
}

enum Phase<R> {
    Pending,
    Running,
    /// `None` once [`Future::take`] moved the value out.
    Ok(Option<R>),
    Err(Error),
    Cancelled,
}

impl<R> Phase<R> {
    fn done(&self) -> bool {
        matches!(self, Phase::Ok(_) | Phase::Err(_) | Phase::Cancelled)
    }
}

struct State<R> {
    phase: Phase<R>,
    callbacks: Vec<Callback<R>>,
    /// `wait` / `as_completed` calls watching this future, with its index in their list.
    waiters: Vec<(Arc<Waiter>, usize)>,
    /// Threads sleeping on `cv` (a notify without sleepers is still a system call).
    sleepers: u32,
    /// Tasks awaiting the future (`impl std::future::Future`), woken when it is done.
    wakers: Vec<std::task::Waker>,
}

/// The state shared by a [`Future`]'s handles and the executor.
pub(crate) struct Core<R> {
    state: Mutex<State<R>>,
    cv: Condvar,
    /// The executor's thread (which runs the done callbacks): waiting there for an unfinished
    /// future is refused with [`Error::InCallback`].
    manager: Arc<OnceLock<ThreadId>>,
}

impl<R> Core<R> {
    pub(crate) fn new(manager: Arc<OnceLock<ThreadId>>) -> Arc<Core<R>> {
        Arc::new(Core {
            state: Mutex::new(State {
                phase: Phase::Pending,
                callbacks: Vec::new(),
                waiters: Vec::new(),
                sleepers: 0,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            manager,
        })
    }

    /// Pending -> Running (Python's `set_running_or_notify_cancel`); false when the future
    /// was cancelled meanwhile: then it must not run.
    pub(crate) fn set_running(&self) -> bool {
        let mut st = lock(&self.state);
        match st.phase {
            Phase::Pending => {
                st.phase = Phase::Running;
                true
            }
            _ => false,
        }
    }

    /// The final outcome of a future that was not cancelled (a second call is ignored).
    pub(crate) fn finish(self: &Arc<Self>, r: Result<R, Error>) {
        let st = lock(&self.state);
        if st.phase.done() {
            return;
        }
        let phase = match r {
            Ok(v) => Phase::Ok(Some(v)),
            Err(e) => Phase::Err(e),
        };
        self.complete(st, phase);
    }

    /// Cancels a pending future (true also when it was cancelled already).
    pub(crate) fn cancel(self: &Arc<Self>) -> bool {
        let st = lock(&self.state);
        match st.phase {
            Phase::Pending => {
                self.complete(st, Phase::Cancelled);
                true
            }
            Phase::Cancelled => true,
            _ => false,
        }
    }

    /// Sets the final phase, then, with the lock released, wakes the waiters and runs the
    /// done callbacks on this thread.
    fn complete(self: &Arc<Self>, mut st: MutexGuard<'_, State<R>>, phase: Phase<R>) {
        let failed = matches!(phase, Phase::Err(_));
        st.phase = phase;
        let callbacks = std::mem::take(&mut st.callbacks);
        let waiters = std::mem::take(&mut st.waiters);
        let wakers = std::mem::take(&mut st.wakers);
        let sleepers = st.sleepers;
        drop(st);
        if sleepers > 0 {
            self.cv.notify_all();
        }
        for w in wakers {
            w.wake();
        }
        for (w, i) in waiters {
            w.notify(i, failed);
        }
        if !callbacks.is_empty() {
            let fut = Future { core: self.clone() };
            for cb in callbacks {
                run_callback(|| cb(&fut));
            }
        }
    }

    /// Waits until done or `deadline` (on the executor's thread, does not wait).
    fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, State<R>> {
        let mut st = lock(&self.state);
        if !st.phase.done() && self.on_manager() {
            return st;
        }
        while !st.phase.done() {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            st.sleepers += 1;
            st = match deadline {
                None => unpoisoned(self.cv.wait(st)),
                Some(d) => {
                    self.cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.sleepers -= 1;
        }
        st
    }

    fn on_manager(&self) -> bool {
        self.manager.get() == Some(&std::thread::current().id())
    }

    fn not_done_error(&self) -> Error {
        if self.on_manager() {
            Error::InCallback
        } else {
            Error::Timeout
        }
    }

    /// Adds `w` (at index `i`): true when the future is done already (not added; the caller
    /// notifies `w` itself, outside this lock), with whether it failed.
    fn register(&self, w: &Arc<Waiter>, i: usize) -> Option<bool> {
        let mut st = lock(&self.state);
        if st.phase.done() {
            return Some(matches!(st.phase, Phase::Err(_)));
        }
        st.waiters.push((w.clone(), i));
        None
    }

    fn unregister(&self, w: &Arc<Waiter>) {
        lock(&self.state)
            .waiters
            .retain(|(x, _)| !Arc::ptr_eq(x, w));
    }
}

/// The result of work submitted to a [`ProcessPoolExecutor`](crate::ProcessPoolExecutor):
/// Python's `concurrent.futures.Future`.
///
/// A future is *pending* (waiting in the executor, in this process), then *running* (handed
/// to the pool: a worker has it or is about to take it), then *done*: with a value, with an
/// error, or cancelled. Handles are cheap to clone and all see the same future.
///
/// ```
/// use std::time::Duration;
/// use mp_futures::ProcessPoolExecutor;
/// fn double(x: u32) -> u32 { x * 2 }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let f = ex.submit(double, 21)?;
/// assert_eq!(f.result(Duration::from_secs(10))?, 42); // a timeout, or None: no limit
/// assert!(f.done() && !f.cancelled());
/// assert!(f.error(None)?.is_none());
/// assert_eq!(f.take(None)?, 42); // moves the value out (no `Clone` needed)
/// # Ok::<(), mp_futures::Error>(())
/// ```
///
/// `Future<R>` is also a [`std::future::Future`] with `Output = Result<R, Error>`, as
/// [`take`](Self::take): `fut.await` (or `(&mut fut).await`, or a clone's) on any runtime,
/// with no thread parked: the executor's thread wakes the awaiting task when the future is
/// done.
pub struct Future<R> {
    core: Arc<Core<R>>,
}

impl<R> Clone for Future<R> {
    fn clone(&self) -> Self {
        Future {
            core: self.core.clone(),
        }
    }
}

impl<R> std::fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match lock(&self.core.state).phase {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Ok(_) => "finished",
            Phase::Err(_) => "failed",
            Phase::Cancelled => "cancelled",
        };
        f.debug_struct("Future").field("state", &state).finish()
    }
}

impl<R> Future<R> {
    pub(crate) fn from_core(core: Arc<Core<R>>) -> Future<R> {
        Future { core }
    }

    fn key(&self) -> usize {
        Arc::as_ptr(&self.core) as *const () as usize
    }

    /// Python's `cancel`: a pending future (not yet handed to the pool) is cancelled, never
    /// runs, and its done callbacks run now, on this thread: true. A running or finished one
    /// is not (false), as in Python. True again for a future already cancelled.
    pub fn cancel(&self) -> bool {
        self.core.cancel()
    }

    /// True when the future was cancelled.
    pub fn cancelled(&self) -> bool {
        matches!(lock(&self.core.state).phase, Phase::Cancelled)
    }

    /// True while the task is handed to the pool and not finished: it can no longer be
    /// cancelled.
    pub fn running(&self) -> bool {
        matches!(lock(&self.core.state).phase, Phase::Running)
    }

    /// True once the future finished, failed or was cancelled.
    pub fn done(&self) -> bool {
        lock(&self.core.state).phase.done()
    }

    /// Python's `result(timeout)`: waits (at most `timeout`; `None`: no limit) and returns a
    /// copy of the value, or the task's error. [`Error::Timeout`] when not done in time (the
    /// work goes on), [`Error::Cancelled`] for a cancelled future, [`Error::AlreadyTaken`]
    /// after [`take`](Self::take). Every call gives the value again, as in Python; for an
    /// `R` that is not `Clone`, see [`take`](Self::take).
    pub fn result(&self, timeout: impl Into<Option<Duration>>) -> Result<R, Error>
    where
        R: Clone,
    {
        let st = self.core.wait_until(deadline(timeout.into()));
        match &st.phase {
            Phase::Ok(Some(v)) => Ok(v.clone()),
            Phase::Ok(None) => Err(Error::AlreadyTaken),
            Phase::Err(e) => Err(e.clone()),
            Phase::Cancelled => Err(Error::Cancelled),
            Phase::Pending | Phase::Running => Err(self.core.not_done_error()),
        }
    }

    /// [`result`](Self::result) that moves the value out: a later `result` or `take` is
    /// [`Error::AlreadyTaken`] (errors stay readable).
    pub fn take(&self, timeout: impl Into<Option<Duration>>) -> Result<R, Error> {
        let mut st = self.core.wait_until(deadline(timeout.into()));
        match &mut st.phase {
            Phase::Ok(v) => v.take().ok_or(Error::AlreadyTaken),
            Phase::Err(e) => Err(e.clone()),
            Phase::Cancelled => Err(Error::Cancelled),
            Phase::Pending | Phase::Running => Err(self.core.not_done_error()),
        }
    }

    /// Python's `exception(timeout)`: waits like [`result`](Self::result), then `Ok(None)`
    /// when the task succeeded and `Ok(Some(e))` with the task's error when it failed;
    /// `Err(Error::Timeout)` when not done in time, `Err(Error::Cancelled)` when cancelled
    /// (Python raises both there).
    pub fn error(&self, timeout: impl Into<Option<Duration>>) -> Result<Option<Error>, Error> {
        let st = self.core.wait_until(deadline(timeout.into()));
        match &st.phase {
            Phase::Ok(_) => Ok(None),
            Phase::Err(e) => Ok(Some(e.clone())),
            Phase::Cancelled => Err(Error::Cancelled),
            Phase::Pending | Phase::Running => Err(self.core.not_done_error()),
        }
    }

    /// Python's `add_done_callback`: `f` runs once with the future when it is done (finished,
    /// failed or cancelled); at once, on this thread, if it is done already. Otherwise it
    /// runs on the thread that completes the future: the executor's thread, or the thread of
    /// [`cancel`](Self::cancel) / `shutdown(_, true)`. It runs with no lock held: it may call
    /// `result`, `done` or `submit`. A panic in it is caught and ignored (Python logs it).
    /// Waiting there for *another* unfinished future fails at once with
    /// [`Error::InCallback`] (the executor's thread is the one that would finish it).
    pub fn add_done_callback(&self, f: impl FnOnce(&Future<R>) + Send + 'static) {
        let mut st = lock(&self.core.state);
        if st.phase.done() {
            drop(st);
            run_callback(|| f(self));
        } else {
            st.callbacks.push(Box::new(f));
        }
    }
}

/// Awaiting a future moves its value out, as [`Future::take`]: a second `.await` (of a clone)
/// is [`Error::AlreadyTaken`]; a cancelled one is [`Error::Cancelled`]. Dropping the awaiting
/// task changes nothing: the work goes on and its value stays for `result` or `take`.
impl<R> std::future::Future for Future<R> {
    type Output = Result<R, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<R, Error>> {
        let mut st = lock(&self.core.state);
        let r = match &mut st.phase {
            Phase::Ok(v) => v.take().ok_or(Error::AlreadyTaken),
            Phase::Err(e) => Err(e.clone()),
            Phase::Cancelled => Err(Error::Cancelled),
            Phase::Pending | Phase::Running => {
                if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.wakers.push(cx.waker().clone());
                }
                return std::task::Poll::Pending;
            }
        };
        std::task::Poll::Ready(r)
    }
}

/// What `wait` and `as_completed` sleep on: the indices of the futures done so far.
pub(crate) struct Waiter {
    st: Mutex<WaiterState>,
    cv: Condvar,
}

struct WaiterState {
    done: Vec<usize>,
    failed: bool,
}

impl Waiter {
    fn new() -> Arc<Waiter> {
        Arc::new(Waiter {
            st: Mutex::new(WaiterState {
                done: Vec::new(),
                failed: false,
            }),
            cv: Condvar::new(),
        })
    }

    fn notify(&self, i: usize, failed: bool) {
        let mut st = lock(&self.st);
        st.done.push(i);
        st.failed |= failed;
        drop(st);
        self.cv.notify_all();
    }

    /// Waits on `cv` until `deadline`; false when it passed.
    fn sleep<'a>(
        &'a self,
        st: MutexGuard<'a, WaiterState>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, WaiterState>, bool) {
        match deadline {
            None => (unpoisoned(self.cv.wait(st)), true),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (st, false);
                }
                let st = self
                    .cv
                    .wait_timeout(st, d - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                (st, true)
            }
        }
    }
}

/// The futures once, in their first order (Python takes a set).
fn distinct<'a, R>(futures: impl IntoIterator<Item = &'a Future<R>>) -> Vec<&'a Future<R>>
where
    R: 'a,
{
    let mut seen = HashSet::new();
    futures
        .into_iter()
        .filter(|f| seen.insert(f.key()))
        .collect()
}

fn watch<R>(futs: &[&Future<R>]) -> Arc<Waiter> {
    let w = Waiter::new();
    for (i, f) in futs.iter().enumerate() {
        if let Some(failed) = f.core.register(&w, i) {
            w.notify(i, failed);
        }
    }
    w
}

/// True on the thread of an executor one of `futs` belongs to (in a done callback): waiting
/// there would wait for the thread that completes them.
fn in_callback<R>(futs: &[&Future<R>]) -> bool {
    futs.iter().any(|f| f.core.on_manager())
}

fn unwatch<R>(futs: &[&Future<R>], w: &Arc<Waiter>) {
    for f in futs {
        f.core.unregister(w);
    }
}

/// When [`wait`] returns: Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`, `ALL_COMPLETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future is done (finished, failed or cancelled).
    FirstCompleted,
    /// As soon as any future fails with an error (a cancelled one does not count), or when
    /// all are done.
    FirstException,
    /// When all the futures are done.
    AllCompleted,
}

/// Python's `concurrent.futures.FIRST_COMPLETED`.
pub const FIRST_COMPLETED: ReturnWhen = ReturnWhen::FirstCompleted;
/// Python's `concurrent.futures.FIRST_EXCEPTION`.
pub const FIRST_EXCEPTION: ReturnWhen = ReturnWhen::FirstException;
/// Python's `concurrent.futures.ALL_COMPLETED`.
pub const ALL_COMPLETED: ReturnWhen = ReturnWhen::AllCompleted;

/// What [`wait`] returns (Python's `DoneAndNotDoneFutures`): the futures done when it
/// returned and the others, each in the order given (duplicates once).
#[derive(Debug)]
pub struct DoneAndNotDone<'a, R> {
    /// The futures that were done.
    pub done: Vec<&'a Future<R>>,
    /// The futures that were not.
    pub not_done: Vec<&'a Future<R>>,
}

/// Python's `concurrent.futures.wait(fs, timeout, return_when)`: waits (at most `timeout`;
/// `None`: no limit) until `return_when` holds, then returns the futures done and not done.
/// Running out of time is not an error (as in Python): look at `not_done`. In a done
/// callback, on the executor's thread, it does not wait (that thread completes the futures).
///
/// ```
/// use std::time::Duration;
/// use mp_futures::{wait, ProcessPoolExecutor, ALL_COMPLETED};
/// fn double(x: u32) -> u32 { x * 2 }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let fs: Vec<_> = (0..4).map(|x| ex.submit(double, x)).collect::<Result<_, _>>()?;
/// let r = wait(&fs, Duration::from_secs(30), ALL_COMPLETED);
/// assert_eq!((r.done.len(), r.not_done.len()), (4, 0));
/// # Ok::<(), mp_futures::Error>(())
/// ```
pub fn wait<'a, R: 'a>(
    futures: impl IntoIterator<Item = &'a Future<R>>,
    timeout: impl Into<Option<Duration>>,
    return_when: ReturnWhen,
) -> DoneAndNotDone<'a, R> {
    let futs = distinct(futures);
    let deadline = deadline(timeout.into());
    let w = watch(&futs);
    let mut st = lock(&w.st);
    loop {
        let n = st.done.len();
        let enough = match return_when {
            ReturnWhen::FirstCompleted => n >= 1 || futs.is_empty(),
            ReturnWhen::FirstException => st.failed || n == futs.len(),
            ReturnWhen::AllCompleted => n == futs.len(),
        };
        if enough || in_callback(&futs) {
            break;
        }
        let (s, more) = w.sleep(st, deadline);
        st = s;
        if !more {
            break;
        }
    }
    drop(st);
    unwatch(&futs, &w);
    let (done, not_done) = futs.into_iter().partition(|f| f.done());
    DoneAndNotDone { done, not_done }
}

/// Python's `concurrent.futures.as_completed(fs, timeout)`: an iterator over the futures as
/// they complete (those done already first), each once. When the futures are not all done
/// by the deadline (`timeout` from this call; `None`: no limit), it yields one
/// `Err(Error::Timeout)` and ends (Python raises `TimeoutError`); the futures go on. In a
/// done callback, on the executor's thread, it yields `Err(Error::InCallback)` instead of
/// waiting (that thread completes the futures).
///
/// ```
/// use mp_futures::{as_completed, ProcessPoolExecutor};
/// fn double(x: u32) -> u32 { x * 2 }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let fs: Vec<_> = (0..4).map(|x| ex.submit(double, x)).collect::<Result<_, _>>()?;
/// let mut total = 0;
/// for f in as_completed(&fs, None) {
///     total += f?.result(None)?;
/// }
/// assert_eq!(total, 12);
/// # Ok::<(), mp_futures::Error>(())
/// ```
pub fn as_completed<'a, R: 'a>(
    futures: impl IntoIterator<Item = &'a Future<R>>,
    timeout: impl Into<Option<Duration>>,
) -> AsCompleted<'a, R> {
    let futs = distinct(futures);
    let deadline = deadline(timeout.into());
    let waiter = watch(&futs);
    AsCompleted {
        futs,
        waiter,
        next: 0,
        deadline,
        ended: false,
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<'a, R> {
    futs: Vec<&'a Future<R>>,
    waiter: Arc<Waiter>,
    /// The next index into the waiter's `done` list to yield.
    next: usize,
    deadline: Option<Instant>,
    ended: bool,
}

impl<R> std::fmt::Debug for AsCompleted<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("futures", &self.futs.len())
            .field("yielded", &self.next)
            .finish()
    }
}

impl<'a, R> Iterator for AsCompleted<'a, R> {
    type Item = Result<&'a Future<R>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended || self.next >= self.futs.len() {
            return None;
        }
        let mut st = lock(&self.waiter.st);
        loop {
            if let Some(&i) = st.done.get(self.next) {
                self.next += 1;
                return Some(Ok(self.futs[i]));
            }
            if in_callback(&self.futs) {
                self.ended = true;
                return Some(Err(Error::InCallback));
            }
            let (s, more) = self.waiter.sleep(st, self.deadline);
            st = s;
            if !more && st.done.len() <= self.next {
                self.ended = true;
                return Some(Err(Error::Timeout));
            }
        }
    }
}

impl<R> Drop for AsCompleted<'_, R> {
    fn drop(&mut self) {
        unwatch(&self.futs, &self.waiter);
    }
}
