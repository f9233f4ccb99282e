//! Functions that run in every child of the fork start method, before its target: Python's
//! `multiprocessing.util.register_after_fork`.
//!
//! A library whose per-process state a forked child must renew (a connection of its own to a
//! server, say) does it here, in the child's ordinary context, rather than in a
//! `pthread_atfork` child handler, which runs in the child of every `fork` of the process
//! (also the one before an `exec`, where it only costs), with the parent's other threads gone
//! and whatever locks they held still held.
//!
//! The list is a stack of leaked nodes pushed with a compare-and-swap: a child reads it
//! without a lock, so a registration under way in another thread at the fork cannot block it.

use std::sync::atomic::{AtomicPtr, Ordering};

struct Node {
    f: fn(),
    next: *const Node,
}

static HEAD: AtomicPtr<Node> = AtomicPtr::new(std::ptr::null_mut());

/// Registers `f` to run in every child started by [`StartMethod::Fork`](crate::StartMethod)
/// from now on, before the child's target, in the order of registration (as Python's
/// `util.register_after_fork`). A function registered twice runs once. Children of the spawn
/// and forkserver methods start from a fresh program and run none of them.
///
/// `f` runs in the child with only the thread that started it. A panic in it is caught (the
/// panic hook prints it) and the child goes on with the next function and its target.
pub fn register_after_fork(f: fn()) {
    let mut head = HEAD.load(Ordering::Acquire);
    if registered(head, f) {
        return;
    }
    let node = Box::into_raw(Box::new(Node {
        f,
        next: std::ptr::null(),
    }));
    loop {
        // SAFETY: `node` is ours alone until the exchange below publishes it.
        unsafe { (*node).next = head };
        match HEAD.compare_exchange_weak(head, node, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(h) => {
                head = h;
                if registered(head, f) {
                    // SAFETY: never published: nobody else has it.
                    drop(unsafe { Box::from_raw(node) });
                    return;
                }
            }
        }
    }
}

/// Whether `f` is in the list that starts at `head`.
fn registered(head: *const Node, f: fn()) -> bool {
    let mut n = head;
    while !n.is_null() {
        // SAFETY: published nodes are leaked, never freed or changed after publication.
        let node = unsafe { &*n };
        if std::ptr::fn_addr_eq(node.f, f) {
            return true;
        }
        n = node.next;
    }
    false
}

/// Runs the registered functions, oldest first (in a forked child, before its target).
pub(crate) fn run() {
    let mut fs = Vec::new();
    let mut n: *const Node = HEAD.load(Ordering::Acquire);
    while !n.is_null() {
        // SAFETY: as in `registered`.
        let node = unsafe { &*n };
        fs.push(node.f);
        n = node.next;
    }
    for f in fs.into_iter().rev() {
        // Never unwind out of the child's entry: the frames above it are the parent's.
        let _ = std::panic::catch_unwind(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static RUNS: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        RUNS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_function_registered_twice_is_there_once() {
        register_after_fork(count);
        register_after_fork(count);
        let before = RUNS.load(Ordering::SeqCst);
        run();
        assert_eq!(RUNS.load(Ordering::SeqCst) - before, 1);
    }
}
