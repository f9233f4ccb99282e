//! The supervisor thread and the pool's life: it reads the results and hands them to their
//! jobs, notices dead workers (failing the task in a dead worker's slot) and replaces them,
//! and breaks, terminates and joins the pool.

use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mp_core::Shared;
use mp_process::{Child, Process, ProcessError, StartMethod};

use super::feed::put_outcome;
use super::{Inner, JobCache, State};
use crate::error::Error;
use crate::helpers::{lock, on_pool_thread, panic_text, set_pool_thread, wait, wait_timeout};
use crate::job::Job;
use crate::wire::{ArchivedResultMsg, Claim, Kind, Payload, ResultMsg, Slot, TaskMsg, UnknownKind};
use crate::worker::{self, InitArgs, InitSpec, WorkerArgs};

/// How long the supervisor sleeps on an empty result queue before it looks at the workers.
const NAP: Duration = Duration::from_millis(20);
/// Initializer failures in a row (panics and crashes alike, with no initializer completing
/// in between) that break the pool.
const INIT_FAILURES: u32 = 3;
/// How often a busy supervisor looks at the workers.
const CHECK_EVERY: Duration = Duration::from_millis(20);

fn exit_of(status: &Result<Option<()>, ProcessError>) -> (Option<i32>, Option<i32>) {
    match status {
        Ok(_) => (None, Some(0)),
        Err(e @ ProcessError::Signaled { signal, .. }) => (Some(*signal), e.exitcode()),
        Err(e) => (None, e.exitcode()),
    }
}

impl Inner {
    pub(super) fn start_worker(&self, slot: &Shared<Slot>, n: u64) -> Result<Child<()>, Error> {
        slot.reset();
        let init = self.cfg.init.as_ref().map(|i| InitSpec {
            args: InitArgs {
                encode: Some(i.args.clone()),
                bytes: None,
            },
            trampoline: i.trampoline,
            target: i.target,
        });
        let args = WorkerArgs {
            tasks: self.tasks.clone(),
            results: self.results.clone(),
            slot: slot.clone(),
            image_id: self.cfg.image_id.clone(),
            init,
            max_tasks: self.cfg.max_tasks,
            forked: self.cfg.method == StartMethod::Fork,
            insights: self.cfg.insights,
        };
        let prefix = match self.cfg.method {
            StartMethod::Fork => "ForkPoolWorker",
            StartMethod::Spawn => "SpawnPoolWorker",
            StartMethod::ForkServer => "ForkServerPoolWorker",
        };
        let child = Process::new(worker::worker_main, args)
            .name(format!("{prefix}-{n}"))
            .daemon(true)
            .start_method(self.cfg.method)
            .start()?;
        // The supervisor polls the workers' sentinels: open this one now, so that a failure
        // (no descriptor left) is a start error, not a worker nobody watches.
        if let Err(e) = child.sentinel() {
            let _ = child.kill();
            return Err(Error::Start(format!("the worker's sentinel: {e}")));
        }
        Ok(child)
    }

