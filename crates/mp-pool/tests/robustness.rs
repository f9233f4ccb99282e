//! The pool on its failure paths (issue 20): a caller's `Serialize` that panics, callbacks
//! that call back into the pool, `join_timeout`, `next_timeout` with a full task queue, a
//! result the parent cannot read, and backpressure. Real worker processes, fork and spawn.

mp_process::test_support!();

mod common;
use common::watchdog;

use std::time::Duration;

use mp_pool::{Error, Pool};
use mp_process::StartMethod;

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];

fn pool(m: StartMethod, n: usize) -> Pool {
    Pool::builder()
        .processes(n)
        .start_method(m)
        .build()
        .unwrap()
}

fn square(x: u64) -> u64 {
    x * x
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A message whose `Serialize` panics for `Bomb(7)` (a user type with a bug).
#[derive(Debug)]
struct Bomb(u64);

impl rkyv::Archive for Bomb {
    type Archived = rkyv::rend::u64_le;
    type Resolver = ();

    fn resolve(&self, _: (), out: rkyv::Place<Self::Archived>) {
        self.0.resolve((), out)
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for Bomb {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        assert!(self.0 != 7, "Bomb(7) cannot be serialized");
        Ok(())
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<Bomb, D> for rkyv::rend::u64_le {
    fn deserialize(&self, _: &mut D) -> Result<Bomb, D::Error> {
        Ok(Bomb(self.to_native()))
    }
}

fn defuse(b: Bomb) -> u64 {
    b.0
}

/// A `Serialize` that panics on the caller's thread propagates to the caller, and the job
/// is not left behind: `join` returns; on the feeder thread it fails its job with
/// `Unserializable` and the pool stays usable (issue 20 F7).
#[test]
fn a_panicking_serialize_leaks_no_job() {
    watchdog(90, || {
        for m in METHODS {
            let p = pool(m, 2);
            let quiet = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                p.chunksize(1).map(defuse, (0..10).map(Bomb))
            }));
            let r2 = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                p.apply_async(defuse, Bomb(7)).map(|_| ())
            }));
            let mut it = p.chunksize(1).imap(defuse, (5..10).map(Bomb)).unwrap();
            // The first `next` submits chunks 5, 6 and 7: the panic comes out of it.
            let r3 = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
            std::panic::set_hook(quiet);
            assert!(
                r.is_err() && r2.is_err() && r3.is_err(),
                "the panics reach the caller"
            );
            // The iterator goes on past the chunk that could not be sent.
            assert_eq!(it.next().unwrap().unwrap(), 5);
            assert_eq!(it.next().unwrap().unwrap(), 6);
            match it.next() {
                Some(Err(Error::Unserializable {
                    what: "arguments", ..
                })) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(it.next().unwrap().unwrap(), 8);
            drop(it);
            assert_eq!(p.map(square, [3]).unwrap(), [9]);
            p.close();
            p.join().unwrap();

            // On the feeder thread: the queue is full (the one worker naps), so the rest of
            // the map goes through the feeder, which meets Bomb(7) at the end.
            let p = pool(m, 1);
            let nap = p.apply_async(nap_ms, 1500).unwrap();
            let items = (0..200_000u64).map(|x| Bomb(if x == 199_999 { 7 } else { 8 }));
            let r = p.chunksize(1).map_async(defuse, items).unwrap();
            match r.get() {
                Err(Error::Unserializable {
                    what: "arguments",
                    message,
                }) => {
                    assert!(
                        message.contains("Bomb(7) cannot be serialized"),
                        "{message}"
                    )
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(nap.get().unwrap(), 1500);
            assert_eq!(
                p.map(square, [4]).unwrap(),
                [16],
                "the pool is still usable"
            );
            p.close();
            p.join().unwrap();
        }
    });
}

/// Callbacks run without holding the result's lock, and a call that would wait for the
/// pool from a callback (on the pool's own thread) is an error, not a deadlock (issue 20 F3).
#[test]
fn callbacks_do_not_block_others_and_cannot_deadlock_the_pool() {
    use std::sync::mpsc;
    use std::sync::Arc;
    watchdog(90, || {
        for m in METHODS {
            let p = Arc::new(pool(m, 2));
            // Another thread's ready/successful/get_timeout while a callback runs.
            let (started_tx, started_rx) = mpsc::channel();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            let r = p.apply_async(nap_ms, 50).unwrap().on_success(move |_| {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
            });
            started_rx.recv().unwrap();
            assert!(
                !r.ready(),
                "ready only after the callbacks ran, as in Python"
            );
            assert!(matches!(r.successful(), Err(Error::NotReady)));
            assert!(matches!(
                r.get_timeout(Duration::from_millis(1)),
                Err(Error::Timeout)
            ));
            release_tx.send(()).unwrap();
            assert_eq!(r.get().unwrap(), 50);

            // Blocking calls from a callback on the supervisor thread.
            let (tx, rx) = mpsc::channel();
            let p2 = p.clone();
            let r = p.apply_async(nap_ms, 50).unwrap().on_success(move |_| {
                let other = p2.apply_async(square, 5).unwrap();
                let outcomes = (
                    p2.map(square, [1, 2]).err(),
                    p2.apply(square, 3).err(),
                    p2.imap(square, [4]).unwrap().next().and_then(|r| r.err()),
                    other.get().err(),
                );
                p2.close();
                tx.send((outcomes, p2.join().err(), other)).unwrap();
            });
            let ((map, apply, imap, get), join, other) =
                rx.recv_timeout(Duration::from_secs(30)).unwrap();
            for e in [map, apply, imap, get, join] {
                assert!(matches!(e, Some(Error::InCallback)), "{e:?}");
            }
            assert_eq!(r.get().unwrap(), 50);
            assert_eq!(
                other.get().unwrap(),
                25,
                "work submitted by a callback runs"
            );
            p.join().unwrap();
        }
    });
}

/// `join` waits for running tasks, as in Python; `join_timeout` bounds the wait and can be
/// called again (issue 20 F8).
#[test]
fn join_timeout_bounds_the_wait_for_running_tasks() {
    watchdog(90, || {
        for m in METHODS {
            let p = pool(m, 2);
            let r = p.apply_async(nap_ms, 1_500).unwrap();
            let stuck = p.apply_async(nap_ms, 1_500).unwrap();
            p.close();
            assert!(matches!(
                p.join_timeout(Duration::from_millis(50)),
                Err(Error::Timeout)
            ));
            // Again, at once (the tasks still run), then long enough.
            assert!(matches!(
                p.join_timeout(Duration::ZERO),
                Err(Error::Timeout)
            ));
            p.join_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(r.get().unwrap(), 1_500);
            assert_eq!(stuck.get().unwrap(), 1_500);
            assert!(p.worker_pids().is_empty());
            p.join().unwrap();

            // A task that never ends: time out, then terminate.
            let p = pool(m, 1);
            let never = p.apply_async(nap_ms, 600_000).unwrap();
            p.close();
            assert!(matches!(
                p.join_timeout(Duration::from_millis(100)),
                Err(Error::Timeout)
            ));
            assert!(matches!(
                p.join_timeout(Duration::ZERO),
                Err(Error::Timeout)
            ));
            p.terminate();
            p.join_timeout(Duration::from_secs(10)).unwrap();
            assert!(matches!(never.get(), Err(Error::Terminated)));
        }
    });
}

fn index_of(v: Vec<u8>) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

/// 1 KiB items that carry their index.
fn kib_items(n: u64) -> impl Iterator<Item = Vec<u8>> + Send {
    (0..n).map(|i| {
        let mut v = vec![0u8; 1024];
        v[..8].copy_from_slice(&i.to_le_bytes());
        v
    })
}

/// `next_timeout` returns within its timeout even when submitting the next chunks has to
/// wait for room in the task queue, and the chunk it could not submit is not lost
/// (issue 20 F9).
#[test]
fn next_timeout_covers_a_full_task_queue() {
    watchdog(120, || {
        for m in METHODS {
            // The one worker is busy for a while: the task queue (4 MiB) fills up.
            let p = pool(m, 1);
            let busy = p.apply_async(nap_ms, 1_500).unwrap();
            let n = 8_000u64;
            let mut it = p
                .chunksize(1)
                .in_flight(100_000)
                .imap(index_of, kib_items(n))
                .unwrap();
            assert!(matches!(
                it.next_timeout(Duration::from_millis(100)),
                Some(Err(Error::Timeout))
            ));
            assert_eq!(busy.get().unwrap(), 1_500);
            let mut i = 0;
            while i < n {
                match it.next_timeout(Duration::from_secs(10)) {
                    Some(Ok(x)) => {
                        assert_eq!(x, i, "in order, none lost");
                        i += 1;
                    }
                    Some(Err(Error::Timeout)) => {} // a slow machine: ask again
                    other => panic!("item {i}: {other:?}"),
                }
            }
            assert!(it.next().is_none());
            drop(it);

            // A worker that never frees the queue: time out, then terminate.
            let p = pool(m, 1);
            let _stuck = p.apply_async(nap_ms, 600_000).unwrap();
            let mut it = p
                .chunksize(1)
                .in_flight(100_000)
                .imap(index_of, kib_items(n))
                .unwrap();
            for _ in 0..3 {
                assert!(matches!(
                    it.next_timeout(Duration::from_millis(50)),
                    Some(Err(Error::Timeout))
                ));
            }
            p.terminate();
            assert!(matches!(it.next(), Some(Err(Error::Terminated))));
            assert!(it.next().is_none());
        }
    });
}

/// This process's address-space size now.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Limits this process's address space to what it uses now plus `headroom` bytes: a
/// mapping larger than that fails (ENOMEM), as on a machine out of memory.
fn limit_address_space(headroom: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: vm_size() + headroom,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit structs given, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut old), 0);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &new), 0);
    }
    old
}

