//! Queue, SimpleQueue and JoinableQueue across real processes (CONFORMANCE Q1–Q6 and the
//! robustness scenarios of the issue).
//!
//! "fork" children are forked from this test process and run queue code, then `_exit`; the
//! queue's code paths take no process-global lock that another libtest thread could hold at the
//! fork (no stdout, no environment), and glibc's allocator is fork-safe. "spawn" children are
//! this test binary re-executed (`--exact child_entry` with a role in the environment), given
//! the queue as a handle exactly as the spawn start method does.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp_core::handle::{self, ENV_FDS};
use mp_core::message::{decode, encode};
use mp_queue::{Error, JoinableQueue, PutError, Queue, SimpleQueue};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

const ROLE: &str = "MP_QUEUE_TEST_ROLE";
const ARG: &str = "MP_QUEUE_TEST_ARG";

/// Forks a child that runs `f` and `_exit`s with its result.
fn fork_child(f: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child runs only queue operations (atomics, futex, /proc reads, allocation,
    // all fork-safe here, see the module doc) and leaves with _exit, never returning into the
    // test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // Die with the test's thread, so that a failing test leaves no orphan behind.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

/// How long any child of these tests may run before the test fails (and kills it).
const WATCHDOG: Duration = Duration::from_secs(60);

/// Waits for a forked child to exit with 0; kills it and fails the test after [`WATCHDOG`].
fn wait_ok(pid: Pid) {
    wait_ok_within(pid, WATCHDOG)
}

/// [`wait_ok`] with another watchdog.
fn wait_ok_within(pid: Pid, watchdog: Duration) {
    let t0 = Instant::now();
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::StillAlive if t0.elapsed() < watchdog => {
                std::thread::sleep(Duration::from_millis(5))
            }
            WaitStatus::StillAlive => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                panic!("watchdog: child {pid} still running after {watchdog:?}");
            }
            WaitStatus::Exited(_, 0) => return,
            other => panic!("child {pid} failed: {other:?}"),
        }
    }
}

/// Re-runs this test binary as a child playing `role` with `arg` (which may hold queue
/// handles), the way the spawn start method does.
fn spawn_child<A: mp_core::Message>(role: &str, arg: &A) -> std::process::Child {
    let (bytes, fds) = handle::collect(|| encode(arg));
    let bytes = bytes.expect("encode the child's argument");
    spawn_raw(role, &bytes, fds)
}

fn spawn_raw(role: &str, bytes: &[u8], fds: Vec<OwnedFd>) -> std::process::Child {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(
            ARG,
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        )
        .env(ENV_FDS, handle::env_value(&fds));
    // SAFETY: only fcntl between fork and exec.
    unsafe { cmd.pre_exec(move || handle::keep_across_exec(&raw)) };
    let child = cmd.spawn().expect("spawn the test binary");
    drop(fds);
    child
}

/// Waits for a spawned child to succeed; kills it and fails the test after [`WATCHDOG`].
fn spawn_ok(mut child: std::process::Child) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if t0.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: spawned child still running after {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "spawned child failed: {status:?}");
}

