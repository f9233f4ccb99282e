//! The fork start method: the child is a copy of the calling thread and runs the closure.

use std::os::fd::{AsRawFd, BorrowedFd};

use mp_core::message::encode;
use mp_core::Message;

use super::{child_identity, Options};
use crate::boot::die_with_parent;
use crate::child_side::{child_without_init, install_panic_hook, run_target};
use crate::consts::START_FAILED_EXIT_CODE;
use crate::error::Error;
use crate::handle::{Child, ChildState};
use crate::identity;
use crate::method::StartMethod;
use crate::sys::exit_now;

/// The fork start method.
pub(crate) fn start<R: Message, F: FnOnce() -> R>(opts: Options, f: F) -> Result<Child<R>, Error> {
    if child_without_init() {
        return Err(Error::ChildWithoutInit);
    }
    install_panic_hook();
    crate::handle::reap_detached();
    // Touch rkyv's thread-local serialization arena on this thread before forking: the first
    // touch registers a TLS destructor, which in every child would also make the dynamic
    // linker resolve `_dl_find_dso_for_object` afresh (a measurable share of a fork start).
    let _ = encode(&());
    let (parent_end, child_end) = crate::chanpool::take()?;
    let identity = Box::new(child_identity(&opts));
    let name = identity.name.clone();
    let parent_pid = std::process::id() as libc::pid_t;
    let mut f = Some(f);
    let mut identity = Some(identity);
    let child_raw = child_end.as_raw_fd();
    let mut child_main = || -> i32 {
        // In the child, which keeps its copy of the parent's end like any other descriptor
        // inherited under fork (closing it would cost a system call for nothing).
        if opts.daemon && !die_with_parent(parent_pid) {
            return START_FAILED_EXIT_CODE;
        }
        let (Some(f), Some(identity)) = (f.take(), identity.take()) else {
            return START_FAILED_EXIT_CODE;
        };
        // The per-process state a forked child must not share with its parent.
        identity::reset_after_fork(identity);
        crate::handle::reset_registry();
        super::forkserver::reset_after_fork();
        super::launcher::reset_after_fork();
        // What libraries renew in a forked child (`register_after_fork`).
        crate::afterfork::run();
        // SAFETY: the child's end stays open in this process (the parent's copy of the
        // `OwnedFd` was duplicated by fork and is never dropped here: the child `_exit`s).
        let chan = unsafe { BorrowedFd::borrow_raw(child_raw) };
        run_target(chan, f)
    };
    let pid = if opts.daemon {
        // SAFETY: `child_main` only does what a forked child may (module doc of
        // `crate::start::launcher`, crate doc "Fork and threads") and returns an exit code.
        unsafe { super::launcher::fork(&mut child_main) }
            .map_err(|e| Error::io("fork (on the launcher thread)", e))?
    } else {
        // SAFETY: the child runs the target in a copy of this thread only. What it may do
        // when the parent runs other threads is the caller's contract, documented on
        // `Process::fork` and in the crate doc ("Fork and threads"); everything mp itself does
        // in the child is fork-safe: it replaces (never locks) per-process state it
        // inherited, allocates (glibc's malloc is reset by fork), writes to its socket and
        // leaves with `_exit`.
        match unsafe { libc::fork() } {
            -1 => return Err(Error::last_os("fork")),
            0 => {
                let code = child_main();
                exit_now(code)
            }
            pid => pid,
        }
    };
    drop((f, identity));
    let state = ChildState::new(pid as u32, name, opts.daemon);
    Ok(Child::new(
        state,
        parent_end,
        Some(child_end),
        StartMethod::Fork,
    ))
}
