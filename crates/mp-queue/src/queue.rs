//! The public queue types.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mp_core::futex::{self, Deadline};
use mp_core::handle::ArchivedRegionHandle;
use mp_core::message;
use mp_core::rkyv::rancor::{Fallible, Source};
use mp_core::rkyv::{Archive, Deserialize, Place, Serialize};
use mp_core::{Message, Region};

use crate::error::{BatchError, Error, PutError};
use crate::ring::{self, GetFail, Payload, PutFail, Ring};

/// The ring size of `Queue::new()` and `Queue::with_maxsize(n)`: 4 MiB. Messages up to half of
/// it are written into the ring; larger ones go to their own range beside it.
pub const DEFAULT_CAPACITY: u64 = 4 << 20;

/// The side-channel budget of a queue that does not set one
/// ([`QueueBuilder::max_spill_bytes`]): 1 GiB of oversized messages beside the ring at once.
///
/// Why this much: it bounds what a producer can copy into shared memory ahead of its
/// consumers far below what `/dev/shm` and the machine's memory usually hold (`/dev/shm` is
/// half of the memory by default, the queue's pages come from the same place), so a runaway
/// producer waits for its consumers instead of filling the memory and failing late; and it is
/// large enough that ordinary traffic never notices it: ten messages of 100 MiB fit at once,
/// so consumers always have the next one ready. A message larger than the whole budget is
/// refused at once ([`SpillError::TooLarge`](crate::SpillError::TooLarge)).
pub const DEFAULT_MAX_SPILL_BYTES: u64 = 1 << 30;

fn kind<T>() -> u32 {
    mp_core::shared::kind_of::<(ring::Meta, T)>()
}

/// A multi-producer, multi-consumer FIFO queue of `T` shared by any number of processes, like
/// Python's `multiprocessing.Queue`, made of shared memory instead of a pipe and a feeder
/// thread.
///
/// `put` is synchronous: when it returns, the message is in shared memory, serialized straight
/// into the ring. So there is no feeder thread, no "object mutated after put" surprise, a
/// serialization error is returned by `put`, and a process that puts and exits can be joined
/// before anyone reads (Python deadlocks there).
///
/// Clones are handles to the same queue. A handle can be moved into a forked child, or given
/// to a spawned child as an argument (it is a [`Message`] whose archive is a handle to the
/// shared region).
pub struct Queue<T> {
    ring: Ring,
    closed: Arc<AtomicBool>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            ring: self.ring.clone(),
            closed: self.closed.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("type", &std::any::type_name::<T>())
            .field("qsize", &self.ring.len())
            .field("maxsize", &self.ring.maxsize())
            .field("capacity", &self.ring.capacity())
            .field("max_spill_bytes", &self.ring.max_spill())
            .field("spill_bytes", &self.ring.spill_in_use())
            .field("ring", &self.ring)
            .finish()
    }
}

/// Builds a [`Queue`] (or, with [`build_joinable`](Self::build_joinable), a
/// [`JoinableQueue`]) with a maximum number of items, a ring size and a side-channel budget.
pub struct QueueBuilder<T> {
    maxsize: u64,
    capacity: u64,
    max_spill: u64,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("maxsize", &self.maxsize)
            .field("capacity", &self.capacity)
            .field("max_spill_bytes", &self.max_spill)
            .finish()
    }
}

impl<T: Message> QueueBuilder<T> {
    /// At most `n` items at once (0: no limit, as Python's `maxsize <= 0`).
    pub fn maxsize(mut self, n: usize) -> Self {
        self.maxsize = n as u64;
        self
    }

    /// The ring's size in bytes (at least 64, rounded up to a power of two; default
    /// [`DEFAULT_CAPACITY`]). `put` waits when the ring is full of unread messages. Messages
    /// larger than half the ring do not use it.
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// The side channel's budget: at most `bytes` of the messages put beside the ring (those
    /// larger than half of it that do not fit in its free space at once) are held there at
    /// once, counted in whole pages (4 KiB) per message, across every process that uses the
    /// queue (default [`DEFAULT_MAX_SPILL_BYTES`], 1 GiB).
    ///
    /// A put that would go over it waits for consumers to free room, as for a full ring (its
    /// timeout applies, then [`PutError::Full`] gives the item back); a message that needs
    /// more than the whole budget is refused at once with [`PutError::Failed`] carrying
    /// [`SpillError::TooLarge`](crate::SpillError::TooLarge). A message taken with
    /// [`get_ref`](Queue::get_ref) holds its share until the guard is dropped (or its process
    /// dies). `0` allows no message beside the ring at all; `u64::MAX` is no limit.
    pub fn max_spill_bytes(mut self, bytes: u64) -> Self {
        self.max_spill = bytes;
        self
    }

