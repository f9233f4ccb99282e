//! Async waits on futex words (cargo feature `async`): one thread per process that sleeps on
//! many words of shared memory at once with `futex_waitv` (Linux 5.16+), so that an awaiting
//! task neither spins nor parks a thread of its own.
//!
//! [`changed`] returns a future that resolves when the word no longer holds the value it was
//! given, when a `FUTEX_WAKE` reaches it, or when its slice has passed (so that the caller can
//! re-check what the blocking path re-checks after a timed-out sleep: a dead peer). The caller
//! loops, exactly as the blocking waits do: read the word, check the condition, announce itself
//! the way the primitive's protocol says (a waiter count, a contention bit), then await
//! `changed(word, value_read)`.
//!
//! # The waiting thread
//!
//! A *shard* is one thread and at most [`PER_SHARD`] registrations (a `futex_waitv` call takes
//! at most 128 words; the first is the shard's own control word, bumped and woken when a
//! registration comes). It loops: build the vector from its registrations, sleep until the
//! earliest slice ends, then wake (and drop) every registration whose word changed, whose
//! slice passed or whose future was dropped. Shards are made as needed and live as long as the
//! process. A forked child does not inherit the threads: the shards belong to the pid that made
//! them, and a child makes its own.
//!
//! A future dropped after its wake-up came but before it was polled passes the wake-up on
//! (`FUTEX_WAKE` of one waiter), so that a primitive that wakes one waiter at a time (a lock's
//! release) does not lose it to a cancelled task.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::util::lock_unpoisoned;

/// Registrations per shard: `futex_waitv` takes at most 128 words, one is the control word.
pub const PER_SHARD: usize = 127;

/// The kernel's `struct futex_waitv`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}
static_assertions::assert_eq_size!(FutexWaitv, [u8; 24]);

const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX2_PRIVATE: u32 = 128;

/// Where a registration stands.
const PENDING: u8 = 0;
/// The shard woke its waker; the future has not seen it yet.
const FIRED: u8 = 1;
/// The future returned `Ready` (or was dropped): the shard forgets it.
const DONE: u8 = 2;

/// What a future and its shard share.
struct Shared {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

/// One word a future waits on.
struct Registration {
    addr: usize,
    expected: u32,
    until: Instant,
    shared: Arc<Shared>,
    /// Keeps the mapping of `addr` alive while the shard may read it.
    _keep: Arc<dyn Any + Send + Sync>,
}

/// One waiting thread and its registrations.
struct Shard {
    control: AtomicU32,
    regs: Mutex<Vec<Registration>>,
}

/// The shards of this process (and the pid they belong to).
static SHARDS: Mutex<(u32, Vec<Arc<Shard>>)> = Mutex::new((0, Vec::new()));

/// A future that resolves when `word` no longer holds `expected`, when it is woken, or when
/// `slice` has passed; see the module doc. `keep` must keep the memory of `word` mapped (a
/// clone of the primitive's region handle): the waiting thread reads the word until the future
/// resolves or is dropped.
pub fn changed(
    word: &AtomicU32,
    expected: u32,
    keep: Arc<dyn Any + Send + Sync>,
    slice: Duration,
) -> Changed {
    Changed {
        addr: word as *const AtomicU32 as usize,
        expected,
        slice,
        keep: Some(keep),
        shared: None,
    }
}

/// The future of [`changed`].
pub struct Changed {
    addr: usize,
    expected: u32,
    slice: Duration,
    keep: Option<Arc<dyn Any + Send + Sync>>,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changed")
            .field("expected", &self.expected)
            .field("registered", &self.shared.is_some())
            .finish()
    }
}

impl Changed {
    fn word(&self) -> &AtomicU32 {
        // SAFETY: `addr` is the address of a live `AtomicU32` (it came from a reference), kept
        // mapped by `keep`, which this future holds until it is dropped.
        unsafe { &*(self.addr as *const AtomicU32) }
    }
}

