//! Python's synchronisation primitives in shared memory: Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier, Value<T> and Array<T>.
//!
//! **Status: not built yet.** This crate is a member of the workspace so that the layout is in
//! place; it exports nothing until its issue lands. Nothing here pretends to work.
