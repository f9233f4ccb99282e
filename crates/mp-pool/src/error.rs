//! The error type of mp-pool.

use std::time::Duration;

/// What went wrong with a pool or one of its tasks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked in its worker (not printed there, as Python does not print a
    /// task's exception in the worker). The worker survives and the pool stays usable.
    #[error("a task panicked in worker pid {pid} at {location}: {message}")]
    Panicked {
        /// The worker's pid.
        pid: u32,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
    },
    /// A fallible task (`try_map`, `try_apply`, ...) returned `Err`; the message is the
    /// error's `Display`.
    #[error("a task failed: {message}")]
    Failed {
        /// The error's message.
        message: String,
    },
    /// A task's arguments or its result could not be serialized (or a task's arguments
    /// could not be decoded by the worker). Nothing hangs and no worker is lost.
    #[error("a task's {what} could not be serialized: {message}")]
    Unserializable {
        /// `"arguments"` or `"result"`.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
    /// The worker running the task died (SIGKILL, segfault, the OOM killer, `exit`) before
    /// returning its result. The worker is replaced and the other tasks go on.
    #[error("the worker (pid {pid}) running the task died: {}", lost_reason(*signal, *exitcode))]
    WorkerLost {
        /// The worker's pid.
        pid: u32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        exitcode: Option<i32>,
    },
    /// A task or a result could not be read from the pool's shared queues (a record that
    /// cannot be mapped, e.g. an oversized message when the machine is out of memory, or a
    /// damaged one). Which job it belonged to is unknown, so every job pending at that
    /// moment fails with this error instead of waiting forever for it; the pool goes on.
    #[error(
        "a {what} could not be read from the pool's shared queue ({message}): the work \
         pending then fails, as any of it may have owned it"
    )]
    QueueRead {
        /// `"task"` (read by a worker) or `"result"` (read by the parent).
        what: &'static str,
        /// What the queue said.
        message: String,
    },
    /// The pool's shared memory could not take a task's arguments or result: growing or
    /// mapping it failed (`/dev/shm` or the machine's memory is full, or a limit such as
    /// `RLIMIT_FSIZE` or `RLIMIT_AS` was reached). Nothing hangs and no worker is lost; free
    /// some memory or send smaller items.
    #[error(
        "the pool's shared memory could not take a task's {what} ({message}): /dev/shm or \
         the memory is full, or a limit was reached"
    )]
    SharedMemory {
        /// `"arguments"` or `"result"`.
        what: &'static str,
        /// What the system said.
        message: String,
    },
    /// A timed wait ran out (Python's `multiprocessing.TimeoutError`): the result was not
    /// ready (`get_timeout`, `next_timeout`), or the work and the workers were not done
    /// ([`Pool::join_timeout`](crate::Pool::join_timeout)). Nothing is lost: wait again.
    #[error("timed out waiting for the pool")]
    Timeout,
    /// A task ran longer than its timeout ([`PoolBuilder::task_timeout`](crate::PoolBuilder::task_timeout)
    /// or [`Tasks::timeout`](crate::Tasks::timeout); mpire's `task_timeout`): the worker
    /// running it was killed (SIGKILL, which a task cannot block or catch) and replaced.
    /// The task's chunk fails with this error; the other tasks go on.
    #[error(
        "a task ran longer than its timeout of {timeout:?}: its worker (pid {pid}) was killed \
         and replaced"
    )]
    TaskTimeout {
        /// The pid of the worker that was killed.
        pid: u32,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// A worker's initializer did not finish within
    /// [`PoolBuilder::worker_init_timeout`](crate::PoolBuilder::worker_init_timeout): the
    /// worker was killed and the pool is broken (as by [`Error::Initializer`]): pending and
    /// new work fail with this error, rather than wait for workers that never start.
    #[error(
        "a worker's initializer did not finish within {timeout:?} (pid {pid}, killed): the \
         pool is broken"
    )]
    InitTimeout {
        /// The pid of the worker that was killed.
        pid: u32,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// `successful()` was asked before the result was ready (Python's `ValueError`).
    #[error("the result is not ready yet")]
    NotReady,
    /// The value of an [`AsyncResult`](crate::AsyncResult) was already taken by an earlier
    /// `get`.
    #[error("the result was already taken by an earlier get()")]
    AlreadyTaken,
    /// Work was submitted after [`Pool::close`](crate::Pool::close).
    #[error("the pool is closed: no new work is accepted after close()")]
    Closed,
    /// Work was submitted after [`Pool::terminate`](crate::Pool::terminate), or a pending
    /// task was cancelled by it.
    #[error("the pool was terminated")]
    Terminated,
    /// A call that waits for the pool (a blocking `map`/`apply`/`starmap`, `get` on a result
    /// that is not ready, an `imap`'s `next`, `join`) was made on one of the pool's own
    /// threads, that is in a result callback: those threads deliver what it would wait for,
    /// so it would never return (Python deadlocks there). Submit with the `_async` forms.
    #[error(
        "a call that waits for the pool was made in one of its callbacks, on the pool's own \
         thread (which delivers what it waits for): use the _async forms there"
    )]
    InCallback,
    /// [`Pool::join`](crate::Pool::join) was called before `close()` or `terminate()`.
    #[error("the pool is still running: call close() or terminate() before join()")]
    StillRunning,
    /// A setting that cannot work (0 processes, `max_tasks_per_child(0)`, chunksize 0, ...).
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// The initializer failed in a worker: the pool is broken (every pending task fails with
    /// this error and new work is refused), where Python would restart workers forever.
    #[error("the pool's initializer failed in a worker: {0}")]
    Initializer(String),
    /// Starting a worker failed; the pool is broken.
    #[error("starting a pool worker failed: {0}")]
    Start(String),
    /// From mp-process.
    #[error(transparent)]
    Process(#[from] mp_process::Error),
    /// From mp-queue.
    #[error(transparent)]
    Queue(#[from] mp_queue::Error),
    /// From mp-core.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

fn lost_reason(signal: Option<i32>, exitcode: Option<i32>) -> String {
    match (signal, exitcode) {
        (Some(s), _) => format!("killed by signal {s}"),
        (None, Some(c)) => format!("exited with code {c}"),
        (None, None) => "ended".into(),
    }
}

impl Error {
    /// A copy of the error for a second receiver (errors that come from other crates are
    /// copied as their message).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Panicked {
                pid,
                message,
                location,
            } => Error::Panicked {
                pid: *pid,
                message: message.clone(),
                location: location.clone(),
            },
            Error::Failed { message } => Error::Failed {
                message: message.clone(),
            },
            Error::Unserializable { what, message } => Error::Unserializable {
                what,
                message: message.clone(),
            },
            Error::WorkerLost {
                pid,
                signal,
                exitcode,
            } => Error::WorkerLost {
                pid: *pid,
                signal: *signal,
                exitcode: *exitcode,
            },
            Error::QueueRead { what, message } => Error::QueueRead {
                what,
                message: message.clone(),
            },
            Error::SharedMemory { what, message } => Error::SharedMemory {
                what,
                message: message.clone(),
            },
            Error::TaskTimeout { pid, timeout } => Error::TaskTimeout {
                pid: *pid,
                timeout: *timeout,
            },
            Error::InitTimeout { pid, timeout } => Error::InitTimeout {
                pid: *pid,
                timeout: *timeout,
            },
            Error::Timeout => Error::Timeout,
            Error::NotReady => Error::NotReady,
            Error::AlreadyTaken => Error::AlreadyTaken,
            Error::Closed => Error::Closed,
            Error::Terminated => Error::Terminated,
            Error::StillRunning => Error::StillRunning,
            Error::InCallback => Error::InCallback,
            Error::Config(m) => Error::Config(m.clone()),
            Error::Initializer(m) => Error::Initializer(m.clone()),
            Error::Start(m) => Error::Start(m.clone()),
            other => Error::Start(other.to_string()),
        }
    }
}