    pub(super) fn register(&self, job: Arc<dyn Job>) -> Result<u64, Error> {
        let mut t = lock(&self.table);
        match t.state {
            State::Running => {}
            State::Closed => return Err(Error::Closed),
            State::Terminated | State::Joined => return Err(Error::Terminated),
            State::Broken => {
                return Err(t
                    .broken
                    .as_ref()
                    .map_or(Error::Terminated, Error::duplicate))
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        t.jobs.insert(id, job);
        Ok(id)
    }

    /// Why puts stop: the error that broke the pool, or `Terminated`.
    pub(super) fn halt_error(&self) -> Error {
        let t = lock(&self.table);
        match (t.state, &t.broken) {
            (State::Broken, Some(e)) => e.duplicate(),
            _ => Error::Terminated,
        }
    }

    pub(super) fn check_open(&self) -> Result<(), Error> {
        let t = lock(&self.table);
        match t.state {
            State::Running => Ok(()),
            State::Closed => Err(Error::Closed),
            State::Broken => Err(t
                .broken
                .as_ref()
                .map_or(Error::Terminated, Error::duplicate)),
            State::Terminated | State::Joined => Err(Error::Terminated),
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        let mut t = lock(&self.table);
        t.jobs.remove(&id);
        if t.jobs.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Job `id` needs nothing more: it leaves the table, then its callbacks run (they may
    /// close and join the pool) and its outcome becomes ready.
    pub(super) fn finished(&self, id: u64, job: &dyn Job) {
        self.unregister(id);
        job.publish();
    }

    /// This pool's id, for [`on_pool_thread`].
    pub(crate) fn id(&self) -> usize {
        self as *const Inner as usize
    }

    pub(super) fn job(&self, id: u64) -> Option<Arc<dyn Job>> {
        lock(&self.table).jobs.get(&id).cloned()
    }

    /// Runs a pool thread's body; should it panic (a bug), the pool is broken rather than
    /// left with callers waiting forever.
    pub(super) fn guarded(self: Arc<Self>, what: &str, body: impl FnOnce(Arc<Self>)) {
        set_pool_thread(self.id());
        let me = self.clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || body(me))) {
            let msg = panic_text(&*p);
            self.break_pool(Error::Start(format!(
                "the pool's {what} thread panicked ({msg}); the pool cannot go on"
            )));
        }
    }

    pub(super) fn supervise(self: Arc<Self>) {
        let mut last_check = Instant::now();
        let mut cache: JobCache = None;
        loop {
            let mut got = 0u32;
            while let Some(g) = self.next_result() {
                self.handle(&g, &mut cache);
                drop(g);
                got += 1;
                if got % 64 == 0 && last_check.elapsed() >= CHECK_EVERY {
                    break;
                }
            }
            // Acquire pairs with the Release store in `stop_threads`.
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if got == 0 {
                // Do not keep a finished job alive while idle.
                cache = None;
            }
            if got == 0 || last_check.elapsed() >= CHECK_EVERY {
                self.check_workers(&mut cache);
                last_check = Instant::now();
            }
            if got == 0 {
                // The queue's own wait (its policy spins only while that can help), at most
                // NAP so that the workers are checked even while no result comes.
                match self.results.get_ref_timeout(NAP) {
                    Ok(g) => self.handle(&g, &mut cache),
                    Err(mp_queue::Error::Empty | mp_queue::Error::Closed) => {}
                    Err(e) => self.fail_pending(Error::QueueRead {
                        what: "result",
                        message: e.to_string(),
                    }),
                }
            }
        }
    }

    /// The next result if there is one now. The supervisor is the only reader of the result
    /// queue, so a queue that is not empty stays so until it reads: `get_ref` returns at once
    /// (and, unlike a zero timeout, reads no clock). A record the queue cannot read (it
    /// skips it) fails the pending work, and the next one is read.
    pub(super) fn next_result(&self) -> Option<mp_queue::Received<'_, ResultMsg>> {
        loop {
            if self.results.empty() {
                return None;
            }
            match self.results.get_ref() {
                Ok(g) => return Some(g),
                Err(mp_queue::Error::Empty | mp_queue::Error::Closed) => return None,
                Err(e) => self.fail_pending(Error::QueueRead {
                    what: "result",
                    message: e.to_string(),
                }),
            }
        }
    }

    /// Handles one result. `cache` keeps the last job looked up (results of one job come in
    /// runs), sparing the table lock and the hash per result.
    pub(super) fn handle(&self, msg: &ArchivedResultMsg, cache: &mut JobCache) {
        let pid = msg.pid.to_native();
        let message = || msg.message.as_str().to_string();
        // The chunk's error, or `None` when its results are in the payload.
        let err = match Kind::try_from(msg.kind.to_native()) {
            Ok(Kind::Wake) => return,
            Ok(Kind::InitOk) => {
                self.init_failures.store(0, Ordering::Relaxed);
                return;
            }
            Ok(Kind::TaskUnreadable) => {
                self.fail_pending(Error::QueueRead {
                    what: "task",
                    message: format!("worker pid {pid}: {}", msg.message.as_str()),
                });
                return;
            }
            Ok(Kind::InitFailed) => {
                // Counted when the worker is seen dead (it exits now), like a crash.
                lock(&self.init_failed).push((pid, message()));
                return;
            }
            Ok(Kind::Ok) => None,
            Ok(Kind::Panicked) => Some(Error::Panicked {
                pid,
                message: message(),
                location: msg.location.as_str().to_string(),
            }),
            Ok(Kind::Failed) => Some(Error::Failed { message: message() }),
            Ok(Kind::ResultNoSpace) => Some(Error::SharedMemory {
                what: "result",
                message: message(),
            }),
            Ok(Kind::ResultUnserializable) => Some(Error::Unserializable {
                what: "result",
                message: message(),
            }),
            Ok(Kind::ArgsUndecodable) => Some(Error::Unserializable {
                what: "arguments",
                message: message(),
            }),
            Err(UnknownKind(code)) => {
                // Not from a worker of this build: whose record it is cannot be trusted
                // either, so it is an unreadable record (as in `next_result`).
                self.fail_pending(Error::QueueRead {
                    what: "result",
                    message: format!("worker pid {pid}: a result of unknown kind {code}"),
                });
                return;
            }
        };
        let id = msg.job.to_native();
        let chunk = msg.chunk.to_native();
        let job = match cache {
            Some((cid, j)) if *cid == id => j.clone(),
            _ => {
                let Some(j) = self.job(id) else {
                    return;
                };
                *cache = Some((id, j.clone()));
                j
            }
        };
        let finished = match err {
            None => job.deliver(chunk, msg.payload.as_slice()),
            Some(e) => job.fail(chunk, e),
        };
        if finished {
            *cache = None;
            self.finished(id, &*job);
        }
    }

    /// A task or a result was lost in a queue, and whose it was is unknown: every job
    /// pending now fails with `err` (rather than one of them waiting forever); the pool
    /// goes on.
    pub(super) fn fail_pending(&self, err: Error) {
        let jobs: Vec<Arc<dyn Job>> = {
            let mut t = lock(&self.table);
            let jobs = t.jobs.drain().map(|(_, j)| j).collect();
            self.idle.notify_all();
            jobs
        };
        for j in jobs {
            j.abort(err.duplicate());
            j.publish();
        }
    }

    /// The initializer failed or a worker could not be started: fail everything, accept
    /// nothing more, replace no worker.
    pub(super) fn break_pool(&self, err: Error) {
        let jobs: Vec<Arc<dyn Job>> = {
            let mut t = lock(&self.table);
            if matches!(t.state, State::Terminated | State::Joined | State::Broken) {
                return;
            }
            t.state = State::Broken;
            t.broken = Some(err.duplicate());
            let jobs = t.jobs.drain().map(|(_, j)| j).collect();
            self.idle.notify_all();
            jobs
        };
        // Waiting puts give up: no task may ever be taken again.
        self.halted.store(true, Ordering::Relaxed);
        lock(&self.workers).replace = false;
        for j in jobs {
            j.abort(err.duplicate());
            j.publish();
        }
    }

    pub(super) fn check_workers(&self, cache: &mut JobCache) {
        let mut dead = Vec::new();
        {
            let mut w = lock(&self.workers);
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(w.list.len());
            let mut idx = Vec::with_capacity(w.list.len());
            for (i, e) in w.list.iter().enumerate() {
                // Opened when the worker started, so `sentinel` cannot fail here.
                if let Some(Ok(fd)) = e.child.as_ref().map(|c| c.sentinel()) {
                    fds.push(libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    idx.push(i);
                }
            }
            if fds.is_empty() {
                return;
            }
            self.check_deadlines(&mut w);
            // SAFETY: `fds` is a valid array of pollfds for the length passed; the pidfds stay
            // open while we hold the workers lock (their `Child`s are in the list).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            if n <= 0 {
                return;
            }
            for (f, &i) in fds.iter().zip(&idx) {
                if f.revents == 0 {
                    continue;
                }
                if let Some(mut c) = w.list[i].child.take() {
                    let status = c.join_timeout(Duration::from_millis(500));
                    if matches!(status, Ok(None)) {
                        w.list[i].child = Some(c);
                        continue;
                    }
                    dead.push((i, c.pid(), exit_of(&status)));
                }
            }
        }
        if dead.is_empty() {
            return;
        }
        // What the dead put before dying is in the result queue, in order: take it first,
        // so that only a task whose result never came is failed.
        while let Some(g) = self.next_result() {
            self.handle(&g, cache);
        }
        for (i, pid, (signal, exitcode)) in dead {
            #[cfg(feature = "tracing")]
            tracing::warn!(target: "mp::pool", pid, ?signal, ?exitcode, "a pool worker died");
            let (slot, init_timed_out) = {
                let w = lock(&self.workers);
                (w.list[i].slot.clone(), w.list[i].init_timed_out)
            };
            let in_init = slot.ready.load(Ordering::SeqCst) == 0;
            if let (true, true, Some(timeout)) = (init_timed_out, in_init, self.cfg.init_timeout) {
                // Killed in its initializer for taking too long: the pool is broken at once
                // (the workers would never get ready), as mpire does.
                self.break_pool(Error::InitTimeout { pid, timeout });
            }
            // Read after the worker died (its pidfd became readable), which orders its
            // SeqCst store in `worker_main` before this load.
            if self.cfg.init.is_some() && slot.ready.load(Ordering::SeqCst) == 0 {
                // Its initializer failed: it panicked (reported as INIT_FAILED, handled
                // above since the result queue was drained first) or the worker died in it.
                // Python restarts such workers forever; INIT_FAILURES in a row, with no
                // initializer completing in between (INIT_OK resets the count), break the
                // pool.
                let n = self.init_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let reported = {
                    let mut r = lock(&self.init_failed);
                    let i = r.iter().position(|(p, _)| *p == pid);
                    i.map(|i| r.swap_remove(i).1)
                };
                if n >= INIT_FAILURES {
                    let how = match reported {
                        Some(msg) => msg,
                        None => match (signal, exitcode) {
                            (Some(s), _) => format!("killed by signal {s}"),
                            (None, Some(c)) => format!("exited with code {c}"),
                            _ => "ended".into(),
                        },
                    };
                    self.break_pool(Error::Initializer(format!(
                        "{n} workers in a row failed in the initializer (the last, pid {pid}: {how})"
                    )));
                }
            }
            if let Some((Claim { job, chunk, .. }, timed_out)) = slot.running() {
                if let Some(j) = self.job(job) {
                    let lost = match timed_out {
                        // The supervisor stopped it (see `check_deadlines`).
                        Some(timeout) => {
                            #[cfg(feature = "tracing")]
                            tracing::warn!(
                                target: "mp::pool",
                                pid,
                                ?timeout,
                                job,
                                chunk,
                                "a task ran past its timeout: its worker was stopped"
                            );
                            Error::TaskTimeout { pid, timeout }
                        }
                        None => Error::WorkerLost {
                            pid,
                            signal,
                            exitcode,
                        },
                    };
                    if j.fail(chunk, lost) {
                        self.finished(job, &*j);
                    }
                }
            }
            self.replace(i);
        }
    }

    pub(super) fn replace(&self, place: usize) {
        let mut w = lock(&self.workers);
        // Acquire pairs with the Release store in `stop_threads`.
        if !w.replace || self.stopping.load(Ordering::Acquire) {
            return;
        }
        w.started += 1;
        let n = w.started;
        let slot = w.list[place].slot.clone();
        // What the dead worker did stays in the place's insights.
        let e = &mut w.list[place];
        e.past.add(e.pid, &e.slot.stats.read());
        e.init_timed_out = false;
        e.started += 1;
        match self.start_worker(&slot, n) {
            Ok(c) => {
                #[cfg(feature = "tracing")]
                tracing::info!(target: "mp::pool", place, pid = c.pid(), "a replacement worker started");
                w.list[place].pid = c.pid();
                w.list[place].child = Some(c);
            }
            Err(e) => {
                drop(w);
                self.break_pool(Error::Start(e.to_string()));
            }
        }
    }

    /// Stops the supervisor and feeder threads and waits for them (except for the calling
    /// thread, should a callback running on the supervisor call this).
    pub(super) fn stop_threads(&self) {
        // Release pairs with the Acquire loads in `supervise` and `replace`.
        self.stopping.store(true, Ordering::Release);
        let wake = ResultMsg {
            payload: Payload::default(),
            job: 0,
            chunk: 0,
            kind: Kind::Wake.into(),
            pid: std::process::id(),
            message: String::new(),
            location: String::new(),
        };
        let _ = self.results.put_nowait(wake);
        lock(&self.feeds).closed = true;
        self.feeds_cv.notify_all();
        self.room_cv.notify_all();
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }

    pub(super) fn terminate(&self) {
        let jobs: Vec<Arc<dyn Job>> = {
            let mut t = lock(&self.table);
            if matches!(t.state, State::Terminated | State::Joined) {
                return;
            }
            t.state = State::Terminated;
            let jobs = t.jobs.drain().map(|(_, j)| j).collect();
            self.idle.notify_all();
            jobs
        };
        self.halted.store(true, Ordering::Relaxed);
        let children: Vec<Child<()>> = {
            let mut w = lock(&self.workers);
            w.replace = false;
            w.list.iter_mut().filter_map(|e| e.child.take()).collect()
        };
        for c in &children {
            let _ = c.kill();
        }
        for j in jobs {
            j.abort(Error::Terminated);
            j.publish();
        }
        for mut c in children {
            let _ = c.join_timeout(Duration::from_secs(5));
        }
        self.stop_threads();
    }

    /// Python's `join`, with an optional deadline ([`Error::Timeout`] when it passes; what
    /// was done so far is kept, and a later call goes on from there).
    pub(super) fn join(&self, deadline: Option<Instant>) -> Result<(), Error> {
        if on_pool_thread(self.id()) {
            return Err(Error::InCallback);
        }
        {
            let mut t = lock(&self.table);
            match t.state {
                State::Running => return Err(Error::StillRunning),
                State::Terminated | State::Joined => {
                    drop(t);
                    self.stop_threads();
                    return Ok(());
                }
                State::Closed | State::Broken => {}
            }
            while !t.jobs.is_empty() && matches!(t.state, State::Closed | State::Broken) {
                t = match deadline {
                    None => wait(&self.idle, t),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(Error::Timeout);
                        }
                        wait_timeout(&self.idle, t, left)
                    }
                };
            }
            if matches!(t.state, State::Terminated | State::Joined) {
                drop(t);
                self.stop_threads();
                return Ok(());
            }
        }
        let broken = lock(&self.table).state == State::Broken;
        let (live, stops) = {
            let mut w = lock(&self.workers);
            w.replace = false;
            let live = w.list.iter().filter(|e| e.child.is_some()).count();
            (live, w.stops)
        };
        if broken {
            // Every job was failed and no task will be taken from a full queue: a stop
            // message might never fit, so the workers left are killed.
            for e in lock(&self.workers).list.iter() {
                if let Some(c) = &e.child {
                    let _ = c.kill();
                }
            }
        } else {
            // One stop message per live worker, counted so that a join that timed out does
            // not send them again.
            for _ in stops..live {
                let stop = TaskMsg::stop();
                let put =
                    self.put_waiting(deadline, |t| put_outcome(self.tasks.put_as(&stop, Some(t))));
                match put {
                    Ok(()) => lock(&self.workers).stops += 1,
                    Err(Error::Timeout) => return Err(Error::Timeout),
                    Err(_) => break,
                }
            }
        }
        let children: Vec<(usize, Child<()>)> = lock(&self.workers)
            .list
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| e.child.take().map(|c| (i, c)))
            .collect();
        let mut left = Vec::new();
        for (i, mut c) in children {
            let done = match deadline {
                None => {
                    let _ = c.join();
                    true
                }
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    !matches!(c.join_timeout(wait), Ok(None))
                }
            };
            if !done {
                left.push((i, c));
            }
        }
        if !left.is_empty() {
            // Timed out: the workers still running go back on the books.
            let mut w = lock(&self.workers);
            for (i, c) in left {
                w.list[i].child = Some(c);
            }
            return Err(Error::Timeout);
        }
        lock(&self.table).state = State::Joined;
        self.stop_threads();
        Ok(())
    }
}
