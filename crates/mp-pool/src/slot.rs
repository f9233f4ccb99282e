//! The per-worker [`Slot`] in shared memory: which task the worker runs (read by the parent
//! after the worker died, to fail that task), the deadline of the task running now (read by
//! the supervisor, which stops a task past it), and the worker's insights (counters the
//! worker publishes after each chunk).
//!
//! # The state word and timeouts
//!
//! `state` holds a slot state in its low two bits ([`IDLE`], [`CLAIMING`], [`RUNNING`],
//! [`KILLING`]) and, while running, a generation in the bits above, which the worker bumps
//! for every chunk and, when the task has a timeout, for every item. The worker is the only
//! writer except for one transition: the supervisor moves `RUNNING` of the generation whose
//! deadline it saw pass to `KILLING` with a compare-and-swap, then SIGKILLs the worker. The
//! worker leaves `RUNNING` (next item, end of chunk) with a compare-and-swap too: when it
//! finds `KILLING` it stops and waits for the signal. So the supervisor never kills a worker
//! for a task other than the one whose deadline passed: either its swap wins (the worker is
//! still on that item, and stays there) or the worker's does (the item ended in time).

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mp_core::ShmSafe;
use static_assertions::const_assert_eq;

use rkyv::rancor::Fallible;
use rkyv::{Archive, Deserialize, Serialize};

/// Slot states (the low two bits of `state`).
pub(crate) const IDLE: u32 = 0;
/// The worker is writing `job` and `chunk` (the message is still in the queue).
pub(crate) const CLAIMING: u32 = 1;
/// The worker runs (`job`, `chunk`).
pub(crate) const RUNNING: u32 = 2;
/// The supervisor stops the task (`job`, `chunk`): its deadline passed.
pub(crate) const KILLING: u32 = 3;
const STATE_BITS: u32 = 3;

/// The slowest tasks a worker keeps for its insights.
pub(crate) const SLOWEST: usize = 5;

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: one clock for every process of the machine,
/// so that a worker's deadline can be checked by the parent.
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A duration in nanoseconds, saturating (`u64::MAX` is 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    /// In a worker: the generation of the state word it wrote last.
    static GEN: Cell<u32> = const { Cell::new(0) };
}

/// The next `RUNNING` state word of this worker.
fn next_running() -> u32 {
    GEN.with(|g| {
        let n = g.get().wrapping_add(1);
        g.set(n);
        (n << 2) | RUNNING
    })
}

/// A worker's counters, as it keeps them and as the parent reads them (plain numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// From the parent starting the worker to its first wait for work (initializer included).
    pub(crate) start_ns: u64,
    /// In tasks: decoding the arguments and calling the function.
    pub(crate) run_ns: u64,
    /// Waiting for a task.
    pub(crate) wait_ns: u64,
    /// Serializing and putting results.
    pub(crate) send_ns: u64,
    /// Items whose function call returned.
    pub(crate) tasks: u64,
    /// Chunks finished.
    pub(crate) chunks: u64,
    /// The slowest items: (nanoseconds, job, item index), slowest first; zero nanoseconds
    /// marks an empty entry.
    pub(crate) slowest: [(u64, u64, u64); SLOWEST],
}

impl Counters {
    /// Records one item that took `ns`.
    pub(crate) fn item(&mut self, ns: u64, job: u64, item: u64) {
        self.tasks += 1;
        let last = SLOWEST - 1;
        if ns <= self.slowest[last].0 {
            return;
        }
        self.slowest[last] = (ns, job, item);
        let mut i = last;
        while i > 0 && self.slowest[i].0 > self.slowest[i - 1].0 {
            self.slowest.swap(i, i - 1);
            i -= 1;
        }
    }
}

