//! Python's Manager: a server process holding objects, and typed proxies to them, local or over TCP with an authkey.
//!
//! **Status: not built yet.** This crate is a member of the workspace so that the layout is in
//! place; it exports nothing until its issue lands. Nothing here pretends to work.
