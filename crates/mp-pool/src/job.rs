//! The parent's bookkeeping for submitted work: one [`Job`] per call (a map, an apply, an
//! imap), which collects its chunks' results as the supervisor thread receives them.

use std::collections::{BTreeMap, VecDeque};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use mp_core::message::{access, deserialize, deserialize_into, ALIGN};
use mp_core::Message;
use rkyv::util::AlignedVec;

use crate::error::Error;
use crate::helpers::{lock, wait, wait_timeout};
use crate::result::Outcome;
use crate::track::Progress;
use mp_core::wait::Spin;

/// What the supervisor does with a job's chunks. Every method returns true when the job
/// needs nothing more (it is then dropped from the pool's table).
pub(crate) trait Job: Send + Sync {
    /// Chunk `chunk` succeeded: `bytes` is its encoded `Vec<R>`.
    fn deliver(&self, chunk: u64, bytes: &[u8]) -> bool;
    /// Chunk `chunk` failed.
    fn fail(&self, chunk: u64, err: Error) -> bool;
    /// The whole job is cancelled (terminate, broken pool).
    fn abort(&self, err: Error);
    /// True when the job's outcome is decided (its remaining chunks need not be sent).
    fn is_done(&self) -> bool;
    /// Runs the callbacks of a decided outcome and makes it ready. Called once the job left
    /// the pool's table (callbacks may close and join the pool, or look at it), with no lock
    /// held; does nothing when the outcome is not decided or already ready.
    fn publish(&self);
}

/// `bytes` if they are aligned for `access`, else a copy of them in `copy`.
fn aligned<'b>(bytes: &'b [u8], copy: &'b mut AlignedVec<ALIGN>) -> &'b [u8] {
    if bytes.is_empty() || (bytes.as_ptr() as usize) % ALIGN == 0 {
        return bytes;
    }
    copy.extend_from_slice(bytes);
    copy.as_slice()
}

/// A result that cannot be decoded.
fn undecodable(e: mp_core::Error) -> Error {
    Error::Unserializable {
        what: "result",
        message: e.to_string(),
    }
}

/// Decodes an encoded `Vec<R>`, copying it first if it is not aligned.
pub(crate) fn decode_vec<R: Message>(bytes: &[u8]) -> Result<Vec<R>, Error> {
    let mut copy = AlignedVec::new();
    let archived = access::<Vec<R>>(aligned(bytes, &mut copy)).map_err(undecodable)?;
    deserialize::<Vec<R>>(archived).map_err(undecodable)
}

/// The results of a [`CollectJob`], placed where they go as chunks come in.
struct CollectState<R> {
    /// The results in input order: the items of chunk `c` are initialized exactly when
    /// `got[c]`.
    values: Vec<MaybeUninit<R>>,
    got: Vec<bool>,
    chunksize: usize,
    remaining: u64,
    done: bool,
}

impl<R> CollectState<R> {
    fn range(&self, chunk: usize) -> std::ops::Range<usize> {
        let start = chunk * self.chunksize;
        start..(start + self.chunksize).min(self.values.len())
    }

    /// Every result, once every chunk came.
    fn take_all(&mut self) -> Option<Vec<R>> {
        if self.remaining != 0 || self.got.iter().any(|g| !g) {
            return None;
        }
        self.got.clear();
        let mut v = std::mem::ManuallyDrop::new(std::mem::take(&mut self.values));
        // SAFETY: every chunk came, so every element is initialized (`got` covers them
        // all, and is cleared so that `Drop` will not drop them again); `MaybeUninit<R>` has
        // the layout of `R`, so the allocation is a valid `Vec<R>` of the same length and
        // capacity, which takes it over (`v` is not dropped).
        Some(unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<R>(), v.len(), v.capacity()) })
    }

    /// Drops the results received so far.
    fn clear(&mut self) {
        for c in 0..self.got.len() {
            if std::mem::take(&mut self.got[c]) {
                let r = self.range(c);
                for v in &mut self.values[r] {
                    // SAFETY: chunk `c` came (`got[c]` was set), so its items are
                    // initialized; `got[c]` is now false, so they are dropped only here.
                    unsafe { v.assume_init_drop() };
                }
            }
        }
        self.values = Vec::new();
    }
}

