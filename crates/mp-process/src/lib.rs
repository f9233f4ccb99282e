//! Python's Process and its start methods (fork, spawn, forkserver), current_process, parent_process, active_children, cpu_count.
//!
//! **Status: not built yet.** This crate is a member of the workspace so that the layout is in
//! place; it exports nothing until its issue lands. Nothing here pretends to work.
