//! [`AsyncResult`]: the handle on work submitted with `*_async`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::helpers::{lock, on_pool_thread, wait, wait_timeout};

type OnOk<R> = Box<dyn FnOnce(&R) + Send>;
type OnErr = Box<dyn FnOnce(&Error) + Send>;

struct State<R> {
    /// The value is decided (`decide`); `ready` comes once the callbacks ran (`publish`).
    decided: bool,
    /// A thread is running the callbacks, with the value taken out of the lock meanwhile.
    publishing: bool,
    ready: bool,
    successful: bool,
    value: Option<Result<R, Error>>,
    on_ok: Vec<OnOk<R>>,
    on_err: Vec<OnErr>,
    /// Threads waiting on `cv` (a notify without waiters is still a system call).
    waiters: u32,
    /// Tasks awaiting the result (`impl std::future::Future`), woken when it is ready.
    wakers: Vec<std::task::Waker>,
}

/// Where a job's outcome lands: shared by the job (which sets it, in the supervisor thread)
/// and the [`AsyncResult`] (which waits for it).
pub(crate) struct Outcome<R> {
    state: Mutex<State<R>>,
    cv: Condvar,
    /// The pool's id (see `crate::helpers::on_pool_thread`): waiting on one of its own threads
    /// is refused.
    pool: usize,
    /// Decided with callbacks to run: `publish` has work (without callbacks, `decide` makes
    /// the outcome ready itself, and `publish` takes no lock).
    to_publish: AtomicBool,
}

fn run_callback(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        eprintln!("mp-pool: a result callback panicked (ignored)");
    }
}