impl<R> Drop for CollectState<R> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A job whose chunks make one value: map (an ordered `Vec`), apply (one value).
pub(crate) struct CollectJob<R, Out> {
    outcome: Arc<Outcome<Out>>,
    st: Mutex<CollectState<R>>,
    len: usize,
    chunksize: usize,
    finish: fn(Vec<R>) -> Result<Out, Error>,
    /// Told of every finished item.
    pub(crate) tracker: Option<Progress>,
    #[cfg(feature = "progress")]
    pub(crate) bar: Option<indicatif::ProgressBar>,
}

impl<R, Out> CollectJob<R, Out> {
    /// A job of `len` items in chunks of `chunksize` (`len > 0`).
    pub(crate) fn new(
        outcome: Arc<Outcome<Out>>,
        len: usize,
        chunksize: usize,
        finish: fn(Vec<R>) -> Result<Out, Error>,
    ) -> CollectJob<R, Out> {
        let chunks = len.div_ceil(chunksize);
        CollectJob {
            outcome,
            st: Mutex::new(CollectState {
                values: Vec::new(),
                got: vec![false; chunks],
                chunksize,
                remaining: chunks as u64,
                done: false,
            }),
            len,
            chunksize,
            finish,
            tracker: None,
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    fn chunk_range(&self, chunk: u64) -> Option<std::ops::Range<usize>> {
        let start = (chunk as usize).checked_mul(self.chunksize)?;
        (start < self.len).then(|| start..(start + self.chunksize).min(self.len))
    }

    /// Decides the outcome; `delivered` items came with the chunk that finished the job (for
    /// the tracker, told before the outcome is decided: `get` may return from then on).
    fn finish_with(
        &self,
        mut st: MutexGuard<'_, CollectState<R>>,
        v: Result<(), Error>,
        delivered: u64,
    ) -> bool {
        st.done = true;
        let all = match v {
            Ok(()) => st.take_all(),
            Err(_) => None,
        };
        // On failure, the items not answered yet are finished too (they will never be).
        let lost: u64 = match (&self.tracker, &all) {
            (Some(_), None) => (0..st.got.len())
                .filter(|&c| !st.got[c])
                .filter_map(|c| self.chunk_range(c as u64))
                .map(|r| r.len() as u64)
                .sum(),
            _ => 0,
        };
        st.clear();
        drop(st);
        if let Some(t) = &self.tracker {
            t.finished(delivered + lost, lost);
        }
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        // Decided here, published (callbacks, ready) by the pool once the job left its table.
        let v = match (v, all) {
            (Ok(()), Some(all)) => (self.finish)(all),
            (Ok(()), None) => Err(Error::Unserializable {
                what: "result",
                message: "a chunk's result is missing items".into(),
            }),
            (Err(e), _) => Err(e),
        };
        self.outcome.decide(v);
        true
    }
}

impl<R: Message + Send, Out: Send> Job for CollectJob<R, Out> {
    fn deliver(&self, chunk: u64, bytes: &[u8]) -> bool {
        let Some(range) = self.chunk_range(chunk) else {
            return lock(&self.st).done;
        };
        let mut copy = AlignedVec::new();
        let archived = access::<Vec<R>>(aligned(bytes, &mut copy));
        let mut st = lock(&self.st);
        if st.done || st.got[chunk as usize] {
            return st.done;
        }
        let archived = match archived {
            Ok(a) if a.len() == range.len() => a,
            Ok(a) => {
                let e = Error::Unserializable {
                    what: "result",
                    message: format!(
                        "chunk {chunk} brought {} results for {} items",
                        a.len(),
                        range.len()
                    ),
                };
                return self.finish_with(st, Err(e), 0);
            }
            Err(e) => return self.finish_with(st, Err(undecodable(e)), 0),
        };
        // Straight into their places: no Vec per chunk, no concatenation at the end.
        if st.values.is_empty() {
            // Made here, by the thread that fills it, on the first answer.
            st.values.resize_with(self.len, MaybeUninit::uninit);
        }
        if let Err(e) = deserialize_into::<R>(archived.as_slice(), &mut st.values[range.clone()]) {
            return self.finish_with(st, Err(undecodable(e)), 0);
        }
        st.got[chunk as usize] = true;
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.inc(range.len() as u64);
        }
        st.remaining -= 1;
        if st.remaining == 0 {
            return self.finish_with(st, Ok(()), range.len() as u64);
        }
        drop(st);
        if let Some(t) = &self.tracker {
            t.finished(range.len() as u64, 0);
        }
        false
    }

    fn fail(&self, chunk: u64, err: Error) -> bool {
        let st = lock(&self.st);
        if st.done || st.got.get(chunk as usize).is_none_or(|&g| g) {
            return st.done;
        }
        self.finish_with(st, Err(err), 0)
    }

    fn abort(&self, err: Error) {
        let st = lock(&self.st);
        if !st.done {
            self.finish_with(st, Err(err), 0);
        }
    }

    fn is_done(&self) -> bool {
        lock(&self.st).done
    }

    fn publish(&self) {
        self.outcome.publish();
    }
}

/// The set of chunks submitted and not answered yet. Chunks are submitted in order and
/// at most `in_flight` are outstanding, so a window over the oldest outstanding one does it
/// without hashing.
#[derive(Debug, Default)]
struct Window {
    /// The chunk number of `flags[0]`.
    base: u64,
    flags: VecDeque<bool>,
}

impl Window {
    fn insert(&mut self, chunk: u64) {
        // Empty: the window starts at `chunk` (also when `chunk` is below the old base: a chunk
        // removed by `unsubmitted` and submitted again).
        if self.flags.is_empty() {
            self.base = chunk;
            self.flags.push_back(true);
            return;
        }
        let Some(i) = chunk.checked_sub(self.base) else {
            return;
        };
        let i = i as usize;
        while self.flags.len() <= i {
            self.flags.push_back(false);
        }
        self.flags[i] = true;
    }

