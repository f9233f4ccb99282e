//! [`Pool`]: Python's `Pool` verbs, run by workers anywhere on the cluster.
//!
//! Each pool has one result list, `{prefix}:results:{pool}`, drained by one collector thread
//! that hands each result to its job, drops a result whose chunk was answered already (a
//! task re-run after its worker was thought lost), runs the reaper while it waits, and sends
//! every unanswered chunk again when it sees that the server was restarted (a new `run_id`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mp_core::message::{
    access, decode, deserialize_each, encode, encode_with_capacity, SliceAsVec, ALIGN,
};
use mp_core::Message;
use rkyv::util::AlignedVec;

use crate::conn::{self, Conn, Shared};
use crate::error::{Error, Result};
use crate::wire::{self, kind, ResultMsg, TaskMsg};
use crate::worker::{self, Trampoline};

mod collector;
mod imap;
mod result;

use collector::*;
pub use imap::IMap;
use imap::*;
pub use result::AsyncResult;
use result::*;

pub(super) use mp_core::util::lock_unpoisoned as lock;

/// Rebuilds an error for every job it concerns (errors are not `Clone`).
pub(super) fn dup(e: &Error) -> Error {
    match e {
        Error::Unreachable { retried, last } => Error::Unreachable {
            retried: *retried,
            last: last.clone(),
        },
        Error::Auth(m) => Error::Auth(m.clone()),
        other => Error::Redis(other.to_string()),
    }
}

/// The error a failed chunk stands for (`payload`: the bytes after its message).
pub(super) fn chunk_error(msg: &ResultMsg, payload: &[u8], pool_build: &[u8]) -> Error {
    match msg.kind {
        kind::PANIC => Error::TaskPanicked {
            worker: msg.worker.clone(),
            message: msg.message.clone(),
        },
        kind::LOST => Error::TaskLost {
            tries: msg.message.parse().unwrap_or(0),
        },
        kind::WRONG_BUILD => Error::WrongBuild {
            worker: msg.worker.clone(),
            worker_build: conn::hex(payload),
            pool_build: conn::hex(pool_build),
        },
        _ => Error::TaskFailed {
            worker: msg.worker.clone(),
            message: msg.message.clone(),
        },
    }
}

/// A chunk's results (an encoded `Vec<R>`), in the bytes they arrived in when those put them
/// at an aligned address (as the allocator does), else copied once to an aligned buffer.
pub(super) enum Payload {
    InPlace(Vec<u8>, usize),
    Copied(AlignedVec<ALIGN>),
}

impl Payload {
    /// The payload of `bytes`, which starts at `start`.
    pub(super) fn new(bytes: Vec<u8>, start: usize) -> Payload {
        let at = bytes.as_ptr() as usize + start;
        if at % ALIGN == 0 {
            return Payload::InPlace(bytes, start);
        }
        let mut v = AlignedVec::with_capacity(bytes.len() - start);
        v.extend_from_slice(&bytes[start..]);
        Payload::Copied(v)
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::InPlace(v, start) => &v[*start..],
            Payload::Copied(v) => v,
        }
    }
}

/// Receives a job's chunk outcomes (typed decoding happens here).
pub(super) trait Sink: Send {
    fn accept(&mut self, id: u64, outcome: Result<Payload>);
    fn fail(&mut self, e: Error);
}

pub(super) struct Entry {
    /// Chunk id -> the task message (shared with the pipeline that pushes it), until its
    /// result arrives.
    pending: HashMap<u64, Arc<Vec<u8>>>,
    sink: Box<dyn Sink>,
    /// All chunks were submitted: the entry goes when `pending` is empty.
    complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Running,
    Closed,
    Terminated,
}

pub(super) struct Jobs {
    map: HashMap<u64, Entry>,
    next: u64,
    state: State,
}

pub(super) struct Inner {
    sh: Arc<Shared>,
    id: String,
    results: String,
    image_id: Mutex<Vec<u8>>,
    jobs: Mutex<Jobs>,
    changed: Condvar,
    submit: Mutex<Conn>,
    stop: AtomicBool,
    /// The worker count last read, and when: the default chunk size uses it for up to
    /// [`COUNT_FOR`] instead of asking the server on every call.
    counted: Mutex<Option<(Instant, usize)>>,
}

/// How long a worker count serves the default chunk size (a count a little out of date only
/// makes the chunks a little larger or smaller).
const COUNT_FOR: Duration = Duration::from_secs(1);