impl<R> Outcome<R> {
    pub(crate) fn new(pool: usize) -> Arc<Outcome<R>> {
        Arc::new(Outcome {
            state: Mutex::new(State {
                decided: false,
                publishing: false,
                ready: false,
                successful: false,
                value: None,
                on_ok: Vec::new(),
                on_err: Vec::new(),
                waiters: 0,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            pool,
            to_publish: AtomicBool::new(false),
        })
    }

    /// Decides and publishes the outcome at once (see [`decide`](Self::decide)).
    pub(crate) fn set(&self, value: Result<R, Error>) {
        if self.decide(value) {
            self.publish();
        }
    }

    /// Decides the outcome once (false, and `value` dropped, when it was decided already). With
    /// callbacks, it is not ready before [`publish`](Self::publish) ran them: the job calls
    /// this under its own lock, and the pool publishes once the job left its table. Without
    /// callbacks it is ready at once (nothing runs, so nothing can see the job still there).
    pub(crate) fn decide(&self, value: Result<R, Error>) -> bool {
        let mut st = lock(&self.state);
        if st.decided {
            return false;
        }
        st.decided = true;
        st.successful = value.is_ok();
        st.value = Some(value);
        if !st.on_ok.is_empty() || !st.on_err.is_empty() {
            // Release pairs with the Acquire load in `publish` (which then locks anyway).
            self.to_publish.store(true, Ordering::Release);
            return true;
        }
        st.ready = true;
        let waiters = st.waiters;
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        if waiters > 0 {
            self.cv.notify_all();
        }
        wakers.into_iter().for_each(std::task::Waker::wake);
        true
    }

    /// Runs the callbacks of a decided outcome, without holding its lock (other threads'
    /// `ready`, `successful` and timed `get` do not wait for them), then makes it ready, as
    /// Python does: `ready` and `get` come after the callbacks. Does nothing when not
    /// decided, already ready, or being published by another thread.
    pub(crate) fn publish(&self) {
        // Acquire pairs with the Release store in `decide`.
        if !self.to_publish.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&self.state);
        if st.ready || !st.decided || st.publishing {
            return;
        }
        st.publishing = true;
        let v = st.value.take();
        // Callbacks added while these run (from other threads) run in the next round.
        loop {
            let on_ok = std::mem::take(&mut st.on_ok);
            let on_err = std::mem::take(&mut st.on_err);
            if on_ok.is_empty() && on_err.is_empty() {
                break;
            }
            drop(st);
            match &v {
                Some(Ok(x)) => on_ok.into_iter().for_each(|f| run_callback(|| f(x))),
                Some(Err(e)) => on_err.into_iter().for_each(|f| run_callback(|| f(e))),
                None => {}
            }
            st = lock(&self.state);
        }
        st.value = v;
        st.publishing = false;
        st.ready = true;
        let waiters = st.waiters;
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        if waiters > 0 {
            self.cv.notify_all();
        }
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    pub(crate) fn is_ready(&self) -> bool {
        lock(&self.state).ready
    }
}

/// The result of work submitted with [`Pool::apply_async`](crate::Pool::apply_async),
/// [`map_async`](crate::Pool::map_async) and the like: Python's `AsyncResult`.
///
/// ```
/// use std::time::Duration;
/// fn double(x: u32) -> u32 { x * 2 }
///
/// let pool = mp_pool::Pool::new(2)?;
/// let r = pool.apply_async(double, 21)?;
/// r.wait();
/// assert!(r.ready());
/// assert!(r.successful()?);
/// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 42);
/// # Ok::<(), mp_pool::Error>(())
/// ```
///
/// The value is moved out by the first successful `get`; a second `get` is
/// [`Error::AlreadyTaken`].
///
/// An `AsyncResult` is also a [`std::future::Future`] with `Output = Result<R, Error>`: `.await`
/// it on any runtime (the pool's supervisor thread wakes the task; no thread is parked), and
/// the await moves the value out as `get` does. Dropping the awaiting task changes nothing.
pub struct AsyncResult<R> {
    outcome: Arc<Outcome<R>>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> std::future::Future for AsyncResult<R> {
    type Output = Result<R, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<R, Error>> {
        let mut st = lock(&self.outcome.state);
        if !st.ready {
            if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.wakers.push(cx.waker().clone());
            }
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(st.value.take().unwrap_or(Err(Error::AlreadyTaken)))
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(outcome: Arc<Outcome<R>>) -> AsyncResult<R> {
        AsyncResult { outcome }
    }

    /// Waits until ready or `deadline`; on one of the pool's own threads (a callback) it does
    /// not wait: nothing would be delivered meanwhile.
    fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, State<R>> {
        let mut st = lock(&self.outcome.state);
        if !st.ready && on_pool_thread(self.outcome.pool) {
            return st;
        }
        while !st.ready {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            st.waiters += 1;
            st = match deadline {
                None => wait(&self.outcome.cv, st),
                Some(d) => wait_timeout(&self.outcome.cv, st, d - now),
            };
            st.waiters -= 1;
        }
        st
    }

    fn take(&self, mut st: MutexGuard<'_, State<R>>) -> Result<R, Error> {
        if !st.ready {
            if on_pool_thread(self.outcome.pool) {
                return Err(Error::InCallback);
            }
            return Err(Error::Timeout);
        }
        st.value.take().unwrap_or(Err(Error::AlreadyTaken))
    }

    /// Waits for the result and returns it (or the task's error). In a callback of the same
    /// pool (on its own thread) a result that is not ready is [`Error::InCallback`], at once.
    pub fn get(&self) -> Result<R, Error> {
        self.take(self.wait_until(None))
    }

    /// Waits at most `timeout`; [`Error::Timeout`] when the result is not ready by then (the
    /// work goes on and a later `get` can still have it).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, Error> {
        self.take(self.wait_until(Instant::now().checked_add(timeout)))
    }

    /// Waits until the result is ready (in a callback of the same pool: returns at once).
    pub fn wait(&self) {
        drop(self.wait_until(None));
    }

    /// Waits at most `timeout`; true when the result is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout)).ready
    }

    /// True once the work has finished (successfully or not).
    pub fn ready(&self) -> bool {
        self.outcome.is_ready()
    }

    /// Whether the work succeeded; [`Error::NotReady`] before it finished (Python raises
    /// `ValueError` there).
    pub fn successful(&self) -> Result<bool, Error> {
        let st = lock(&self.outcome.state);
        if st.ready {
            Ok(st.successful)
        } else {
            Err(Error::NotReady)
        }
    }

    /// Python's `callback`: `f` runs in this (the parent) process with the result once it is
    /// there, before the result is [`ready`](Self::ready) and `get` returns; if the result is
    /// already there, it runs at once on this thread. It does not run when the work fails.
    /// It usually runs on the pool's supervisor thread (on the thread of `terminate` for
    /// work it cancels), after the work left the pool's books and with no lock held: other
    /// threads' `ready`, `successful` and timed `get` do not wait for it. Keep it short (the
    /// pool's results wait while it runs). It may submit work (`apply_async`, `map_async`),
    /// but a call that waits for this pool (a blocking `map` or `apply`, `get` on a result
    /// that is not ready, an `imap`'s `next`, `join`) would wait for the thread that runs it:
    /// there it fails at once with [`Error::InCallback`].
    pub fn on_success(self, f: impl FnOnce(&R) + Send + 'static) -> Self {
        let mut st = lock(&self.outcome.state);
        if st.ready {
            if let Some(Ok(v)) = &st.value {
                run_callback(|| f(v));
            }
        } else {
            st.on_ok.push(Box::new(f));
        }
        drop(st);
        self
    }

    /// Python's `error_callback`: `f` runs in the parent with the error when the work fails
    /// (for a map, with the first error), like [`on_success`](Self::on_success).
    pub fn on_error(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        let mut st = lock(&self.outcome.state);
        if st.ready {
            if let Some(Err(e)) = &st.value {
                run_callback(|| f(e));
            }
        } else {
            st.on_err.push(Box::new(f));
        }
        drop(st);
        self
    }
}
