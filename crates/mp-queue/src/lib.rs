//! Python's queues in shared memory: [`Queue<T>`], [`SimpleQueue<T>`] and [`JoinableQueue<T>`],
//! shared by any number of processes, with zero-copy receive.
//!
//! # Hello, queue
//!
//! ```
//! use mp_queue::Queue;
//!
//! let q: Queue<String> = Queue::new()?;
//! q.put("hello".to_string()).unwrap();
//! assert_eq!(q.get()?, "hello");
//! # Ok::<(), mp_queue::Error>(())
//! ```
//!
//! # Sharing a queue with a child
//!
//! A queue handle is cheap to clone and crosses into children: moved into a forked child, or
//! passed as an argument under the spawn and forkserver start methods (its archive is a handle
//! to the shared region; see `mp-process`).
//!
//! ```
//! use mp_queue::Queue;
//! # use nix::unistd::{fork, ForkResult};
//! let q: Queue<u64> = Queue::new()?;
//! // SAFETY (of the doctest): single-threaded here; the child puts and leaves with _exit.
//! match unsafe { fork() }.expect("fork") {
//!     ForkResult::Child => {
//!         for i in 0..3 { q.put(i * 10).unwrap(); }
//!         unsafe { libc::_exit(0) }
//!     }
//!     ForkResult::Parent { child } => {
//!         // The child may be joined before anything is read: its puts are in shared memory.
//!         nix::sys::wait::waitpid(child, None).expect("waitpid");
//!     }
//! }
//! assert_eq!((q.get()?, q.get()?, q.get()?), (0, 10, 20));
//! # Ok::<(), mp_queue::Error>(())
//! ```
//!
//! # Timeouts, Full and Empty
//!
//! Every blocking call has `_timeout` and `_nowait` forms. A failed put gives the item back:
//!
//! ```
//! use std::time::Duration;
//! use mp_queue::{Error, PutError, Queue};
//!
//! let q: Queue<u32> = Queue::with_maxsize(1)?;
//! q.put(1).unwrap();
//! match q.put_timeout(2, Duration::from_millis(10)) {
//!     Err(PutError::Full(item)) => assert_eq!(item, 2),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(q.get_nowait()?, 1);
//! assert!(matches!(q.get_nowait(), Err(Error::Empty)));
//! # Ok::<(), Error>(())
//! ```
//!
//! # Zero-copy receive
//!
//! [`Queue::get_ref`] returns a guard that derefs to the archived value inside the shared ring
//! (checked before use), and frees its space when dropped:
//!
//! ```
//! use mp_queue::Queue;
//! let q: Queue<Vec<u8>> = Queue::new()?;
//! q.put(vec![7u8; 100_000]).unwrap();
//! let msg = q.get_ref()?;
//! assert_eq!(msg.len(), 100_000);
//! assert_eq!(msg[99_999], 7);
//! drop(msg);
//! # Ok::<(), mp_queue::Error>(())
//! ```
//!
//! The view reads shared memory in place, so it trusts the queue's other processes to keep the
//! queue's protocol (see [`Queue::get_ref`]). `get`, `get_many` and
//! [`Received::deserialize`] do not: they copy each message into a private buffer first (on
//! the stack for a small message, else a buffer of the calling thread reused from message to
//! message: no allocation) and check and decode that copy.
//!
//! The other way round, [`Queue::put_as`] sends a borrowed value that archives as `T` does
//! (a slice as [`SliceAsVec`](mp_core::message::SliceAsVec) into a `Queue<Vec<_>>`),
//! serialized straight into the ring without building an owned `T` first.
//!
//! # Async (feature `async`)
//!
//! `Queue::get_async` and `Queue::put_async` wait the same way for async code, on any
//! runtime: the future is counted among the queue's sleeping consumers (producers) so that a
//! put (get) in any process wakes it, and one thread of mp-core's reactor sleeps on the
//! queue's wake words for every waiting future of the process (no spin, no thread per
//! future). A dropped `get_async` loses nothing: an item is taken only by the poll that
//! returns it.
//!
//! # Batches
//!
//! [`Queue::put_many`] and [`Queue::get_many`] move many small items under one hold of the
//! lock and one publication: for small items, faster per item than `put` and `get` (by how
//! much: `docs/benchmarks.md`).
//!
//! # Messages of any size
//!
//! Messages up to half the ring are written into it; larger ones go to a range of their own in
//! the same shared file (beside the ring, freed once read), so a message larger than the ring is
//! neither an error nor a deadlock, and a zero-byte message (`()`) works too.
//!
//! What is beside the ring has a budget, shared by every process that uses the queue:
//! [`QueueBuilder::max_spill_bytes`], by default [`DEFAULT_MAX_SPILL_BYTES`] (1 GiB), counted
//! in whole pages per message. A put that would go over it waits for consumers to free room,
//! exactly as when the ring is full (so its timeout applies, and `put_nowait` or
//! `put_timeout` give the item back in [`PutError::Full`]); a message that needs more than the
//! whole budget is refused at once, and so is one the system has no memory for (`ENOSPC`, or
//! `EFBIG` from a file-size limit), each with the item given back in [`PutError::Failed`] and a
//! [`SpillError`] that says which ([`PutError::spill_error`]). A producer killed in the middle
//! of a put, or a process killed holding a [`get_ref`](Queue::get_ref) guard, does not keep
//! its share: a dead producer's is given back by the next put (which takes its lock over), a
//! dead guard holder's as soon as a producer runs short of room.
//!
//! ```
//! use std::time::Duration;
//! use mp_queue::{PutError, Queue, SpillError};
//!
//! let q: Queue<Vec<u8>> = Queue::builder()
//!     .capacity_bytes(64 << 10)
//!     .max_spill_bytes(1 << 20)
//!     .build()?;
//! q.put(vec![1; 600 << 10]).unwrap(); // beside the ring: 600 KiB of the 1 MiB budget
//! assert!(q.spill_bytes() >= 600 << 10);
//! // No room for another 600 KiB until the first is taken.
//! let second = match q.put_timeout(vec![2; 600 << 10], Duration::from_millis(10)) {
//!     Err(PutError::Full(item)) => item,
//!     other => panic!("{other:?}"),
//! };
//! // More than the whole budget can never fit: refused at once, even by a blocking put.
//! let err = q.put(vec![3; 2 << 20]).unwrap_err();
//! assert!(matches!(err.spill_error(), Some(SpillError::TooLarge { .. })));
//! assert_eq!(q.get()?[0], 1);
//! q.put_nowait(second).unwrap();
//! # Ok::<(), mp_queue::Error>(())
//! ```
//!
//! # JoinableQueue
//!
//! ```
//! use mp_queue::JoinableQueue;
//! let q: JoinableQueue<u8> = JoinableQueue::new()?;
//! q.put(1).unwrap();
//! let _ = q.get()?;
//! q.task_done()?;
//! q.join()?;
//! assert!(q.task_done().is_err(), "one task_done too many");
//! # Ok::<(), mp_queue::Error>(())
//! ```
//!
//! # When processes die
//!
//! A producer killed at any point of a `put` leaves nothing half-written in the queue (a
//! message becomes visible only once complete). A consumer killed while it decodes leaves the
//! message for the next consumer, so every complete message is delivered exactly once. A
//! process killed while it holds a zero-copy guard loses that one message (it was delivered to
//! it); its space is reclaimed once producers need it. The queue's internal locks (mp-core's
//! robust lock, the one under mp-sync's locks) and the zero-copy claims record their holder's identity (pid and start time, in one word, so that a
//! process given a dead holder's recycled pid is not taken for it); a lock is taken over when
//! its holder dies, and each side keeps a one-entry journal of its last commit, so the process
//! taking over finishes or undoes it: the item count stays exact and no ring space or
//! oversized-message page leaks.
//!
//! Received bytes are always validated (the owned-value receives validate a private copy, so
//! no process can change them between the check and the use), and so is every position read
//! back from the shared ring: a corrupted or hostile peer gives [`Error::Corrupted`] (or a
//! `put` that fails with the item given back), never a read or write outside the ring, and the
//! queue stays usable when the damage can be skipped.
//!
//! The layout and algorithm are described in the `ring` module's source.

/// Fuzzing entry points (`fuzz/`, `tests/fuzz_corpus.rs`). Not API: hidden, may change in any
/// release.
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
#[cfg(feature = "async")]
mod asynchronous;
mod error;
mod lock;
mod queue;
mod ring;

pub use error::{BatchError, Error, PutError, SpillError};
pub use queue::{
    JoinableQueue, Queue, QueueBuilder, Received, SimpleQueue, DEFAULT_CAPACITY,
    DEFAULT_MAX_SPILL_BYTES,
};
