//! Python's Pool: map, map_async, imap, imap_unordered, starmap, apply, apply_async, and a pool that survives dead workers.
//!
//! **Status: not built yet.** This crate is a member of the workspace so that the layout is in
//! place; it exports nothing until its issue lands. Nothing here pretends to work.
