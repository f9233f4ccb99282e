//! [`FnPool`]: a pool whose task is one closure, fixed when the pool is made (fork start
//! method only).

use std::marker::PhantomData;
use std::ops::Deref;

use mp_core::Message;
use mp_process::StartMethod;

use crate::error::Error;
use crate::pool::{Pool, PoolBuilder, Target, Tasks};
use crate::result::AsyncResult;
use crate::worker::Closure;
use crate::IMap;

/// A pool that runs one closure, given when the pool is made: under the fork start method a
/// worker is a copy of the parent, closure included, so the closure may capture anything
/// (a configuration, a model, a lookup table) without it being a message. Only its
/// argument and result travel.
///
/// ```
/// use std::collections::HashMap;
/// use mp_pool::Pool;
///
/// let prices: HashMap<String, u64> = [("apple".to_string(), 3), ("pear".to_string(), 5)].into();
/// let pool = Pool::builder()
///     .processes(2)
///     .build_with(move |item: String| prices.get(&item).copied().unwrap_or(0))?;
/// assert_eq!(pool.map(["pear".to_string(), "fig".to_string()])?, [5, 0]);
/// assert_eq!(pool.apply("apple".to_string())?, 3);
/// // A FnPool is also a Pool: plain functions work too.
/// fn double(x: u64) -> u64 { 2 * x }
/// assert_eq!(pool.pool().map(double, [1, 2])?, [2, 4]);
/// # Ok::<(), mp_pool::Error>(())
/// ```
///
/// The closure lives in the parent for as long as the pool (workers, replacements included,
/// are forked from it and call their own copy); it is dropped after the workers are gone.
pub struct FnPool<T, R, F> {
    // Declared first: dropped (terminated) before the closure it calls.
    pool: Pool,
    f: Box<F>,
    _t: PhantomData<fn(T) -> R>,
}

impl<T, R, F> std::fmt::Debug for FnPool<T, R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnPool").field("pool", &self.pool).finish()
    }
}

impl PoolBuilder {
    /// Builds a [`FnPool`] that runs `f` on every item. The start method must be fork (the
    /// default): an error otherwise.
    pub fn build_with<T, R, F>(self, f: F) -> Result<FnPool<T, R, F>, Error>
    where
        T: Message + Send + 'static,
        R: Message + Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let method = self.method_or_default();
        if method != StartMethod::Fork {
            return Err(Error::Config(format!(
                "a pool that runs a closure needs the fork start method (not {method}): a \
                 closure cannot cross an exec; use a plain fn with Pool for spawn and forkserver"
            )));
        }
        // Boxed before the workers are forked, so that they inherit it at its address.
        let f = Box::new(f);
        let pool = self.build()?;
        Ok(FnPool {
            pool,
            f,
            _t: PhantomData,
        })
    }
}

/// Settings for one call on a [`FnPool`] (see [`Tasks`]).
pub struct FnTasks<'p, T, R, F> {
    tasks: Tasks<'p>,
    f: &'p F,
    _t: PhantomData<fn(T) -> R>,
}

impl<T, R, F> std::fmt::Debug for FnTasks<'_, T, R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnTasks")
            .field("tasks", &self.tasks)
            .finish()
    }
}

