//! [`Barrier`]: `parties` processes (or threads) meet, then all go on.
//!
//! # Algorithm
//! A small robust mutex ([`RawLock`]) guards the arrival count. The `gen` word counts cycles
//! and is the futex word: the last arriver runs the action, records the cycle's outcome,
//! increments `gen` and wakes everyone; a waiter of cycle `g` sleeps while `gen == g`. Each
//! transition out of cycle `g` (a pass, or a break by timeout, `abort`, `reset` or a dead
//! party) records its outcome in a ring of 16 slots before `gen` moves (Release/Acquire), so
//! a waiter learns how *its* cycle ended even when the barrier has been used again since.
//!
//! Parties that die: see the [`Barrier`] doc.

use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_core::futex;
use mp_core::{Deadline, ShmSafe};
use rkyv::{Archive, Deserialize, Serialize};
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::block::{Block, Element, Header};
use crate::error::{Error, Result};
use crate::raw::RawLock;
use mp_core::ident;
use mp_core::lock::{Acquire, MAX_SLICE};

const RING: usize = 16;
const NO_TIMEOUT: u64 = u64::MAX;
/// How long a waiter sleeps before its first check of the parties' liveness; the interval
/// doubles up to `MAX_SLICE` while every party is alive.
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// How long a dead party must stay missing (its slot not taken by a new process) before the
/// barrier breaks: a process that exits normally may be replaced by one that is starting.
const GRACE: Duration = Duration::from_secs(1);

#[repr(C)]
#[derive(Debug)]
pub(crate) struct BarrierState {
    mutex: RawLock,
    /// The cycle number; the futex word.
    gen: AtomicU32,
    /// Arrivals in the current cycle (under `mutex`).
    count: AtomicU32,
    /// 1 while broken (until `reset`).
    broken: AtomicU32,
    /// The number of parties (fixed at construction).
    parties: AtomicU32,
    /// The default timeout in nanoseconds, or `NO_TIMEOUT` (fixed at construction).
    timeout_ns: AtomicU64,
    /// `outcomes[g % RING] = (g << 1) | broken` for the transition out of cycle `g`.
    outcomes: [AtomicU32; RING],
}
// Pinned for the real atomics (the loom build's `RawLock` is larger).
#[cfg(not(loom))]
assert_eq_size!(BarrierState, [u64; 5 + RING / 2]);
#[cfg(not(loom))]
assert_eq_align!(BarrierState, u64);

// SAFETY: only atomics and a RawLock (itself ShmSafe) (1); every bit pattern is a valid state:
// counts, a cycle number, flags read as "non-zero" (2); no Drop (3); `#[repr(C)]`, size and
// alignment pinned above (4).
unsafe impl ShmSafe for BarrierState {}

