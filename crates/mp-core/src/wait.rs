//! The one wait policy of every primitive: spin for a bounded *time*, adapted per object from
//! what recent waits cost, and only when spinning can help; then sleep (in the futex, or on a
//! socket), which is the caller's part.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use mp_core::wait::Spin;
//! use mp_core::Deadline;
//!
//! let word = AtomicU32::new(1);
//! let mut spin = Spin::new(&word, Deadline::never());
//! while word.load(Ordering::Acquire) == 0 {
//!     if !spin.spin() {
//!         // The budget is spent: sleep until the word changes (mp_core::futex::wait).
//!         break;
//!     }
//! }
//! // Dropping `spin` records how the wait went, for the next wait on `word`.
//! ```
//!
//! # The policy
//! A waiter spins while the thing it waits for is likely to come within microseconds, because a
//! futex wake-up across cores costs tens of microseconds on the machines mp runs on. It does
//! not spin when spinning cannot help:
//!
//! * **No idle CPU.** When the machine has at least as many runnable tasks as CPUs besides the
//!   waiter (the count of running tasks in `/proc/loadavg`, read at most every
//!   [`LOAD_REFRESH`] by one thread of the process), a spinning waiter takes a time slice from
//!   the task it waits for, or from another: it sleeps at once. A Pool with one worker per core
//!   and its parent is such a machine by design.
//! * **Recent spins failed.** Each object has a budget, between [`MIN_SPIN`] and
//!   [`MAX_SPIN`], in a small per-process table indexed by the object's address (no field in
//!   shared memory, nothing in the handles). A wait that ends while spinning, or soon after the
//!   waiter fell asleep, doubles it; a wait that outlasts the spin by far halves it, down to
//!   zero: no spin until a wait ends soon after the sleep again. A waiter on a frozen or slow
//!   peer stops spinning after a few waits.
//!
//! * **The peer is on this CPU.** An object whose sides publish where they last ran (a pipe
//!   ring: each side stores [`cpu_hint`] beside its position) tells the waiter where its peer
//!   is ([`Spin::with_peer`]). A peer that last ran on the waiter's CPU (both pinned to one
//!   core, say) cannot make progress while the waiter spins: the waiter does not spin, it
//!   yields the CPU between looks from the first one, within its budget, so that the peer runs
//!   at once and its answer is taken without a wake-up on either side.
//!
//! While it spins, the waiter looks without a pause first (a reply on its way is caught at
//! once), then with the CPU's spin hint, and after [`YIELD_AFTER`] it yields the CPU between
//! looks: a peer that shares its core (the machine has idle CPUs, but not this one) runs at once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::deadline::Deadline;

/// The longest spin before a sleep.
pub const MAX_SPIN: Duration = Duration::from_micros(50);
/// The shortest spin; a budget halved below it is zero (no spin).
pub const MIN_SPIN: Duration = Duration::from_micros(2);
/// The budget of an object no wait has adapted yet.
pub const START_SPIN: Duration = Duration::from_micros(10);
/// After spinning this long, yield the CPU between looks.
pub const YIELD_AFTER: Duration = Duration::from_micros(3);
/// How old the load reading may be.
pub const LOAD_REFRESH: Duration = Duration::from_millis(10);

/// Looks at the start of a spin without a pause in between.
const TIGHT: u32 = 64;
/// A wait that ends within this long after its spin was spent would have been a spin.
const SHORT_SLEEP: Duration = Duration::from_micros(100);
/// Budgets are kept in units of this many nanoseconds (so that [`MAX_SPIN`] fits in a `u32`
/// many times over).
const UNIT_NS: u64 = 128;
/// The size of the per-process budget table.
const SLOTS: usize = 256;

/// Budget table: 0 means "never adapted" (START_SPIN), else budget/UNIT + 1.
static BUDGETS: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];

fn slot(key: usize) -> &'static AtomicU32 {
    // Fibonacci hashing of the address: neighbours (one struct's fields) spread out.
    let h = (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
    &BUDGETS[h as usize % SLOTS]
}

/// Rounded up, so that a budget of at least `MIN_SPIN` stays so.
fn to_units(d: Duration) -> u32 {
    d.as_nanos().div_ceil(u128::from(UNIT_NS)) as u32
}

fn budget_of(raw: u32) -> Duration {
    match raw {
        0 => START_SPIN,
        n => Duration::from_nanos(u64::from(n - 1) * UNIT_NS),
    }
}

/// One wait's spin on one object: call [`spin`](Spin::spin) between looks at the condition
/// until it returns false, then sleep. Dropping it (when the wait is over) adapts the object's
/// budget (module doc).
#[derive(Debug)]
pub struct Spin {
    slot: &'static AtomicU32,
    limit: Duration,
    /// False when the machine's load (not the budget) said "do not spin".
    learn: bool,
    start: Option<Instant>,
    looks: u32,
    yielding: bool,
    /// When the budget ran out (the caller then sleeps).
    spent: Option<Instant>,
}

