//! The machine's limits: what the hardware and the kernel allow at best, measured with the
//! fewest possible instructions, in the same run and placements as mp.
//!
//! | limit | what | ceiling for |
//! |---|---|---|
//! | [`memcpy`] | copy 64 MiB | memory bandwidth |
//! | [`memcpy_1mib`] | copy 1 MiB (in cache) | 1 MiB messages (GB/s) |
//! | [`cacheline_rt`] | one cache line bounced between two spinning threads | any spinning hand-off |
//! | [`futex_rt`] | FUTEX_WAKE/FUTEX_WAIT ping-pong between two processes | blocking wake-ups (event, pipe) |
//! | [`pipe_rt`] | `pipe(2)` ping-pong between two processes, one byte | kernel-mediated round trips |
//! | [`spsc_ring`] | ring of u64 between two spinning processes | small-message throughput |
//! | [`atomic_cas`] | uncontended CAS + release store | an uncontended lock |
//! | [`atomic_counter`] | two processes `fetch_add` one shared word | per-operation cache-line transfer |
//! | [`spinlock_counter`] | two processes increment under a bare spinlock | a lock-protected counter |
//! | [`fork_wait`] | `fork` + `_exit` + `waitpid` | process start (fork) |
//! | [`exec_wait`] | fork + exec `/bin/true` + wait | process start (spawn) |
//! | [`cpu_1p`] / [`cpu_2p`] | a batch of CPU tasks in 1 or 2 processes (handed out one by one) | pool scaling |
//!
//! Spinning loops yield the CPU every 128 checks ([`crate::proc::spin_until`]), so that the
//! packed placement measures a hand-off through the scheduler instead of a time slice.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp_core::{futex, Shared, ShmSafe};

use crate::proc::{fork_child, spin_until, timed, Gate};
use crate::{cpu_task, Placement, CPU_TASKS};

/// Copies a 64 MiB buffer `iters` times (one iteration = 64 MiB): memory bandwidth.
pub fn memcpy(iters: u64, placement: Placement) -> Duration {
    copy(iters, placement, 64 * crate::MIB)
}

/// Copies a 1 MiB buffer `iters` times: the copy bandwidth of a message that fits in the cache,
/// which is what one 1 MiB message through a queue must pay at least once.
pub fn memcpy_1mib(iters: u64, placement: Placement) -> Duration {
    copy(iters, placement, crate::MIB)
}

fn copy(iters: u64, placement: Placement, size: usize) -> Duration {
    placement.pin_parent();
    let src = vec![0x5au8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src); // fault the pages in before the clock starts
    let start = Instant::now();
    for _ in 0..iters {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    start.elapsed()
}

#[repr(C, align(64))]
struct Line {
    v: AtomicU64,
    _pad: [u64; 7],
}

/// Round trips of one cache line between two spinning threads (parent on `parent_cpu`, helper
/// on `child_cpu(0)`): the parent writes an odd number, the helper answers with the next even.
pub fn cacheline_rt(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    let line = Line {
        v: AtomicU64::new(0),
        _pad: [0; 7],
    };
    let ready = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::placement::pin_current(placement.child_cpu(0));
            ready.wait();
            for i in 0..iters {
                // Acquire pairs with the parent's Release store of 2i+1.
                spin_until(|| line.v.load(Ordering::Acquire) == 2 * i + 1);
                // Release pairs with the parent's Acquire load.
                line.v.store(2 * i + 2, Ordering::Release);
            }
        });
        ready.wait();
        let start = Instant::now();
        for i in 0..iters {
            // Release pairs with the helper's Acquire load.
            line.v.store(2 * i + 1, Ordering::Release);
            // Acquire pairs with the helper's Release store.
            spin_until(|| line.v.load(Ordering::Acquire) == 2 * i + 2);
        }
        start.elapsed()
    })
}