/// A pool of the cluster's workers: Python's `Pool` verbs, with tasks run by whichever
/// worker takes them. Made by [`Cluster::pool`](crate::Cluster::pool).
///
/// Delivery is at-least-once: a task whose worker is lost runs again (up to the cluster's
/// `max_tries`); the pool keeps the first result of each chunk and drops any later one, so
/// every item's result is in the output exactly once. Tasks are the program's own functions:
/// see the crate doc.
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("id", &self.inner.id).finish()
    }
}

impl Pool {
    pub(crate) fn new(sh: Arc<Shared>) -> Result<Pool> {
        let id = format!("{:016x}", conn::random_u64());
        let results = sh.key(&format!("results:{id}"));
        let inner = Arc::new(Inner {
            sh,
            id,
            results,
            image_id: Mutex::new(mp_process::symbol::image_id().to_vec()),
            jobs: Mutex::new(Jobs {
                map: HashMap::new(),
                next: 0,
                state: State::Running,
            }),
            changed: Condvar::new(),
            submit: Mutex::new(Conn::new()),
            stop: AtomicBool::new(false),
            counted: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("mp-redis-collector".into())
            .spawn(move || collector(weak))
            .map_err(|e| Error::Config(format!("could not start a thread: {e}")))?;
        Ok(Pool { inner })
    }

    /// For tests (feature `testing`): tasks claim another build id than this program's (a
    /// worker then refuses them with [`Error::WrongBuild`]).
    #[cfg(feature = "testing")]
    pub fn claim_build_id(&mut self, id: Vec<u8>) {
        *lock(&self.inner.image_id) = id;
    }

    /// How many workers are registered on the cluster now (alive or not yet reaped).
    pub fn workers(&self) -> Result<usize> {
        let sh = &self.inner.sh;
        let n: usize = lock(&self.inner.submit).run(sh, None, |c| {
            redis::cmd("SCARD").arg(sh.key("workers")).query(c)
        })?;
        *lock(&self.inner.counted) = Some((Instant::now(), n));
        Ok(n)
    }

    /// Python's `map`: `f` applied to every item, results in input order; the first failed
    /// chunk fails the call. The default chunk size is Python's, `ceil(len / (4 × workers))`,
    /// with the count of workers registered on the cluster read at most once a second.
    pub fn map<T: Message, R: Message + Send + 'static>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>> {
        self.map_async(f, items)?.get()
    }

    /// Python's `map_async`.
    pub fn map_async<T: Message, R: Message + Send + 'static>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let (items, len) = sized(items);
        let chunk = self.default_chunksize(len)?;
        self.collect(call::<T, R>(f)?, items, len, chunk, Ok)
    }

