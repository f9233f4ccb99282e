//! # mp: Python's `multiprocessing`, rebuilt in Rust
//!
//! Real processes (to isolate crashes, to use every core, to share memory instead of copying),
//! with the names a Python programmer knows and without Python's traps.
//!
//! ```
//! use mp::{Lock, Process, Queue, Value};
//!
//! fn worker((q, total, lock): (Queue<u64>, Value<u64>, Lock)) -> u64 {
//!     let mut sum = 0;
//!     while let Ok(x) = q.get_nowait() {
//!         sum += x;
//!     }
//!     let _guard = lock.lock().expect("lock");
//!     total.set(total.get() + sum);
//!     sum
//! }
//!
//! fn main() -> Result<(), mp::Error> {
//!     mp::init(); // first thing in main: lets spawn/forkserver children run
//!     let q = Queue::new()?;
//!     for x in 1..=10 {
//!         q.put(x)?;
//!     }
//!     let total = Value::new(0u64)?;
//!     let mut child = Process::new(worker, (q, total.clone(), Lock::new()?)).start()?;
//!     assert_eq!(child.join()?, 55);
//!     assert_eq!(total.get(), 55);
//!     Ok(())
//! }
//! ```
//!
//! # The map
//!
//! Each primitive lives in a crate of its own, re-exported here whole; the everyday names are
//! lifted to the top. `docs/python-mapping.md` says where each Python name went.
//!
//! * Processes, [`process`]: [`Process`], [`Child`], [`StartMethod`] (fork, spawn,
//!   forkserver), [`init`], [`current_process`], [`parent_process`], [`active_children`],
//!   [`cpu_count`], [`get_context`], [`set_start_method`].
//! * Synchronisation, [`sync`]: [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`],
//!   [`Event`], [`Condition`], [`Barrier`], and shared values [`Value`], [`Array`] (with a
//!   lock) and [`RawValue`], [`RawArray`] (without).
//! * Queues, [`queue`]: [`Queue`], [`SimpleQueue`], [`JoinableQueue`].
//! * Pipes and connections, [`pipe`]: [`Pipe`], [`Connection`], [`wait`], [`Listener`],
//!   [`Client`] (CPython's wire format and authkey handshake).
//! * Pools, [`pool`]: [`Pool`], [`AsyncResult`].
//! * Python's `concurrent.futures`, [`futures`]: [`ProcessPoolExecutor`], [`Future`],
//!   [`futures::as_completed`], [`futures::wait`] (a killed worker fails only its future).
//! * Managers, [`manager`]: [`Manager`], a server process holding dicts, lists, namespaces,
//!   values, queues, locks and events, reached through typed proxies (locally or over TCP).
//! * Across machines (cargo feature `redis`, off by default), `mp::redis`: the same pool,
//!   queue, lock, event, barrier and dict on a Redis 7 / Valkey server, with workers on any
//!   machine (`mp_redis::Cluster`; docs/scale-out.md).
//! * Shared memory and messages, [`core`]: [`SharedMemory`], [`Shared`], [`Message`],
//!   [`Serde`].
//! * Python's `multiprocessing.shared_memory`, [`shared_memory`]: [`SharedMemory`],
//!   [`ShareableList`] (a fixed-length list of scalars and short strings in shared memory) and
//!   [`SharedMemoryManager`] (blocks unlinked at shutdown, and when its process dies, even by
//!   SIGKILL).
//!
//! Every crate's error converts into [`Error`], so `?` works across them.

pub use mp_core as core;
pub use mp_futures as futures;
pub use mp_manager as manager;
pub use mp_pipe as pipe;
pub use mp_pool as pool;
pub use mp_process as process;
pub use mp_queue as queue;
#[cfg(feature = "redis")]
pub use mp_redis as redis;
pub use mp_shared_memory as shared_memory;
pub use mp_sync as sync;

pub use mp_core::{Message, Serde, Shared, SharedMemory};
pub use mp_futures::{Future, ProcessPoolExecutor};
pub use mp_manager::Manager;
pub use mp_pipe::{wait, Client, Connection, Duplex, Listener, OneWay, Pipe};
pub use mp_pool::{AsyncResult, Pool};
pub use mp_process::{
    active_children, cpu_count, current_process, get_all_start_methods, get_context,
    get_start_method, init, parent_process, set_start_method, Child, Process, StartMethod,
};
pub use mp_queue::{JoinableQueue, Queue, SimpleQueue};
pub use mp_shared_memory::{ShareableList, SharedMemoryManager};
pub use mp_sync::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, RawArray, RawValue, Semaphore,
    Value,
};

/// Any mp error: every crate's error converts into it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shared memory, messages, handles.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
    /// Locks, semaphores, events, conditions, barriers, values.
    #[error(transparent)]
    Sync(#[from] mp_sync::Error),
    /// Starting processes and start methods.
    #[error(transparent)]
    Process(#[from] mp_process::Error),
    /// How a child ended when it did not return a value.
    #[error(transparent)]
    ProcessFailed(#[from] mp_process::ProcessError),
    /// Queues.
    #[error(transparent)]
    Queue(#[from] mp_queue::Error),
    /// Pipes, connections, listeners and clients.
    #[error(transparent)]
    Pipe(#[from] mp_pipe::Error),
    /// Pools.
    #[error(transparent)]
    Pool(#[from] mp_pool::Error),
    /// Executors and their futures.
    #[error(transparent)]
    Futures(#[from] mp_futures::Error),
    /// Managers and their proxies.
    #[error(transparent)]
    Manager(#[from] mp_manager::Error),
    /// The shared memory manager.
    #[error(transparent)]
    SharedMemory(#[from] mp_shared_memory::Error),
    /// Across machines, on Redis (feature `redis`).
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Redis(#[from] mp_redis::Error),
    /// A `put` that failed; the item it gave back was dropped in the conversion (match on
    /// [`queue::PutError`] directly to keep it).
    #[error("{0}")]
    Put(String),
}

impl<T> From<mp_queue::PutError<T>> for Error {
    fn from(e: mp_queue::PutError<T>) -> Self {
        Error::Put(e.to_string())
    }
}