impl Spin {
    /// A spin for a wait on the object at `key` (any reference into it: the futex word, the
    /// ring), bounded by the object's budget, the deadline and the machine's load.
    pub fn new<T: ?Sized>(key: &T, deadline: Deadline) -> Spin {
        let busy = cfg!(loom) || machine_busy();
        Spin::in_slot(slot(key as *const T as *const u8 as usize), busy, deadline)
    }

    /// As [`new`](Spin::new), for a wait on a peer that last ran on CPU `peer_cpu - 1` (its
    /// [`cpu_hint`]; 0: not known): when that is this thread's CPU, the waiter yields from the
    /// first look instead of spinning (module doc). The hint comes from another process and
    /// is only a hint: any value is harmless.
    pub fn with_peer<T: ?Sized>(key: &T, deadline: Deadline, peer_cpu: u32) -> Spin {
        let mut spin = Spin::new(key, deadline);
        if peer_cpu != 0 && peer_cpu == cpu_hint() {
            spin.yielding = true;
        }
        spin
    }

    fn in_slot(slot: &'static AtomicU32, busy: bool, deadline: Deadline) -> Spin {
        let mut limit = if busy {
            Duration::ZERO
        } else {
            budget_of(slot.load(Relaxed))
        };
        if let Some(left) = deadline.remaining() {
            limit = limit.min(left);
        }
        Spin {
            slot,
            limit,
            learn: !busy,
            start: None,
            looks: 0,
            yielding: false,
            spent: None,
        }
    }

    /// A spin that never spins (the caller sleeps at once) and adapts nothing.
    pub fn none() -> Spin {
        Spin {
            slot: &BUDGETS[0],
            limit: Duration::ZERO,
            learn: false,
            start: None,
            looks: 0,
            yielding: false,
            spent: Some(Instant::now()),
        }
    }

    /// Waits a moment; false once the budget is spent (the caller should sleep).
    #[inline]
    pub fn spin(&mut self) -> bool {
        if self.spent.is_some() {
            return false;
        }
        if self.limit.is_zero() {
            self.spent = Some(Instant::now());
            return false;
        }
        self.looks = self.looks.wrapping_add(1);
        if self.looks < TIGHT && !self.yielding {
            return true;
        }
        if self.yielding || self.looks % 16 == 0 {
            let now = Instant::now();
            let el = now.duration_since(*self.start.get_or_insert(now));
            if el >= self.limit {
                self.spent = Some(now);
                return false;
            }
            self.yielding = el >= YIELD_AFTER;
        }
        if self.yielding {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        true
    }

    /// True once the budget is spent.
    pub fn is_spent(&self) -> bool {
        self.spent.is_some()
    }
}

impl Drop for Spin {
    fn drop(&mut self) {
        // A spin the machine's load forbade teaches nothing about the object.
        if !self.learn {
            return;
        }
        let raw = self.slot.load(Relaxed);
        let budget = budget_of(raw);
        let grow = match self.spent {
            // No wait at all.
            None if self.looks == 0 => return,
            // The wait ended while spinning.
            None => true,
            // Or soon after the waiter fell asleep: a longer spin would have caught it.
            Some(at) => at.elapsed() < SHORT_SLEEP,
        };
        let next = if grow {
            (budget * 2).clamp(MIN_SPIN, MAX_SPIN)
        } else if budget / 2 < MIN_SPIN {
            Duration::ZERO
        } else {
            budget / 2
        };
        let new = to_units(next) + 1;
        if new != raw {
            self.slot.store(new, Relaxed);
        }
    }
}

/// The CPU this thread runs on, plus one (0: not known): what a side of a shared object
/// publishes for its peer's [`Spin::with_peer`]. Cheap (glibc reads it from the thread's
/// `rseq` area when the kernel provides one).
#[inline]
pub fn cpu_hint() -> u32 {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).map_or(0, |c| c.wrapping_add(1))
}

/// The number of online CPUs, read once.
pub fn cpus() -> u32 {
    static CPUS: AtomicU32 = AtomicU32::new(0);
    match CPUS.load(Relaxed) {
        0 => {
            // SAFETY: sysconf has no memory effects.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
            let n = u32::try_from(n).unwrap_or(1).max(1);
            CPUS.store(n, Relaxed);
            n
        }
        n => n,
    }
}

