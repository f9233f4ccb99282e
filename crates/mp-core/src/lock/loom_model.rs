//! The loom models of the lock word (docs/reliability.md, "Model checking"). Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p mp-core --lib --release loom_`.

use loom::cell::UnsafeCell;
use loom::sync::Arc;

use super::*;
use crate::ident::loom_dead;

/// A token for model task `id` (the low half stands for a start time).
fn token(id: u32) -> u64 {
    (u64::from(id) << 32) | 7
}

/// The lock's two words and a counter that only its holder may touch: loom reports any two
/// accesses to the counter that the lock does not order (a broken mutual exclusion, or an
/// ordering too weak to publish the holder's writes).
struct Guarded {
    owner: AtomicU64,
    seq: AtomicU32,
    counter: UnsafeCell<u32>,
}

// SAFETY: `counter` is touched only by the lock's holder (that is what the model checks;
// loom's cell reports any access the lock does not order).
unsafe impl Sync for Guarded {}

impl Guarded {
    fn new() -> Guarded {
        Guarded {
            owner: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            counter: UnsafeCell::new(0),
        }
    }

    fn lock(&self, me: u64) -> Acquire {
        lock(&self.owner, &self.seq, me, Deadline::never())
    }

    fn unlock(&self) -> u64 {
        unlock(&self.owner, &self.seq)
    }

    /// A read-modify-write of the counter in two steps; loom reports a second holder's
    /// access as a race even when no thread switch falls between the two. Only the lock's
    /// holder calls this.
    fn bump(&self) {
        // SAFETY: the caller holds the lock (what the model checks).
        let v = self.counter.with(|p| unsafe { *p });
        // SAFETY: as above.
        self.counter.with_mut(|p| unsafe { *p = v + 1 });
    }

    fn count(&self) -> u32 {
        // SAFETY: called once every other thread has been joined.
        self.counter.with(|p| unsafe { *p })
    }
}

/// Three tasks take the lock in turn, each once, through the fast path, the spin-free slow
/// path and the futex sleep. With the model's timeouts off a sleeper wakes only through
/// `unlock`'s `FUTEX_WAKE`, so a lost wake-up is a deadlock that loom reports. Proves:
/// mutual exclusion (no torn or lost increment, no unordered access), every acquisition
/// is `Clean`, no wake-up is lost, and the word ends unlocked.
#[test]
fn loom_lock_mutual_exclusion() {
    loom::model(|| {
        let g = Arc::new(Guarded::new());
        let threads: Vec<_> = (1..=2)
            .map(|id| {
                let g = g.clone();
                loom::thread::spawn(move || {
                    assert_eq!(g.lock(token(id)), Acquire::Clean);
                    g.bump();
                    assert_ne!(g.unlock() & !CONTENDED, 0);
                })
            })
            .collect();
        assert_eq!(g.lock(token(3)), Acquire::Clean);
        g.bump();
        g.unlock();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(g.count(), 3);
        assert_eq!(g.owner.load(Ordering::Relaxed), 0);
    });
}

/// A holder takes the lock, writes, and dies holding it (at any point of the others'
/// runs); two waiters want the lock (their sleep slices end once the holder is dead, and
/// only a waiter whose slice ended checks liveness). Proves: a waiter is told `OwnerDied` only
/// once the holder is dead and only with the dead holder's id; at most one waiter takes over,
/// and exactly one when the dead task still held the lock; what the holder wrote before dying
/// is ordered before the taker's access; both waiters get the lock.
#[test]
fn loom_lock_takeover_of_dead_holder() {
    // The waiters poll (their sleeps time out) while the holder lives: long paths.
    let mut model = loom::model::Builder::new();
    model.max_branches = 100_000;
    model.check(|| {
        let g = Arc::new(Guarded::new());
        let dying = {
            let g = g.clone();
            loom::thread::spawn(move || {
                assert_eq!(g.lock(token(1)), Acquire::Clean);
                g.bump();
                // Dies holding the lock.
                loom_dead::mark_dead(token(1));
            })
        };
        let waiter = |id: u32| {
            let g = g.clone();
            loom::thread::spawn(move || {
                let r = g.lock(token(id));
                if let Acquire::OwnerDied(pid) = r {
                    assert_eq!(pid, 1, "the dead holder's id");
                    assert!(
                        loom_dead::is_dead(token(1)),
                        "taken over from a live holder"
                    );
                }
                g.bump();
                g.unlock();
                r
            })
        };
        let (a, b) = (waiter(2), waiter(3));
        dying.join().unwrap();
        let results = [a.join().unwrap(), b.join().unwrap()];
        let took_over = results
            .iter()
            .filter(|r| matches!(r, Acquire::OwnerDied(_)))
            .count();
        assert!(results.iter().all(|r| *r != Acquire::Timeout));
        assert_eq!(g.count(), 3);
        // The holder took the lock and never released it: either a waiter took it over
        // (exactly one), or both waiters were done before the holder took it.
        let owner = holder(&g.owner);
        if owner == token(1) {
            assert_eq!(took_over, 0);
        } else {
            assert_eq!((owner, took_over), (0, 1));
        }
    });
}