fn big_result(mib: u64) -> Vec<u8> {
    vec![7u8; (mib << 20) as usize]
}

fn first_byte(v: Vec<u8>) -> u8 {
    v[0]
}

fn tight_worker(headroom: u64) {
    limit_address_space(headroom);
}

/// Run in its own process (its address space is limited, which no other test may share):
/// a 16 MiB result that the parent cannot map. Writes the outcome to `path`.
fn unreadable_result_program(args: (String, bool)) {
    let (path, spawn_workers) = args;
    let m = if spawn_workers {
        StartMethod::Spawn
    } else {
        StartMethod::Fork
    };
    let p = pool(m, 1);
    assert_eq!(p.apply(square, 2).unwrap(), 4);
    let old = limit_address_space(8 << 20);
    let r = p
        .apply_async(big_result, 16)
        .unwrap()
        .get_timeout(Duration::from_secs(20));
    // SAFETY: setrlimit reads the struct given.
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &old) };
    let after = p.apply(square, 3);
    std::fs::write(path, format!("{:?}\n{after:?}", r.map(|v| v.len()))).unwrap();
}

/// A record the pool cannot read from its queues (here: mapping an oversized message fails)
/// fails the work pending then with `QueueRead`, instead of losing it silently and leaving
/// its caller waiting forever; the pool goes on (issue 20 F5).
#[test]
fn a_queue_read_error_fails_the_work_instead_of_losing_it() {
    watchdog(120, || {
        for m in METHODS {
            // The task side: the worker cannot map a 16 MiB argument.
            let p = Pool::builder()
                .processes(1)
                .start_method(m)
                .initializer(tight_worker, 8 << 20)
                .build()
                .unwrap();
            let r = p
                .apply_async(first_byte, vec![1u8; 16 << 20])
                .unwrap()
                .get_timeout(Duration::from_secs(20));
            match r {
                Err(Error::QueueRead { what: "task", .. }) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(p.apply(first_byte, vec![5u8; 1024]).unwrap(), 5);
            p.close();
            p.join().unwrap();

            // The result side, in a program of its own.
            let path = std::env::temp_dir()
                .join(format!("mp-pool-unreadable-{}-{m:?}", std::process::id()));
            let mut prog = mp_process::Process::new(
                unreadable_result_program,
                (path.to_string_lossy().into_owned(), m == StartMethod::Spawn),
            )
            .start_method(StartMethod::Spawn)
            .start()
            .unwrap();
            let done = prog.join_timeout(Duration::from_secs(60));
            let outcome = std::fs::read_to_string(&path).unwrap_or_default();
            let _ = std::fs::remove_file(&path);
            assert!(matches!(done, Ok(Some(()))), "{done:?}");
            assert!(
                outcome.starts_with("Err(QueueRead { what: \"result\"")
                    && outcome.ends_with("Ok(9)"),
                "{outcome}"
            );
        }
    });
}

/// Limits the size of files this process may grow (the queues' memfds included) to
/// `bytes`, with SIGXFSZ ignored so that growing past it fails with EFBIG: the queue's
/// oversized-message area cannot grow, as when /dev/shm or the memory is full.
fn limit_file_size(bytes: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: signal(2) with SIG_IGN, getrlimit/setrlimit on the structs given.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0);
    }
    old
}