    /// `map` with an explicit chunk size (Python's `chunksize=`).
    pub fn map_chunked<T: Message, R: Message + Send + 'static>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<Vec<R>> {
        let (items, len) = sized(items);
        self.collect(call::<T, R>(f)?, items, len, chunksize.max(1), Ok)?
            .get()
    }

    /// Python's `starmap`: `f(a, b)` for every pair, results in input order.
    pub fn starmap<A: Message, B: Message, R: Message + Send + 'static>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>> {
        let (items, len) = sized(items);
        let chunk = self.default_chunksize(len)?;
        let target = mp_process::symbol::offset_of(f as usize)?;
        let trampoline = mp_process::symbol::offset_of(star::<A, B, R> as Trampoline as usize)?;
        self.collect((trampoline, target), items, len, chunk, Ok)?
            .get()
    }

    /// Python's `apply`: `f(arg)` on a worker.
    pub fn apply<T: Message, R: Message + Send + 'static>(
        &self,
        f: fn(T) -> R,
        arg: T,
    ) -> Result<R> {
        self.apply_async(f, arg)?.get()
    }

    /// Python's `apply_async`.
    pub fn apply_async<T: Message, R: Message + Send + 'static>(
        &self,
        f: fn(T) -> R,
        arg: T,
    ) -> Result<AsyncResult<R>> {
        self.collect(
            call::<T, R>(f)?,
            std::iter::once(arg),
            1,
            1,
            |mut v: Vec<R>| {
                v.pop()
                    .ok_or_else(|| Error::Redis("a worker answered with no result".into()))
            },
        )
    }

    /// Python's `imap`: results in input order, as they come; the input is read lazily
    /// (at most `in_flight` chunks of `chunksize` items are out at once), so it may be endless.
    pub fn imap<'a, T: Message + 'a, R: Message + Send + 'static>(
        &'a self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T> + 'a,
        chunksize: usize,
    ) -> Result<IMap<'a, R>> {
        self.imap_with(f, items, chunksize, true)
    }

    /// Python's `imap_unordered`: results in the order workers finish them.
    pub fn imap_unordered<'a, T: Message + 'a, R: Message + Send + 'static>(
        &'a self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T> + 'a,
        chunksize: usize,
    ) -> Result<IMap<'a, R>> {
        self.imap_with(f, items, chunksize, false)
    }

    /// Python's `close`: no new tasks; tasks submitted already run to the end.
    pub fn close(&self) {
        let mut j = lock(&self.inner.jobs);
        if j.state == State::Running {
            j.state = State::Closed;
        }
    }

    /// Python's `terminate`: no new tasks; every unfinished job fails with
    /// [`Error::PoolClosed`], and workers skip this pool's tasks still queued.
    pub fn terminate(&self) -> Result<()> {
        let entries: Vec<Entry> = {
            let mut j = lock(&self.inner.jobs);
            j.state = State::Terminated;
            j.map.drain().map(|(_, e)| e).collect()
        };
        for mut e in entries {
            e.sink.fail(Error::PoolClosed("terminated"));
        }
        self.inner.changed.notify_all();
        let sh = &self.inner.sh;
        lock(&self.inner.submit).run(sh, None, |c| {
            redis::pipe()
                .cmd("SET")
                .arg(sh.key(&format!("cancel:{}", self.inner.id)))
                .arg(1)
                .arg("PX")
                .arg(worker::RESULT_TTL_MS)
                .ignore()
                .cmd("DEL")
                .arg(&self.inner.results)
                .ignore()
                .query::<()>(c)
        })
    }

    /// Python's `join`: after [`close`](Self::close) or [`terminate`](Self::terminate), waits
    /// until every job submitted through this pool has all its results (an [`IMap`] counts
    /// until it is exhausted or dropped).
    pub fn join(&self) -> Result<()> {
        let mut j = lock(&self.inner.jobs);
        if j.state == State::Running {
            return Err(Error::Config(
                "join() needs close() or terminate() first (as in Python)".into(),
            ));
        }
        while !j.map.is_empty() {
            j = self
                .inner
                .changed
                .wait(j)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    fn default_chunksize(&self, len: usize) -> Result<usize> {
        let recent = *lock(&self.inner.counted);
        let workers = match recent {
            Some((at, n)) if at.elapsed() < COUNT_FOR => n,
            _ => self.workers()?,
        }
        .max(1);
        Ok(len.div_ceil(workers.saturating_mul(4)).max(1))
    }

    fn imap_with<'a, T: Message + 'a, R: Message + Send + 'static>(
        &'a self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T> + 'a,
        chunksize: usize,
        ordered: bool,
    ) -> Result<IMap<'a, R>> {
        let fns = call::<T, R>(f)?;
        let buf = Arc::new(Buf {
            q: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
        });
        let job = self.open_job(Box::new(ImapSink::<R> { buf: buf.clone() }), false)?;
        let mut it = items.into_iter();
        let chunksize = chunksize.max(1);
        let next_args = Box::new(move || -> Option<Result<Vec<u8>>> {
            let chunk: Vec<T> = it.by_ref().take(chunksize).collect();
            if chunk.is_empty() {
                return None;
            }
            Some(encode(&chunk).map(|v| v.to_vec()).map_err(Error::from))
        });
        Ok(IMap {
            pool: self,
            job,
            fns,
            buf,
            next_args,
            exhausted: false,
            announced: false,
            next_chunk: 0,
            in_flight: 0,
            window: 64,
            ordered,
            waiting: BTreeMap::new(),
            ready: VecDeque::new(),
            next_out: 0,
        })
    }

    fn open_job(&self, sink: Box<dyn Sink>, complete: bool) -> Result<u64> {
        let mut j = lock(&self.inner.jobs);
        match j.state {
            State::Running => {}
            State::Closed => return Err(Error::PoolClosed("closed")),
            State::Terminated => return Err(Error::PoolClosed("terminated")),
        }
        let id = j.next;
        j.next = (j.next + 1) & 0xffff_ffff;
        j.map.insert(
            id,
            Entry {
                pending: HashMap::new(),
                sink,
                complete,
            },
        );
        drop(j);
        self.inner.changed.notify_all();
        Ok(id)
    }

    /// The task message of chunk `chunk` of job `job`, with its encoded arguments.
    fn task(&self, job: u64, chunk: u64, fns: (i64, i64), args: &[u8]) -> Result<Arc<Vec<u8>>> {
        let msg = TaskMsg {
            reply: self.inner.results.clone(),
            id: (job << 32) | (chunk & 0xffff_ffff),
            image_id: lock(&self.inner.image_id).clone(),
            trampoline: fns.0,
            target: fns.1,
        };
        let meta = encode(&msg)?;
        let bytes = wire::task_bytes(&self.inner.id, &meta, args).map_err(Error::Config)?;
        self.inner.sh.check_size(bytes.len())?;
        Ok(Arc::new(bytes))
    }

    /// Registers and pushes chunks of `job` (registered first, so that no result can come
    /// back for a chunk the collector does not know).
    fn push(&self, job: u64, tasks: Vec<(u64, Arc<Vec<u8>>)>, complete: bool) -> Result<()> {
        let payloads: Vec<Arc<Vec<u8>>> = {
            let mut j = lock(&self.inner.jobs);
            let Some(e) = j.map.get_mut(&job) else {
                return Err(Error::PoolClosed("terminated"));
            };
            let mut out = Vec::with_capacity(tasks.len());
            for (chunk, bytes) in tasks {
                out.push(bytes.clone());
                e.pending.insert(chunk, bytes);
            }
            e.complete = complete;
            out
        };
        push_tasks(&self.inner.sh, &mut lock(&self.inner.submit), &payloads)
    }

    fn collect<T: Message, R: Message + Send + 'static, O: Send + 'static>(
        &self,
        fns: (i64, i64),
        mut items: impl Iterator<Item = T>,
        len: usize,
        chunksize: usize,
        finish: fn(Vec<R>) -> Result<O>,
    ) -> Result<AsyncResult<O>> {
        let slot = Arc::new(Outcome {
            m: Mutex::new(Slot::Waiting),
            cv: Condvar::new(),
        });
        let n = len.div_ceil(chunksize);
        if n > u32::MAX as usize {
            return Err(Error::Config("more than 2^32 chunks in one job".into()));
        }
        let sink = Collect::<R, O> {
            parts: (0..n).map(|_| None).collect(),
            left: n,
            finish,
            out: slot.clone(),
        };
        if n == 0 {
            let mut sink = sink;
            sink.done();
            return Ok(AsyncResult { out: slot });
        }
        let job = self.open_job(Box::new(sink), false)?;
        let mut tasks = Vec::with_capacity(n);
        // One chunk's items at a time, in one buffer: the input is never copied whole.
        let mut buf: Vec<T> = Vec::with_capacity(chunksize.min(len));
        for i in 0..=n {
            buf.clear();
            buf.extend(items.by_ref().take(chunksize));
            let chunk = i as u64;
            let made = match (i == n, buf.is_empty()) {
                (false, false) => {
                    // Plain items archive to their own size; others grow the buffer.
                    let room = buf.len() * std::mem::size_of::<T::Archived>() + 64;
                    encode_with_capacity(&SliceAsVec(&buf), room)
                        .map_err(Error::from)
                        .and_then(|args| self.task(job, chunk, fns, &args))
                }
                (true, true) => break,
                _ => Err(Error::Config(format!(
                    "the items' iterator said it had {len} items, and it did not"
                ))),
            };
            match made {
                // Chunk ids on the wire are (job << 32 | chunk); the collector splits them.
                Ok(bytes) => tasks.push(((job << 32) | chunk, bytes)),
                Err(e) => {
                    lock(&self.inner.jobs).map.remove(&job);
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.push(job, tasks, true) {
            lock(&self.inner.jobs).map.remove(&job);
            return Err(e);
        }
        Ok(AsyncResult { out: slot })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let jobs = self.jobs.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, mut en) in jobs.map.drain() {
            en.sink.fail(Error::PoolClosed("dropped"));
        }
    }
}

impl Drop for Pool {
    /// Stops the collector; an [`AsyncResult`] still waiting then fails with
    /// [`Error::PoolClosed`] (within a slice), as in Python, where a dropped pool terminates.
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
    }
}