    /// True when `chunk` was outstanding (it is not any more).
    fn remove(&mut self, chunk: u64) -> bool {
        let Some(i) = chunk.checked_sub(self.base) else {
            return false;
        };
        match self.flags.get_mut(i as usize) {
            Some(f) if *f => {
                *f = false;
                while self.flags.front() == Some(&false) {
                    self.flags.pop_front();
                    self.base += 1;
                }
                true
            }
            _ => false,
        }
    }

    fn clear(&mut self) {
        self.base += self.flags.len() as u64;
        self.flags.clear();
    }
}

struct IMapState<R> {
    /// Chunks submitted and not answered yet.
    outstanding: Window,
    /// Ordered: answers by chunk number.
    by_chunk: BTreeMap<u64, Result<Vec<R>, Error>>,
    /// Unordered: answers in arrival order.
    arrived: VecDeque<Result<Vec<R>, Error>>,
    /// Set once by `abort` and never cleared: after it no chunk is submitted or answered.
    aborted: Option<Error>,
    /// The consumer sleeps on `cv` (so an answer must notify it).
    sleeping: bool,
    /// Tasks awaiting the next answer ([`IMapJob::answered`]).
    wakers: Vec<std::task::Waker>,
}

/// The job behind an `imap`/`imap_unordered` iterator.
pub(crate) struct IMapJob<R> {
    ordered: bool,
    st: Mutex<IMapState<R>>,
    cv: Condvar,
    /// Answers recorded so far: the consumer spins on it before sleeping.
    answers: AtomicU64,
    /// Told of every finished item.
    pub(crate) tracker: Option<Progress>,
    /// Items per chunk (for the tracker, when a chunk fails).
    pub(crate) chunksize: u64,
    #[cfg(feature = "progress")]
    pub(crate) bar: Option<indicatif::ProgressBar>,
}

/// The future of [`IMapJob::answered`].
pub(crate) struct Answered<'a, R> {
    job: &'a IMapJob<R>,
    seen: u64,
}

impl<R> std::future::Future for Answered<'_, R> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.job.answers.load(Ordering::Acquire) != self.seen {
            return std::task::Poll::Ready(());
        }
        let mut st = lock(&self.job.st);
        // Answers are counted under the lock: no answer can slip between this look and the
        // waker's registration.
        if self.job.answers.load(Ordering::Acquire) != self.seen {
            return std::task::Poll::Ready(());
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }
}

/// What waiting for the next chunk gave.
pub(crate) enum Next<R> {
    Chunk(Result<Vec<R>, Error>),
    Aborted(Error),
    Timeout,
}

