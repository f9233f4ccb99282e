//! # mp: Python's `multiprocessing`, rebuilt in Rust
//!
//! Real processes (to isolate crashes, to use every core, to share memory instead of copying),
//! with the names a Python programmer knows and without Python's traps.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! let counter = mp::Shared::new(AtomicU64::new(0))?;
//! counter.fetch_add(1, Ordering::SeqCst);
//! assert_eq!(counter.load(Ordering::SeqCst), 1);
//! # Ok::<(), mp::core::Error>(())
//! ```
//!
//! # The map
//!
//! Each primitive lives in a crate of its own, re-exported here whole; the everyday names are
//! lifted to the top.
//!
//! * Shared memory and messages: [`core`] ([`SharedMemory`], [`Shared`], [`Message`]).
//! * Synchronisation: [`sync`] (not built yet).
//! * Processes: [`process`] (not built yet).
//! * Queues: [`queue`] (not built yet).
//! * Pipes and connections: [`pipe`] (not built yet).
//! * Pools: [`pool`] (not built yet).
//! * Managers: [`manager`] (not built yet).

pub use mp_core as core;
pub use mp_manager as manager;
pub use mp_pipe as pipe;
pub use mp_pool as pool;
pub use mp_process as process;
pub use mp_queue as queue;
pub use mp_sync as sync;

pub use mp_core::{Message, Serde, Shared, SharedMemory};
