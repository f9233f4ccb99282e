//! The child's side: what a process that mp started does, from its first instruction to its
//! exit. (The parent's side is [`crate::start`], which makes the child, and
//! [`crate::handle`], which waits on it.)
//!
//! * [`entry`]: [`init`](crate::init), the entry of a re-executed child (spawn) and of the
//!   fork server, with its checks that the process really is an mp child;
//! * [`run`]: the target under `catch_unwind`, the panic hook, the boot of a re-executed child;
//! * [`fork_server`]: the fork server's loop, which makes children for its parent.

pub(crate) mod entry;
pub(crate) mod fork_server;
pub(crate) mod run;

pub use entry::mark_test_harness;
pub(crate) use entry::{child_without_init, entry_ready, init, test_harness};
pub(crate) use run::{install_panic_hook, run_target, trampoline};