impl<R: Message + Send> IMapJob<R> {
    pub(crate) fn new(ordered: bool) -> IMapJob<R> {
        IMapJob {
            ordered,
            st: Mutex::new(IMapState {
                outstanding: Window::default(),
                by_chunk: BTreeMap::new(),
                arrived: VecDeque::new(),
                aborted: None,
                sleeping: false,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            answers: AtomicU64::new(0),
            tracker: None,
            chunksize: 1,
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    /// Records that `chunk` is about to be submitted; false (and nothing recorded) once
    /// the job was aborted: an aborted job takes no more chunks.
    pub(crate) fn submitted(&self, chunk: u64) -> bool {
        let mut st = lock(&self.st);
        if st.aborted.is_some() {
            return false;
        }
        st.outstanding.insert(chunk);
        true
    }

    /// Forgets `chunk`, recorded by [`submitted`](Self::submitted) but not put after all
    /// (the deadline passed first): it will be submitted again.
    pub(crate) fn unsubmitted(&self, chunk: u64) {
        lock(&self.st).outstanding.remove(chunk);
    }

    /// Records an answer produced in the parent (a chunk whose items could not be encoded).
    pub(crate) fn answer(&self, chunk: u64, result: Result<Vec<R>, Error>) {
        let mut st = lock(&self.st);
        if st.outstanding.remove(chunk) {
            if let Some(t) = &self.tracker {
                // Counted before the consumer can see the answer (it is not recorded yet):
                // once it has every result, the tracker has every one too. A chunk answered
                // twice (a worker stopped after it sent its result) counts once.
                let (done, failed) = match &result {
                    Ok(v) => (v.len() as u64, 0),
                    Err(_) => (self.chunksize, self.chunksize),
                };
                drop(st);
                t.finished(done, failed);
                st = lock(&self.st);
            }
            if self.ordered {
                st.by_chunk.insert(chunk, result);
            } else {
                st.arrived.push_back(result);
            }
        }
        // Release pairs with the Acquire load of the spinning consumer in `next`.
        self.answers.fetch_add(1, Ordering::Release);
        let sleeping = st.sleeping;
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        if sleeping {
            self.cv.notify_all();
        }
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    /// The number of answers so far (for [`answered`](Self::answered)).
    pub(crate) fn answers(&self) -> u64 {
        self.answers.load(Ordering::Acquire)
    }

    /// A future that resolves once an answer (or the abort) came after the first `seen`
    /// ([`answers`](Self::answers)): what an async consumer awaits between its attempts.
    pub(crate) fn answered(&self, seen: u64) -> Answered<'_, R> {
        Answered { job: self, seen }
    }

    /// Waits for the next answer: chunk `want` when ordered, any when unordered.
    pub(crate) fn next(&self, want: u64, deadline: Option<Instant>) -> Next<R> {
        let mut st = lock(&self.st);
        let mut spun = false;
        // The wait policy's spin (mp_core::wait), kept to the end of the wait: dropping it
        // then teaches it whether the spin should have lasted longer.
        let mut spin: Option<Spin> = None;
        loop {
            let got = if self.ordered {
                st.by_chunk.remove(&want)
            } else {
                st.arrived.pop_front()
            };
            if let Some(r) = got {
                return Next::Chunk(r);
            }
            // Sticky: once aborted, every later wait says so (the iterator stops at the first).
            if let Some(e) = &st.aborted {
                return Next::Aborted(e.duplicate());
            }
            // Spin only while time is left: after a timed wait, a spin of many yields on a busy
            // machine could outlast the deadline (`next_timeout` returned a late answer
            // instead of timing out).
            if !spun && deadline.is_none_or(|d| Instant::now() < d) {
                spun = true;
                // Acquire pairs with the Release increment in `answer`.
                let seen = self.answers.load(Ordering::Acquire);
                drop(st);
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let s = spin.insert(Spin::new(&self.answers, mp_core::Deadline::after(left)));
                while self.answers.load(Ordering::Acquire) == seen && s.spin() {}
                st = lock(&self.st);
                continue;
            }
            st.sleeping = true;
            match deadline {
                None => st = wait(&self.cv, st),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        st.sleeping = false;
                        return Next::Timeout;
                    }
                    st = wait_timeout(&self.cv, st, d - now);
                }
            }
            st.sleeping = false;
            spun = false;
        }
    }
}

impl<R: Message + Send> Job for IMapJob<R> {
    fn deliver(&self, chunk: u64, bytes: &[u8]) -> bool {
        let r = decode_vec::<R>(bytes);
        #[cfg(feature = "progress")]
        if let (Some(bar), Ok(v)) = (&self.bar, &r) {
            bar.inc(v.len() as u64);
        }
        self.answer(chunk, r);
        false
    }

    fn fail(&self, chunk: u64, err: Error) -> bool {
        self.answer(chunk, Err(err));
        false
    }

    fn abort(&self, err: Error) {
        let mut st = lock(&self.st);
        if st.aborted.is_none() {
            st.aborted = Some(err);
        }
        st.outstanding.clear();
        // Release pairs with the Acquire loads of the spinning consumer in `next`.
        self.answers.fetch_add(1, Ordering::Release);
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        self.cv.notify_all();
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    fn is_done(&self) -> bool {
        lock(&self.st).aborted.is_some()
    }

    /// Nothing to publish: the consumer takes the answers.
    fn publish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::AsyncResult;

    fn collect(
        len: usize,
        chunksize: usize,
    ) -> (CollectJob<String, Vec<String>>, AsyncResult<Vec<String>>) {
        let outcome = Outcome::new(0);
        let job = CollectJob::new(outcome.clone(), len, chunksize, Ok);
        (job, AsyncResult::new(outcome))
    }

    fn enc(v: &[&str]) -> AlignedVec<ALIGN> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        mp_core::message::encode(&v).unwrap()
    }

    #[test]
    fn collect_places_chunks_that_come_in_any_order() {
        let (job, r) = collect(5, 2);
        assert!(!job.deliver(2, &enc(&["e"])));
        assert!(!job.deliver(0, &enc(&["a", "b"])));
        assert!(!job.deliver(0, &enc(&["x", "y"])), "a chunk counts once");
        assert!(!r.ready());
        assert!(job.deliver(1, &enc(&["c", "d"])));
        job.publish();
        assert_eq!(r.get().unwrap(), ["a", "b", "c", "d", "e"]);
        // Unaligned bytes are copied first.
        let (job, r) = collect(1, 1);
        let b = enc(&["only"]);
        let mut shifted = AlignedVec::<ALIGN>::new();
        shifted.push(0);
        shifted.extend_from_slice(&b);
        assert!(job.deliver(0, &shifted[1..]));
        job.publish();
        assert_eq!(r.get().unwrap(), ["only"]);
    }

    #[test]
    fn collect_fails_on_a_bad_chunk_and_drops_what_came() {
        let (job, r) = collect(4, 2);
        assert!(!job.deliver(1, &enc(&["c", "d"])));
        assert!(job.deliver(0, &enc(&["a"])), "one result for two items");
        job.publish();
        assert!(matches!(
            r.get(),
            Err(Error::Unserializable { what: "result", .. })
        ));
        assert!(
            job.deliver(0, &enc(&["a", "b"])),
            "done: later chunks are ignored"
        );
        let (job, r) = collect(4, 2);
        assert!(!job.deliver(0, &enc(&["a", "b"])));
        assert!(job.deliver(1, &[1, 2, 3]), "undecodable");
        job.publish();
        assert!(r.get().is_err());
        let (job, r) = collect(4, 2);
        assert!(!job.deliver(0, &enc(&["a", "b"])));
        job.abort(Error::Terminated);
        job.publish();
        assert!(matches!(r.get(), Err(Error::Terminated)));
        assert!(job.is_done() && job.fail(7, Error::Terminated));
    }

    #[test]
    fn window_tracks_outstanding_chunks() {
        let mut w = Window::default();
        for c in 0..5 {
            w.insert(c);
        }
        assert!(w.remove(2));
        assert!(!w.remove(2), "answered once");
        assert!(w.remove(0));
        assert_eq!(w.base, 1);
        assert!(w.remove(1));
        assert_eq!(w.base, 3, "the window moves past every answered chunk");
        w.insert(5);
        assert!(w.remove(5));
        assert!(w.remove(3) && w.remove(4));
        assert!(w.flags.is_empty());
        assert!(!w.remove(0) && !w.remove(99));
        w.insert(6);
        w.clear();
        assert!(!w.remove(6));
        w.insert(7);
        assert!(w.remove(7));
        // A chunk taken back (not submitted after all) and submitted again.
        w.insert(8);
        assert!(w.remove(8));
        w.insert(8);
        assert!(w.remove(8));
    }
}
