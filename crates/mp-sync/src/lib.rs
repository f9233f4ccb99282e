//! Python's synchronisation primitives in shared memory.

mod barrier;
mod block;
mod condition;
mod error;
mod event;
mod ident;
mod lock;
mod raw;
pub mod semaphore;
mod value;

pub use barrier::{Barrier, BarrierAction};
pub use condition::{CondGuard, CondLock, Condition};
pub use error::{Error, LockResult, OwnerDied, Result, TryLockError, TryLockResult};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use mp_core::SharedMemory;
pub use semaphore::{BoundedSemaphore, Permit, Semaphore, SEM_VALUE_MAX};
pub use value::{Array, ArrayGuard, Pod, RawArray, RawValue, Value, ValueGuard};