impl<'p, T, R, F> FnTasks<'p, T, R, F>
where
    T: Message + Send + 'static,
    R: Message + Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    fn target(&self) -> Target {
        Target::Raw(self.f as *const F as usize)
    }

    /// Items per task (see [`Tasks::chunksize`]).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.tasks = self.tasks.chunksize(n);
        self
    }

    /// Chunks an `imap` keeps in flight (see [`Tasks::in_flight`]).
    pub fn in_flight(mut self, n: usize) -> Self {
        self.tasks = self.tasks.in_flight(n);
        self
    }

    /// The timeout of each task of this call (see [`Tasks::timeout`]).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.tasks = self.tasks.timeout(timeout);
        self
    }

    /// Reports this call's progress to `progress` (see [`Tasks::track`]).
    pub fn track(mut self, progress: &'p crate::Progress) -> Self {
        self.tasks = self.tasks.track(progress);
        self
    }

    /// The closure applied to every item, results in order.
    pub fn map(self, items: impl IntoIterator<Item = T>) -> Result<Vec<R>, Error> {
        let target = self.target();
        self.tasks
            .map_with::<Closure<F, T, R>>(target, items, true)?
            .get()
    }

    /// [`map`](Self::map), returning at once.
    pub fn map_async(
        self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>, Error> {
        let target = self.target();
        self.tasks
            .map_with::<Closure<F, T, R>>(target, items, false)
    }

    /// The closure on one argument.
    pub fn apply(self, arg: T) -> Result<R, Error> {
        let target = self.target();
        self.tasks
            .apply_with::<Closure<F, T, R>>(target, arg, true)?
            .get()
    }

    /// [`apply`](Self::apply), returning at once.
    pub fn apply_async(self, arg: T) -> Result<AsyncResult<R>, Error> {
        let target = self.target();
        self.tasks
            .apply_with::<Closure<F, T, R>>(target, arg, false)
    }

    /// A lazy iterator of results in order (see [`Tasks::imap`]).
    pub fn imap<'a>(
        self,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error> {
        let target = self.target();
        self.tasks
            .imap_with::<Closure<F, T, R>>(target, items, true)
    }

    /// A lazy iterator of results in completion order.
    pub fn imap_unordered<'a>(
        self,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error> {
        let target = self.target();
        self.tasks
            .imap_with::<Closure<F, T, R>>(target, items, false)
    }
}

impl<T, R, F> FnPool<T, R, F>
where
    T: Message + Send + 'static,
    R: Message + Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    /// The default settings, to change some for one call.
    pub fn tasks(&self) -> FnTasks<'_, T, R, F> {
        FnTasks {
            tasks: self.pool.tasks(),
            f: &self.f,
            _t: PhantomData,
        }
    }

    /// Sets the chunksize for one call: `pool.chunksize(10).map(items)`.
    pub fn chunksize(&self, n: usize) -> FnTasks<'_, T, R, F> {
        self.tasks().chunksize(n)
    }

    /// Sets a task timeout for one call: `pool.timeout(d).map(items)` (see
    /// [`Tasks::timeout`]).
    pub fn timeout(&self, timeout: std::time::Duration) -> FnTasks<'_, T, R, F> {
        self.tasks().timeout(timeout)
    }

    /// Reports one call's progress to `progress` (see [`Tasks::track`]).
    pub fn track<'p>(&'p self, progress: &'p crate::Progress) -> FnTasks<'p, T, R, F> {
        self.tasks().track(progress)
    }

    /// The closure applied to every item, results in order (Python's `map`).
    pub fn map(&self, items: impl IntoIterator<Item = T>) -> Result<Vec<R>, Error> {
        self.tasks().map(items)
    }

    /// [`map`](Self::map), returning at once.
    pub fn map_async(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>, Error> {
        self.tasks().map_async(items)
    }

    /// The closure on one argument (Python's `apply`).
    pub fn apply(&self, arg: T) -> Result<R, Error> {
        self.tasks().apply(arg)
    }

    /// [`apply`](Self::apply), returning at once.
    pub fn apply_async(&self, arg: T) -> Result<AsyncResult<R>, Error> {
        self.tasks().apply_async(arg)
    }

    /// A lazy iterator of results in order (Python's `imap`).
    pub fn imap<'a>(
        &self,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error> {
        self.tasks().imap(items)
    }

    /// A lazy iterator of results in completion order (Python's `imap_unordered`).
    pub fn imap_unordered<'a>(
        &self,
        items: impl IntoIterator<Item = T, IntoIter: Send + 'a>,
    ) -> Result<IMap<'a, R>, Error> {
        self.tasks().imap_unordered(items)
    }

    /// The underlying pool: `close`, `join`, `terminate`, `worker_pids`, and tasks that are
    /// plain functions.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl<T, R, F> Deref for FnPool<T, R, F> {
    type Target = Pool;

    /// A `FnPool` has the [`Pool`] methods too (`close`, `join`, `terminate`, ...).
    fn deref(&self) -> &Pool {
        &self.pool
    }
}