fn small_files_worker(bytes: u64) {
    limit_file_size(bytes);
}

/// Run in its own process (its file size limit would hit other tests): 16 MiB arguments
/// that the task queue cannot take. Writes the outcome to `path`.
fn full_shared_memory_program(path: String) {
    let p = pool(StartMethod::Fork, 1);
    let old = limit_file_size(8 << 20);
    let r = p.apply(first_byte, vec![1u8; 16 << 20]);
    // SAFETY: setrlimit reads the struct given.
    unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) };
    let after = p.apply(square, 3);
    std::fs::write(path, format!("{r:?}\n{after:?}")).unwrap();
}

/// When the shared memory cannot take a message (it cannot grow: /dev/shm or the memory is
/// full, or a limit), the call fails with `SharedMemory`, not as if the value could not be
/// serialized (issue 20 F6).
#[test]
fn full_shared_memory_is_reported_as_such() {
    watchdog(120, || {
        for m in METHODS {
            let p = Pool::builder()
                .processes(1)
                .start_method(m)
                .initializer(small_files_worker, 8 << 20)
                .build()
                .unwrap();
            match p.apply(big_result, 16) {
                Err(Error::SharedMemory { what: "result", .. }) => {}
                other => panic!("{:?}", other.map(|v| v.len())),
            }
            assert_eq!(p.apply(square, 3).unwrap(), 9);
            p.close();
            p.join().unwrap();
        }
        let path = std::env::temp_dir().join(format!("mp-pool-full-shm-{}", std::process::id()));
        let mut prog = mp_process::Process::new(
            full_shared_memory_program,
            path.to_string_lossy().into_owned(),
        )
        .start_method(StartMethod::Spawn)
        .start()
        .unwrap();
        let done = prog.join_timeout(Duration::from_secs(60));
        let outcome = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(done, Ok(Some(()))), "{done:?}");
        assert!(
            outcome.starts_with("Err(SharedMemory { what: \"arguments\"")
                && outcome.ends_with("Ok(9)"),
            "{outcome}"
        );
    });
}