/// The child side of the spawn tests; a no-op in a normal run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let hex = std::env::var(ARG).expect("arg");
    let arg: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    handle::install_from_env().expect("install fds");
    match role.as_str() {
        "put-10-19" => {
            let q: Queue<u64> = decode(&arg).expect("decode queue");
            for i in 10..20 {
                q.put(i).expect("put");
            }
        }
        "echo-big" => {
            let (inq, outq): (Queue<Vec<u8>>, Queue<Vec<u8>>) = decode(&arg).expect("decode");
            let v = inq.get().expect("get");
            outq.put(v).expect("put back");
        }
        "wrong-type" => {
            let r = decode::<Queue<String>>(&arg);
            assert!(
                r.is_err(),
                "a Queue<u64> handle must not open as Queue<String>"
            );
        }
        "joinable-worker" => {
            let q: JoinableQueue<u32> = decode(&arg).expect("decode");
            while let Ok(_item) = q.get_timeout(Duration::from_millis(300)) {
                std::thread::sleep(Duration::from_millis(5));
                q.task_done().expect("task_done");
            }
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn assert_about(elapsed: Duration, t: Duration) {
    assert!(
        elapsed >= t,
        "returned after {elapsed:?}, before the timeout {t:?}"
    );
    assert!(
        elapsed < t + Duration::from_secs(2),
        "returned after {elapsed:?}, timeout {t:?}"
    );
}

#[test]
fn q1_bounded_full_and_empty() {
    let q: Queue<u32> = Queue::with_maxsize(6).unwrap();
    assert_eq!(q.maxsize(), 6);
    assert!(q.empty());
    for i in 0..6 {
        q.put(i).unwrap();
    }
    assert!(q.full());
    assert_eq!(q.qsize(), 6);
    let t0 = Instant::now();
    match q.put_nowait(6) {
        Err(PutError::Full(item)) => assert_eq!(item, 6),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_millis(500));
    let t0 = Instant::now();
    match q.put_timeout(7, Duration::from_millis(100)) {
        Err(e @ PutError::Full(_)) => {
            assert!(e.is_full());
            assert_eq!(e.into_inner(), 7);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_about(t0.elapsed(), Duration::from_millis(100));
    for i in 0..6 {
        assert_eq!(q.get().unwrap(), i);
    }
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    let t0 = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(Error::Empty)
    ));
    assert_about(t0.elapsed(), Duration::from_millis(100));
}

#[test]
fn q2_fifo_across_processes_fork() {
    let q: Queue<u64> = Queue::new().unwrap();
    for i in 0..10 {
        q.put(i).unwrap();
    }
    let qc = q.clone();
    wait_ok(fork_child(move || {
        for i in 10..20 {
            if qc.put(i).is_err() {
                return 1;
            }
        }
        0
    }));
    let got: Vec<u64> = (0..20).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
}

#[test]
fn q2_fifo_across_processes_spawn() {
    let q: Queue<u64> = Queue::new().unwrap();
    for i in 0..10 {
        q.put(i).unwrap();
    }
    spawn_ok(spawn_child("put-10-19", &q));
    let got: Vec<u64> = (0..20).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
}

#[test]
fn handle_of_another_type_is_refused_in_the_child() {
    let q: Queue<u64> = Queue::new().unwrap();
    spawn_ok(spawn_child("wrong-type", &q));
}

fn joinable_with_workers(spawned: bool) {
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    for i in 0..10 {
        q.put(i).unwrap();
    }
    assert!(matches!(
        q.join_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    if spawned {
        let kids: Vec<_> = (0..4).map(|_| spawn_child("joinable-worker", &q)).collect();
        q.join_timeout(Duration::from_secs(30)).unwrap();
        kids.into_iter().for_each(spawn_ok);
    } else {
        let kids: Vec<Pid> = (0..4)
            .map(|_| {
                let q = q.clone();
                fork_child(move || {
                    while let Ok(_item) = q.get_timeout(Duration::from_millis(300)) {
                        std::thread::sleep(Duration::from_millis(5));
                        if q.task_done().is_err() {
                            return 1;
                        }
                    }
                    0
                })
            })
            .collect();
        q.join_timeout(Duration::from_secs(30)).unwrap();
        kids.into_iter().for_each(wait_ok);
    }
    assert!(q.empty());
    assert!(matches!(q.task_done(), Err(Error::TaskDoneTooMany)));
}

#[test]
fn q3_joinable_queue_fork() {
    joinable_with_workers(false);
}

#[test]
fn q3_joinable_queue_spawn() {
    joinable_with_workers(true);
}

#[test]
fn q4_closed() {
    let q: Queue<u8> = Queue::new().unwrap();
    q.put(1).unwrap();
    let other = q.clone();
    q.close();
    assert!(q.is_closed() && other.is_closed());
    assert!(matches!(q.put(2), Err(PutError::Closed(2))));
    assert!(matches!(q.get(), Err(Error::Closed)));
    let s: SimpleQueue<u8> = SimpleQueue::new().unwrap();
    s.put(3).unwrap();
    assert!(!s.empty());
    assert_eq!(s.get().unwrap(), 3);
    s.close();
    assert!(matches!(s.get(), Err(Error::Closed)));
}

#[test]
fn q5_sixteen_mib_and_zero_bytes_round_trip_across_processes() {
    let inq: Queue<Vec<u8>> = Queue::new().unwrap();
    let outq: Queue<Vec<u8>> = Queue::new().unwrap();
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    inq.put(big.clone()).unwrap();
    spawn_ok(spawn_child("echo-big", &(inq.clone(), outq.clone())));
    let back = outq.get().unwrap();
    assert!(back == big, "16 MiB message changed on the way");
    // Zero-byte messages: the unit type, and an empty vector.
    let units: Queue<()> = Queue::new().unwrap();
    let uc = units.clone();
    wait_ok(fork_child(move || i32::from(uc.put(()).is_err())));
    units.get().unwrap();
    inq.put(Vec::new()).unwrap();
    assert_eq!(inq.get().unwrap(), Vec::<u8>::new());
    // A message larger than a small ring, zero-copy.
    let small: Queue<Vec<u8>> = Queue::builder().capacity_bytes(4096).build().unwrap();
    small.put(vec![9u8; 100_000]).unwrap();
    small.put(vec![8u8; 10]).unwrap();
    {
        let r = small.get_ref().unwrap();
        assert_eq!(r.len(), 100_000);
        assert!(r.iter().all(|&b| b == 9));
    }
    assert_eq!(small.get().unwrap(), vec![8u8; 10]);
}

#[test]
fn q6_child_puts_one_mib_and_exits_before_anyone_reads() {
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    let qc = q.clone();
    let pid = fork_child(move || i32::from(qc.put(vec![0xA5; 1 << 20]).is_err()));
    // Joined first: Python deadlocks here, because its child waits for its feeder thread.
    wait_ok(pid);
    let v = q.get_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(v.len(), 1 << 20);
    assert!(v.iter().all(|&b| b == 0xA5));
}

/// A bitmap in shared memory, to check exactly-once delivery across processes.
struct Seen {
    words: mp_core::Region,
}

impl Seen {
    fn new(bits: usize) -> Seen {
        Seen {
            words: mp_core::Region::anonymous(77, bits.div_ceil(64) as u64 * 8, 8).unwrap(),
        }
    }
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words.len() / 8);
        // SAFETY: in bounds (checked), 8-aligned; atomics may be shared across processes.
        unsafe { &*self.words.as_ptr().cast::<AtomicU64>().add(i) }
    }
    /// Marks bit `n`; false if it was already set (a duplicate).
    fn mark(&self, n: usize) -> bool {
        let bit = 1u64 << (n % 64);
        self.word(n / 64).fetch_or(bit, Ordering::SeqCst) & bit == 0
    }
    fn count(&self) -> u32 {
        (0..self.words.len() / 8)
            .map(|i| self.word(i).load(Ordering::SeqCst).count_ones())
            .sum()
    }
}

#[test]
fn four_producers_four_consumers_exactly_once() {
    exactly_once(100_000, false);
}

/// Two producers put with `put_many` (batches of 1 to 300), two with `put`; two consumers take
/// with `get_many`, two with `get`: every message arrives exactly once.
#[test]
fn batches_mixed_with_single_puts_and_gets_exactly_once() {
    exactly_once(50_000, true);
}

/// 4 producers put `per` messages each on one queue, 4 consumers take them: each arrives
/// exactly once. With `batched`, the even-numbered producers and consumers use `put_many`
/// and `get_many`.
fn exactly_once(per: u64, batched: bool) {
    let q: Queue<u64> = Queue::builder().capacity_bytes(64 << 10).build().unwrap();
    let seen = Seen::new(4 * per as usize);
    let dups = mp_core::Shared::new(AtomicU64::new(0)).unwrap();
    let mut kids = Vec::new();
    for p in 0..4u64 {
        let q = q.clone();
        kids.push(fork_child(move || {
            let all: Vec<u64> = (p * per..(p + 1) * per).collect();
            if batched && p % 2 == 0 {
                let mut at = 0;
                let mut k = 1;
                while at < all.len() {
                    let end = (at + k).min(all.len());
                    if !matches!(q.put_many(&all[at..end], None), Ok(n) if n == end - at) {
                        return 1;
                    }
                    at = end;
                    k = k % 300 + 7;
                }
            } else if all.iter().any(|&v| q.put(v).is_err()) {
                return 1;
            }
            0
        }));
    }
    for c in 0..4 {
        let q = q.clone();
        let seen = Seen {
            words: seen.words.clone(),
        };
        let dups = dups.clone();
        kids.push(fork_child(move || {
            let mut mark = |v: u64| {
                if v >= 4 * per || !seen.mark(v as usize) {
                    dups.fetch_add(1, Ordering::SeqCst);
                }
            };
            if batched && c % 2 == 0 {
                let max = 1 + c * 50;
                let mut out = Vec::new();
                while let Ok(n) = q.get_many(&mut out, max, Some(Duration::from_secs(2))) {
                    assert!(n >= 1 && n <= max && n == out.len());
                    out.drain(..).for_each(&mut mark);
                }
            } else {
                while let Ok(v) = q.get_timeout(Duration::from_secs(2)) {
                    mark(v);
                }
            }
            0
        }));
    }
    kids.into_iter().for_each(wait_ok);
    assert_eq!(
        dups.load(Ordering::SeqCst),
        0,
        "a message was delivered twice"
    );
    assert_eq!(seen.count(), 4 * per as u32, "a message was lost");
    assert!(q.empty());
}

#[test]
fn put_many_and_get_many_limits_timeouts_and_errors() {
    let q: Queue<u32> = Queue::with_maxsize(10).unwrap();
    let items: Vec<u32> = (0..25).collect();
    // Bounded: as many as fit, at once or after the timeout.
    assert_eq!(q.put_many(&items, Some(Duration::ZERO)).unwrap(), 10);
    let t0 = Instant::now();
    assert_eq!(
        q.put_many(&items[10..], Some(Duration::from_millis(50)))
            .unwrap(),
        0
    );
    assert!(t0.elapsed() >= Duration::from_millis(50));
    let mut out = vec![99];
    assert_eq!(q.get_many(&mut out, 4, None).unwrap(), 4);
    assert_eq!(out, [99, 0, 1, 2, 3], "appended, in order");
    assert_eq!(q.get_many(&mut out, 0, None).unwrap(), 0);
    assert_eq!(q.get_many(&mut out, 100, None).unwrap(), 6);
    assert_eq!(out[1..], items[..10]);
    assert!(matches!(
        q.get_many(&mut out, 5, Some(Duration::from_millis(20))),
        Err(Error::Empty)
    ));
    // A consumer that waits gets the batch a producer puts later.
    let qc = q.clone();
    let kid = fork_child(move || {
        std::thread::sleep(Duration::from_millis(30));
        i32::from(qc.put_many(&[7, 8, 9], None).is_err())
    });
    let mut got = Vec::new();
    while got.len() < 3 {
        q.get_many(&mut got, 3, Some(Duration::from_secs(5)))
            .unwrap();
    }
    assert_eq!(got, [7, 8, 9]);
    wait_ok(kid);
    // Messages too large for the space left go their own way, in order with the others,
    // from a producer that waits for room while the parent takes them.
    let big: Queue<Vec<u8>> = Queue::builder().capacity_bytes(8192).build().unwrap();
    let msgs: Vec<Vec<u8>> = [0, 3000, 6000, 9000, 20000, 0, 5000, 7]
        .iter()
        .cycle()
        .take(80)
        .enumerate()
        .map(|(i, &n)| vec![i as u8; n])
        .collect();
    let (bc, mc) = (big.clone(), msgs.clone());
    let kid = fork_child(move || i32::from(!matches!(bc.put_many(&mc, None), Ok(80))));
    let mut back = Vec::new();
    while back.len() < msgs.len() {
        big.get_many(&mut back, 5, Some(Duration::from_secs(5)))
            .unwrap();
    }
    wait_ok(kid);
    assert!(back == msgs, "every message, whole and in order");
    // A closed handle puts nothing and says so.
    q.close();
    let e = q.put_many(&items, None).unwrap_err();
    assert_eq!(e.put, 0);
    assert!(matches!(e.error, Error::Closed));
    assert!(matches!(q.get_many(&mut out, 1, None), Err(Error::Closed)));
}

#[test]
fn joinable_put_many_counts_each_item() {
    let q: JoinableQueue<u8> = JoinableQueue::with_maxsize(3).unwrap();
    assert_eq!(
        q.put_many(&[1, 2, 3, 4, 5], Some(Duration::ZERO)).unwrap(),
        3
    );
    assert!(matches!(
        q.join_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
    let mut out = Vec::new();
    assert_eq!(q.get_many(&mut out, 10, None).unwrap(), 3);
    for _ in 0..3 {
        q.task_done().unwrap();
    }
    q.join_timeout(Duration::from_secs(1)).unwrap();
    assert!(matches!(q.task_done(), Err(Error::TaskDoneTooMany)));
}

#[derive(mp_core::rkyv::Archive, mp_core::rkyv::Serialize, mp_core::rkyv::Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
struct Chunk {
    seq: u64,
    body: Vec<u8>,
}

#[test]
fn producer_sigkilled_mid_put_never_tears_or_hangs() {
    // Small ring so that puts wrap, pad and wait for space all the time.
    let q: Queue<Chunk> = Queue::builder().capacity_bytes(16 << 10).build().unwrap();
    let mut next_expected = 0u64;
    for round in 0..100u64 {
        let qc = q.clone();
        let base = round << 32;
        let pid = fork_child(move || {
            let mut i = 0u64;
            loop {
                let seq = base + i;
                let len = ((seq * 7919) % 9000) as usize;
                let body = vec![(seq % 251) as u8; len];
                if qc.put(Chunk { seq, body }).is_err() {
                    return 1;
                }
                i += 1;
            }
        });
        // Let it run into the middle of something, then kill it.
        let mut drained = 0;
        while drained < 3 {
            if let Ok(c) = q.get_timeout(Duration::from_secs(5)) {
                check_chunk(&c, &mut next_expected, base);
                drained += 1;
            } else {
                let _ = kill(pid, Signal::SIGKILL);
                panic!("round {round}: the producer produced nothing: {q:?}");
            }
        }
        std::thread::sleep(Duration::from_micros(200 + (round * 37) % 800));
        kill(pid, Signal::SIGKILL).unwrap();
        assert!(matches!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ));
        // Everything that was completed is intact and in order; nothing half-written shows.
        while let Ok(c) = q.get_nowait() {
            check_chunk(&c, &mut next_expected, base);
        }
        next_expected = (round + 1) << 32;
    }
    // The queue still works for a new producer (the lock a victim held is taken over).
    q.put_timeout(
        Chunk {
            seq: 1,
            body: vec![1],
        },
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(q.get().unwrap().seq, 1);
}

#[test]
fn producer_sigkilled_mid_put_many_never_tears_or_hangs() {
    // As above, with batches of 1 to 16 messages, some larger than half the ring (those go
    // their own way and end a batch).
    let q: Queue<Chunk> = Queue::builder().capacity_bytes(16 << 10).build().unwrap();
    let mut next_expected = 0u64;
    for round in 0..60u64 {
        let qc = q.clone();
        let base = round << 32;
        let pid = fork_child(move || {
            let mut i = 0u64;
            loop {
                let k = 1 + (i % 16);
                let batch: Vec<Chunk> = (i..i + k)
                    .map(|j| {
                        let seq = base + j;
                        let len = ((seq * 7919) % 9000) as usize;
                        Chunk {
                            seq,
                            body: vec![(seq % 251) as u8; len],
                        }
                    })
                    .collect();
                if qc.put_many(&batch, None).is_err() {
                    return 1;
                }
                i += k;
            }
        });
        let mut drained = 0;
        let mut out = Vec::new();
        while drained < 3 {
            out.clear();
            match q.get_many(&mut out, 4, Some(Duration::from_secs(5))) {
                Ok(_) => {
                    for c in &out {
                        check_chunk(c, &mut next_expected, base);
                    }
                    drained += out.len();
                }
                Err(e) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    panic!("round {round}: {e}: {q:?}");
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200 + (round * 37) % 800));
        kill(pid, Signal::SIGKILL).unwrap();
        waitpid(pid, None).unwrap();
        loop {
            out.clear();
            match q.get_many(&mut out, 7, Some(Duration::ZERO)) {
                Ok(_) => out
                    .iter()
                    .for_each(|c| check_chunk(c, &mut next_expected, base)),
                Err(Error::Empty) => break,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(
            q.qsize(),
            0,
            "round {round}: the count matches what was delivered"
        );
        next_expected = (round + 1) << 32;
    }
    q.put_many(
        &[Chunk {
            seq: 1,
            body: vec![1],
        }],
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    assert_eq!(q.get().unwrap().seq, 1);
}

fn check_chunk(c: &Chunk, next: &mut u64, base: u64) {
    // Within a round one producer puts base, base+1, ... in order: every message it completed
    // arrives, in order, exactly once.
    let expected = (*next).max(base);
    assert_eq!(c.seq, expected, "lost, duplicated or reordered message");
    let len = ((c.seq * 7919) % 9000) as usize;
    assert_eq!(c.body.len(), len, "torn message {}", c.seq);
    assert!(
        c.body.iter().all(|&b| b == (c.seq % 251) as u8),
        "torn message {}",
        c.seq
    );
    *next = c.seq + 1;
}

#[test]
fn consumer_sigkilled_mid_get_never_duplicates_or_hangs() {
    const N: u64 = 20_000;
    let q: Queue<u64> = Queue::builder().capacity_bytes(8 << 10).build().unwrap();
    let seen = Seen::new(N as usize);
    let dups = mp_core::Shared::new(AtomicU64::new(0)).unwrap();
    let producer = {
        let q = q.clone();
        fork_child(move || {
            for i in 0..N {
                if q.put(i).is_err() {
                    return 1;
                }
            }
            0
        })
    };
    for round in 0..10u64 {
        let qc = q.clone();
        let seen_c = Seen {
            words: seen.words.clone(),
        };
        let dups_c = dups.clone();
        let pid = fork_child(move || loop {
            // Alternate the two ways of getting: owned and zero-copy.
            let v = if round % 2 == 0 {
                qc.get().map_err(|_| ())
            } else {
                qc.get_ref().map(|r| r.to_native()).map_err(|_| ())
            };
            match v {
                Ok(v) => {
                    if !seen_c.mark(v as usize) {
                        dups_c.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(()) => return 1,
            }
        });
        std::thread::sleep(Duration::from_millis(3));
        kill(pid, Signal::SIGKILL).unwrap();
        waitpid(pid, None).unwrap();
    }
    // The parent drains the rest; the producer is never blocked for good by dead consumers.
    loop {
        match q.get_timeout(Duration::from_millis(500)) {
            Ok(v) => {
                if !seen.mark(v as usize) {
                    dups.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(Error::Empty) => break,
            Err(e) => panic!("{e}"),
        }
    }
    wait_ok(producer);
    assert_eq!(
        dups.load(Ordering::SeqCst),
        0,
        "a message was delivered twice"
    );
    // At most one message per killed consumer can be lost (the one it held when killed).
    assert!(
        seen.count() as u64 >= N - 10,
        "lost {}",
        N - seen.count() as u64
    );
}

#[test]
fn corrupted_ring_is_an_error_and_the_queue_stays_usable() {
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    q.put(vec![1, 2, 3]).unwrap();
    // Map the queue's region through its handle, as a hostile process could, and scribble
    // over the first record's header.
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let fd = fds.into_iter().next().unwrap();
    let region = mp_core::Region::from_fd(fd, None).unwrap();
    // SAFETY: test-only corruption of a region this test owns; offset 320 is the first record
    // (after the 320-byte metadata block); we overwrite its `len` field (its second word).
    unsafe {
        region
            .as_ptr()
            .add(320 + 4)
            .cast::<u32>()
            .write_volatile(0xFFFF_FFF0)
    };
    match q.get_nowait() {
        Err(Error::Corrupted(msg)) => assert!(msg.contains("dropped"), "{msg}"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    q.put(vec![4]).unwrap();
    assert_eq!(q.get().unwrap(), vec![4]);
    // Garbage payload bytes (a valid header, a payload that is not a Vec<u8> archive).
    q.put(vec![0u8; 8]).unwrap();
    // Records so far: [1,2,3] at 0, [4] at 32, each 16 header + 16 payload bytes; this one is
    // the third.
    let rec = 320 + 64;
    // SAFETY: as above; the payload of the record just put starts 16 bytes into it.
    unsafe {
        let p = region.as_ptr().add(rec + 16);
        std::ptr::write_bytes(p, 0xEE, 16);
    }
    assert!(matches!(
        q.get_nowait(),
        Err(Error::Core(_)) | Err(Error::Corrupted(_))
    ));
    q.put(vec![5]).unwrap();
    assert_eq!(q.get().unwrap(), vec![5]);
}

#[test]
fn waiting_consumer_does_not_burn_a_core() {
    let q: Queue<u8> = Queue::new().unwrap();
    let qc = q.clone();
    let pid = fork_child(move || match qc.get() {
        Ok(7) => 0,
        _ => 1,
    });
    std::thread::sleep(Duration::from_millis(600));
    q.put(7).unwrap();
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    let mut status = 0;
    // SAFETY: wait4 writes the child's status and rusage into our buffers.
    let r = unsafe { libc::wait4(pid.as_raw(), &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(r, pid.as_raw());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // SAFETY: wait4 succeeded, so it filled the rusage.
    let usage = unsafe { usage.assume_init() };
    let cpu = Duration::from_secs(usage.ru_utime.tv_sec as u64 + usage.ru_stime.tv_sec as u64)
        + Duration::from_micros(usage.ru_utime.tv_usec as u64 + usage.ru_stime.tv_usec as u64);
    assert!(
        cpu < Duration::from_millis(200),
        "a blocked get used {cpu:?} of CPU in 600 ms"
    );
}

/// A serde type whose serialization fails, as a type with an invariant it cannot encode would.
#[derive(Debug, PartialEq)]
struct Unserializable(u32);

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(Unserializable)
    }
}

#[test]
fn serialization_error_is_returned_by_put_with_the_item() {
    let q: Queue<mp_core::Serde<Unserializable>> = Queue::new().unwrap();
    for _ in 0..20 {
        match q.put(mp_core::Serde(Unserializable(5))) {
            Err(PutError::Failed(item, e)) => {
                assert_eq!(item.0, Unserializable(5));
                assert!(matches!(e, mp_core::Error::Encode(_)), "{e}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }
    assert!(q.empty(), "nothing half-written is left behind");
    let ok: Queue<mp_core::Serde<Vec<String>>> = Queue::new().unwrap();
    ok.put(mp_core::Serde(vec!["serde".to_string()])).unwrap();
    assert_eq!(ok.get().unwrap().0, vec!["serde".to_string()]);
}

/// A serde type that refuses to be serialized when it is 13 and to be deserialized when it
/// is 7: an item a batch cannot put, a message a batch cannot decode.
#[derive(Debug, PartialEq)]
struct Picky(u32);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 refuses to be serialized"));
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            7 => Err(serde::de::Error::custom("7 refuses to be deserialized")),
            v => Ok(Picky(v)),
        }
    }
}

#[test]
fn batch_errors_say_how_far_they_got_and_lose_nothing_else() {
    let q: Queue<mp_core::Serde<Picky>> = Queue::new().unwrap();
    let batch = |v: &[u32]| -> Vec<mp_core::Serde<Picky>> {
        v.iter().map(|&x| mp_core::Serde(Picky(x))).collect()
    };
    // An item that cannot be serialized stops put_many after the ones before it.
    let e = q.put_many(&batch(&[1, 2, 13, 4]), None).unwrap_err();
    assert_eq!(e.put, 2);
    assert!(
        matches!(e.error, Error::Core(mp_core::Error::Encode(_))),
        "{}",
        e.error
    );
    assert_eq!(q.qsize(), 2, "nothing half-written is left behind");
    // A message that cannot be decoded ends get_many with its error; what came before it is
    // in `out`, what comes after it stays for the next call.
    assert_eq!(q.put_many(&batch(&[7, 8]), None).unwrap(), 2);
    let mut out = Vec::new();
    assert!(matches!(
        q.get_many(&mut out, 10, None),
        Err(Error::Core(mp_core::Error::Decode(_)))
    ));
    assert_eq!(out.iter().map(|p| p.0 .0).collect::<Vec<_>>(), [1, 2]);
    out.clear();
    assert_eq!(q.get_many(&mut out, 10, Some(Duration::ZERO)).unwrap(), 1);
    assert_eq!(out[0].0, Picky(8));
    assert!(q.empty());
}

#[test]
fn consumers_sigkilled_taking_oversized_messages_leave_exact_counts() {
    // maxsize 1 makes any drift of the item count visible at once (a queue that thinks it
    // holds an item it does not would block every put), and 3 KiB messages in a 4 KiB ring
    // take the oversized path, whose pages are freed only once a message is consumed. A
    // side-channel budget of 16 pages makes any drift of its count visible too.
    const N: u64 = 300;
    const BUDGET: u64 = 16 * 4096;
    let q: Queue<Chunk> = Queue::builder()
        .capacity_bytes(4096)
        .maxsize(1)
        .max_spill_bytes(BUDGET)
        .build()
        .unwrap();
    let producer = {
        let q = q.clone();
        fork_child(move || {
            for seq in 0..N {
                let body = vec![(seq % 251) as u8; 3000];
                if q.put(Chunk { seq, body }).is_err() {
                    return 1;
                }
            }
            0
        })
    };
    let seen = Seen::new(N as usize);
    for round in 0..8u64 {
        let qc = q.clone();
        let seen_c = Seen {
            words: seen.words.clone(),
        };
        let pid = fork_child(move || loop {
            let got = if round % 2 == 0 {
                qc.get().map(|c| {
                    (
                        c.seq,
                        c.body.len(),
                        c.body.iter().all(|&b| b == (c.seq % 251) as u8),
                    )
                })
            } else {
                qc.get_ref().map(|c| {
                    let seq = c.seq.to_native();
                    (
                        seq,
                        c.body.len(),
                        c.body.iter().all(|&b| b == (seq % 251) as u8),
                    )
                })
            };
            match got {
                Ok((seq, 3000, true)) => {
                    seen_c.mark(seq as usize);
                }
                _ => return 1,
            }
        });
        std::thread::sleep(Duration::from_millis(4));
        kill(pid, Signal::SIGKILL).unwrap();
        waitpid(pid, None).unwrap();
    }
    let mut mine = 0;
    while let Ok(c) = q.get_timeout(Duration::from_secs(2)) {
        assert_eq!(c.body.len(), 3000, "torn oversized message");
        assert!(
            c.body.iter().all(|&b| b == (c.seq % 251) as u8),
            "torn message"
        );
        assert!(
            seen.mark(c.seq as usize),
            "message {} delivered twice",
            c.seq
        );
        mine += 1;
    }
    wait_ok(producer);
    assert!(mine > 0);
    assert!(
        seen.count() as u64 >= N - 8,
        "lost more than one message per killed consumer"
    );
    // The whole budget is free again (the pages of messages that killed consumers held in
    // zero-copy guards are freed once a producer runs short): a message of exactly the
    // budget goes.
    q.put_timeout(spill_chunk(9, BUDGET as usize - 64), WATCHDOG)
        .unwrap_or_else(|e| panic!("{e:?}: {q:?}"));
    assert_eq!(q.get().unwrap().body.len(), BUDGET as usize - 64);
    assert_eq!(q.spill_bytes(), 0, "{q:?}");
    // The count is exact: an empty queue of maxsize 1 takes exactly one item.
    assert_eq!(q.qsize(), 0, "{q:?}");
    q.put_nowait(Chunk {
        seq: 0,
        body: vec![],
    })
    .unwrap();
    assert!(q
        .put_nowait(Chunk {
            seq: 1,
            body: vec![]
        })
        .is_err());
}

#[test]
fn hostile_positions_are_refused_without_touching_memory_outside_the_ring() {
    let q: Queue<u64> = Queue::builder().capacity_bytes(1024).build().unwrap();
    q.put(1).unwrap();
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    // Meta's producer line starts at 64; `tail` follows the lock's futex word, the journal's
    // count and the lock word (the holder's token), at 64 + 16.
    // SAFETY: test-only corruption of a region this test owns.
    let tail = unsafe { &*region.as_ptr().add(64 + 16).cast::<AtomicU64>() };
    let good = tail.load(Ordering::SeqCst);
    for bad in [u64::MAX - 7, good + 3, good + (1 << 40)] {
        tail.store(bad, Ordering::SeqCst);
        match q.put_nowait(2) {
            Err(PutError::Failed(2, mp_core::Error::BadHeader { reason })) => {
                assert!(reason.contains("corrupted"), "{reason}")
            }
            other => panic!("expected a refusal for tail {bad}, got {other:?}"),
        }
        assert!(matches!(q.get_nowait(), Err(Error::Corrupted(_))));
    }
    tail.store(good, Ordering::SeqCst);
    assert_eq!(q.get_nowait().unwrap(), 1);
    q.put(3).unwrap();
    assert_eq!(q.get().unwrap(), 3);
}

/// Where [`Scribble`] writes when it is deserialized: the address of an `i32` in a second
/// mapping of a queue's region (0: nowhere).
static SCRIBBLE_AT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `u32` field whose deserialization rewrites 4 bytes of the message in shared memory, as a
/// hostile peer would between the receiver's check and its use of the bytes.
struct Scribble;

impl mp_core::rkyv::with::ArchiveWith<u32> for Scribble {
    type Archived = mp_core::rkyv::Archived<u32>;
    type Resolver = ();

    fn resolve_with(field: &u32, _: (), out: mp_core::rkyv::Place<Self::Archived>) {
        mp_core::rkyv::Archive::resolve(field, (), out);
    }
}

impl<S: mp_core::rkyv::rancor::Fallible + ?Sized> mp_core::rkyv::with::SerializeWith<u32, S>
    for Scribble
{
    fn serialize_with(_: &u32, _: &mut S) -> Result<(), S::Error> {
        Ok(())
    }
}

impl<D: mp_core::rkyv::rancor::Fallible + ?Sized>
    mp_core::rkyv::with::DeserializeWith<mp_core::rkyv::Archived<u32>, u32, D> for Scribble
{
    fn deserialize_with(field: &mp_core::rkyv::Archived<u32>, _: &mut D) -> Result<u32, D::Error> {
        let at = SCRIBBLE_AT.swap(0, Ordering::SeqCst);
        if at != 0 {
            // SAFETY: test-only: `at` is the address of the relative offset of a message's
            // `data` vector inside a mapping of the queue's region that the test keeps alive
            // (4 bytes, aligned).
            unsafe { (at as *mut i32).write_volatile(0x3fff_fff0) };
        }
        Ok(field.to_native())
    }
}

/// Deserializes `trigger` first (fields go in order), then `data`, whose offset `trigger`
/// rewrote in shared memory to point 1 GiB away.
#[derive(mp_core::rkyv::Archive, mp_core::rkyv::Serialize, mp_core::rkyv::Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
struct Tampered {
    #[rkyv(with = Scribble)]
    trigger: u32,
    data: Vec<u8>,
}

/// A queue holding one `Tampered` message with `len` data bytes in its first record, a second
/// mapping of its region (kept alive by the caller), and the address of that message's `data`
/// offset there.
fn tampered_queue(len: usize) -> (Queue<Tampered>, mp_core::Region, usize) {
    let q: Queue<Tampered> = Queue::builder().capacity_bytes(4096).build().unwrap();
    q.put(Tampered {
        trigger: 7,
        data: vec![42; len],
    })
    .unwrap();
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    // The first record is at 320 (after the metadata block): a 16-byte header whose second
    // word is the payload's length, then the payload, whose root (the archived struct) ends it.
    // SAFETY: test-only read of a region this test owns.
    let len = unsafe { region.as_ptr().add(320 + 4).cast::<u32>().read_volatile() } as usize;
    let root = 320 + 16 + len - std::mem::size_of::<ArchivedTampered>();
    // The archived Vec starts with its relative pointer (an i32 offset).
    let at = region.as_ptr() as usize + root + std::mem::offset_of!(ArchivedTampered, data);
    (q, region, at)
}

#[test]
fn owned_gets_decode_a_private_copy_that_peers_cannot_rewrite() {
    // Each owned-value path (`get`, `get_many`, and `deserialize` of a zero-copy guard) gets
    // a message whose bytes are rewritten in shared memory in the middle of its
    // deserialization: an offset is pointed 1 GiB out of the message. Decoded from a private
    // copy, the value is intact; decoded in place, the reader follows the new offset (out of
    // bounds: SIGSEGV, or garbage). In a child, so that a crash fails the test, not the run.
    // Small messages and larger ones (copied by different means) alike.
    let paths = ["get", "get_many", "get_ref+deserialize"];
    for (path, len) in paths.iter().flat_map(|&p| [(p, 100), (p, 1500)]) {
        let (q, region, at) = tampered_queue(len);
        let qc = q.clone();
        let pid = fork_child(move || {
            SCRIBBLE_AT.store(at, Ordering::SeqCst);
            let got = match path {
                "get" => qc.get_nowait().map(|t| (t.trigger, t.data)),
                "get_many" => {
                    let mut out = Vec::new();
                    qc.get_many(&mut out, 4, Some(Duration::ZERO)).map(|_| {
                        let t = out.pop().unwrap();
                        (t.trigger, t.data)
                    })
                }
                _ => qc
                    .get_ref_timeout(Duration::ZERO)
                    .and_then(|g| g.deserialize())
                    .map(|t| (t.trigger, t.data)),
            };
            match got {
                Ok((7, data)) if data == vec![42; len] => 0,
                _ => 2,
            }
        });
        wait_ok(pid);
        // The rewrite did happen (in shared memory), and the queue goes on.
        // SAFETY: test-only read of the mapping kept in `region`.
        assert_eq!(unsafe { (at as *const i32).read_volatile() }, 0x3fff_fff0);
        drop(region);
        assert!(q.empty(), "{path} {len}");
        q.put(Tampered {
            trigger: 1,
            data: vec![1],
        })
        .unwrap();
        assert_eq!(q.get().unwrap().data, vec![1], "{path} {len}");
    }
}

/// Makes a process with the pid `pid`, just freed (as a recycled pid would be), that waits
/// until it is killed (or its parent thread dies); `None` if the pid was taken meanwhile.
/// Uses `clone3` with `set_tid` (the tests run as root).
fn process_with_pid(pid: Pid) -> Option<Pid> {
    /// `struct clone_args` of linux/sched.h, up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
    }
    let tid = [pid.as_raw()];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork; the child only
    // makes async-signal-safe calls (prctl, pause) and never returns from this block.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => {
            // SAFETY: the child: prctl with integer arguments, then pause until killed.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            }
        }
        -1 => {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EEXIST),
                "clone3 with set_tid failed ({e}): this test needs CAP_SYS_ADMIN or \
                 CAP_CHECKPOINT_RESTORE"
            );
            None
        }
        p => Some(Pid::from_raw(p as i32)),
    }
}

#[test]
fn guard_of_a_dead_process_whose_pid_is_reused_does_not_stall_the_queue() {
    // A child takes a message with `get_ref` and exits holding the guard: its record stays
    // claimed (READING) under its identity. Its pid then goes to a new, live process, as pids
    // are recycled. Producers that need the record's space must see that its holder is dead
    // (the recorded start time is not the new process's) and reclaim it.
    let q: Queue<u64> = Queue::builder().capacity_bytes(1024).build().unwrap();
    let tokens: Queue<u64> = Queue::new().unwrap();
    for _attempt in 0..5 {
        q.put(1000).unwrap();
        let (qc, tc) = (q.clone(), tokens.clone());
        let a = fork_child(move || {
            let Ok(guard) = qc.get_ref() else { return 1 };
            if guard.to_native() != 1000 {
                return 1;
            }
            std::mem::forget(guard);
            match tc.put(mp_core::ident::process_token()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        });
        wait_ok(a);
        let a_token = tokens.get_nowait().unwrap();
        // More than a clock tick (10 ms at 100 Hz) between the two starts, so that the start
        // times differ.
        std::thread::sleep(Duration::from_millis(50));
        let Some(b) = process_with_pid(a) else {
            continue;
        };
        let reused = mp_core::ident::is_alive(u64::from(a.as_raw() as u32) << 32)
            && !mp_core::ident::is_alive(a_token);
        // The ring (1 KiB of 32-byte records) wraps many times over the dead guard's record.
        let mut stalled = None;
        for i in 0..200u64 {
            if q.put_timeout(i, Duration::from_secs(3)).is_err() {
                stalled = Some(i);
                break;
            }
            assert_eq!(q.get_timeout(Duration::from_secs(3)).unwrap(), i);
        }
        kill(b, Signal::SIGKILL).unwrap();
        waitpid(b, None).unwrap();
        assert!(
            reused,
            "the setup must give the dead holder's pid to a live process"
        );
        assert_eq!(
            stalled, None,
            "puts stalled behind the dead guard's record: {q:?}"
        );
        return;
    }
    panic!("the freed pid was taken by someone else five times");
}

#[test]
fn lock_recorded_for_a_reused_pid_is_taken_over() {
    // The queue's two locks are recorded as held by an earlier process of this test's pid:
    // the same pid, another start time, as a holder that died and whose pid went to us. A
    // put and a get must take them over (a holder-pid check alone would wait forever, the
    // pid being alive). In a child, so that a hang is caught by the watchdog.
    let q: Queue<u64> = Queue::new().unwrap();
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    let me = mp_core::ident::process_token();
    let earlier = (me & !0xffff_ffff) | u64::from((me as u32).wrapping_add(7919) | 1);
    assert!(mp_core::ident::is_alive(
        u64::from(std::process::id()) << 32
    ));
    assert!(!mp_core::ident::is_alive(earlier));
    // Meta: the producer lock's word (the holder's token) is at 64 + 8, after the lock's futex
    // word and the journal's count; the consumer lock's at 128 + 8.
    for at in [64 + 8, 128 + 8] {
        // SAFETY: test-only write of a region this test owns, 8-aligned.
        unsafe { &*region.as_ptr().add(at).cast::<AtomicU64>() }.store(earlier, Ordering::SeqCst);
    }
    let qc = q.clone();
    let pid = fork_child(move || {
        if qc.put(5).is_err() {
            return 1;
        }
        match qc.get() {
            Ok(5) => 0,
            _ => 2,
        }
    });
    wait_ok_within(pid, Duration::from_secs(20));
    q.put(6).unwrap();
    assert_eq!(q.get().unwrap(), 6);
}

#[test]
fn timed_calls_keep_their_timeout_when_a_live_process_holds_the_locks() {
    // Found by the fault campaign (`queue_garbage`): a peer's stray write left the consumer
    // lock's word naming a live process (here pid 1, start time unknown), so the lock is
    // never taken over; `get_timeout` then waited in the internal lock forever. Every timed
    // call must give up at its deadline (`Full`, `Empty`, a short `put_many`). In a child,
    // so that a hang is caught by the watchdog.
    let q: Queue<u64> = Queue::new().unwrap();
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    let init = 1u64 << 32;
    assert!(mp_core::ident::is_alive(init));
    let words = [64 + 8, 128 + 8];
    for at in words {
        // SAFETY: test-only write of a region this test owns, 8-aligned.
        unsafe { &*region.as_ptr().add(at).cast::<AtomicU64>() }.store(init, Ordering::SeqCst);
    }
    let qc = q.clone();
    let pid = fork_child(move || {
        let t = Duration::from_millis(100);
        if !matches!(qc.put_timeout(5, t), Err(PutError::Full(5))) {
            return 1;
        }
        if !matches!(qc.get_timeout(t), Err(Error::Empty)) {
            return 2;
        }
        match qc.put_many(&[1, 2, 3], Some(t)) {
            Ok(0) => 0,
            _ => 3,
        }
    });
    wait_ok_within(pid, Duration::from_secs(20));
    for at in words {
        // SAFETY: as above; the holder "leaves".
        unsafe { &*region.as_ptr().add(at).cast::<AtomicU64>() }.store(0, Ordering::SeqCst);
    }
    q.put(6).unwrap();
    assert_eq!(q.get().unwrap(), 6);
}

/// True when `pid` is blocked in the futex system call (per `/proc/<pid>/syscall`).
fn in_futex_wait(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.split(' ').next() == Some(libc::SYS_futex.to_string().as_str()))
}

#[test]
fn put_many_wakes_a_sleeping_consumer_per_item() {
    // K consumers asleep in `get`; one `put_many` of K items must wake them all (counted by
    // the queue's tally of consumers woken), not one, leaving the others to their next nap.
    const K: usize = 4;
    let q: Queue<u64> = Queue::new().unwrap();
    let done: Queue<u64> = Queue::new().unwrap();
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    // Meta's sleep line is at 192: data_seq, space_seq, c_waiters (200), p_waiters, then the
    // tally of consumers woken (208).
    // SAFETY: test-only reads of atomics in a region this test owns, 4-aligned.
    let (c_waiters, woken) = unsafe {
        (
            &*region.as_ptr().add(200).cast::<AtomicU32>(),
            &*region.as_ptr().add(208).cast::<AtomicU32>(),
        )
    };
    let kids: Vec<Pid> = (0..K)
        .map(|_| {
            let (q, done) = (q.clone(), done.clone());
            fork_child(move || match q.get() {
                Ok(v) if done.put(v).is_ok() => 0,
                _ => 1,
            })
        })
        .collect();
    let kill_all = |why: String| -> ! {
        for &k in &kids {
            let _ = kill(k, Signal::SIGKILL);
            let _ = waitpid(k, None);
        }
        panic!("{why}");
    };
    // Until every consumer is asleep: counted as a waiter and blocked in FUTEX_WAIT.
    let t0 = Instant::now();
    while c_waiters.load(Ordering::SeqCst) as usize != K || !kids.iter().all(|&k| in_futex_wait(k))
    {
        if t0.elapsed() > Duration::from_secs(20) {
            kill_all(format!("the consumers did not fall asleep: {q:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = woken.load(Ordering::SeqCst);
    assert_eq!(q.put_many(&[10, 11, 12, 13], None).unwrap(), K);
    let mut got = Vec::new();
    for _ in 0..K {
        match done.get_timeout(Duration::from_secs(20)) {
            Ok(v) => got.push(v),
            Err(e) => kill_all(format!("a consumer got nothing: {e}")),
        }
    }
    let woken = woken.load(Ordering::SeqCst) - before;
    for k in kids {
        wait_ok(k);
    }
    got.sort_unstable();
    assert_eq!(got, [10, 11, 12, 13]);
    // All K were asleep just before the put; one of them may have woken from its nap in the
    // microseconds between the check and the wake, so allow one short.
    assert!(
        woken as usize >= K - 1,
        "one put_many of {K} items woke {woken} of {K} sleeping consumers"
    );
}

#[test]
fn a_second_corruption_does_not_hand_a_live_guards_record_to_producers() {
    // Two damaged spans with a message between them that a zero-copy guard holds: when
    // `reclaim` jumps the damage, it must stop at that guard's record, or producers write
    // over the bytes the guard is reading.
    let q: Queue<u64> = Queue::builder().capacity_bytes(1024).build().unwrap();
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    // Records of a u64 are 32 bytes (16 of header, 16 of payload), from 320 on; `len` is the
    // header's second word.
    let damage = |record: usize| {
        // SAFETY: test-only corruption of a region this test owns.
        unsafe {
            region
                .as_ptr()
                .add(320 + 32 * record + 4)
                .cast::<u32>()
                .write_volatile(0xFFFF_FFF0)
        };
    };
    q.put(1).unwrap();
    let first = q.get_ref().unwrap(); // record 0, held: `reclaim` waits for it
    q.put(2).unwrap();
    damage(1);
    assert!(matches!(q.get_nowait(), Err(Error::Corrupted(_))));
    q.put(3).unwrap();
    let second = q.get_ref().unwrap(); // record 2, held
    assert_eq!(second.to_native(), 3);
    q.put(4).unwrap();
    damage(3);
    assert!(matches!(q.get_nowait(), Err(Error::Corrupted(_))));
    drop(first);
    // Fill the ring: producers may use all the space up to the second guard's record, no more.
    let mut put = 0u64;
    while q.put_nowait(100 + put).is_ok() {
        put += 1;
    }
    assert_eq!(
        second.to_native(),
        3,
        "producers overwrote a live guard's message ({put} puts): {q:?}"
    );
    drop(second);
    for i in 0..put {
        assert_eq!(q.get_nowait().unwrap(), 100 + i);
    }
    assert!(q.empty());
    q.put(7).unwrap();
    assert_eq!(q.get().unwrap(), 7);
}

/// Set in a child that must stall inside a queue operation: [`Stall`] says so on this queue,
/// then blocks forever, holding whatever lock the operation holds.
static STALL_SIGNAL: std::sync::OnceLock<Queue<u8>> = std::sync::OnceLock::new();

/// A serde type whose serialization (of 1) or deserialization (of 2) stalls forever in a
/// process that set [`STALL_SIGNAL`], and is plain everywhere else.
#[derive(Debug, PartialEq)]
struct Stall(u32);

fn stall_here(what: u8) {
    if let Some(signal) = STALL_SIGNAL.get() {
        let _ = signal.put(what);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl serde::Serialize for Stall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 1 {
            stall_here(1);
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Stall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == 2 {
            stall_here(2);
        }
        Ok(Stall(v))
    }
}

#[test]
fn locks_of_holders_killed_inside_are_taken_over_when_their_pids_are_reused() {
    // A child is killed while it holds the producer lock (inside a put's serialization), then
    // another while it holds the consumer lock (inside a get's decoding); each time its pid
    // goes to a new, live process before anyone else uses the queue. The lock words name the
    // dead holders (pid and start time), so a put and a get must take them over.
    let q: Queue<mp_core::Serde<Stall>> = Queue::new().unwrap();
    let inside: Queue<u8> = Queue::new().unwrap();
    q.put(mp_core::Serde(Stall(2))).unwrap();
    for side in [1u8, 2] {
        let (qc, signal) = (q.clone(), inside.clone());
        let holder = fork_child(move || {
            let _ = STALL_SIGNAL.set(signal);
            let _ = if side == 1 {
                qc.put(mp_core::Serde(Stall(1))).is_ok()
            } else {
                qc.get().is_ok()
            };
            3
        });
        let got = inside.get_timeout(Duration::from_secs(20));
        kill(holder, Signal::SIGKILL).unwrap();
        waitpid(holder, None).unwrap();
        assert_eq!(
            got.unwrap(),
            side,
            "the holder did not stall where expected"
        );
        // More than a clock tick between the two starts (see the guard test above).
        std::thread::sleep(Duration::from_millis(50));
        let reused = process_with_pid(holder);
        let qc = q.clone();
        let user = fork_child(move || {
            if qc.put(mp_core::Serde(Stall(5))).is_err() {
                return 1;
            }
            // The message the killed consumer was decoding is still there, then ours.
            match (qc.get(), qc.get()) {
                (Ok(a), Ok(b)) if a.0 == Stall(2) && b.0 == Stall(5) => 0,
                _ => 2,
            }
        });
        let r = std::panic::catch_unwind(|| wait_ok_within(user, Duration::from_secs(20)));
        if let Some(b) = reused {
            kill(b, Signal::SIGKILL).unwrap();
            waitpid(b, None).unwrap();
        }
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
        q.put(mp_core::Serde(Stall(2))).unwrap();
    }
    assert_eq!(q.get().unwrap().0, Stall(2));
    assert!(q.empty());
}

// ------------------------------------------------ the side channel's budget (issue 20, F6)

/// A chunk whose body says who put it and which one it is: `seq` and `len` decide every byte.
fn spill_chunk(seq: u64, len: usize) -> Chunk {
    Chunk {
        seq,
        body: vec![(seq % 251) as u8; len],
    }
}

fn spill_chunk_ok(c: &Chunk) -> bool {
    c.body.iter().all(|&b| b == (c.seq % 251) as u8)
}

/// Every message of this body size goes beside a 4 KiB ring and takes 16 pages (64 KiB) of
/// the budget: 60 KiB of bytes plus rkyv's few bytes of framing.
const SPILL_BODY: usize = 60 << 10;
const SPILL_SPAN: u64 = 64 << 10;

fn spill_queue(budget: u64) -> Queue<Chunk> {
    Queue::builder()
        .capacity_bytes(4096)
        .max_spill_bytes(budget)
        .build()
        .unwrap()
}

/// Waits (polling, bounded by the watchdog) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < WATCHDOG,
            "watchdog: still waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The bytes of the queue's shared file that hold pages now (tmpfs allocates on write and
/// frees on punch), through a second descriptor of its region.
fn allocated_bytes<T: mp_core::Message>(q: &Queue<T>) -> u64 {
    let (bytes, fds) = handle::collect(|| encode(q));
    let _ = bytes.unwrap();
    let fd = fds.into_iter().next().unwrap();
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap();
    st.st_blocks as u64 * 512
}

#[test]
fn default_spill_budget_is_one_gib_and_builders_set_it() {
    assert_eq!(mp_queue::DEFAULT_MAX_SPILL_BYTES, 1 << 30);
    assert_eq!(Queue::<u8>::new().unwrap().max_spill_bytes(), 1 << 30);
    let j = JoinableQueue::<u8>::builder()
        .max_spill_bytes(12345)
        .maxsize(3)
        .build_joinable()
        .unwrap();
    assert_eq!((j.max_spill_bytes(), j.maxsize()), (12345, 3));
    assert_eq!(j.spill_bytes(), 0);
}

#[test]
fn spill_budget_holds_across_two_producer_processes() {
    // Two producer processes put 12 oversized messages each into a budget of 4: they fill it,
    // then wait for the consumer, which never finds more than 4 messages' pages beside the ring.
    const PER: u64 = 12;
    const BUDGET: u64 = 4 * SPILL_SPAN;
    let q = spill_queue(BUDGET);
    let producers: Vec<Pid> = (1..=2u64)
        .map(|p| {
            let q = q.clone();
            fork_child(move || {
                for i in 0..PER {
                    if q.put(spill_chunk((p << 32) | i, SPILL_BODY)).is_err() {
                        return 1;
                    }
                }
                0
            })
        })
        .collect();
    wait_until("the producers to fill the budget", || {
        q.spill_bytes() == BUDGET
    });
    // Full for everyone, this process too, and the item comes back.
    match q.put_nowait(spill_chunk(7, SPILL_BODY)) {
        Err(PutError::Full(c)) => assert!(c.seq == 7 && spill_chunk_ok(&c)),
        other => panic!("{other:?}: {q:?}"),
    }
    let mut next = [0u64; 2];
    for _ in 0..2 * PER {
        let in_use = q.spill_bytes();
        assert!(in_use <= BUDGET, "over budget: {q:?}");
        let c = q.get_timeout(WATCHDOG).unwrap();
        assert!(
            spill_chunk_ok(&c) && c.body.len() == SPILL_BODY,
            "torn message"
        );
        let p = (c.seq >> 32) as usize - 1;
        assert_eq!(c.seq & 0xffff_ffff, next[p], "lost or reordered");
        next[p] += 1;
    }
    for pid in producers {
        wait_ok(pid);
    }
    assert_eq!(q.spill_bytes(), 0, "{q:?}");
}

#[test]
fn put_waiting_for_spill_budget_completes_when_a_consumer_frees_it() {
    let q = spill_queue(4 * SPILL_SPAN);
    for seq in 0..4 {
        q.put_nowait(spill_chunk(seq, SPILL_BODY)).unwrap();
    }
    // Over budget: a timed put waits its timeout, then gives the item back.
    match q.put_timeout(spill_chunk(50, SPILL_BODY), Duration::from_millis(20)) {
        Err(PutError::Full(c)) => assert!(c.seq == 50 && spill_chunk_ok(&c)),
        other => panic!("{other:?}"),
    }
    // A blocking put in another process sleeps until this one takes a message.
    let qc = q.clone();
    let pid = fork_child(move || match qc.put(spill_chunk(99, SPILL_BODY)) {
        Ok(()) => 0,
        Err(_) => 1,
    });
    wait_until("the producer to sleep", || in_futex_wait(pid));
    assert!(matches!(
        waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap(),
        WaitStatus::StillAlive
    ));
    assert_eq!(q.qsize(), 4);
    assert_eq!(q.get().unwrap().seq, 0);
    wait_ok(pid);
    let seqs: Vec<u64> = (0..4).map(|_| q.get_nowait().unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3, 99]);
    assert_eq!(q.spill_bytes(), 0);
}

#[test]
fn guard_holder_killed_gives_its_spill_budget_back() {
    // A process takes an oversized message with `get_ref` and is killed holding the guard:
    // its pages count until producers run short, then are freed like a dropped guard's.
    let q = spill_queue(2 * SPILL_SPAN);
    let ready: Queue<u8> = Queue::new().unwrap();
    q.put_nowait(spill_chunk(0, SPILL_BODY)).unwrap();
    q.put_nowait(spill_chunk(1, SPILL_BODY)).unwrap();
    let (qc, rc) = (q.clone(), ready.clone());
    let pid = fork_child(move || {
        let Ok(guard) = qc.get_ref() else {
            return 1;
        };
        if guard.seq != 0 || rc.put(1).is_err() {
            return 2;
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    assert_eq!(ready.get_timeout(WATCHDOG).unwrap(), 1);
    assert_eq!(q.spill_bytes(), 2 * SPILL_SPAN);
    kill(pid, Signal::SIGKILL).unwrap();
    waitpid(pid, None).unwrap();
    q.put_timeout(spill_chunk(2, SPILL_BODY), WATCHDOG)
        .expect("the dead guard's pages were not given back");
    assert_eq!(q.get().unwrap().seq, 1);
    assert_eq!(q.get().unwrap().seq, 2);
    assert_eq!(q.spill_bytes(), 0, "{q:?}");
}

#[test]
fn message_larger_than_the_whole_spill_budget_is_refused_at_once() {
    // In a child, under the watchdog: a blocking put that waited for room that can never come
    // would hang there instead of failing.
    let q = spill_queue(4 * SPILL_SPAN);
    let qc = q.clone();
    let pid = fork_child(move || {
        let chunk = spill_chunk(5, 4 * SPILL_SPAN as usize);
        let err = match qc.put(chunk) {
            Err(e) => e,
            Ok(()) => return 1,
        };
        if !matches!(
            err.spill_error(),
            Some(mp_queue::SpillError::TooLarge { needed, budget, .. })
                if *needed > *budget && *budget == 4 * SPILL_SPAN
        ) {
            return 2;
        }
        // The error is an `Io` failure, which mp-pool reports as "shared memory", and the
        // item comes back whole.
        match err {
            PutError::Failed(c, mp_core::Error::Io { .. }) if c.seq == 5 && spill_chunk_ok(&c) => {}
            _ => return 3,
        }
        // put_many stops there too, saying why.
        let batch = [spill_chunk(6, 8), spill_chunk(7, 1 << 20)];
        match qc.put_many(&batch, None) {
            Err(e) if e.put == 1 && e.error.spill_error().is_some() => {}
            _ => return 4,
        }
        // A message that fits the budget still goes.
        match qc.put(spill_chunk(8, SPILL_BODY)) {
            Ok(()) => 0,
            Err(_) => 5,
        }
    });
    wait_ok(pid);
    assert_eq!(q.get().unwrap().seq, 6);
    assert_eq!(q.get().unwrap().seq, 8);
    assert_eq!(q.spill_bytes(), 0);
    // A budget of 0 allows nothing beside the ring, and says so at once.
    let none = spill_queue(0);
    let err = none.put(spill_chunk(1, 5000)).unwrap_err();
    assert!(matches!(
        err.spill_error(),
        Some(mp_queue::SpillError::TooLarge { budget: 0, .. })
    ));
    none.put(spill_chunk(2, 100)).unwrap();
    assert_eq!(none.get().unwrap().seq, 2);
}

#[test]
fn producer_killed_mid_oversized_put_leaves_the_spill_budget_whole() {
    // A producer of oversized messages of many sizes is killed inside an oversized put: as
    // soon as its journal says it has taken a range beside the ring (and so, most often,
    // while it copies the message there). After each, once the queue is drained and
    // recovered, the whole budget is free: a message of exactly the budget goes at once, and
    // no page of the file beside the ring stays allocated.
    const BUDGET: u64 = 16 * SPILL_SPAN;
    let q = spill_queue(BUDGET);
    let (bytes, fds) = handle::collect(|| encode(&q));
    let _ = bytes.unwrap();
    let region = mp_core::Region::from_fd(fds.into_iter().next().unwrap(), None).unwrap();
    // Meta's producer journal for an oversized message, `pending_big` (at 280 on its rarely
    // written line): the start of the range a producer is filling, 0 when none.
    // SAFETY: a test-only read of an atomic in a region this test owns, 8-aligned.
    let pending_big = unsafe { &*region.as_ptr().add(280).cast::<AtomicU64>() };
    // The region itself: a 64-byte header, the 320-byte Meta and the 4 KiB ring, in 2 pages.
    let ring_pages = 8192;
    assert!(allocated_bytes(&q) <= ring_pages);
    let whole = BUDGET as usize - 64; // plus rkyv's framing: exactly the budget in pages
    for round in 0..8u64 {
        let qc = q.clone();
        let base = round << 32;
        let pid = fork_child(move || {
            let mut i = 0u64;
            loop {
                let seq = base + i;
                let len = 3000 + ((seq * 7919) % (200 << 10)) as usize;
                if qc.put(spill_chunk(seq, len)).is_err() {
                    return 1;
                }
                i += 1;
            }
        });
        // Take messages until the producer, given room, takes its next range (for some
        // microseconds: look without sleeping, bounded by the watchdog).
        let t0 = Instant::now();
        let mut looks = 0u32;
        while pending_big.load(Ordering::Relaxed) == 0 {
            assert!(t0.elapsed() < WATCHDOG, "watchdog: no oversized put");
            looks += 1;
            if looks % (20 + round as u32 % 7) == 0 {
                if let Ok(c) = q.get_nowait() {
                    assert!(spill_chunk_ok(&c), "torn message");
                }
            }
            std::thread::yield_now();
        }
        kill(pid, Signal::SIGKILL).unwrap();
        waitpid(pid, None).unwrap();
        while let Ok(c) = q.get_nowait() {
            assert!(spill_chunk_ok(&c), "torn message");
        }
        // The next put takes over the dead producer's lock and gives its range back.
        q.put_nowait(spill_chunk(1, whole))
            .unwrap_or_else(|e| panic!("round {round}: {e:?}: {q:?}"));
        let c = q.get_nowait().unwrap();
        assert!(c.body.len() == whole && spill_chunk_ok(&c));
        assert_eq!(q.spill_bytes(), 0, "round {round}: {q:?}");
        let allocated = allocated_bytes(&q);
        assert!(
            allocated <= ring_pages,
            "round {round}: pages beside the ring leaked: {allocated} bytes allocated"
        );
    }
}

#[test]
fn full_shared_memory_is_a_typed_error_and_the_queue_goes_on() {
    // A child whose file-size limit the queue's file reaches (EFBIG, with SIGXFSZ ignored, as
    // when /dev/shm or the memory is full): its put fails with `SharedMemoryFull`, gives the
    // item back, keeps no budget, and the queue takes smaller messages.
    let q = spill_queue(1 << 30);
    let qc = q.clone();
    let pid = fork_child(move || {
        let limit = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: signal(2) with SIG_IGN and setrlimit on the struct given, in this child only.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return 9;
            }
        }
        let err = match qc.put(spill_chunk(3, 4 << 20)) {
            Err(e) => e,
            Ok(()) => return 1,
        };
        if !matches!(
            err.spill_error(),
            Some(mp_queue::SpillError::SharedMemoryFull { errno, .. }) if *errno == libc::EFBIG
        ) {
            return 2;
        }
        if !err.to_string().contains("shared memory is full") {
            return 3;
        }
        match err {
            PutError::Failed(c, mp_core::Error::Io { .. }) if c.seq == 3 && spill_chunk_ok(&c) => {}
            _ => return 4,
        }
        if qc.spill_bytes() != 0 {
            return 5;
        }
        match qc.put(spill_chunk(4, SPILL_BODY)) {
            Ok(()) => 0,
            Err(_) => 6,
        }
    });
    wait_ok(pid);
    assert_eq!(q.spill_bytes(), SPILL_SPAN);
    let c = q.get().unwrap();
    assert!(c.seq == 4 && spill_chunk_ok(&c));
    assert_eq!(q.spill_bytes(), 0);
}
