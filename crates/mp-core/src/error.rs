//! The error type of mp-core.

use std::io;

/// Everything that can go wrong in mp-core.
///
/// Every message says what happened and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What mp was doing (the system call or step).
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A named region with this name already exists.
    #[error("shared memory {name:?} already exists: attach to it, or unlink it first")]
    Exists {
        /// The name as the user gave it.
        name: String,
    },
    /// No named region has this name.
    #[error("shared memory {name:?} not found: create it first (or it was already unlinked)")]
    NotFound {
        /// The name as the user gave it.
        name: String,
    },
    /// A size that cannot be mapped (zero, or too large for this machine).
    #[error("invalid shared memory size {size}: it must be between 1 and {max} bytes")]
    InvalidSize {
        /// The size asked for.
        size: u64,
        /// The largest size accepted.
        max: u64,
    },
    /// A byte range outside a block: `offset + len` is past its end (or does not fit in a
    /// `u64` at all).
    #[error("bytes {offset}..{offset}+{len} are outside the {size}-byte block")]
    OutOfRange {
        /// The first byte asked for.
        offset: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The block's size.
        size: u64,
    },
    /// A region name that cannot be used.
    #[error("invalid shared memory name {name:?}: {reason}")]
    InvalidName {
        /// The name as the user gave it.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The region's header does not describe what the caller expects: corrupted, not made
    /// by mp, made by another version of mp, or holding another type.
    #[error("shared region refused: {reason}")]
    BadHeader {
        /// What did not match.
        reason: String,
    },
    /// The region was made in another pid namespace. The locks and queues in it name their
    /// holders by pid, and a pid means another process in each namespace, so mp refuses to
    /// share them across namespaces instead of mistaking one process for another.
    #[error(
        "shared region refused: it was made in pid namespace {region}, this process runs in \
         {ours}; mp primitives name their holders by pid and cannot be shared across pid \
         namespaces (share them only between processes of one namespace)"
    )]
    ForeignPidNamespace {
        /// The pid namespace (inode of `/proc/<pid>/ns/pid`) recorded by the region's creator.
        region: u64,
        /// The pid namespace of this process.
        ours: u64,
    },
    /// A value could not be serialized.
    #[error("could not serialize the message: {0}")]
    Encode(String),
    /// Received bytes are not a valid archive of the expected type.
    #[error("received bytes are not a valid message of the expected type: {0}")]
    Decode(String),
    /// A shared handle (a region, a lock, a queue...) was serialized outside of a process
    /// start, or names a descriptor that this process was not given.
    #[error("shared handle not transferable: {0}")]
    Handle(String),
    /// A list index outside the list (Python's `IndexError`).
    #[error("index {index} out of range for a list of {len} items (valid: -{len}..{len})")]
    IndexOutOfRange {
        /// The index asked for (negative counts from the end).
        index: i64,
        /// The list's length.
        len: usize,
    },
    /// A string or bytes value longer than the slot it would go into (Python's `ValueError:
    /// bytes/str item exceeds available storage`). Slot sizes are fixed when the list is made.
    #[error(
        "bytes/str item exceeds available storage: {len} bytes do not fit slot {index} of \
         {capacity} bytes (slot sizes are fixed when the list is made: make it with a longer \
         value there)"
    )]
    ValueTooLong {
        /// The slot.
        index: usize,
        /// The value's length in bytes (UTF-8 for strings).
        len: usize,
        /// The slot's size in bytes.
        capacity: usize,
    },
    /// `index` of a value that the list does not hold (Python's `ValueError`).
    #[error("value not in this list")]
    ValueNotInList,
    /// Shared bytes that do not hold a valid value: another process wrote garbage there (or
    /// wrote them while this one read, without a lock).
    #[error("shared data refused: {what}")]
    Corrupt {
        /// What was wrong, and where.
        what: String,
    },
    /// A blocking call ran out of time.
    #[error("timed out")]
    Timeout,
}

impl Error {
    /// Wraps the last OS error of a system call.
    pub fn last_os(op: &'static str) -> Self {
        Error::Io {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// Wraps a `nix` errno.
    pub fn nix(op: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Io {
            op,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }
}

/// The result type of mp-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