/// The order in which this pool's tasks ran, counted in shared memory (set by `stamp_init`).
static ORDER: std::sync::OnceLock<mp_core::Shared<std::sync::atomic::AtomicU64>> =
    std::sync::OnceLock::new();

fn stamp_init(order: mp_core::Shared<std::sync::atomic::AtomicU64>) {
    let _ = ORDER.set(order);
}

/// The position of this task in the run order.
fn stamp(_: u64) -> u64 {
    ORDER.get().map_or(u64::MAX, |o| {
        o.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    })
}

/// Work is taken in the order it was submitted: a call made while an earlier call's chunks
/// still wait for room in the task queue goes behind them, not into the first room that
/// frees (issue 20 F6).
#[test]
fn submission_is_fifo_behind_a_backlog() {
    use std::sync::atomic::AtomicU64;
    watchdog(120, || {
        for m in METHODS {
            let order = mp_core::Shared::new(AtomicU64::new(0)).unwrap();
            // One worker: tasks run in the order they are taken from the queue.
            let p = Pool::builder()
                .processes(1)
                .start_method(m)
                .initializer(stamp_init, order)
                .build()
                .unwrap();
            let nap = p.apply_async(nap_ms, 300).unwrap();
            // More chunks than the task queue holds: the rest waits in the parent.
            let n = 100_000u64;
            let map = p.chunksize(1).map_async(stamp, 0..n).unwrap();
            let mut later = Vec::new();
            for k in 0..100 {
                later.push(p.apply_async(stamp, k).unwrap());
                std::thread::sleep(Duration::from_millis(5));
            }
            nap.get().unwrap();
            let last_of_map = map.get().unwrap().into_iter().max().unwrap();
            for (k, r) in later.into_iter().enumerate() {
                let at = r.get().unwrap();
                assert!(
                    at > last_of_map,
                    "call {k} ran at {at}, before the map ended at {last_of_map}"
                );
            }
            p.close();
            p.join().unwrap();
        }
    });
}