    fn ring(&self) -> Result<Ring, Error> {
        if self.capacity < 64 || self.capacity > (1 << 32) {
            return Err(Error::Config(format!(
                "capacity_bytes({}) must be between 64 bytes and 4 GiB",
                self.capacity
            )));
        }
        Ring::new(kind::<T>(), self.capacity, self.maxsize, self.max_spill)
    }

    /// Makes the queue.
    pub fn build(self) -> Result<Queue<T>, Error> {
        Ok(Queue::from_ring(self.ring()?))
    }

    /// Makes a [`JoinableQueue`] with these settings.
    pub fn build_joinable(self) -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            inner: self.build()?,
        })
    }
}

impl<T: Message> Queue<T> {
    /// A queue with no limit on the number of items, within a ring of [`DEFAULT_CAPACITY`]
    /// bytes.
    pub fn new() -> Result<Queue<T>, Error> {
        Self::builder().build()
    }

    /// A queue of at most `maxsize` items (0: no limit).
    pub fn with_maxsize(maxsize: usize) -> Result<Queue<T>, Error> {
        Self::builder().maxsize(maxsize).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            maxsize: 0,
            capacity: DEFAULT_CAPACITY,
            max_spill: DEFAULT_MAX_SPILL_BYTES,
            _t: PhantomData,
        }
    }

    fn from_ring(ring: Ring) -> Queue<T> {
        Queue {
            ring,
            closed: Arc::new(AtomicBool::new(false)),
            _t: PhantomData,
        }
    }

    fn put_until(&self, item: T, deadline: Deadline) -> Result<(), PutError<T>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PutError::Closed(item));
        }
        match self.ring.put(&item, deadline) {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(PutError::Full(item)),
            Err(PutFail::Encode(e)) | Err(PutFail::Io(e)) => Err(PutError::Failed(item, e)),
        }
    }

    /// Puts `item`, waiting as long as the queue is full.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Deadline::never())
    }

    /// Puts `item`, waiting at most `timeout` for room; [`PutError::Full`] gives it back.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Deadline::after(Some(timeout)))
    }

    /// Puts `item` if there is room now; [`PutError::Full`] gives it back.
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Deadline::after(Some(Duration::ZERO)))
    }

    /// Puts a borrowed value of another type that archives exactly as `T` does
    /// (`U::Archived` is `T::Archived`), serialized straight into the queue's shared memory:
    /// no owned `T` is built, and consumers receive a `T` as usual. For example a slice, as
    /// [`SliceAsVec`](mp_core::message::SliceAsVec), into a `Queue<Vec<_>>`.
    ///
    /// `timeout`: `None` waits as long as the queue is full, `Some(Duration::ZERO)` does not
    /// wait. A failure gives the reference back.
    ///
    /// ```
    /// use mp_core::message::SliceAsVec;
    /// let q = mp_queue::Queue::<Vec<u32>>::new()?;
    /// let readings = [3u32, 1, 4, 1, 5, 9, 2, 6];
    /// for window in readings.chunks(4) {
    ///     q.put_as(&SliceAsVec(window), None).map_err(|e| e.to_string())?;
    /// }
    /// assert_eq!(q.get()?, [3, 1, 4, 1]);
    /// assert_eq!(q.get()?, [5, 9, 2, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_as<'u, U>(
        &self,
        item: &'u U,
        timeout: Option<Duration>,
    ) -> Result<(), PutError<&'u U>>
    where
        U: mp_core::Encode + Archive<Archived = T::Archived>,
    {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PutError::Closed(item));
        }
        match self.ring.put(item, Deadline::after(timeout)) {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(PutError::Full(item)),
            Err(PutFail::Encode(e)) | Err(PutFail::Io(e)) => Err(PutError::Failed(item, e)),
        }
    }

    /// Puts the items of `items` in order, in batches: the producer lock is taken and the
    /// new messages are published once per batch instead of once per item (for small
    /// messages, the faster way to move many; `docs/benchmarks.md` says by how much). Other
    /// producers' messages may come between two batches, never inside one.
    ///
    /// Waits for room as [`put`](Self::put) does, at most `timeout` in all (`None`: as long
    /// as it takes, `Some(Duration::ZERO)`: not at all). Returns how many items were put, the
    /// first ones of `items`: all of them, unless the queue stayed full until the timeout.
    /// An item that cannot be put (a closed handle, a serialization error) ends the call
    /// with a [`BatchError`] that says how many were put before it.
    ///
    /// ```
    /// let q = mp_queue::Queue::<u64>::new()?;
    /// let items: Vec<u64> = (0..1000).collect();
    /// assert_eq!(q.put_many(&items, None)?, 1000);
    /// let mut got = Vec::new();
    /// while got.len() < 1000 {
    ///     q.get_many(&mut got, 256, None)?;
    /// }
    /// assert_eq!(got, items);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_many(&self, items: &[T], timeout: Option<Duration>) -> Result<usize, BatchError> {
        let failed = |put, error| Err(BatchError { put, error });
        if self.closed.load(Ordering::Relaxed) {
            return failed(0, Error::Closed);
        }
        let deadline = Deadline::after(timeout);
        let mut done = 0;
        while done < items.len() {
            match self.ring.put_batch(&items[done..], deadline) {
                Ok(0) => {}
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(PutFail::Full) => {}
                Err(PutFail::Encode(e)) | Err(PutFail::Io(e)) => return failed(done, e.into()),
            }
            // The next item does not fit now (or is too large for the ring): put it alone,
            // waiting for room until the deadline.
            match self.ring.put(&items[done], deadline) {
                Ok(()) => done += 1,
                Err(PutFail::Full) => break,
                Err(PutFail::Encode(e)) | Err(PutFail::Io(e)) => return failed(done, e.into()),
            }
        }
        Ok(done)
    }

    /// Takes up to `max` items in one batch, appending them to `out`: waits (at most
    /// `timeout`; `None`: as long as it takes) for the first, then takes the ones already
    /// there, under one hold of the consumer lock. Returns how many were taken (at least one;
    /// `max == 0` takes none at once), or [`Error::Empty`] when none came in time.
    ///
    /// A message that cannot be decoded ends the batch with its error (it is removed, as with
    /// `get`); the items taken before it are in `out` all the same.
    pub fn get_many(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        if max == 0 {
            return Ok(0);
        }
        let got = self.ring.get_batch(Deadline::after(timeout), max, |bytes| {
            out.push(ring::decode::<T>(bytes)?);
            Ok(())
        });
        match got {
            Ok(n) => Ok(n),
            Err(GetFail::Empty) => Err(Error::Empty),
            Err(GetFail::Bad(e)) => Err(e),
        }
    }

    fn get_until(&self, deadline: Deadline) -> Result<T, Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        match self.ring.get_with(deadline, ring::decode::<T>) {
            Ok(r) => r,
            Err(GetFail::Empty) => Err(Error::Empty),
            Err(GetFail::Bad(e)) => Err(e),
        }
    }

    /// Takes the oldest item, waiting as long as the queue is empty.
    ///
    /// The message is copied out of shared memory into a private, aligned buffer (on the
    /// stack when it is small, else a buffer of this thread reused from one message to the
    /// next) and checked and decoded there, so no other process can change it under the
    /// check. The same holds for every `get_*` and [`get_many`](Self::get_many).
    ///
    /// For a large message that copy is one more pass over its bytes. Between processes that
    /// trust each other, [`get_ref`](Self::get_ref) followed by
    /// [`mp_core::message::deserialize`] on the guard decodes in place without it (and
    /// trusts the peers as the zero-copy view does).
    pub fn get(&self) -> Result<T, Error> {
        self.get_until(Deadline::never())
    }

    /// Takes the oldest item, waiting at most `timeout`; [`Error::Empty`] when none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.get_until(Deadline::after(Some(timeout)))
    }

    /// Takes the oldest item if there is one now; [`Error::Empty`] otherwise.
    pub fn get_nowait(&self) -> Result<T, Error> {
        self.get_until(Deadline::after(Some(Duration::ZERO)))
    }

    fn get_ref_until(&self, deadline: Deadline) -> Result<Received<'_, T>, Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let (payload, off) = match self.ring.claim(deadline) {
            Ok(c) => c,
            Err(GetFail::Empty) => return Err(Error::Empty),
            Err(GetFail::Bad(e)) => return Err(e),
        };
        let mut guard = Received {
            queue: self,
            payload,
            off,
            archived: std::ptr::null(),
        };
        let bytes = self.ring.payload_bytes(&guard.payload);
        // Checked: a malformed message is an error (and its slot is freed with `guard`).
        guard.archived = message::access::<T>(bytes)? as *const T::Archived;
        Ok(guard)
    }

    /// Takes the oldest item without copying it: the guard derefs to the archived value inside
    /// the shared ring (checked), and frees its space when dropped. Waits while the queue is
    /// empty.
    ///
    /// # Trust
    ///
    /// The view reads the shared ring in place. Its bytes are checked once, when the guard is
    /// made, and read again on every access after that, so the view **trusts every process
    /// that holds this queue** to keep the queue's protocol (never to write a record it does
    /// not own). A process that breaks it, by rewriting an offset inside the message after the
    /// check, can make a read through the view go out of bounds. Between the processes of one
    /// program that is not a concern; with a peer you do not trust, use [`get`](Self::get) or
    /// [`Received::deserialize`], which copy the message out of shared memory first and check
    /// and decode the private copy.
    pub fn get_ref(&self) -> Result<Received<'_, T>, Error> {
        self.get_ref_until(Deadline::never())
    }

    /// [`get_ref`](Self::get_ref) with a timeout.
    pub fn get_ref_timeout(&self, timeout: Duration) -> Result<Received<'_, T>, Error> {
        self.get_ref_until(Deadline::after(Some(timeout)))
    }

    /// The number of items in the queue now (exact, unlike Python's approximate `qsize`).
    pub fn qsize(&self) -> usize {
        self.ring.len() as usize
    }

    /// True when the queue holds no item now.
    pub fn empty(&self) -> bool {
        self.ring.len() == 0
    }

    /// True when the queue holds `maxsize` items (never for an unbounded queue).
    pub fn full(&self) -> bool {
        let max = self.ring.maxsize();
        max > 0 && self.ring.len() >= max
    }

    /// The item limit (0: none).
    pub fn maxsize(&self) -> usize {
        self.ring.maxsize() as usize
    }

    /// The side-channel budget, in bytes (see [`QueueBuilder::max_spill_bytes`]).
    pub fn max_spill_bytes(&self) -> u64 {
        self.ring.max_spill()
    }

    /// The bytes of the side channel that messages larger than half the ring hold now, in
    /// whole pages: those queued and those taken by [`get_ref`](Self::get_ref) guards not yet
    /// dropped. At most [`max_spill_bytes`](Self::max_spill_bytes). A snapshot; after a
    /// producer was killed in the middle of a put, the range it was writing counts until the
    /// next put takes over its lock and gives the range back.
    pub fn spill_bytes(&self) -> u64 {
        self.ring.spill_in_use()
    }

    /// Closes this handle (and its clones in this process): later `put`s and `get`s through it
    /// fail with `Closed`. Other processes' handles are not affected, as in Python, where
    /// `close()` says "this process will put no more".
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// True after [`close`](Self::close).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }
}

