//! Python's queues in shared memory: Queue<T>, SimpleQueue<T> and JoinableQueue<T>, with zero-copy receive.
//!
//! **Status: not built yet.** This crate is a member of the workspace so that the layout is in
//! place; it exports nothing until its issue lands. Nothing here pretends to work.
