//! The error type of mp-futures.

use std::sync::Arc;

/// What went wrong with an executor or one of its futures.
///
/// It is `Clone` (a future's error can be read any number of times, as Python's
/// `exception()` can): errors that come from mp-pool and have no variant here are kept whole
/// in [`Error::Pool`], behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The future was cancelled before it ran ([`Future::cancel`](crate::Future::cancel), or
    /// `shutdown(_, cancel_futures = true)`): Python's `CancelledError`.
    #[error("the future was cancelled before it ran")]
    Cancelled,
    /// A timed wait ran out (Python's `TimeoutError`): the result was not there in time, or
    /// `as_completed` / a `map` iterator passed its deadline. The work goes on (except in a
    /// `map`, which cancels what it had not yielded, as Python's does).
    #[error("timed out waiting for a future")]
    Timeout,
    /// The task panicked in its worker; the worker survives and the executor goes on.
    #[error("a task panicked in worker pid {pid} at {location}: {message}")]
    Panicked {
        /// The worker's pid.
        pid: u32,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
    },
    /// A fallible task ([`try_submit`](crate::ProcessPoolExecutor::try_submit)) returned
    /// `Err`; the message is the error's `Display`.
    #[error("a task failed: {message}")]
    Failed {
        /// The error's message.
        message: String,
    },
    /// The worker running the task died (SIGKILL, a segfault, the OOM killer, `exit`).
    /// Only this future fails: the worker is replaced and the executor goes on (Python
    /// breaks the whole executor with `BrokenProcessPool` there).
    #[error("the worker (pid {pid}) running the task died ({})", lost(*signal, *exitcode))]
    WorkerLost {
        /// The worker's pid.
        pid: u32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        exitcode: Option<i32>,
    },
    /// Work was submitted after [`shutdown`](crate::ProcessPoolExecutor::shutdown) (Python's
    /// `RuntimeError: cannot schedule new futures after shutdown`).
    #[error("the executor is shut down: no new work is accepted after shutdown()")]
    Shutdown,
    /// The value was already moved out by [`Future::take`](crate::Future::take).
    #[error("the result was already taken by an earlier take()")]
    AlreadyTaken,
    /// A wait for a future that is not done was made in a done callback, on the executor's
    /// own thread: that thread delivers what it would wait for, so it would never return
    /// (Python deadlocks there). Waiting for the callback's own future works: it is done.
    #[error(
        "a wait for an unfinished future was made in a done callback, on the executor's own \
         thread (which delivers what it waits for)"
    )]
    InCallback,
    /// A setting that cannot work (0 workers, `max_in_flight(0)`, ...).
    #[error("invalid executor configuration: {0}")]
    Config(String),
    /// Any other error of the pool underneath (arguments or a result that cannot be
    /// serialized, shared memory full, a broken initializer, ...).
    #[error(transparent)]
    Pool(Arc<mp_pool::Error>),
}

fn lost(signal: Option<i32>, exitcode: Option<i32>) -> String {
    match (signal, exitcode) {
        (Some(s), _) => format!("killed by signal {s}"),
        (None, Some(c)) => format!("exited with code {c}"),
        (None, None) => "ended".into(),
    }
}

impl From<mp_pool::Error> for Error {
    fn from(e: mp_pool::Error) -> Self {
        match e {
            mp_pool::Error::Panicked {
                pid,
                message,
                location,
            } => Error::Panicked {
                pid,
                message,
                location,
            },
            mp_pool::Error::Failed { message } => Error::Failed { message },
            mp_pool::Error::WorkerLost {
                pid,
                signal,
                exitcode,
            } => Error::WorkerLost {
                pid,
                signal,
                exitcode,
            },
            mp_pool::Error::Timeout => Error::Timeout,
            mp_pool::Error::Config(m) => Error::Config(m),
            other => Error::Pool(Arc::new(other)),
        }
    }
}
