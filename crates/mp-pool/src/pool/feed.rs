//! Feeding the task queue: the callers put a job's chunks themselves while they fit, and
//! hand the rest to the feeder thread (the backlog, bounded by `max_backlog`); the chunk
//! sources encode each chunk straight from the caller's items.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_core::Message;
use mp_queue::{PutError, Queue};

use super::Inner;
use crate::error::Error;
use crate::helpers::{lock, on_pool_thread, panic_text, wait, wait_timeout};
use crate::job::Job;
use crate::wire::{Claim, NestedArchive, TaskMsg, TaskRef};

/// How long a blocking put waits before it checks whether the pool was terminated or broken.
const PUT_SLICE: Duration = Duration::from_millis(20);

pub(super) type Chunks<'a> = Box<dyn ChunkSource + 'a>;

/// The work waiting for the feeder thread, in submission order.
pub(super) struct Feeds {
    /// The work, oldest first.
    pub(super) queue: VecDeque<Feed>,
    /// Set by `stop_threads`: the feeder ends once the queue is empty.
    pub(super) closed: bool,
}

/// A job's chunks that did not fit in the task queue, for the feeder thread.
pub(super) struct Feed {
    /// The job's id.
    pub(super) id: u64,
    /// The job, to fail it should a chunk not go.
    pub(super) job: Arc<dyn Job>,
    /// The chunks left to put.
    pub(super) chunks: Chunks<'static>,
    /// The chunks it added to the backlog.
    pub(super) count: usize,
}

/// The error of a chunk whose items' `Serialize` panicked.
pub(super) fn serialize_panicked(p: &(dyn Any + Send)) -> Error {
    Error::Unserializable {
        what: "arguments",
        message: format!("serializing them panicked: {}", panic_text(p)),
    }
}

impl Inner {
    /// Puts a task, waiting for room, until the pool is terminated or broken (then the error
    /// is the pool's): `attempt` puts with the timeout it is given and says whether it did.
    /// With a `deadline`, [`Error::Timeout`] once it passed.
    pub(super) fn put_waiting(
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
    pub(super) fn put_next_blocking(
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
    pub(super) fn feed(
        &self,
        id: u64,
        job: &Arc<dyn Job>,
        mut chunks: Chunks<'static>,
        wait: bool,
    ) {
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
                Ok(true) => {}
                Ok(false) => return self.enqueue(id, job, chunks),
                Err(e) => return fail(c, e),
            }
        }
    }

    /// Hands a job's remaining chunks to the feeder, behind the work already there. When
    /// the backlog would pass `max_backlog` chunks, waits for room first (backpressure), but
    /// never on the pool's own threads (a callback), which the feeder may be waiting for;
    /// a backlog that is empty takes any number.
    pub(super) fn enqueue(&self, id: u64, job: &Arc<dyn Job>, mut chunks: Chunks<'static>) {
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
            f = wait_timeout(&self.room_cv, f, PUT_SLICE);
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

    pub(super) fn run_feeder(self: Arc<Self>) {
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
                    f = wait(&self.feeds_cv, f);
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
}

/// What putting a chunk on the task queue did.
pub(super) fn put_outcome<U>(put: Result<(), PutError<U>>) -> Result<bool, Error> {
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
pub(super) trait ChunkSource: Send {
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
pub(super) struct ChunkHead {
    pub(super) job: u64,
    pub(super) trampoline: i64,
    pub(super) target: (i64, bool),
    /// Items per chunk (the first item of chunk `c` is item `c × chunksize`).
    pub(super) chunksize: u64,
    /// The task timeout per item, in nanoseconds (0: none).
    pub(super) timeout_ns: u64,
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
            items: NestedArchive(items),
            claim: Claim {
                job: self.job,
                chunk,
                first: chunk.saturating_mul(self.chunksize),
                timeout_ns: self.timeout_ns,
            },
            trampoline: self.trampoline,
            target: self.target.0,
            raw: self.target.1,
        };
        put_outcome(tasks.put_as(&msg, Some(timeout)))
    }
}

/// Cuts an iterator of items into chunks, lazily (one chunk's items buffered at a time).
pub(super) struct ChunkIter<I: Iterator> {
    pub(super) items: I,
    pub(super) chunksize: usize,
    pub(super) next: u64,
    pub(super) head: ChunkHead,
    pub(super) buf: Vec<I::Item>,
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
pub(super) struct SliceChunks<T> {
    pub(super) items: Vec<T>,
    pub(super) pos: usize,
    pub(super) chunksize: usize,
    pub(super) next: u64,
    pub(super) head: ChunkHead,
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
