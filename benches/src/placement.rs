//! Where the processes and threads of a workload run: CPU affinity, set the same way for mp,
//! the peers, the limits and CPython.
//!
//! On a small VM an unpinned run swings by several times from run to run, and a wake-up across
//! cores costs an order of magnitude more than one on the same core, so every number in the
//! table says which placement it was measured in.
//!
//! [`Placement::Loaded`] pins exactly as [`Placement::Spread`]; what makes it "loaded" is
//! outside this process: `cargo xtask bench` runs the loaded benchmarks (and CPython's loaded
//! scripts) beside one CPU-bound busy loop pinned on each online CPU, started before the bench
//! process and killed after it. A bare `cargo bench` has no busy loops, and says so.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The CPU placement of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Parent on CPU 0, children (or helper threads) on CPU 1, 0, 1, ...
    Spread,
    /// Everyone on CPU 0.
    Packed,
    /// A single-process workload, pinned to CPU 0.
    Single,
    /// Pinned as [`Placement::Spread`], beside one CPU-bound process pinned on each CPU (the
    /// busy loops of `cargo xtask bench`, which sets [`BUSY_LOOPS_VAR`] for the run): every
    /// process of the workload shares its core with a hog, as on a busy machine or under a
    /// pool with one worker per core plus its parent.
    Loaded,
}

/// Set by `cargo xtask bench` (to the number of busy loops) in the environment of a run of the
/// loaded benchmarks; without it [`Placement::Loaded`] warns that nothing loads the machine.
pub const BUSY_LOOPS_VAR: &str = "MP_BENCH_BUSY_LOOPS";

impl Placement {
    /// The placements of multi-process workloads.
    pub const MULTI: [Placement; 3] = [Placement::Spread, Placement::Packed, Placement::Loaded];

    /// The name used in benchmark ids and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::Packed => "packed",
            Placement::Single => "single",
            Placement::Loaded => "loaded",
        }
    }

    /// The CPU of the parent (the process that measures).
    pub fn parent_cpu(self) -> usize {
        0
    }

    /// The CPU of child (or helper thread) number `i`, counting from 0.
    pub fn child_cpu(self, i: usize) -> usize {
        match self {
            Placement::Spread | Placement::Loaded if cpus() > 1 => usize::from(i % 2 == 0),
            _ => 0,
        }
    }

    /// Pins the calling thread to the parent's CPU (threads and children it creates afterwards
    /// inherit the mask until they pin themselves). In [`Placement::Loaded`] without the busy
    /// loops of `cargo xtask bench` it warns once on stderr.
    pub fn pin_parent(self) {
        if self == Placement::Loaded && std::env::var_os(BUSY_LOOPS_VAR).is_none() {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "mp-benches: the loaded placement runs without busy loops ({BUSY_LOOPS_VAR} \
                     is not set): run it through `cargo xtask bench`"
                );
            });
        }
        pin_current(self.parent_cpu());
    }
}

/// The number of online CPUs (not the affinity mask of the caller, which pinning narrows).
///
/// Read once per process and cached: glibc reads it from sysfs on every call, which would add
/// an open, a read and a close to every child that pins itself (the CPython scripts cache it
/// the same way).
pub fn cpus() -> usize {
    static CPUS: AtomicUsize = AtomicUsize::new(0);
    match CPUS.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no memory effects.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
            let n = usize::try_from(n).unwrap_or(1).max(1);
            CPUS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Pins the calling thread to `cpu`; a CPU the machine does not have falls back to CPU 0.
/// Failure is reported on stderr and otherwise ignored (the run goes on unpinned).
pub fn pin_current(cpu: usize) {
    let cpu = if cpu < cpus() { cpu } else { 0 };
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit inside `set`; `cpu` is below the online count, far below
    // CPU_SETSIZE (1024).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size we pass.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        eprintln!(
            "mp-benches: sched_setaffinity(cpu {cpu}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Lets the calling thread run on every online CPU again (undoes an inherited pin: the helpers
/// of the workloads whose children are left to the scheduler). Async-signal-safe (one
/// system call), so it may run between fork and exec.
pub fn unpin_current() {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..cpus().min(1024) {
        // SAFETY: CPU_SET writes a bit inside `set`; `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size we pass.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// Pins another process (its main thread) to `cpu`, like `os.sched_setaffinity(pid, {cpu})`.
pub fn pin_pid(pid: i32, cpu: usize) {
    let cpu = if cpu < cpus() { cpu } else { 0 };
    // SAFETY: as in `pin_current`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as in `pin_current`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass; a stale pid only yields ESRCH.
    unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_alternates_loaded_pins_as_spread_and_packed_stays_on_cpu0() {
        assert_eq!(Placement::Packed.child_cpu(0), 0);
        assert_eq!(Placement::Packed.child_cpu(1), 0);
        if cpus() > 1 {
            assert_eq!(Placement::Spread.child_cpu(0), 1);
            assert_eq!(Placement::Spread.child_cpu(1), 0);
            assert_eq!(Placement::Spread.child_cpu(2), 1);
        }
        assert_eq!(Placement::Spread.parent_cpu(), 0);
        for i in 0..4 {
            assert_eq!(
                Placement::Loaded.child_cpu(i),
                Placement::Spread.child_cpu(i)
            );
        }
    }
}
