//! [`IMap`]: results in order (or as they come), chunks sent as the iterator is read.

use super::*;
use mp_core::util::unpoisoned;

pub(super) struct Buf<R> {
    pub(super) q: Mutex<VecDeque<(u64, Result<Vec<R>>)>>,
    pub(super) cv: Condvar,
}

pub(super) struct ImapSink<R> {
    pub(super) buf: Arc<Buf<R>>,
}

impl<R: Message + Send> Sink for ImapSink<R> {
    fn accept(&mut self, id: u64, outcome: Result<Payload>) {
        let decoded = outcome.and_then(|b| decode::<Vec<R>>(b.as_slice()).map_err(Error::from));
        lock(&self.buf.q).push_back((id, decoded));
        self.buf.cv.notify_all();
    }

    fn fail(&mut self, e: Error) {
        lock(&self.buf.q).push_back((u64::MAX, Err(e)));
        self.buf.cv.notify_all();
    }
}

pub(super) type NextArgs<'a> = Box<dyn FnMut() -> Option<Result<Vec<u8>>> + 'a>;

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: yields each result, or the
/// error of the chunk it belongs to (once per failed chunk).
pub struct IMap<'a, R> {
    pub(super) pool: &'a Pool,
    pub(super) job: u64,
    pub(super) fns: (i64, i64),
    pub(super) buf: Arc<Buf<R>>,
    pub(super) next_args: NextArgs<'a>,
    pub(super) exhausted: bool,
    /// The pool was told that every chunk is out.
    pub(super) announced: bool,
    pub(super) next_chunk: u64,
    pub(super) in_flight: usize,
    pub(super) window: usize,
    pub(super) ordered: bool,
    pub(super) waiting: BTreeMap<u64, Result<Vec<R>>>,
    pub(super) ready: VecDeque<Result<R>>,
    pub(super) next_out: u64,
}

impl<R> std::fmt::Debug for IMap<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("job", &self.job)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl<R> IMap<'_, R> {
    fn fill(&mut self) -> Result<()> {
        let mut tasks = Vec::new();
        while !self.exhausted && self.in_flight + tasks.len() < self.window {
            match (self.next_args)() {
                None => self.exhausted = true,
                Some(args) => {
                    if self.next_chunk > u32::MAX as u64 {
                        return Err(Error::Config("more than 2^32 chunks in one imap".into()));
                    }
                    let c = self.next_chunk;
                    self.next_chunk += 1;
                    let bytes = self.pool.task(self.job, c, self.fns, &args?)?;
                    tasks.push(((self.job << 32) | c, bytes));
                }
            }
        }
        if !tasks.is_empty() || (self.exhausted && !self.announced) {
            self.announced = self.exhausted;
            self.in_flight += tasks.len();
            self.pool.push(self.job, tasks, self.exhausted)?;
        }
        Ok(())
    }

    fn take_ready(&mut self) {
        if self.ordered {
            while let Some(r) = self.waiting.remove(&self.next_out) {
                self.next_out += 1;
                self.spread(r);
            }
        }
    }

    fn spread(&mut self, r: Result<Vec<R>>) {
        match r {
            Ok(v) => self.ready.extend(v.into_iter().map(Ok)),
            Err(e) => self.ready.push_back(Err(e)),
        }
    }
}

impl<R> Iterator for IMap<'_, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if let Err(e) = self.fill() {
                self.exhausted = true;
                self.announced = true;
                self.in_flight = 0;
                return Some(Err(e));
            }
            if self.in_flight == 0 && self.exhausted {
                return None;
            }
            let mut q = lock(&self.buf.q);
            while q.is_empty() {
                q = unpoisoned(self.buf.cv.wait(q));
            }
            let got: Vec<_> = q.drain(..).collect();
            drop(q);
            for (id, r) in got {
                if id == u64::MAX {
                    // The pool failed the whole job (terminated, server unreachable).
                    self.exhausted = true;
                    self.announced = true;
                    self.in_flight = 0;
                    self.spread(r);
                    continue;
                }
                self.in_flight = self.in_flight.saturating_sub(1);
                if self.ordered {
                    self.waiting.insert(id, r);
                } else {
                    self.spread(r);
                }
            }
            self.take_ready();
        }
    }
}

impl<R> Drop for IMap<'_, R> {
    fn drop(&mut self) {
        lock(&self.pool.inner.jobs).map.remove(&self.job);
        self.pool.inner.changed.notify_all();
    }
}