impl Header for BarrierState {
    const MIN_LEN: usize = 1;
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Member {
    /// Process token of the party, 0 for a free slot.
    token: AtomicU64,
    /// `gen + 1` of the last cycle the party arrived in; 0 before its first arrival.
    arrived: AtomicU32,
    _reserved: AtomicU32,
}
assert_eq_size!(Member, [u64; 2]);
assert_eq_align!(Member, u64);

// SAFETY: atomics only, so all-zero and every other bit pattern are valid, no Drop, and the
// layout is `#[repr(C)]` with size and alignment pinned above.
unsafe impl Element for Member {}

/// The action a barrier runs once per cycle, in the last arriving party, before the others are
/// released.
pub type BarrierAction = Arc<dyn Fn() + Send + Sync>;

/// A barrier for `parties` processes or threads (Python's `multiprocessing.Barrier`).
///
/// Each [`wait`](Barrier::wait) returns a distinct index in `0..parties` per cycle (the
/// arrival order; the last arriver, index `parties - 1`, runs the action). A timeout,
/// [`abort`](Barrier::abort), [`reset`](Barrier::reset) while parties wait, a panicking action,
/// or the death of a party that others wait for breaks the barrier: the waiters get
/// [`Error::BrokenBarrier`], and so does every later `wait` until `reset`.
///
/// The action is local to the process: a fork child inherits it with the barrier, a child
/// started by spawn gets the barrier without it and sets its own with
/// [`with_action`](Barrier::with_action) (closures do not cross `exec`).
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use mp_sync::Barrier;
/// let runs = Arc::new(AtomicU32::new(0));
/// let r = runs.clone();
/// let barrier = Barrier::new(2)?.with_action(move || { r.fetch_add(1, Ordering::SeqCst); });
/// let b = barrier.clone();
/// let t = std::thread::spawn(move || b.wait());
/// let mine = barrier.wait()?;
/// let theirs = t.join().unwrap()?;
/// assert_eq!(mine + theirs, 1); // indices 0 and 1
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// # Ok::<(), mp_sync::Error>(())
/// ```
///
/// # Parties that die
/// Every process that waits on the barrier takes a slot in a table of `parties` slots (its
/// pid and start time) and records the last cycle it arrived in. A waiter that has slept a
/// while checks the table: a process that is dead and has not arrived in the current cycle
/// can never arrive. Once that has stayed so for a grace period of one second (time for a new
/// process that replaces one that exited normally to arrive and take its slot), the barrier
/// breaks and every waiter gets [`Error::BrokenBarrier`] instead of hanging.
///
/// The last arriver runs the action holding the barrier's internal mutex (a robust lock
/// that records its holder). A waiter that has slept a while also checks that holder: a
/// party killed inside the action (or inside the barrier's bookkeeping) is found dead at
/// once, the mutex is taken over, and the barrier breaks the same way.
///
/// The unit is the process, not the thread, so that short-lived threads of a live process may
/// take turns as parties. Only a timeout covers a party that dies before its first `wait` (it
/// is not known yet), or a dead party thread whose process lives on. Hand a barrier to a new
/// set of processes after [`reset`](Barrier::reset), which forgets the parties known so far;
/// otherwise a party that exited normally and whose replacement is more than a second late
/// breaks the barrier.
#[derive(Clone, Archive, Serialize, Deserialize)]
pub struct Barrier {
    block: Block<BarrierState, Member>,
    #[rkyv(with = rkyv::with::Skip)]
    action: Option<BarrierAction>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .field("has_action", &self.action.is_some())
            .finish()
    }
}

impl Barrier {
    /// A barrier for `parties` (at least 1) with no default timeout.
    pub fn new(parties: u32) -> Result<Barrier> {
        Barrier::build(parties, None)
    }

    /// A barrier whose waits give up (and break it) after `timeout` unless given their own.
    pub fn with_timeout(parties: u32, timeout: Duration) -> Result<Barrier> {
        Barrier::build(parties, Some(timeout))
    }

