//! [`Tasks`]: the settings of one call, and the verbs (`map`, `imap`, `starmap`, ...).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use mp_core::Message;

use super::feed::{serialize_panicked, ChunkHead, ChunkIter, SliceChunks};
use super::{default_chunksize, offset_of, IMap, Pool, Target};
use crate::error::Error;
use crate::helpers::on_pool_thread;
use crate::job::{CollectJob, IMapJob, Job};
use crate::result::{AsyncResult, Outcome};
use crate::slot::nanos;
use crate::track::Progress;
use crate::worker::{self, Call, Fallible, Plain, RunChunk, StarPair};

/// The one result of an `apply`.
fn single<R>(v: Vec<R>) -> Result<R, Error> {
    v.into_iter().next().ok_or_else(|| Error::Unserializable {
        what: "result",
        message: "the task's result is missing".into(),
    })
}

/// Settings for the next call on a pool: the chunksize, how many chunks an `imap` keeps in
/// flight, a task timeout, a [`Progress`] tracker, and (with the `progress` feature) a
/// progress bar. Made by [`Pool::chunksize`], [`Pool::in_flight`], [`Pool::timeout`],
/// [`Pool::track`] and (feature `progress`) `Pool::progress`; it has the pool's methods.
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
    timeout: Option<Duration>,
    tracker: Option<&'p Progress>,
    #[cfg(feature = "progress")]
    progress: bool,
}