/// [`Counters`] in shared memory, behind a sequence lock: the worker (the only writer)
/// makes `seq` odd, stores, makes it even; a reader retries while it is odd or changed.
#[repr(C)]
pub(crate) struct Stats {
    seq: AtomicU32,
    _pad: u32,
    /// start, run, wait, send, tasks, chunks.
    sums: [AtomicU64; 6],
    /// (nanoseconds, job, item) per entry.
    slow: [[AtomicU64; 3]; SLOWEST],
}

impl Stats {
    fn new() -> Stats {
        Stats {
            seq: AtomicU32::new(0),
            _pad: 0,
            sums: std::array::from_fn(|_| AtomicU64::new(0)),
            slow: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// In the worker: publishes `c`.
    pub(crate) fn publish(&self, c: &Counters) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Release fence: the odd `seq` is visible before the stores below (pairs with the
        // Acquire fence in `read`).
        fence(Ordering::Release);
        let sums = [
            c.start_ns, c.run_ns, c.wait_ns, c.send_ns, c.tasks, c.chunks,
        ];
        for (a, v) in self.sums.iter().zip(sums) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, (ns, job, item)) in self.slow.iter().zip(c.slowest) {
            a[0].store(ns, Ordering::Relaxed);
            a[1].store(job, Ordering::Relaxed);
            a[2].store(item, Ordering::Relaxed);
        }
        // Release pairs with the Acquire load of `seq` in `read`.
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// In the parent: the counters last published (a few retries while the worker writes;
    /// then whatever was read, which is only numbers).
    pub(crate) fn read(&self) -> Counters {
        let mut c = Counters::default();
        for _ in 0..100 {
            // Acquire pairs with the Release store that ends `publish`.
            let s1 = self.seq.load(Ordering::Acquire);
            let sums: Vec<u64> = self
                .sums
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect();
            for (e, a) in c.slowest.iter_mut().zip(&self.slow) {
                *e = (
                    a[0].load(Ordering::Relaxed),
                    a[1].load(Ordering::Relaxed),
                    a[2].load(Ordering::Relaxed),
                );
            }
            (
                c.start_ns, c.run_ns, c.wait_ns, c.send_ns, c.tasks, c.chunks,
            ) = (sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]);
            // Acquire fence: the loads above happen before the second load of `seq` (pairs
            // with the Release fence in `publish`).
            fence(Ordering::Acquire);
            if s1 % 2 == 0 && self.seq.load(Ordering::Relaxed) == s1 {
                break;
            }
            std::thread::yield_now();
        }
        c
    }

    fn reset(&self) {
        self.publish(&Counters::default());
    }
}

/// One worker's slot in shared memory (see the module doc).
#[repr(C, align(64))]
pub(crate) struct Slot {
    pub(crate) state: AtomicU32,
    pub(crate) pid: AtomicU32,
    pub(crate) job: AtomicU64,
    pub(crate) chunk: AtomicU64,
    /// Chunks finished by the worker that holds the slot now.
    pub(crate) done: AtomicU64,
    /// 1 once the worker that holds the slot finished its initializer (or had none).
    pub(crate) ready: AtomicU32,
    _pad0: u32,
    /// When the running item must end (`mono_ns`), or 0.
    deadline: AtomicU64,
    /// The running task's timeout in nanoseconds, or 0.
    timeout: AtomicU64,
    /// When the parent started the worker that holds the slot (`mono_ns`).
    pub(crate) spawned: AtomicU64,
    /// The worker's insights.
    pub(crate) stats: Stats,
    _pad: [u64; 2],
}
const_assert_eq!(std::mem::size_of::<Slot>(), 256);
const_assert_eq!(std::mem::align_of::<Slot>(), 64);

// SAFETY: every field is an atomic or padding that is never written; any bit pattern is a
// valid Slot (every state word means something; counters are plain numbers); no Drop;
// `#[repr(C)]` with size and alignment pinned above.
unsafe impl ShmSafe for Slot {}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            state: AtomicU32::new(IDLE),
            pid: AtomicU32::new(0),
            job: AtomicU64::new(0),
            chunk: AtomicU64::new(0),
            done: AtomicU64::new(0),
            ready: AtomicU32::new(0),
            _pad0: 0,
            deadline: AtomicU64::new(0),
            timeout: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            stats: Stats::new(),
            _pad: [0; 2],
        }
    }

    /// In the worker, while the task message is decoded under the queue's consumer lock.
    pub(crate) fn begin(&self, claim: Claim) {
        // The parent reads job and chunk only after the worker died (its pidfd became
        // readable), which orders every store of the worker before the read; SeqCst keeps
        // the stores in program order for that reader without a partner of their own. The
        // supervisor reads `deadline` between two loads of `state` (see `expired`): the new
        // deadline is stored before the new generation.
        self.state.store(CLAIMING, Ordering::SeqCst);
        self.job.store(claim.job, Ordering::SeqCst);
        self.chunk.store(claim.chunk, Ordering::SeqCst);
        self.timeout.store(claim.timeout_ns, Ordering::SeqCst);
        let deadline = match claim.timeout_ns {
            0 => 0,
            t => mono_ns().saturating_add(t),
        };
        self.deadline.store(deadline, Ordering::SeqCst);
        self.state.store(next_running(), Ordering::SeqCst);
    }

    /// In the worker: the running task has a timeout.
    pub(crate) fn has_timeout(&self) -> bool {
        self.timeout.load(Ordering::Relaxed) != 0
    }

    /// In the worker, before every item of a chunk but the first: the item gets a deadline
    /// of its own. False when the supervisor is stopping the task (the worker then waits
    /// for its SIGKILL).
    pub(crate) fn next_item(&self) -> bool {
        let t = self.timeout.load(Ordering::Relaxed);
        if t == 0 {
            return true;
        }
        let cur = self.state.load(Ordering::SeqCst);
        if cur & STATE_BITS != RUNNING {
            return false;
        }
        self.deadline
            .store(mono_ns().saturating_add(t), Ordering::SeqCst);
        // SeqCst pairs with the supervisor's compare-and-swap in `stop`.
        self.state
            .compare_exchange(cur, next_running(), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// In the worker, once the chunk's result is in the result queue. False when the
    /// supervisor is stopping the task (the worker then waits for its SIGKILL).
    pub(crate) fn finish(&self) -> bool {
        self.done.fetch_add(1, Ordering::Relaxed);
        let cur = self.state.load(Ordering::SeqCst);
        // SeqCst pairs with the supervisor's compare-and-swap in `stop`.
        cur & STATE_BITS == RUNNING
            && self
                .state
                .compare_exchange(cur, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// In the parent: the state word of a running item whose deadline passed at `now`.
    pub(crate) fn expired(&self, now: u64) -> Option<u32> {
        let w1 = self.state.load(Ordering::SeqCst);
        if w1 & STATE_BITS != RUNNING {
            return None;
        }
        let d = self.deadline.load(Ordering::SeqCst);
        // Unchanged: `d` is this generation's deadline or a later one (stored first).
        let w2 = self.state.load(Ordering::SeqCst);
        (w1 == w2 && d != 0 && now >= d).then_some(w1)
    }

    /// In the parent: takes the expired item `word` from the worker; true when the worker
    /// is still on it (then it stays there: kill it).
    pub(crate) fn stop(&self, word: u32) -> bool {
        // SeqCst pairs with the worker's compare-and-swaps in `next_item` and `finish`.
        self.state
            .compare_exchange(word, KILLING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// In the parent, after the worker died: the task it was running, if any, and whether
    /// it was stopped for its timeout (then with that timeout).
    pub(crate) fn running(&self) -> Option<(Claim, Option<Duration>)> {
        let s = self.state.load(Ordering::SeqCst) & STATE_BITS;
        let timed_out =
            (s == KILLING).then(|| Duration::from_nanos(self.timeout.load(Ordering::SeqCst)));
        (s == RUNNING || s == KILLING).then(|| {
            let claim = Claim {
                job: self.job.load(Ordering::SeqCst),
                chunk: self.chunk.load(Ordering::SeqCst),
                first: 0,
                timeout_ns: 0,
            };
            (claim, timed_out)
        })
    }

    /// In the parent, before a new worker takes the slot.
    pub(crate) fn reset(&self) {
        self.state.store(IDLE, Ordering::SeqCst);
        self.ready.store(0, Ordering::SeqCst);
        self.done.store(0, Ordering::Relaxed);
        self.deadline.store(0, Ordering::SeqCst);
        self.timeout.store(0, Ordering::SeqCst);
        self.stats.reset();
        self.spawned.store(mono_ns(), Ordering::SeqCst);
    }
}

/// Which chunk of which job a task is. Deserializing it in a worker records it in the
/// worker's slot (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize)]
pub(crate) struct Claim {
    pub(crate) job: u64,
    pub(crate) chunk: u64,
    /// The index of the chunk's first item in its call's input (for insights).
    pub(crate) first: u64,
    /// The task timeout in nanoseconds, per item (0: none).
    pub(crate) timeout_ns: u64,
}

thread_local! {
    /// In a worker: its slot, set once at start (the slot's region lives as long as the
    /// worker process).
    static SLOT: Cell<Option<&'static Slot>> = const { Cell::new(None) };
}

/// Makes this thread record the tasks it takes in `slot`.
pub(crate) fn set_claim_slot(slot: &'static Slot) {
    SLOT.with(|s| s.set(Some(slot)));
}

impl<D: Fallible + ?Sized> Deserialize<Claim, D> for ArchivedClaim {
    fn deserialize(&self, _: &mut D) -> Result<Claim, D::Error> {
        let c = Claim {
            job: self.job.to_native(),
            chunk: self.chunk.to_native(),
            first: self.first.to_native(),
            timeout_ns: self.timeout_ns.to_native(),
        };
        if c.job != 0 {
            if let Some(slot) = SLOT.with(|s| s.get()) {
                slot.begin(c);
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(timeout_ns: u64) -> Claim {
        Claim {
            job: 4,
            chunk: 2,
            first: 0,
            timeout_ns,
        }
    }

    /// The supervisor stops only the item whose deadline it saw pass; a worker that moved
    /// on wins the race, and one that is being stopped cannot move on.
    #[test]
    fn a_timeout_stops_only_the_expired_item() {
        let s = Slot::new();
        s.begin(claim(0));
        assert_eq!(s.expired(u64::MAX), None, "no timeout, no deadline");
        assert!(s.finish());

        s.begin(claim(1));
        let w = s.expired(mono_ns() + 1_000_000).expect("past its deadline");
        assert!(s.next_item(), "the worker moved to the next item first");
        assert!(!s.stop(w), "so the old item is not stopped");
        let w = s.expired(u64::MAX).unwrap();
        assert!(s.stop(w));
        assert!(
            !s.next_item() && !s.finish(),
            "a stopped worker cannot go on"
        );
        let (c, t) = s.running().unwrap();
        assert_eq!((c.job, c.chunk, t), (4, 2, Some(Duration::from_nanos(1))));
        s.reset();
        assert!(s.running().is_none());
    }

    #[test]
    fn counters_keep_the_slowest_and_survive_the_seqlock() {
        let mut c = Counters::default();
        for (i, ns) in [5u64, 1, 9, 3, 7, 2, 8].into_iter().enumerate() {
            c.item(ns, 1, i as u64);
        }
        assert_eq!(c.tasks, 7);
        let ns: Vec<u64> = c.slowest.iter().map(|e| e.0).collect();
        assert_eq!(ns, [9, 8, 7, 5, 3]);
        assert_eq!(c.slowest[0], (9, 1, 2));
        let s = Slot::new();
        s.stats.publish(&c);
        assert_eq!(s.stats.read(), c);
    }
}