/// The most task bytes in one pipeline: a pipeline is copied whole into one buffer by the
/// client, and a smaller batch reaches the workers sooner.
const PUSH_BYTES: usize = 256 << 10;

/// Pushes tasks in pipelines of at most 512 tasks and [`PUSH_BYTES`] (the first task alone,
/// so that a worker can start on it while the rest are sent).
pub(super) fn push_tasks(sh: &Shared, con: &mut Conn, payloads: &[Arc<Vec<u8>>]) -> Result<()> {
    let tasks = sh.key("tasks");
    let mut rest = payloads;
    let mut first = true;
    while !rest.is_empty() {
        let mut n = 1;
        let mut bytes = rest[0].len();
        while !first && n < rest.len().min(512) && bytes + rest[n].len() <= PUSH_BYTES {
            bytes += rest[n].len();
            n += 1;
        }
        first = false;
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        con.run(sh, None, |c| {
            let mut p = redis::pipe();
            for b in batch {
                p.cmd("LPUSH").arg(&tasks).arg(b.as_slice()).ignore();
            }
            p.query::<()>(c)
        })?;
    }
    Ok(())
}

/// The items of a call and how many there are: the iterator itself when its size hint is
/// exact (a range, a `Vec`), else the items collected first.
fn sized<T>(items: impl IntoIterator<Item = T>) -> (impl Iterator<Item = T>, usize) {
    let it = items.into_iter();
    match it.size_hint() {
        (lo, Some(hi)) if lo == hi => (Items::Exact(it), lo),
        _ => {
            let v: Vec<T> = it.collect();
            let n = v.len();
            (Items::Collected(v.into_iter()), n)
        }
    }
}