/// `apply_async` in a loop against a pool that takes nothing (its worker is stuck) does not
/// queue without limit: past the backlog bound the call waits for room, and `terminate`
/// ends that wait with `Terminated` (issue 20 F6).
#[test]
fn async_submission_is_bounded() {
    use std::sync::atomic::{AtomicU64, Ordering};
    watchdog(120, || {
        let p = pool(StartMethod::Fork, 1);
        let _stuck = p.apply_async(nap_ms, 600_000).unwrap();
        let submitted = AtomicU64::new(0);
        let total = 400_000u64;
        std::thread::scope(|s| {
            let caller = s.spawn(|| {
                for i in 0..total {
                    match p.apply_async(square, i) {
                        Ok(_) => submitted.fetch_add(1, Ordering::SeqCst),
                        Err(e) => return Some(e),
                    };
                }
                None
            });
            // Wait until the caller is held (its count stops moving) or done.
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_millis(300));
                let now = submitted.load(Ordering::SeqCst);
                if now == last || caller.is_finished() {
                    break;
                }
                last = now;
            }
            assert!(
                submitted.load(Ordering::SeqCst) < total,
                "every one of {total} calls was queued: no bound"
            );
            p.terminate();
            match caller.join().unwrap() {
                Some(Error::Terminated) => {}
                other => panic!("{other:?}"),
            }
        });
    });
}

fn len_of(v: Vec<u8>) -> u64 {
    v.len() as u64
}

/// Issue 20 F6: the bytes of large task chunks waiting in shared memory are bounded by
/// `max_in_flight_bytes`. A map over items larger than half the ring (they travel beside it)
/// goes on with the budget far below its whole input (puts wait for the workers, as for a full
/// ring), and one chunk larger than the whole budget fails at once with `SharedMemory` instead
/// of being copied into /dev/shm.
#[test]
fn large_items_stay_within_the_in_flight_budget() {
    watchdog(120, || {
        for m in METHODS {
            let p = Pool::builder()
                .processes(2)
                .start_method(m)
                .max_in_flight_bytes(2 << 20)
                .build()
                .unwrap();
            // 40 items of 512 KiB: 20 MiB of input through a 2 MiB budget.
            let items: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 512 << 10]).collect();
            let lens = p.chunksize(1).map(len_of, items).unwrap();
            assert_eq!(lens, vec![512 << 10; 40], "{m}");
            match p.apply(len_of, vec![7u8; 4 << 20]) {
                Err(Error::SharedMemory { .. }) => {}
                other => panic!("{m}: a 4 MiB chunk through a 2 MiB budget gave {other:?}"),
            }
            // The pool goes on.
            assert_eq!(p.apply(square, 9).unwrap(), 81);
            p.close();
            p.join().unwrap();
        }
    });
}