/// A message received without copying: derefs to `T`'s archived form inside the shared ring
/// (already checked), and frees its space in the ring when dropped. The view trusts the
/// queue's other processes (see [`Queue::get_ref`]); [`deserialize`](Self::deserialize) does
/// not.
pub struct Received<'q, T: Message> {
    queue: &'q Queue<T>,
    payload: Payload,
    off: u64,
    archived: *const T::Archived,
}

impl<T: Message> Received<'_, T> {
    /// Deserializes the message to an owned `T`, from a private copy of its bytes (checked
    /// again), as [`Queue::get`] does: unlike the zero-copy view, the result does not depend on
    /// trusting the queue's other processes.
    pub fn deserialize(&self) -> Result<T, Error> {
        let mut scratch = ring::Scratch::new();
        ring::decode::<T>(self.queue.ring.private_copy(&self.payload, &mut scratch))
    }

    /// The address and length of the payload when it lies inside the ring (not beside it):
    /// what the fuzz harness checks against the ring's data area.
    pub(crate) fn inline_span(&self) -> Option<(usize, usize)> {
        match self.payload {
            Payload::Inline(p, len) => Some((p as usize, len)),
            Payload::Big(..) => None,
        }
    }
}

impl<T: Message> Deref for Received<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: `archived` was returned by a checked `access` over the payload bytes, which
        // stay mapped and unchanged while this guard lives under the queue's protocol: the
        // record is claimed (READING) so no producer reuses it until `release`, and big
        // messages stay mapped in `payload`. A process that breaks the protocol could change
        // them after the check; `get_ref` documents that its view trusts the queue's peers.
        unsafe { &*self.archived }
    }
}

