//! [`IMap`]: the lazy iterator of `imap` and `imap_unordered`.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_core::Message;

use super::feed::{serialize_panicked, Chunks};
use super::Inner;
use crate::error::Error;
use crate::helpers::on_pool_thread;
use crate::job::{IMapJob, Job, Next};

/// The iterator returned by [`Pool::imap`](super::Pool::imap) and
/// [`Pool::imap_unordered`](super::Pool::imap_unordered): yields each result (`Err` for a failed
/// chunk), reading the input lazily.
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

impl<'a, R> IMap<'a, R> {
    /// The iterator over job `id`'s results, which submits the chunks of `source`, at most
    /// `limit` of them in flight.
    pub(super) fn new(
        inner: Arc<Inner>,
        job: Arc<IMapJob<R>>,
        id: u64,
        source: Chunks<'a>,
        limit: usize,
    ) -> IMap<'a, R> {
        IMap {
            inner,
            job,
            id,
            source,
            exhausted: false,
            cut: false,
            in_flight: 0,
            limit,
            next_out: 0,
            current: Vec::new().into_iter(),
            finished: false,
        }
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
                        Ok(Err(e)) => {
                            self.job.fail(c, e);
                        }
                        Err(p) => {
                            // The items' `Serialize` panicked: the panic reaches the caller,
                            // and the chunk is an error in its place (nothing waits for it).
                            self.source.skip();
                            self.job.fail(c, serialize_panicked(&*p));
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
                // No room for more input by the deadline: a result already there is still
                // returned (the input goes in on a later call).
                if self.in_flight == 0 {
                    return Some(Err(e));
                }
            }
            if self.in_flight == 0 && !self.cut {
                self.finished = true;
                return None;
            }
            match self.job.next(self.next_out, deadline) {
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

impl<R: Message + Send + 'static> IMap<'_, R> {
    /// The next result as a future, on any runtime: `None` at the end, as
    /// [`next`](Iterator::next). It waits for the workers' answers without blocking the thread
    /// (the pool's supervisor wakes the task; no thread is parked) and submits more input as
    /// answers make room. Dropping the future loses nothing: a result not yet returned is
    /// returned by the next call.
    ///
    /// One wait still blocks the thread: when the pool's task queue is full of other work and
    /// none of this iterator's chunks is in flight, submitting its next chunk waits for room.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = mp_pool::Pool::new(2)?;
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let mut results = pool.imap(square, 0..10u64)?;
    /// let sum = rt.block_on(async {
    ///     let mut sum = 0;
    ///     while let Some(r) = results.next_async().await {
    ///         sum += r?;
    ///     }
    ///     Ok::<u64, mp_pool::Error>(sum)
    /// })?;
    /// assert_eq!(sum, 285);
    /// # Ok::<(), mp_pool::Error>(())
    /// ```
    pub async fn next_async(&mut self) -> Option<Result<R, Error>> {
        loop {
            let seen = self.job.answers();
            match self.next_until(Some(Instant::now())) {
                Some(Err(Error::Timeout)) if self.in_flight == 0 => {
                    // The queue is full of other work: wait for room (see above).
                    return self.next_until(None);
                }
                Some(Err(Error::Timeout)) => self.job.answered(seen).await,
                other => return other,
            }
        }
    }
}

/// The async imap stream (feature `async`): what [`IMap::next_async`] gives, as a
/// `futures_core::Stream`, for `StreamExt` combinators and `while let Some(r) =
/// stream.next().await` on any runtime. The same waits: no thread is parked, and a result
/// not yet taken stays for the next poll.
///
/// ```
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use futures_core::Stream;
/// fn square(x: u64) -> u64 { x * x }
/// let pool = mp_pool::Pool::new(2)?;
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let mut results = pool.imap(square, 0..10u64)?;
/// let sum = rt.block_on(async {
///     let mut sum = 0;
///     while let Some(r) = poll_fn(|cx| Pin::new(&mut results).poll_next(cx)).await {
///         sum += r?;
///     }
///     Ok::<u64, mp_pool::Error>(sum)
/// })?;
/// assert_eq!(sum, 285);
/// # Ok::<(), mp_pool::Error>(())
/// ```
// No field of an `IMap` is ever pinned (nothing points into it), so pinning it promises
// nothing: polling it as a stream works for any `R`, `Unpin` or not.
impl<R> Unpin for IMap<'_, R> {}

#[cfg(feature = "async")]
impl<R: Message + Send + 'static> futures_core::Stream for IMap<'_, R> {
    type Item = Result<R, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        let this = self.get_mut();
        loop {
            let seen = this.job.answers();
            match this.next_until(Some(Instant::now())) {
                Some(Err(Error::Timeout)) if this.in_flight == 0 => {
                    // As in `next_async`: the queue is full of other work; wait for room.
                    return std::task::Poll::Ready(this.next_until(None));
                }
                Some(Err(Error::Timeout)) => {
                    // The waker stays registered until the next answer (the future holds
                    // no registration of its own to undo).
                    let mut answered = this.job.answered(seen);
                    if std::pin::Pin::new(&mut answered).poll(cx).is_pending() {
                        return std::task::Poll::Pending;
                    }
                }
                other => return std::task::Poll::Ready(other),
            }
        }
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
