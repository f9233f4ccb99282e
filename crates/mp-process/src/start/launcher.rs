//! The launcher thread: where daemon children and the fork server are created.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created a process exits, not when the
//! whole parent process does (see prctl(2)). A daemon child started from a short-lived
//! thread (a scoped worker, a libtest test thread) would be killed when that thread ends,
//! while its parent process lives on. So mp creates daemon children, and the fork server
//! (whose `CLONE_PARENT` children have the same creating thread as the server), from one
//! long-lived thread, started on first need and living as long as the process. The caller
//! hands it a job and blocks until the job has forked; under fork the child still runs the
//! caller's closure (read from the caller's memory, which the child has a copy of).

use crate::forkcell::ForkCell;
use mp_core::util::lock_unpoisoned;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// This process's launcher. Replaced (never locked) in a forked child, where the thread
/// does not exist.
static LAUNCHER: ForkCell<Option<Sender<Job>>> = ForkCell::new();

fn cell() -> &'static Mutex<Option<Sender<Job>>> {
    LAUNCHER.get(|| None)
}

pub(crate) fn reset_after_fork() {
    LAUNCHER.reset();
}

/// Runs `job` on the launcher thread and returns its result.
pub(crate) fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = channel();
    let boxed: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    {
        let mut g = lock_unpoisoned(cell());
        let sender = match g.as_ref() {
            Some(s) => s.clone(),
            None => {
                let (s, r) = channel::<Job>();
                std::thread::Builder::new()
                    .name("mp-launcher".into())
                    .spawn(move || {
                        for job in r {
                            job();
                        }
                    })?;
                *g = Some(s.clone());
                s
            }
        };
        sender
            .send(boxed)
            .map_err(|_| std::io::Error::other("the mp launcher thread is gone"))?;
    }
    rx.recv()
        .map_err(|_| std::io::Error::other("the mp launcher thread dropped a job"))
}

/// Forks on the launcher thread; the child runs `child_main` and exits with its code.
/// Returns the child's pid (or -1 with errno set, like fork).
///
/// # Safety
/// `child_main` runs in the forked child, in a copy of this process that holds only a copy
/// of the launcher thread: it must do only what a forked child may (see the crate doc, "Fork
/// and threads"). It must not return into the launcher's loop: this function `_exit`s with
/// its result.
pub(crate) unsafe fn fork(child_main: &mut dyn FnMut() -> i32) -> std::io::Result<libc::pid_t> {
    // The closure lives on the caller's stack, which stays put (the caller blocks in `run`
    // until the fork returned in the parent) and is copied into the child.
    let ptr = child_main as *mut dyn FnMut() -> i32;
    // SAFETY: erasing the lifetime is sound because the pointer is used only while the caller
    // blocks below (in the parent it is not used at all; in the child it points into the
    // child's own copy of the caller's stack).
    let ptr: *mut (dyn FnMut() -> i32 + 'static) = unsafe { std::mem::transmute(ptr) };
    struct SendPtr(*mut (dyn FnMut() -> i32 + 'static));
    // SAFETY: the pointer is only dereferenced in the forked child (see above).
    unsafe impl Send for SendPtr {}
    let p = SendPtr(ptr);
    run(move || {
        let p = p;
        // SAFETY: per this function's contract, the child only runs `child_main` and exits.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: see `ptr` above; this is the child's private copy of the closure.
                let code = unsafe { (*p.0)() };
                crate::sys::exit_now(code)
            }
            -1 => Err(std::io::Error::last_os_error()),
            pid => Ok(pid),
        }
    })?
}