impl<'p> Tasks<'p> {
    pub(super) fn new(pool: &'p Pool) -> Tasks<'p> {
        Tasks {
            pool,
            chunksize: None,
            in_flight: None,
            timeout: None,
            tracker: None,
            #[cfg(feature = "progress")]
            progress: false,
        }
    }

    /// Reports this call's progress to `progress` (see [`Progress`]): its tasks count in
    /// the tracker's total when submitted, and in `done` as they finish. Give one tracker
    /// to several calls (a batch of `apply_async`) to follow them together.
    pub fn track(mut self, progress: &'p Progress) -> Self {
        self.tracker = Some(progress);
        self
    }

    /// The timeout of each task of this call (one call of the function on one item),
    /// instead of the pool's [`task_timeout`](crate::PoolBuilder::task_timeout): a task
    /// that runs longer is stopped (its worker is killed with SIGKILL and replaced) and its
    /// chunk fails with [`Error::TaskTimeout`]; the other tasks go on. Zero is an error.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = mp_pool::Pool::new(2)?;
    /// let naps: Vec<_> = pool
    ///     .timeout(Duration::from_millis(500))
    ///     .imap_unordered(nap, [1, 60_000, 2])?
    ///     .collect();
    /// assert_eq!(naps.iter().filter(|r| r.is_ok()).count(), 2);
    /// assert!(naps.iter().any(|r| matches!(r, Err(mp_pool::Error::TaskTimeout { .. }))));
    /// # Ok::<(), mp_pool::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The task timeout of this call in nanoseconds (0: none).
    fn timeout_ns(&self) -> Result<u64, Error> {
        match self.timeout.or(self.pool.inner.cfg.task_timeout) {
            Some(Duration::ZERO) => Err(Error::Config(
                "a task timeout must be longer than zero".into(),
            )),
            Some(t) => Ok(nanos(t).max(1)),
            None => Ok(0),
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

    /// Submits task kind `C` on `items` as one job whose outcome is `finish` of the
    /// results in order; waits until every chunk is put when `wait`, else leaves what does
    /// not fit to the feeder.
    fn collect_async<C: Call, Out: Send + 'static>(
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
        let timeout_ns = self.timeout_ns()?;
        let trampoline = offset_of(worker::run_chunk::<C> as RunChunk as usize)?;
        let target = target.encode()?;
        #[allow(unused_mut)]
        let mut job = CollectJob::<C::Out, Out>::new(outcome.clone(), len, chunksize, finish);
        job.tracker = self.tracker.cloned();
        #[cfg(feature = "progress")]
        if self.progress {
            job.bar = Some(crate::progress::bar(Some(len as u64)));
        }
        let job: Arc<dyn Job> = Arc::new(job);
        let id = inner.register(job.clone())?;
        if let Some(t) = self.tracker {
            t.submitted(Some(len as u64));
        }
        let chunks = SliceChunks {
            items,
            pos: 0,
            chunksize,
            next: 0,
            head: ChunkHead {
                job: id,
                trampoline,
                target,
                chunksize: chunksize as u64,
                timeout_ns,
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

    /// The body of every `imap`-like verb: task kind `C` on every item, lazily; results in
    /// input order when `ordered`, else in completion order.
    pub(crate) fn imap_with<'a, C: Call>(
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
        let timeout_ns = self.timeout_ns()?;
        let trampoline = offset_of(worker::run_chunk::<C> as RunChunk as usize)?;
        let target = target.encode()?;
        #[allow(unused_mut)]
        let items = items.into_iter();
        // The input's length, when the iterator tells it exactly (for the total and ETA).
        let len = match items.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo as u64),
            _ => None,
        };
        let mut job = IMapJob::<C::Out>::new(ordered);
        job.tracker = self.tracker.cloned();
        job.chunksize = chunksize as u64;
        #[cfg(feature = "progress")]
        if self.progress {
            job.bar = Some(crate::progress::bar(len));
        }
        let job = Arc::new(job);
        let id = inner.register(job.clone())?;
        if let Some(t) = self.tracker {
            t.submitted(len);
        }
        let source = Box::new(ChunkIter {
            items,
            chunksize,
            next: 0,
            head: ChunkHead {
                job: id,
                trampoline,
                target,
                chunksize: chunksize as u64,
                timeout_ns,
            },
            buf: Vec::new(),
        });
        Ok(IMap::new(inner.clone(), job, id, source, limit))
    }

    /// The body of every `map`-like verb: task kind `C` on every item, results in input
    /// order; waits for them when `wait` (the caller then calls `get`).
    pub(crate) fn map_with<C: Call>(
        self,
        target: Target,
        items: impl IntoIterator<Item = C::In>,
        wait: bool,
    ) -> Result<AsyncResult<Vec<C::Out>>, Error>
    where
        C::In: Send,
        C::Out: Send,
    {
        let items: Vec<C::In> = items.into_iter().collect();
        self.collect_async::<C, Vec<C::Out>>(target, items, Ok, wait)
    }

    /// The body of every `apply`-like verb: task kind `C` on one argument.
    pub(crate) fn apply_with<C: Call>(
        self,
        target: Target,
        arg: C::In,
        wait: bool,
    ) -> Result<AsyncResult<C::Out>, Error>
    where
        C::In: Send,
        C::Out: Send,
    {
        self.collect_async::<C, C::Out>(target, vec![arg], single, wait)
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
        self.map_with::<Plain<T, R>>(Target::Fn(f as usize), items, true)?
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
        self.map_with::<Plain<T, R>>(Target::Fn(f as usize), items, false)
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
        self.map_with::<Fallible<T, R, E>>(Target::Fn(f as usize), items, true)?
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
        self.map_with::<Fallible<T, R, E>>(Target::Fn(f as usize), items, false)
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
        self.map_with::<StarPair<A, B, R>>(Target::Fn(f as usize), items, true)?
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
        self.map_with::<StarPair<A, B, R>>(Target::Fn(f as usize), items, false)
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
        self.imap_with::<Plain<T, R>>(Target::Fn(f as usize), items, true)
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
        self.imap_with::<Plain<T, R>>(Target::Fn(f as usize), items, false)
    }

    /// Python's `apply`: runs `f(arg)` in a worker and waits for the result.
    pub fn apply<T, R>(self, f: fn(T) -> R, arg: T) -> Result<R, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.apply_with::<Plain<T, R>>(Target::Fn(f as usize), arg, true)?
            .get()
    }

    /// Python's `apply_async`: returns at once with an [`AsyncResult`].
    pub fn apply_async<T, R>(self, f: fn(T) -> R, arg: T) -> Result<AsyncResult<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
    {
        self.apply_with::<Plain<T, R>>(Target::Fn(f as usize), arg, false)
    }

    /// `apply` for a fallible function: an `Err` becomes [`Error::Failed`].
    pub fn try_apply<T, R, E>(self, f: fn(T) -> Result<R, E>, arg: T) -> Result<R, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.apply_with::<Fallible<T, R, E>>(Target::Fn(f as usize), arg, true)?
            .get()
    }

    /// `apply_async` for a fallible function.
    pub fn try_apply_async<T, R, E>(
        self,
        f: fn(T) -> Result<R, E>,
        arg: T,
    ) -> Result<AsyncResult<R>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.apply_with::<Fallible<T, R, E>>(Target::Fn(f as usize), arg, false)
    }
}