    fn build(parties: u32, timeout: Option<Duration>) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::InvalidArgument("a barrier needs at least one party"));
        }
        ident::init();
        let timeout_ns = timeout.map_or(NO_TIMEOUT, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(NO_TIMEOUT - 1)
        });
        let state = BarrierState {
            mutex: RawLock::new(),
            gen: AtomicU32::new(0),
            count: AtomicU32::new(0),
            broken: AtomicU32::new(0),
            parties: AtomicU32::new(parties),
            timeout_ns: AtomicU64::new(timeout_ns),
            outcomes: std::array::from_fn(|_| AtomicU32::new(u32::MAX)),
        };
        Ok(Barrier {
            block: Block::new(state, parties as usize)?,
            action: None,
        })
    }

    /// Sets the action this process runs when it is the last to arrive.
    pub fn with_action(mut self, action: impl Fn() + Send + Sync + 'static) -> Barrier {
        self.action = Some(Arc::new(action));
        self
    }

    fn state(&self) -> &BarrierState {
        self.block.header()
    }

    fn members(&self) -> &[Member] {
        let n = self.block.len().min(self.parties() as usize);
        // SAFETY: the block holds `len()` initialised (zeroed, then atomically updated)
        // Members for as long as `self.block` lives; Members are atomics only, so shared
        // references are sound while other processes update them.
        unsafe { std::slice::from_raw_parts(self.block.elems(), n) }
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.state().parties.load(Ordering::Relaxed)
    }

    /// How many parties wait in the current cycle.
    pub fn n_waiting(&self) -> u32 {
        if self.broken() {
            return 0;
        }
        self.state().count.load(Ordering::Relaxed)
    }

    /// True while the barrier is broken.
    pub fn broken(&self) -> bool {
        self.state().broken.load(Ordering::Relaxed) != 0
    }

    fn default_timeout(&self) -> Option<Duration> {
        match self.state().timeout_ns.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Waits for the other parties (or the default timeout); returns this party's index.
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(Deadline::after(self.default_timeout()))
    }

    /// Waits at most `timeout`; on timeout the barrier breaks ([`Error::BrokenBarrier`]).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    /// Takes the internal mutex; a dead holder (a party killed inside the barrier's own
    /// bookkeeping) breaks the barrier, since the count may be wrong.
    fn lock(&self) -> BarrierLock<'_> {
        let st = self.state();
        let a = st.mutex.lock(ident::process_token(), Deadline::never());
        let guard = BarrierLock { st };
        if matches!(a, Acquire::OwnerDied(_)) {
            guard.break_cycle();
        }
        guard
    }

    fn wait_until(&self, deadline: Deadline) -> Result<u32> {
        let me = ident::process_token();
        let st = self.state();
        let lock = self.lock();
        if st.broken.load(Ordering::Relaxed) != 0 {
            return Err(Error::BrokenBarrier);
        }
        let g = st.gen.load(Ordering::Relaxed);
        // The count and the parties are shared words another process may have left with
        // any value: a count at or past the last index makes this the last arrival.
        let last = self.parties().saturating_sub(1);
        let index = st.count.load(Ordering::Relaxed).min(last);
        st.count.store(index.saturating_add(1), Ordering::Relaxed);
        self.register(me, g);
        if index == last {
            if let Some(action) = &self.action {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| action())) {
                    lock.break_cycle();
                    drop(lock);
                    resume_unwind(panic);
                }
            }
            lock.finish_cycle(false);
            return Ok(index);
        }
        drop(lock);
        let mut check_after = CHECK_EVERY;
        // A dead party that has not arrived, and when this waiter first saw it.
        let mut missing: Option<(u64, Instant)> = None;
        loop {
            // Acquire pairs with the Release store of `gen` in `finish_cycle`.
            if st.gen.load(Ordering::Acquire) != g {
                return self.outcome(g, index);
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                let lock = self.lock();
                if st.gen.load(Ordering::Relaxed) == g {
                    lock.break_cycle();
                }
                drop(lock);
                return self.outcome(g, index);
            }
            let slice = left.map_or(check_after, |l| l.min(check_after));
            if futex::wait(&st.gen, g, Some(slice)) == futex::Wake::TimedOut {
                // The last arriver holds the mutex while it runs the action: if it died
                // there, take the mutex over, which breaks the cycle (see `lock`).
                let holder = st.mutex.holder();
                if holder != 0 && !ident::is_alive(holder) {
                    drop(self.lock());
                    continue;
                }
                match (self.missing_party(g), missing) {
                    // The same dead party, still not replaced after the grace period.
                    (Some(t), Some((m, since))) if t == m && since.elapsed() >= GRACE => {
                        let lock = self.lock();
                        if st.gen.load(Ordering::Relaxed) == g {
                            lock.break_cycle();
                        }
                    }
                    (Some(t), Some((m, _))) if t == m => {}
                    (Some(t), _) => missing = Some((t, Instant::now())),
                    (None, _) => {
                        missing = None;
                        check_after = (check_after * 2).min(MAX_SLICE);
                    }
                }
            }
        }
    }

    /// How cycle `g` ended, once `gen` has moved past it.
    fn outcome(&self, g: u32, index: u32) -> Result<u32> {
        let st = self.state();
        let entry = st.outcomes[g as usize % RING].load(Ordering::Relaxed);
        if entry == (g << 1) {
            Ok(index)
        } else {
            // Broken, or (after 16 more cycles while this waiter was not scheduled) unknown:
            // a pass cannot be confirmed, so report the barrier as broken.
            Err(Error::BrokenBarrier)
        }
    }

    /// Records that process `me` arrived in cycle `g` (under the mutex).
    fn register(&self, me: u64, g: u32) {
        let members = self.members();
        let slot = members
            .iter()
            .find(|m| m.token.load(Ordering::Relaxed) == me)
            .or_else(|| {
                members
                    .iter()
                    .find(|m| m.token.load(Ordering::Relaxed) == 0)
            })
            .or_else(|| {
                members
                    .iter()
                    .find(|m| !ident::is_alive(m.token.load(Ordering::Relaxed)))
            });
        if let Some(m) = slot {
            m.token.store(me, Ordering::Relaxed);
            m.arrived.store(g.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// A known party process that is dead and has not arrived in cycle `g`, if any.
    fn missing_party(&self, g: u32) -> Option<u64> {
        self.members().iter().find_map(|m| {
            let t = m.token.load(Ordering::Relaxed);
            (t != 0
                && m.arrived.load(Ordering::Relaxed) != g.wrapping_add(1)
                && !ident::is_alive(t))
            .then_some(t)
        })
    }

    /// Breaks the barrier: the parties waiting now, and every later `wait` until
    /// [`reset`](Barrier::reset), get [`Error::BrokenBarrier`].
    pub fn abort(&self) {
        self.lock().break_cycle();
    }

    /// Returns the barrier to its initial state; parties waiting now get
    /// [`Error::BrokenBarrier`].
    ///
    /// The parties known so far are forgotten too: reset a barrier before handing it to a new
    /// set of processes (see [Parties that die](Barrier#parties-that-die)).
    pub fn reset(&self) {
        let lock = self.lock();
        if lock.st.count.load(Ordering::Relaxed) > 0 {
            lock.break_cycle();
        }
        for m in self.members() {
            m.token.store(0, Ordering::Relaxed);
            m.arrived.store(0, Ordering::Relaxed);
        }
        lock.st.broken.store(0, Ordering::Relaxed);
    }
}

/// The barrier's internal mutex, held.
struct BarrierLock<'a> {
    st: &'a BarrierState,
}

impl BarrierLock<'_> {
    /// Ends the current cycle as broken and marks the barrier broken.
    fn break_cycle(&self) {
        self.st.broken.store(1, Ordering::Relaxed);
        self.finish_cycle(true);
    }

    /// Ends the current cycle: records the outcome, moves `gen`, wakes every waiter.
    fn finish_cycle(&self, broken: bool) {
        let g = self.st.gen.load(Ordering::Relaxed);
        self.st.outcomes[g as usize % RING].store((g << 1) | u32::from(broken), Ordering::Relaxed);
        self.st.count.store(0, Ordering::Relaxed);
        // Release pairs with the Acquire load of `gen` by waiters: the outcome above is
        // visible to whoever sees the new cycle number.
        self.st.gen.store(g.wrapping_add(1), Ordering::Release);
        futex::wake_all(&self.st.gen);
    }
}

impl Drop for BarrierLock<'_> {
    fn drop(&mut self) {
        self.st.mutex.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13 item 10: the arrival count lives in shared memory, where a broken peer may
    /// leave any value; an arrival must not overflow on it (a panic in a debug build, a
    /// wrapped index in a release build).
    #[test]
    fn a_garbage_arrival_count_does_not_overflow() {
        let b = Barrier::new(2).unwrap();
        b.state().count.store(u32::MAX, Ordering::Relaxed);
        // A count past the parties makes this arrival the last one, with the last index.
        assert_eq!(b.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert_eq!(b.n_waiting(), 0);
        assert!(!b.broken());
    }
}
