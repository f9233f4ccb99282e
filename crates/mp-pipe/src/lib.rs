//! Python's Pipe and multiprocessing.connection: typed Connection<T>, wait(), Listener and Client with an authkey.
//!
//! **Status: not built yet.** This crate is a member of the workspace so that the layout is in
//! place; it exports nothing until its issue lands. Nothing here pretends to work.