/// True when the machine has no idle CPU for the task a waiter waits for: more running tasks
/// than CPUs (the waiter counts itself). The reading is at most [`LOAD_REFRESH`] old.
pub fn machine_busy() -> bool {
    // Bit 0: busy; the rest: the time of the reading in ms since the process's first reading,
    // plus one (0: never read).
    static LOAD: AtomicU64 = AtomicU64::new(0);
    let now = coarse_ms() + 1;
    let cur = LOAD.load(Relaxed);
    let busy = cur & 1 == 1;
    if cur != 0 && now.saturating_sub(cur >> 1) < LOAD_REFRESH.as_millis() as u64 {
        return busy;
    }
    // One thread refreshes; the others go on with the old reading.
    if LOAD
        .compare_exchange(cur, (now << 1) | u64::from(busy), Relaxed, Relaxed)
        .is_err()
    {
        return busy;
    }
    let b = running_tasks().is_some_and(|r| r > cpus());
    LOAD.store((now << 1) | u64::from(b), Relaxed);
    b
}

/// The monotonic clock in milliseconds, from the kernel's tick-sized clock (a read without a
/// system call, cheaper than `Instant::now`).
fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// The number of running tasks of the machine now (the fourth field of `/proc/loadavg`,
/// `running/total`), or `None` without `/proc`.
pub fn running_tasks() -> Option<u32> {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; the descriptor is ours and closed below.
    let fd = unsafe { libc::open(c"/proc/loadavg".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    let text = std::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
    parse_running(text)
}

fn parse_running(loadavg: &str) -> Option<u32> {
    let field = loadavg.split_ascii_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loadavg() {
        assert_eq!(parse_running("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(parse_running("0.52 0.58 0.59"), None);
        assert_eq!(parse_running("a b c x/1 2"), None);
        assert!(running_tasks().is_some_and(|r| r >= 1));
    }

    #[test]
    fn failed_spins_turn_spinning_off_and_quick_wakes_turn_it_on() {
        let word = AtomicU32::new(0);
        let s = slot(&word as *const AtomicU32 as usize);
        s.store(0, Relaxed);
        // Waits that outlast their spin by far halve the budget down to zero.
        let new = || Spin::in_slot(s, false, Deadline::never());
        for _ in 0..8 {
            let mut spin = new();
            while spin.spin() {}
            spin.spent = Some(Instant::now() - SHORT_SLEEP * 2);
        }
        assert_eq!(budget_of(s.load(Relaxed)), Duration::ZERO);
        let mut spin = new();
        assert!(!spin.spin(), "a zero budget does not spin");
        spin.spent = Some(Instant::now() - SHORT_SLEEP * 2);
        drop(spin);
        assert_eq!(budget_of(s.load(Relaxed)), Duration::ZERO);
        // A wait that ends right after the sleep began grows it again.
        let mut spin = new();
        assert!(!spin.spin());
        drop(spin);
        assert!(budget_of(s.load(Relaxed)) >= MIN_SPIN);
        // Waits that end while spinning grow it up to the maximum.
        s.store(to_units(MIN_SPIN) + 1, Relaxed);
        for _ in 0..10 {
            let mut spin = new();
            assert!(spin.spin());
        }
        assert!(budget_of(s.load(Relaxed)) >= MAX_SPIN - Duration::from_nanos(UNIT_NS));
        // A busy machine: no spin, and the budget stays.
        let before = s.load(Relaxed);
        let mut busy = Spin::in_slot(s, true, Deadline::never());
        assert!(!busy.spin());
        drop(busy);
        assert_eq!(s.load(Relaxed), before);
    }

    /// Pins this thread to the CPU it is on, so that its `cpu_hint` stays put; restores the
    /// mask when dropped.
    struct Pinned(libc::cpu_set_t);

    impl Pinned {
        fn here() -> Pinned {
            // SAFETY: cpu_set_t is plain data; the calls write or read the sets given.
            unsafe {
                let mut old: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size_of_val(&old), &mut old), 0);
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(libc::sched_getcpu() as usize, &mut one);
                assert_eq!(libc::sched_setaffinity(0, size_of_val(&one), &one), 0);
                Pinned(old)
            }
        }
    }

    impl Drop for Pinned {
        fn drop(&mut self) {
            // SAFETY: restores the mask read in `here`.
            unsafe { libc::sched_setaffinity(0, size_of_val(&self.0), &self.0) };
        }
    }

    #[test]
    fn a_peer_on_this_cpu_is_yielded_to_from_the_first_look() {
        let _pin = Pinned::here();
        let here = cpu_hint();
        assert!(here >= 1, "sched_getcpu works here");
        let word = AtomicU32::new(0);
        let same = Spin::with_peer(&word, Deadline::never(), here);
        assert!(same.yielding, "a peer on this CPU: yield at once");
        let elsewhere = Spin::with_peer(&word, Deadline::never(), here + 1);
        assert!(!elsewhere.yielding);
        let unknown = Spin::with_peer(&word, Deadline::never(), 0);
        assert!(!unknown.yielding);
    }

    #[test]
    fn a_spin_is_bounded_by_its_deadline() {
        let mut spin = Spin::in_slot(&BUDGETS[1], false, Deadline::after(Some(Duration::ZERO)));
        assert!(!spin.spin());
        assert!(spin.is_spent());
        let mut none = Spin::none();
        assert!(!none.spin());
    }
}
