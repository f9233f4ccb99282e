//! Socket pairs for forked children, used again after a clean join.
//!
//! Creating and freeing an `AF_UNIX` socket pair is not free (two sockets, two inodes,
//! memory-cgroup accounting, RCU-deferred frees): a measurable share of a fork start
//! (`docs/benchmarks.md`, "Processes").
//! Under fork the parent keeps the child's end too, so once the child has been joined, its
//! frames read up to `EAGAIN` and every byte parsed (nothing can be left: the only writer is
//! dead), the pair is empty and serves the next child.
//!
//! The pool belongs to one process. It records its owner's pid: a forked child (by mp or by
//! any other `fork`) finds a pool it does not own, closes its copies of the inherited pairs
//! and starts an empty one, so no pair is ever shared by two processes' children. The lock is
//! only ever tried, never waited for: a child forked while another thread of the parent held
//! it just goes without the pool.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::Error;

/// The most idle pairs kept (two descriptors each).
const MAX_IDLE: usize = 8;

struct Pool {
    /// The pid of the process these pairs belong to (0: none yet).
    owner: u32,
    pairs: Vec<(OwnedFd, OwnedFd)>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    owner: 0,
    pairs: Vec::new(),
});

/// Runs `f` on this process's pool, if its lock is free; `None` otherwise.
fn with_pool<T>(f: impl FnOnce(&mut Vec<(OwnedFd, OwnedFd)>) -> T) -> Option<T> {
    let mut pool = POOL.try_lock().ok()?;
    let me = std::process::id();
    if pool.owner != me {
        // Inherited through a fork: these descriptors are copies of the parent's pairs.
        pool.pairs.clear();
        pool.owner = me;
    }
    Some(f(&mut pool.pairs))
}

/// A connected stream pair, `(parent's end, child's end)`: an idle one, or a new one.
pub(crate) fn take() -> Result<(OwnedFd, OwnedFd), Error> {
    if let Some(pair) = with_pool(|p| p.pop()).flatten() {
        return Ok(pair);
    }
    new_pair()
}

/// A new connected stream pair (close-on-exec).
pub(crate) fn new_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair", e.into()))
}

/// Gives back a pair taken with [`take`]. The caller guarantees it is empty: the child that
/// used it is dead and everything it sent was read.
pub(crate) fn give_back(parent: OwnedFd, child: OwnedFd) {
    let pair = (parent, child);
    let rest = with_pool(move |p| {
        if p.len() < MAX_IDLE {
            p.push(pair);
            None
        } else {
            Some(pair)
        }
    });
    // Anything not kept is closed here, outside the lock.
    drop(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    // The only test of this binary that touches the pool (the process tests are in another
    // binary), so the pool's contents are known here.
    #[test]
    fn pairs_are_reused_bounded_and_never_inherited() {
        let (a, b) = take().unwrap();
        let raws = (a.as_raw_fd(), b.as_raw_fd());
        give_back(a, b);
        let (a, b) = take().unwrap();
        assert_eq!(
            (a.as_raw_fd(), b.as_raw_fd()),
            raws,
            "the idle pair is used again"
        );
        give_back(a, b);

        let many: Vec<_> = (0..MAX_IDLE + 4).map(|_| take().unwrap()).collect();
        for (a, b) in many {
            give_back(a, b);
        }
        assert_eq!(with_pool(|p| p.len()), Some(MAX_IDLE), "bounded");

        // A pool owned by another pid (as after a fork) is emptied, not used.
        POOL.lock().unwrap().owner = 1;
        assert_eq!(with_pool(|p| p.len()), Some(0));
        let (a, b) = take().unwrap();
        give_back(a, b);
        assert_eq!(with_pool(|p| p.len()), Some(1));
    }
}
