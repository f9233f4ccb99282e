//! Helper processes for multi-process workloads: fork, pin, meet at a gate, and always reap.
//!
//! The bench process is single-threaded whenever it forks (criterion runs benchmarks on the
//! main thread, and the thread-based peers join their threads before returning), so a forked
//! child may run ordinary Rust code: no other thread can hold a lock in it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mp_core::{Shared, ShmSafe};

use crate::placement::pin_current;

/// A forked helper process; reaped by [`Child::wait`], or killed and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    pid: Option<libc::pid_t>,
}

/// Forks a child that pins itself to `cpu`, runs `f` and exits with status 0 (101 if `f`
/// panics). The child never returns into the caller's stack frames (it leaves with `_exit`).
pub fn fork_child(cpu: usize, f: impl FnOnce()) -> Child {
    // SAFETY: the bench process is single-threaded when it forks (module doc), so the child may
    // allocate and run Rust code; it leaves through `_exit` and never unwinds into the parent's
    // frames.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
        0 => {
            pin_current(cpu);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
            // SAFETY: _exit ends the child at once, without running the parent's atexit
            // handlers or destructors of state it shares with the parent.
            unsafe { libc::_exit(if ok { 0 } else { 101 }) }
        }
        pid => Child { pid: Some(pid) },
    }
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid.unwrap_or(0)
    }

    /// Waits for the child; panics (failing the benchmark) if it did not exit with status 0.
    pub fn wait(mut self) {
        if let Some(pid) = self.pid.take() {
            let status = reap(pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "benchmark child {pid} failed (wait status {status:#x})"
            );
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: kill has no memory effects; the pid is our unreaped child, so it cannot
            // have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
        }
    }
}

fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return status;
        }
    }
}

/// The starting line of a multi-process measurement, in shared memory: children check in, the
/// parent starts the clock and opens the gate, so process start-up is never measured.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct GateState {
    ready: AtomicU32,
    go: AtomicU32,
    done: AtomicU32,
    _pad: [u32; 13],
}
const _: () = assert!(std::mem::size_of::<GateState>() == 64);
const _: () = assert!(std::mem::align_of::<GateState>() == 64);

// SAFETY: only atomics (and never-written padding); any bit pattern is valid; no Drop;
// repr(C) with size and alignment pinned above.
unsafe impl ShmSafe for GateState {}

/// A shared [`GateState`].
#[derive(Debug, Clone)]
pub struct Gate(Shared<GateState>);

impl Gate {
    /// A closed gate with nobody checked in.
    pub fn new() -> Gate {
        Gate(
            Shared::new(GateState {
                ready: AtomicU32::new(0),
                go: AtomicU32::new(0),
                done: AtomicU32::new(0),
                _pad: [0; 13],
            })
            .expect("shared memory for the gate"),
        )
    }

    /// In a child: check in and wait (spinning, yielding now and then) for the gate to open.
    pub fn arrive(&self) {
        // Release pairs with the Acquire load in `open`.
        self.0.ready.fetch_add(1, Ordering::Release);
        // Acquire pairs with the Release store in `open`.
        spin_until(|| self.0.go.load(Ordering::Acquire) == 1);
    }

    /// In the parent: wait until `n` children checked in, open the gate and return the start
    /// instant.
    pub fn open(&self, n: u32) -> Instant {
        // Acquire pairs with the Release increment in `arrive`.
        spin_until(|| self.0.ready.load(Ordering::Acquire) >= n);
        let start = Instant::now();
        // Release pairs with the Acquire load in `arrive`.
        self.0.go.store(1, Ordering::Release);
        start
    }

    /// In a child: report that its part of the work is finished.
    pub fn finish(&self) {
        // Release pairs with the Acquire load in `wait_finished`.
        self.0.done.fetch_add(1, Ordering::Release);
    }

    /// In the parent: wait until `n` children reported [`Gate::finish`]. Checks a few hundred
    /// times, then sleeps 20 µs between checks: a parent that spun here would take CPU time from
    /// a child on the same CPU (packed, or CPU 0 when spread), which is what it waits for.
    pub fn wait_finished(&self, n: u32) {
        // Acquire pairs with the Release increment in `finish`.
        let done = || self.0.done.load(Ordering::Acquire) >= n;
        for _ in 0..256 {
            if done() {
                return;
            }
            std::hint::spin_loop();
        }
        while !done() {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// Spins until `cond` holds, yielding the CPU every 128 checks so that a partner pinned to the
/// same CPU ("packed") gets to run instead of waiting for the end of a time slice.
pub fn spin_until(mut cond: impl FnMut() -> bool) {
    let mut n = 0u32;
    while !cond() {
        n = n.wrapping_add(1);
        if n % 128 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Forks one child per closure (child `i` pinned to `placement.child_cpu(i)`), each of which
/// arrives at the gate before running its closure; then pins the parent, opens the gate and
/// returns how long `parent` took. Children are reaped after the clock stops.
pub fn timed<C: FnOnce(&Gate)>(
    placement: crate::Placement,
    children: Vec<C>,
    parent: impl FnOnce(&Gate),
) -> Duration {
    placement.pin_parent();
    let gate = Gate::new();
    let n = children.len() as u32;
    let kids: Vec<Child> = children
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let g = gate.clone();
            fork_child(placement.child_cpu(i), move || {
                g.arrive();
                f(&g);
            })
        })
        .collect();
    let start = gate.open(n);
    parent(&gate);
    let took = start.elapsed();
    for k in kids {
        k.wait();
    }
    took
}
