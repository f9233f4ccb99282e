//! [`AsyncResult`] and the sink that collects a job's chunks for it.

use super::*;
use mp_core::util::unpoisoned;

pub(super) enum Slot<O> {
    Waiting,
    Done(Result<O>),
    Taken,
}

pub(super) struct Outcome<O> {
    pub(super) m: Mutex<Slot<O>>,
    pub(super) cv: Condvar,
}

pub(super) struct Collect<R, O> {
    /// Each chunk's results, checked on arrival, and how many items they hold.
    pub(super) parts: Vec<Option<(Payload, usize)>>,
    pub(super) left: usize,
    pub(super) finish: fn(Vec<R>) -> Result<O>,
    pub(super) out: Arc<Outcome<O>>,
}

impl<R: Message, O> Collect<R, O> {
    fn set(&mut self, r: Result<O>) {
        let mut s = lock(&self.out.m);
        if matches!(*s, Slot::Waiting) {
            *s = Slot::Done(r);
        }
        drop(s);
        self.out.cv.notify_all();
    }

    /// Every chunk is in: the results go straight from the bytes they arrived in to the one
    /// vector the caller gets, sized once.
    pub(super) fn done(&mut self) {
        let total = self.parts.iter().flatten().map(|p| p.1).sum();
        let mut all: Vec<R> = Vec::with_capacity(total);
        let mut filled = || -> Result<()> {
            for (payload, _) in self.parts.drain(..).flatten() {
                let archived = access::<Vec<R>>(payload.as_slice())?;
                for item in deserialize_each::<R>(archived.as_slice()) {
                    all.push(item?);
                }
            }
            Ok(())
        };
        let r = filled().and_then(|()| (self.finish)(all));
        self.set(r);
    }
}

impl<R: Message + Send, O: Send> Sink for Collect<R, O> {
    fn accept(&mut self, id: u64, outcome: Result<Payload>) {
        // Checked here, so that a malformed chunk fails the call as soon as it arrives.
        let checked = outcome.and_then(|p| {
            let n = access::<Vec<R>>(p.as_slice())?.len();
            Ok((p, n))
        });
        match checked {
            Ok(part) => {
                if let Some(p) = usize::try_from(id).ok().and_then(|i| self.parts.get_mut(i)) {
                    if p.is_none() {
                        *p = Some(part);
                        self.left = self.left.saturating_sub(1);
                    }
                }
                if self.left == 0 {
                    self.done();
                }
            }
            Err(e) => self.set(Err(e)),
        }
    }

    fn fail(&mut self, e: Error) {
        self.set(Err(e));
    }
}

/// The result of an asynchronous call (Python's `AsyncResult`).
pub struct AsyncResult<O> {
    pub(super) out: Arc<Outcome<O>>,
}

impl<O> std::fmt::Debug for AsyncResult<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<O> AsyncResult<O> {
    /// Waits for the value and takes it (a second `get` is [`Error::ResultTaken`]).
    pub fn get(&self) -> Result<O> {
        self.take(None)
    }

    /// [`get`](Self::get) with a timeout: [`Error::Timeout`] when it runs out (the value can
    /// still be had later).
    pub fn get_timeout(&self, timeout: Duration) -> Result<O> {
        self.take(Some(timeout))
    }

    /// Waits until the value is there.
    pub fn wait(&self) {
        let _ = self.wait_until(None);
    }

    /// Waits at most `timeout`; true when the value is there.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    /// True once the value (or the error) is there.
    pub fn ready(&self) -> bool {
        !matches!(*lock(&self.out.m), Slot::Waiting)
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut s = lock(&self.out.m);
        while matches!(*s, Slot::Waiting) {
            match deadline {
                None => s = unpoisoned(self.out.cv.wait(s)),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s = self
                        .out
                        .cv
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }

    fn take(&self, timeout: Option<Duration>) -> Result<O> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if timeout.is_some() && !self.wait_until(deadline) {
            return Err(Error::Timeout);
        }
        if timeout.is_none() {
            self.wait_until(None);
        }
        match std::mem::replace(&mut *lock(&self.out.m), Slot::Taken) {
            Slot::Done(r) => r,
            Slot::Taken => Err(Error::ResultTaken),
            Slot::Waiting => Err(Error::Timeout),
        }
    }
}