impl<T: Message> Drop for Received<'_, T> {
    fn drop(&mut self) {
        self.queue.ring.release(self.off);
    }
}

impl<T> Archive for Queue<T> {
    type Archived = ArchivedRegionHandle;
    type Resolver = <Region as Archive>::Resolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        self.ring.region().resolve(resolver, out);
    }
}

impl<T, S: Fallible + ?Sized> Serialize<S> for Queue<T>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        self.ring.region().serialize(serializer)
    }
}

impl<T: Message, D: Fallible + ?Sized> Deserialize<Queue<T>, D> for ArchivedRegionHandle
where
    D::Error: Source,
{
    fn deserialize(&self, d: &mut D) -> Result<Queue<T>, D::Error> {
        let region: Region = Deserialize::<Region, D>::deserialize(self, d)?;
        let ring = Ring::from_region(region, kind::<T>()).map_err(D::Error::new)?;
        Ok(Queue::from_ring(ring))
    }
}

/// A queue with only `put`, `get`, `empty` and `close`, like Python's `SimpleQueue`.
pub struct SimpleQueue<T> {
    inner: Queue<T>,
}

impl<T: Message> SimpleQueue<T> {
    /// A new, unbounded queue.
    pub fn new() -> Result<SimpleQueue<T>, Error> {
        Ok(SimpleQueue {
            inner: Queue::new()?,
        })
    }

