//! The error type of mp-shared-memory.

/// Everything that can go wrong in mp-shared-memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shared memory itself: names, sizes, headers, list indices and values (mp-core).
    #[error(transparent)]
    Core(#[from] mp_core::Error),
    /// The manager's cleaner process could not be started.
    #[error("could not start the shared memory manager's cleaner process: {0}")]
    Process(#[from] mp_process::Error),
    /// The cleaner process started but did not get ready to watch the starter.
    #[error("the shared memory manager's cleaner process failed: {0}")]
    CleanerFailed(String),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What mp was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The manager was shut down: it makes no more blocks.
    #[error("the shared memory manager is shut down: start a new one")]
    ShutDown,
    /// Only the process that started a manager may shut it down.
    #[error(
        "only the process that started the shared memory manager (pid {starter}) may shut it \
         down; its blocks are unlinked when that process shuts it down or ends"
    )]
    NotStarter {
        /// The pid of the process that started the manager.
        starter: u32,
    },
}

/// The result type of mp-shared-memory.
pub type Result<T, E = Error> = std::result::Result<T, E>;
