//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong in mp-redis. Converts into `mp::Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL or a setting is wrong (bad URL, `rediss://` in a build without the `tls`
    /// feature, a zero where a count is needed, ...).
    #[error("mp-redis configuration: {0}")]
    Config(String),
    /// The server refused the credentials (`WRONGPASS`, `NOAUTH`, an ACL user without the
    /// right). Not retried: fix the password or the user in the URL.
    #[error(
        "the Redis server refused the credentials: {0} (check the password or ACL user in the URL)"
    )]
    Auth(String),
    /// The TLS handshake failed for a reason retrying will not fix (a server certificate
    /// that no trusted root signed, a client certificate the server wants and did not get).
    #[error("TLS with the Redis server failed: {0} (see ClusterBuilder::tls_root_cert)")]
    Tls(String),
    /// The server could not be reached (or kept dropping the connection) for `retried`, the
    /// cluster's retry budget; the last error is given.
    #[error(
        "the Redis server did not answer for {retried:?} ({last}); is it running and reachable?"
    )]
    Unreachable {
        /// How long calls were retried.
        retried: Duration,
        /// The last error seen.
        last: String,
    },
    /// The server answered with an error that retrying will not fix.
    #[error("Redis error: {0}")]
    Redis(String),
    /// A value (argument, result, queue item, dict entry) is larger than the cluster's cap;
    /// it was not sent.
    #[error("a value of {size} bytes exceeds the cluster's cap of {cap} bytes (ClusterBuilder::max_value_bytes)")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// A message could not be encoded or decoded (a value read back as another type, or
    /// garbage under the cluster's prefix).
    #[error(transparent)]
    Message(#[from] mp_core::Error),
    /// A task function could not be named for another process (it lives in a shared library,
    /// not in the executable).
    #[error(transparent)]
    Process(#[from] mp_process::Error),
    /// A task panicked in a worker.
    #[error("task panicked in worker {worker}: {message}")]
    TaskPanicked {
        /// The worker's id (host, pid and a random tag).
        worker: String,
        /// The panic message and location.
        message: String,
    },
    /// A task was taken `tries` times and every time its worker was lost (killed, crashed,
    /// or cut off from the server for longer than its lease): it is not tried again.
    #[error("task lost: taken {tries} times, and each time its worker was lost before it answered (killed, crashed or cut off longer than the lease)")]
    TaskLost {
        /// How many times it was taken.
        tries: u64,
    },
    /// A worker runs another build of the program than the pool's: it cannot call the task.
    #[error("worker {worker} runs another build of the program (build id {worker_build}) than this pool (build id {pool_build}): start the workers from the same executable")]
    WrongBuild {
        /// The worker's id.
        worker: String,
        /// The worker's build id (hex).
        worker_build: String,
        /// The pool's build id (hex).
        pool_build: String,
    },
    /// A worker could not run the task for another reason (it could not decode the argument,
    /// encode the result, or resolve the function); the message says which.
    #[error("worker {worker} could not run the task: {message}")]
    TaskFailed {
        /// The worker's id.
        worker: String,
        /// What went wrong.
        message: String,
    },
    /// A queue `get` with a timeout found nothing (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// A bounded queue `put` with a timeout found no room (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,
    /// A queue was opened with another `maxsize` than it was created with.
    #[error("queue {name} exists with maxsize {existing}, opened with {requested}")]
    MaxsizeMismatch {
        /// The queue's name.
        name: String,
        /// The size it has.
        existing: u64,
        /// The size asked for.
        requested: u64,
    },
    /// `release` of a lock this handle does not hold (never acquired, released already, or
    /// its lease ran out and another process took it).
    #[error("lock {name} released by a process that does not hold it (never acquired, or its lease ran out)")]
    NotHolder {
        /// The lock's name.
        name: String,
    },
    /// A key that is not in the dict (Python's `KeyError`).
    #[error("key not found")]
    KeyNotFound,
    /// A wait with a timeout ran out (a barrier, an `AsyncResult::get_timeout`).
    #[error("timed out")]
    Timeout,
    /// The pool was closed or terminated.
    #[error("the pool is {0}")]
    PoolClosed(&'static str),
    /// An `AsyncResult` whose value was taken already by an earlier `get`.
    #[error("the result was taken by an earlier get")]
    ResultTaken,
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
