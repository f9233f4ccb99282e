//! The shared core of [mp](https://docs.rs/mp): shared-memory regions, futex blocking, rkyv
//! messages and the handles that carry shared objects into child processes.
//!
//! Every mp primitive is built from these four parts. Most users never name this crate: they
//! use `mp::Queue`, `mp::Lock` and the like. It is public for those who build primitives of
//! their own (see `docs/architecture.md`, "Adding a primitive").
//!
//! # Hello, shared memory
//!
//! A counter in a region of its own, updated by a forked child and read by the parent:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use mp_core::Shared;
//!
//! let counter = Shared::new(AtomicU64::new(0))?;
//! // SAFETY (of the doctest): the child only touches the shared atomic and exits at once.
//! match unsafe { nix::unistd::fork() }.expect("fork") {
//!     nix::unistd::ForkResult::Child => {
//!         counter.fetch_add(41, Ordering::SeqCst);
//!         unsafe { libc::_exit(0) };
//!     }
//!     nix::unistd::ForkResult::Parent { child } => {
//!         nix::sys::wait::waitpid(child, None).expect("waitpid");
//!     }
//! }
//! assert_eq!(counter.load(Ordering::SeqCst), 41);
//! # Ok::<(), mp_core::Error>(())
//! ```
//!
//! # The parts
//!
//! * [`region`] holds anonymous ([`Region::anonymous`], a sealed memfd that dies with its last user)
//!   and named ([`SharedMemory`], `/dev/shm/mp-<name>`) regions, each starting with a checked
//!   header; [`Shared<T>`] puts one value made of atomics in a region.
//! * [`shareable`] has [`ShareableList`], Python's fixed-length list of scalars and short
//!   strings in shared memory.
//! * [`futex`] waits and wakes on 32-bit words in shared memory, across processes, with
//!   timeouts and [`Deadline`]s.
//! * [`ident`] names the holder of a lock with a token that pid reuse cannot fool, and tells
//!   whether it is alive; [`lock`] is the robust lock on two shared words that every lock-like
//!   primitive (mp-sync's, mp-queue's) stands on: a dead holder's lock is taken over, and the
//!   taker is told.
//! * [`message`] has the [`Message`] bound (rkyv archives with validation), serialization straight
//!   into a shared slot, checked zero-copy access, and the [`Serde`] adapter.
//! * [`sync`] names the atomics and futex calls of the protocols checked by the loom models
//!   (plain re-exports of `std` and [`futex`] in the normal build).
//! * [`handle`] says how regions (and so every primitive) travel to a child under fork, exec and a
//!   fork server.
//! * [`util`] holds the chores every crate shares: locking a `std` mutex whose holder
//!   panicked, the text of a panic payload.

pub mod atomic_copy;
mod deadline;
pub mod error;
pub mod futex;
pub mod handle;
pub mod ident;
pub mod lock;
pub mod message;
#[cfg(feature = "async")]
pub mod reactor;
#[cfg(feature = "async")]
pub mod readable;
pub mod region;
pub mod shareable;
pub mod shared;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod util;
pub mod wait;

/// Fuzzing entry points (`fuzz/`, `tests/fuzz_corpus.rs`). Not API: hidden, may change in any
/// release.
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use error::{Error, Result};
pub use futex::Deadline;
pub use message::{Encode, Message, Serde};
pub use region::{Region, SharedMemory};
pub use shareable::{Item, ShareableList};
pub use shared::{Shared, ShmSafe};

/// Re-exported so that users derive message traits with the same rkyv version as mp.
pub use rkyv;