enum Items<I, T> {
    Exact(I),
    Collected(std::vec::IntoIter<T>),
}

impl<I: Iterator<Item = T>, T> Iterator for Items<I, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Items::Exact(it) => it.next(),
            Items::Collected(it) => it.next(),
        }
    }
}

/// The offsets of the trampoline and of `f`.
pub(super) fn call<T: Message, R: Message>(f: fn(T) -> R) -> Result<(i64, i64)> {
    let target = mp_process::symbol::offset_of(f as usize)?;
    let trampoline =
        mp_process::symbol::offset_of(worker::trampoline::<T, R> as Trampoline as usize)?;
    Ok((trampoline, target))
}

/// The trampoline of `starmap`: items are pairs, `f` takes two arguments.
pub(super) fn star<A: Message, B: Message, R: Message>(
    target: usize,
    args: &[u8],
) -> std::result::Result<AlignedVec<ALIGN>, String> {
    // SAFETY: as in `worker::trampoline`: `target` was resolved, after the build check, from the
    // offset that `Pool::starmap` took from a `fn(A, B) -> R` and paired with `star::<A, B, R>`.
    let f = unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(target) };
    let items: Vec<(A, B)> = decode(args).map_err(|e| format!("decoding the arguments: {e}"))?;
    let out: Vec<R> = items.into_iter().map(|(a, b)| f(a, b)).collect();
    worker::encode_results(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_read_in_place_when_aligned_and_copied_once_when_not() {
        let bytes: Vec<u8> = (0..64).collect();
        for start in [0, 1, 8, 16, 17, 64] {
            let p = Payload::new(bytes.clone(), start);
            assert_eq!(p.as_slice(), &bytes[start..], "start {start}");
            assert_eq!(p.as_slice().as_ptr() as usize % ALIGN, 0, "start {start}");
        }
        // Where the allocator put the bytes decides which: an aligned start stays in place.
        let v = bytes;
        let start = (ALIGN - v.as_ptr() as usize % ALIGN) % ALIGN;
        assert!(matches!(Payload::new(v, start), Payload::InPlace(_, s) if s == start));
    }

    #[test]
    fn a_chunk_of_garbage_fails_its_call_with_a_decode_error() {
        let out = Arc::new(Outcome {
            m: Mutex::new(Slot::Waiting),
            cv: Condvar::new(),
        });
        let mut sink = Collect::<String, Vec<String>> {
            parts: vec![None, None],
            left: 2,
            finish: Ok,
            out: out.clone(),
        };
        let good = encode(&vec![String::from("fine")]).unwrap();
        let mut v = vec![0u8; 16];
        v.extend_from_slice(&good);
        sink.accept(0, Ok(Payload::new(v, 16)));
        assert!(matches!(*lock(&out.m), Slot::Waiting));
        // A length that points past the end, where an archive of a Vec<String> should be.
        sink.accept(1, Ok(Payload::new(vec![0xff; 40], 8)));
        assert!(matches!(
            *lock(&out.m),
            Slot::Done(Err(Error::Message(mp_core::Error::Decode(_))))
        ));
    }
}