impl Future for Changed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(shared) = &self.shared {
            if shared.state.load(Ordering::Acquire) == FIRED {
                shared.state.store(DONE, Ordering::Release);
                return Poll::Ready(());
            }
            *lock_unpoisoned(&shared.waker) = Some(cx.waker().clone());
            // Fired between the check and the store of the waker: do not miss it.
            if shared.state.load(Ordering::Acquire) == FIRED {
                shared.state.store(DONE, Ordering::Release);
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        if self.word().load(Ordering::SeqCst) != self.expected {
            return Poll::Ready(());
        }
        let shared = Arc::new(Shared {
            state: AtomicU8::new(PENDING),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        let reg = Registration {
            addr: self.addr,
            expected: self.expected,
            until: Instant::now() + self.slice,
            shared: shared.clone(),
            _keep: self.keep.clone().expect("kept until drop"),
        };
        self.shared = Some(shared);
        register(reg);
        Poll::Pending
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else { return };
        // Tell the shard to forget us; if it had woken us already, pass the wake-up on.
        if shared.state.swap(DONE, Ordering::AcqRel) == FIRED {
            crate::futex::wake(self.word(), 1);
        }
    }
}

/// Hands `reg` to a shard with room (making one when none has).
fn register(reg: Registration) {
    let mut shards = lock_unpoisoned(&SHARDS);
    let pid = std::process::id();
    if shards.0 != pid {
        // A forked child: the parent's threads are not here.
        *shards = (pid, Vec::new());
    }
    // Under the shards lock, so that two registrations cannot both take a shard's last place.
    let shard = match shards
        .1
        .iter()
        .find(|s| lock_unpoisoned(&s.regs).len() < PER_SHARD)
    {
        Some(s) => s.clone(),
        None => {
            let s = Arc::new(Shard {
                control: AtomicU32::new(0),
                regs: Mutex::new(Vec::new()),
            });
            let run = s.clone();
            std::thread::Builder::new()
                .name("mp-async-futex".into())
                .spawn(move || run.run())
                .expect("start the async futex thread");
            shards.1.push(s.clone());
            s
        }
    };
    lock_unpoisoned(&shard.regs).push(reg);
    drop(shards);
    shard.control.fetch_add(1, Ordering::SeqCst);
    // SAFETY: a futex wake of the shard's own control word (private to this process).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            shard.control.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

impl Shard {
    fn run(&self) {
        loop {
            let control = self.control.load(Ordering::SeqCst);
            let (mut waitv, until) = {
                let regs = lock_unpoisoned(&self.regs);
                let mut v = Vec::with_capacity(regs.len() + 1);
                v.push(FutexWaitv {
                    val: u64::from(control),
                    uaddr: self.control.as_ptr() as u64,
                    flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
                    reserved: 0,
                });
                for r in regs.iter().take(PER_SHARD) {
                    v.push(FutexWaitv {
                        val: u64::from(r.expected),
                        uaddr: r.addr as u64,
                        // Shared: the words live in memory other processes map and wake.
                        flags: FUTEX2_SIZE_U32,
                        reserved: 0,
                    });
                }
                let until = regs.iter().map(|r| r.until).min();
                (v, until)
            };
            let timeout = until.map(|u| {
                let left = u.saturating_duration_since(Instant::now());
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime writes the live `now`.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
                let ns = now.tv_nsec as u128 + left.subsec_nanos() as u128;
                libc::timespec {
                    tv_sec: now.tv_sec
                        + left.as_secs() as libc::time_t
                        + (ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (ns % 1_000_000_000) as libc::c_long,
                }
            });
            let ts = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `waitv` is a valid array of `waitv.len()` (<= 128) entries whose
            // addresses are live words: the control word of this shard, and registered words
            // whose mappings the registrations keep alive until they are removed below (after
            // this call returned). `ts` is null or points to the live `timeout`. The call only
            // reads the words and sleeps.
            unsafe {
                libc::syscall(
                    libc::SYS_futex_waitv,
                    waitv.as_mut_ptr(),
                    waitv.len() as libc::c_uint,
                    0,
                    ts,
                    libc::CLOCK_MONOTONIC,
                );
            }
            self.wake_ready();
        }
    }

    /// Wakes and forgets every registration whose word changed, whose slice passed or whose
    /// future is gone.
    fn wake_ready(&self) {
        let now = Instant::now();
        let mut woken = Vec::new();
        lock_unpoisoned(&self.regs).retain(|r| {
            if r.shared.state.load(Ordering::Acquire) == DONE {
                return false;
            }
            // SAFETY: the registration keeps the word's mapping alive (see `Registration`).
            let word = unsafe { &*(r.addr as *const AtomicU32) };
            if word.load(Ordering::SeqCst) == r.expected && now < r.until {
                return true;
            }
            woken.push(r.shared.clone());
            false
        });
        for s in woken {
            if s.state
                .compare_exchange(PENDING, FIRED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(w) = lock_unpoisoned(&s.waker).take() {
                    w.wake();
                }
            }
        }
    }
}