    /// Puts `item` (waits only if the ring is full of unread bytes).
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.inner.put(item)
    }

    /// Takes the oldest item, waiting for one.
    pub fn get(&self) -> Result<T, Error> {
        self.inner.get()
    }

    /// True when the queue holds no item.
    pub fn empty(&self) -> bool {
        self.inner.empty()
    }

    /// Closes this handle.
    pub fn close(&self) {
        self.inner.close()
    }
}

/// A [`Queue`] that also counts unfinished tasks, like Python's `JoinableQueue`: every `put`
/// adds one, every `task_done` removes one, and `join` waits for none to be left.
pub struct JoinableQueue<T> {
    inner: Queue<T>,
}

impl<T: Message> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            inner: Queue::new()?,
        })
    }

    /// A joinable queue of at most `maxsize` items (0: no limit).
    pub fn with_maxsize(maxsize: usize) -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            inner: Queue::with_maxsize(maxsize)?,
        })
    }

    /// A builder for the other settings (ring size, side-channel budget): the same as
    /// [`Queue::builder`], finished with [`QueueBuilder::build_joinable`].
    ///
    /// ```
    /// let q = mp_queue::JoinableQueue::<Vec<u8>>::builder()
    ///     .max_spill_bytes(64 << 20)
    ///     .build_joinable()?;
    /// assert_eq!(q.max_spill_bytes(), 64 << 20);
    /// # Ok::<(), mp_queue::Error>(())
    /// ```
    pub fn builder() -> QueueBuilder<T> {
        Queue::builder()
    }

    fn unfinished(&self) -> &std::sync::atomic::AtomicU32 {
        &self.inner.ring().meta().unfinished
    }

    /// Gives back the count taken for a put that failed.
    fn counted<E>(&self, r: Result<(), E>) -> Result<(), E> {
        if r.is_err() {
            self.finish_one();
        }
        r
    }

    /// Puts `item` and counts one more unfinished task.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        // Counted before the item is visible, so that `join` cannot return between the put
        // and the count. Relaxed suffices: `join` reads the counter, not the item.
        self.unfinished().fetch_add(1, Ordering::Relaxed);
        let r = self.inner.put(item);
        self.counted(r)
    }

    /// [`Queue::put_timeout`], counting the task.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.unfinished().fetch_add(1, Ordering::Relaxed);
        let r = self.inner.put_timeout(item, timeout);
        self.counted(r)
    }

    /// [`Queue::put_nowait`], counting the task.
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.unfinished().fetch_add(1, Ordering::Relaxed);
        let r = self.inner.put_nowait(item);
        self.counted(r)
    }

    /// [`Queue::put_as`], counting the task.
    pub fn put_as<'u, U>(
        &self,
        item: &'u U,
        timeout: Option<Duration>,
    ) -> Result<(), PutError<&'u U>>
    where
        U: mp_core::Encode + Archive<Archived = T::Archived>,
    {
        self.unfinished().fetch_add(1, Ordering::Relaxed);
        let r = self.inner.put_as(item, timeout);
        self.counted(r)
    }

    /// [`Queue::put_many`], counting one task per item put.
    pub fn put_many(&self, items: &[T], timeout: Option<Duration>) -> Result<usize, BatchError> {
        // Counted before the items are visible (see `put`), in slices the counter can hold;
        // the timeout covers the whole call.
        let deadline = Deadline::after(timeout);
        let mut done = 0;
        for slice in items.chunks(1 << 20) {
            let n = slice.len() as u32;
            self.unfinished().fetch_add(n, Ordering::Relaxed);
            let r = self.inner.put_many(slice, deadline.remaining());
            let put = match &r {
                Ok(put) => *put,
                Err(e) => e.put,
            };
            for _ in put..slice.len() {
                self.finish_one();
            }
            done += put;
            match r {
                Ok(put) if put == slice.len() => {}
                Ok(_) => return Ok(done),
                Err(e) => {
                    return Err(BatchError {
                        put: done,
                        error: e.error,
                    })
                }
            }
        }
        Ok(done)
    }

    fn finish_one(&self) -> bool {
        let u = self.unfinished();
        // Release pairs with the Acquire load in `join`: the work done for the task happens
        // before `join` returns.
        let r = u.fetch_update(Ordering::Release, Ordering::Relaxed, |n| n.checked_sub(1));
        if r == Ok(1) {
            let m = self.inner.ring().meta();
            if m.join_waiters.load(Ordering::SeqCst) > 0 {
                futex::wake_all(u);
            }
        }
        r.is_ok()
    }

    /// Marks one task done. One call too many is [`Error::TaskDoneTooMany`].
    pub fn task_done(&self) -> Result<(), Error> {
        if self.finish_one() {
            Ok(())
        } else {
            Err(Error::TaskDoneTooMany)
        }
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<(), Error> {
        self.join_until(Deadline::never())
    }

    /// [`join`](Self::join), giving up with [`Error::Timeout`] after `timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.join_until(Deadline::after(Some(timeout)))
    }

    fn join_until(&self, deadline: Deadline) -> Result<(), Error> {
        let m = self.inner.ring().meta();
        m.join_waiters.fetch_add(1, Ordering::SeqCst);
        let r = futex::wait_until(&m.unfinished, |n| n == 0, deadline);
        m.join_waiters.fetch_sub(1, Ordering::SeqCst);
        r.map(|_| ()).map_err(|_| Error::Timeout)
    }
}