/// Round trips through a futex word in shared memory between two processes, sleeping in the
/// kernel on every wait (no spinning): the cost of a blocking wake-up.
pub fn futex_rt(iters: u64, placement: Placement) -> Duration {
    let word = Shared::new(AtomicU32::new(0)).expect("shared word");
    let w2 = word.clone();
    let child = move |_: &Gate| {
        for i in 0..iters {
            let ping = (2 * i + 1) as u32;
            loop {
                // Acquire pairs with the parent's Release store of `ping`.
                let v = w2.load(Ordering::Acquire);
                if v == ping {
                    break;
                }
                futex::wait(&w2, v, None);
            }
            // Release pairs with the parent's Acquire load.
            w2.store(ping.wrapping_add(1), Ordering::Release);
            futex::wake(&w2, 1);
        }
    };
    timed(placement, vec![child], |_| {
        for i in 0..iters {
            let ping = (2 * i + 1) as u32;
            // Release pairs with the child's Acquire load.
            word.store(ping, Ordering::Release);
            futex::wake(&word, 1);
            loop {
                // Acquire pairs with the child's Release store.
                let v = word.load(Ordering::Acquire);
                if v != ping {
                    break;
                }
                futex::wait(&word, v, None);
            }
        }
    })
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two descriptors; nothing else owns them.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

/// Round trips of one byte through two `pipe(2)`s between two processes.
pub fn pipe_rt(iters: u64, placement: Placement) -> Duration {
    let (mut a_r, mut a_w) = pipe();
    let (mut b_r, mut b_w) = pipe();
    let child = move |_: &Gate| {
        let mut b = [0u8; 1];
        for _ in 0..iters {
            a_r.read_exact(&mut b).expect("read");
            b_w.write_all(&b).expect("write");
        }
    };
    timed(placement, vec![child], |_| {
        let mut b = [7u8; 1];
        for _ in 0..iters {
            a_w.write_all(&b).expect("write");
            b_r.read_exact(&mut b).expect("read");
        }
    })
}

const RING: usize = 4096;

/// The bare single-producer single-consumer ring of [`spsc_ring`].
#[repr(C, align(64))]
pub struct Ring {
    head: AtomicU64,
    _p1: [u64; 7],
    tail: AtomicU64,
    _p2: [u64; 7],
    slots: [AtomicU64; RING],
}
const _: () = assert!(std::mem::size_of::<Ring>() == 128 + 8 * RING);
const _: () = assert!(std::mem::align_of::<Ring>() == 64);

// SAFETY: only atomics and never-written padding; any bit pattern is valid (indices are
// reduced modulo RING before use); no Drop; repr(C) with size and alignment pinned above.
unsafe impl ShmSafe for Ring {}

/// Sends `iters` u64 through a bare SPSC ring of 4096 slots from a child (producer) to the
/// parent (consumer), both spinning: the ceiling of small-message throughput between processes.
/// Each side caches the other's index and re-reads it only when the ring looks full or empty.
pub fn spsc_ring(iters: u64, placement: Placement) -> Duration {
    // SAFETY: an all-zero Ring is valid (all atomics zero).
    let ring = Shared::new(unsafe { std::mem::zeroed::<Ring>() }).expect("shared ring");
    let r2 = ring.clone();
    let producer = move |_: &Gate| {
        let r = &*r2;
        let mut head = 0u64;
        for i in 0..iters {
            if i - head >= RING as u64 {
                // Acquire pairs with the consumer's Release store of head: the slot is free.
                spin_until(|| {
                    head = r.head.load(Ordering::Acquire);
                    i - head < RING as u64
                });
            }
            r.slots[i as usize % RING].store(i, Ordering::Relaxed);
            // Release pairs with the consumer's Acquire load of tail: publishes the slot.
            r.tail.store(i + 1, Ordering::Release);
        }
    };
    timed(placement, vec![producer], |_| {
        let r = &*ring;
        let mut tail = 0u64;
        let mut sum = 0u64;
        for i in 0..iters {
            if i >= tail {
                // Acquire pairs with the producer's Release store of tail.
                spin_until(|| {
                    tail = r.tail.load(Ordering::Acquire);
                    i < tail
                });
            }
            sum = sum.wrapping_add(r.slots[i as usize % RING].load(Ordering::Relaxed));
            // Release pairs with the producer's Acquire load of head: frees the slot.
            r.head.store(i + 1, Ordering::Release);
        }
        assert_eq!(sum, iters.wrapping_mul(iters.wrapping_sub(1)) / 2);
    })
}

/// Uncontended compare-and-swap (Acquire) plus release store on a word in shared memory: what
/// an uncontended lock cannot beat.
pub fn atomic_cas(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    let word = Shared::new(AtomicU32::new(0)).expect("shared word");
    let start = Instant::now();
    for _ in 0..iters {
        // Acquire pairs with the Release store below (of the previous iteration).
        while word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {}
        black_box(&word);
        // Release pairs with the Acquire CAS above.
        word.store(0, Ordering::Release);
    }
    start.elapsed()
}

/// Two processes (parent and one child) each `fetch_add` a shared counter `iters / 2` times;
/// one iteration is one increment.
pub fn atomic_counter(iters: u64, placement: Placement) -> Duration {
    let counter = Shared::new(AtomicU64::new(0)).expect("shared counter");
    let c2 = counter.clone();
    let half = iters / 2;
    let child = move |g: &Gate| {
        for _ in 0..half {
            c2.fetch_add(1, Ordering::AcqRel);
        }
        g.finish();
    };
    timed(placement, vec![child], |g| {
        for _ in 0..iters - half {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        g.wait_finished(1);
        assert_eq!(counter.load(Ordering::Acquire), iters);
    })
}

/// Two processes (parent and one child) each increment a shared counter `iters / 2` times under
/// a bare test-and-test-and-set spinlock (yielding every 128 failed checks): the floor of a
/// lock-protected counter. One iteration is one increment.
pub fn spinlock_counter(iters: u64, placement: Placement) -> Duration {
    #[repr(C, align(64))]
    struct SpinCounter {
        lock: AtomicU32,
        _pad: u32,
        value: AtomicU64,
        _pad2: [u64; 6],
    }
    const _: () = assert!(std::mem::size_of::<SpinCounter>() == 64);
    // SAFETY: only atomics and never-written padding; any bit pattern is valid; no Drop;
    // repr(C) with size and alignment pinned above.
    unsafe impl ShmSafe for SpinCounter {}
    fn increment(c: &SpinCounter) {
        loop {
            // Acquire pairs with the Release store that unlocks.
            if c.lock.swap(1, Ordering::Acquire) == 0 {
                break;
            }
            spin_until(|| c.lock.load(Ordering::Relaxed) == 0);
        }
        c.value
            .store(c.value.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Release pairs with the Acquire swap of the next holder.
        c.lock.store(0, Ordering::Release);
    }
    let counter = Shared::new(SpinCounter {
        lock: AtomicU32::new(0),
        _pad: 0,
        value: AtomicU64::new(0),
        _pad2: [0; 6],
    })
    .expect("shared counter");
    let c2 = counter.clone();
    let half = iters / 2;
    let child = move |g: &Gate| {
        for _ in 0..half {
            increment(&c2);
        }
        g.finish();
    };
    timed(placement, vec![child], |g| {
        for _ in 0..iters - half {
            increment(&counter);
        }
        g.wait_finished(1);
        assert_eq!(counter.value.load(Ordering::Acquire), iters);
    })
}

/// `fork`, a child that pins itself and calls `_exit(0)`, and `waitpid`: the floor of process
/// start + join under the fork start method.
pub fn fork_wait(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    let start = Instant::now();
    for _ in 0..iters {
        fork_child(placement.child_cpu(0), || {}).wait();
    }
    start.elapsed()
}

/// Fork + exec of `/bin/true` (pinned in `pre_exec`) + wait: the floor of process start + join
/// under the spawn start method (which execs a bigger binary and does more in it).
pub fn exec_wait(iters: u64, placement: Placement) -> Duration {
    use std::os::unix::process::CommandExt;
    placement.pin_parent();
    let cpu = placement.child_cpu(0);
    let start = Instant::now();
    for _ in 0..iters {
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: the closure only calls sched_setaffinity (a raw syscall, async-signal-safe)
        // on a stack-local set.
        unsafe {
            cmd.pre_exec(move || {
                crate::placement::pin_current(cpu);
                Ok(())
            })
        };
        let status = cmd.status().expect("run /bin/true");
        assert!(status.success());
    }
    start.elapsed()
}

fn cpu_batch(iters: u64, placement: Placement, workers: u64) -> Duration {
    // Tasks are handed out one at a time through a shared counter (like a pool with
    // chunksize 1), so a worker slowed down by other load does not hold the batch back.
    let next = Shared::new(AtomicU64::new(0)).expect("shared counter");
    let total = iters * CPU_TASKS;
    let children: Vec<_> = (0..workers)
        .map(|_| {
            let next = next.clone();
            move |g: &Gate| {
                loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= total {
                        break;
                    }
                    black_box(cpu_task(t % CPU_TASKS));
                }
                g.finish();
            }
        })
        .collect();
    timed(placement, children, |g| g.wait_finished(workers as u32))
}

/// A batch of [`CPU_TASKS`] CPU-bound tasks in one forked process (one iteration = one batch).
pub fn cpu_1p(iters: u64, placement: Placement) -> Duration {
    cpu_batch(iters, placement, 1)
}

/// The same batch split over two forked processes (on CPU 1 and 0 when spread).
pub fn cpu_2p(iters: u64, placement: Placement) -> Duration {
    cpu_batch(iters, placement, 2)
}