impl<T: Message> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    /// A joinable queue has all of [`Queue`]'s methods; `put` is overridden to count tasks.
    fn deref(&self) -> &Queue<T> {
        &self.inner
    }
}

/// `SimpleQueue` and `JoinableQueue` wrap a [`Queue`]: they clone and print as it does (under
/// their own name), and are archived as its handle.
macro_rules! wraps_a_queue {
    ($($wrapper:ident),+) => {$(
        impl<T> Clone for $wrapper<T> {
            fn clone(&self) -> Self {
                $wrapper {
                    inner: self.inner.clone(),
                }
            }
        }

        impl<T> std::fmt::Debug for $wrapper<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($wrapper)).field(&self.inner).finish()
            }
        }

        impl<T> Archive for $wrapper<T> {
            type Archived = ArchivedRegionHandle;
            type Resolver = <Region as Archive>::Resolver;

            fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
                self.inner.resolve(resolver, out);
            }
        }

        impl<T, S: Fallible + ?Sized> Serialize<S> for $wrapper<T>
        where
            S::Error: Source,
        {
            fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
                self.inner.serialize(serializer)
            }
        }

        impl<T: Message, D: Fallible + ?Sized> Deserialize<$wrapper<T>, D> for ArchivedRegionHandle
        where
            D::Error: Source,
        {
            fn deserialize(&self, d: &mut D) -> Result<$wrapper<T>, D::Error> {
                Ok($wrapper {
                    inner: Deserialize::<Queue<T>, D>::deserialize(self, d)?,
                })
            }
        }
    )+};
}

wraps_a_queue!(SimpleQueue, JoinableQueue);
