//! CONFORMANCE.md L1–L5 for the pool, with real worker processes under fork and spawn.

mp_process::test_support!();

mod common;
use common::watchdog;

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mp_core::Shared;
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

fn mul(a: u64, b: u64) -> u64 {
    a * b
}

fn boom(x: u64) -> u64 {
    if x == 5 {
        panic!("boom at {x}");
    }
    x
}

fn parse(s: String) -> Result<u64, std::num::ParseIntError> {
    s.parse()
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Returns a shared handle: it cannot travel through a queue, so the result cannot be
/// serialized.
fn unsendable(_: u64) -> Shared<AtomicU64> {
    Shared::new(AtomicU64::new(1)).unwrap()
}

fn takes_shared(s: Shared<AtomicU64>) -> u64 {
    s.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes this worker's pid to `path` when `x` is 3, then sleeps long; other items return
/// at once.
fn victim(args: (u64, String)) -> u64 {
    if args.0 == 3 {
        std::fs::write(&args.1, std::process::id().to_string()).unwrap();
        std::thread::sleep(Duration::from_secs(60));
    }
    args.0 * 10
}

fn exits(code: i32) -> i32 {
    std::process::exit(code)
}

fn segfaults(_: u8) -> u8 {
    // SAFETY: signal(2) and raise(3) have no memory-safety preconditions; the point is to die
    // of SIGSEGV as a buggy task would (std's own SIGSEGV handler would let `raise` return).
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    0
}

fn big(n: usize) -> Vec<u8> {
    vec![(n % 251) as u8; n]
}

fn total(v: Vec<u8>) -> u64 {
    v.iter().map(|&b| b as u64).sum()
}

#[test]
fn big_arguments_and_results() {
    watchdog(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            // Larger than half the queues' rings: they take the side path of mp-queue.
            let sizes = [3 << 20, 5, 6 << 20, 0];
            let got = p.chunksize(1).map(big, sizes).unwrap();
            for (v, n) in got.iter().zip(sizes) {
                assert_eq!(v.len(), n);
                assert!(v.iter().all(|&b| b == (n % 251) as u8));
            }
            let sums = p.map(total, got).unwrap();
            assert_eq!(sums[0], (3u64 << 20) * ((3 << 20) % 251) as u64);
        }
    });
}

#[test]
fn workers_that_exit_or_crash_mid_task() {
    watchdog(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            match p.apply(exits, 3) {
                Err(Error::WorkerLost {
                    signal: None,
                    exitcode: Some(3),
                    ..
                }) => {}
                other => panic!("{other:?}"),
            }
            match p.apply(segfaults, 0) {
                Err(Error::WorkerLost {
                    signal: Some(11), ..
                }) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(p.map(square, 0..5).unwrap(), [0, 1, 4, 9, 16]);
        }
    });
}

#[test]
fn l1_ordered_results() {
    watchdog(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let want: Vec<u64> = (0..10).map(|x| x * x).collect();
            assert_eq!(p.map(square, 0..10).unwrap(), want);
            let want: Vec<u64> = (0..100).map(|x| x * x).collect();
            assert_eq!(p.chunksize(20).map(square, 0..100).unwrap(), want);
            assert_eq!(p.map_async(square, 0..100).unwrap().get().unwrap(), want);
            let pairs: Vec<(u64, u64)> = (0..10).map(|i| (i, i + 1)).collect();
            let want: Vec<u64> = pairs.iter().map(|(a, b)| a * b).collect();
            assert_eq!(p.starmap(mul, pairs.clone()).unwrap(), want);
            assert_eq!(p.starmap_async(mul, pairs).unwrap().get().unwrap(), want);
            for cs in [1, 100] {
                let mut it = p.chunksize(cs).imap(square, 0..100).unwrap();
                for i in 0..100u64 {
                    assert_eq!(it.next().unwrap().unwrap(), i * i);
                }
                assert!(it.next().is_none());
                assert!(it.next().is_none());
                let mut got: Vec<u64> = p
                    .chunksize(cs)
                    .imap_unordered(square, 0..100)
                    .unwrap()
                    .map(|r| r.unwrap())
                    .collect();
                got.sort();
                assert_eq!(got, (0..100).map(|x| x * x).collect::<Vec<u64>>());
            }
            // Empty input: empty output, from every variant.
            let none: Vec<u64> = Vec::new();
            assert!(p.map(square, none.clone()).unwrap().is_empty());
            assert!(p
                .map_async(square, none.clone())
                .unwrap()
                .get()
                .unwrap()
                .is_empty());
            assert!(p.starmap(mul, Vec::new()).unwrap().is_empty());
            assert!(p.imap(square, none.clone()).unwrap().next().is_none());
            assert!(p.imap_unordered(square, none).unwrap().next().is_none());
            assert_eq!(p.apply(square, 9).unwrap(), 81);
            assert_eq!(p.apply_async(square, 8).unwrap().get().unwrap(), 64);
        }
    });
}

#[test]
fn l2_task_errors_keep_the_pool_usable() {
    watchdog(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let pids = p.worker_pids();
            match p.map(boom, 0..10) {
                Err(Error::Panicked { message, .. }) => {
                    assert!(message.contains("boom at 5"), "{message}")
                }
                other => panic!("{other:?}"),
            }
            match p.chunksize(1).map(boom, 0..10) {
                Err(Error::Panicked {
                    message, location, ..
                }) => {
                    assert_eq!(message, "boom at 5");
                    assert!(location.contains("conformance.rs:"), "{location}");
                }
                other => panic!("{other:?}"),
            }
            // The pool is still usable, and no worker was lost to a panic.
            assert_eq!(p.map(square, 0..4).unwrap(), [0, 1, 4, 9]);
            match p.try_map(parse, ["1".to_string(), "x".to_string()]) {
                Err(Error::Failed { message }) => {
                    assert!(message.contains("invalid digit"), "{message}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(p.try_map(parse, ["7".to_string()]).unwrap(), [7]);
            match p.try_apply(parse, "-".to_string()) {
                Err(Error::Failed { .. }) => {}
                other => panic!("{other:?}"),
            }
            match p.apply(boom, 5) {
                Err(e @ Error::Panicked { .. }) => assert!(e.to_string().contains("boom at 5")),
                other => panic!("{other:?}"),
            }
            // An imap yields the failed chunk's error in its place and goes on.
            let r: Vec<Result<u64, Error>> = p.imap(boom, 0..8).unwrap().collect();
            assert_eq!(r.len(), 8);
            assert!(matches!(r[5], Err(Error::Panicked { .. })));
            assert_eq!(r[7].as_ref().unwrap(), &7);
            // A result that cannot be serialized: an error, twenty times, no worker lost.
            for _ in 0..20 {
                match p.apply(unsendable, 1) {
                    Err(Error::Unserializable { what: "result", .. }) => {}
                    other => panic!("{other:?}"),
                }
            }
            // Arguments that cannot be serialized: an error in the parent.
            let s = Shared::new(AtomicU64::new(0)).unwrap();
            match p.map(takes_shared, vec![s.clone()]) {
                Err(Error::Unserializable {
                    what: "arguments", ..
                }) => {}
                other => panic!("{other:?}"),
            }
            // Through imap, each such chunk is an error in its place, and the rest goes on.
            let mut it = p
                .chunksize(1)
                .imap(takes_shared, vec![s.clone(), s.clone(), s])
                .unwrap();
            for i in 0..3 {
                match it.next_timeout(Duration::from_secs(10)) {
                    Some(Err(Error::Unserializable {
                        what: "arguments", ..
                    })) => {}
                    other => panic!("chunk {i}: {other:?}"),
                }
            }
            assert!(it.next().is_none());
            drop(it);
            assert_eq!(
                p.worker_pids(),
                pids,
                "no worker may be lost to task errors"
            );
            assert_eq!(p.map(square, 0..3).unwrap(), [0, 1, 4]);
        }
    });
}

#[test]
fn l3_async_results() {
    watchdog(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let r = p.apply_async(nap_ms, 1500).unwrap();
            assert!(matches!(r.successful(), Err(Error::NotReady)));
            assert!(!r.ready());
            let t0 = Instant::now();
            assert!(matches!(
                r.get_timeout(Duration::from_millis(200)),
                Err(Error::Timeout)
            ));
            let el = t0.elapsed();
            assert!(
                el >= Duration::from_millis(200) && el < Duration::from_millis(2200),
                "{el:?}"
            );
            assert!(!r.wait_timeout(Duration::from_millis(10)));
            assert_eq!(r.get().unwrap(), 1500);
            assert!(r.ready());
            assert!(r.successful().unwrap());
            assert!(matches!(r.get(), Err(Error::AlreadyTaken)));

            // The success callback gets the whole list, in the parent.
            let (tx, rx) = mpsc::channel();
            let parent = std::process::id();
            let r = p
                .map_async(square, 0..10)
                .unwrap()
                .on_success(move |v: &Vec<u64>| tx.send((std::process::id(), v.clone())).unwrap());
            r.wait();
            let (pid, v) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(pid, parent);
            assert_eq!(v, (0..10).map(|x| x * x).collect::<Vec<u64>>());

            // The error callback gets the first error.
            let (tx, rx) = mpsc::channel();
            let r = p
                .chunksize(1)
                .map_async(boom, 0..10)
                .unwrap()
                .on_success(|_| panic!("must not run"))
                .on_error(move |e: &Error| tx.send(e.to_string()).unwrap());
            assert!(r.get().is_err());
            assert!(!r.successful().unwrap());
            let msg = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(msg.contains("boom at 5"), "{msg}");

            // imap's next_timeout.
            let mut it = p.imap(nap_ms, [1200, 1]).unwrap();
            let t0 = Instant::now();
            assert!(matches!(
                it.next_timeout(Duration::from_millis(100)),
                Some(Err(Error::Timeout))
            ));
            assert!(t0.elapsed() >= Duration::from_millis(100));
            assert_eq!(
                it.next_timeout(Duration::from_secs(10)).unwrap().unwrap(),
                1200
            );
            assert_eq!(it.next().unwrap().unwrap(), 1);
            assert!(it.next_timeout(Duration::from_secs(1)).is_none());
        }
    });
}

#[test]
fn l4_lifecycle() {
    watchdog(60, || {
        assert!(matches!(Pool::new(0), Err(Error::Config(_))));
        assert!(matches!(
            Pool::builder().processes(1).max_tasks_per_child(0).build(),
            Err(Error::Config(_))
        ));
        for m in METHODS {
            let p = pool(m, 2);
            assert!(matches!(p.join(), Err(Error::StillRunning)));
            assert!(matches!(
                p.chunksize(0).map(square, 0..3),
                Err(Error::Config(_))
            ));
            let pending = p.map_async(nap_ms, [300, 300, 300]).unwrap();
            p.close();
            assert!(matches!(p.map(square, 0..3), Err(Error::Closed)));
            assert!(matches!(p.apply_async(square, 1), Err(Error::Closed)));
            // join waits for the submitted work, then for the workers.
            let pids = p.worker_pids();
            p.join().unwrap();
            assert_eq!(pending.get().unwrap(), [300, 300, 300]);
            for pid in pids {
                assert!(!alive(pid), "worker {pid} still alive after join");
            }
            assert!(p.worker_pids().is_empty());
            p.join().unwrap();

            // terminate with 10_000 long tasks pending returns promptly.
            let p = pool(m, 2);
            let results: Vec<_> = (0..10_000)
                .map(|_| p.apply_async(nap_ms, 10_000).unwrap())
                .collect();
            let pids = p.worker_pids();
            let t0 = Instant::now();
            p.terminate();
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "terminate took {:?}",
                t0.elapsed()
            );
            assert!(matches!(results[0].get(), Err(Error::Terminated)));
            assert!(matches!(results[9_999].get(), Err(Error::Terminated)));
            assert!(matches!(p.apply(square, 1), Err(Error::Terminated)));
            assert!(matches!(p.map(square, 0..2), Err(Error::Terminated)));
            p.join().unwrap();
            for pid in pids {
                assert!(!alive(pid), "worker {pid} still alive after terminate");
            }

            // Drop terminates.
            let p = pool(m, 1);
            let r = p.apply_async(nap_ms, 10_000).unwrap();
            let pids = p.worker_pids();
            drop(p);
            assert!(matches!(r.get(), Err(Error::Terminated)));
            assert!(!alive(pids[0]));
        }
    });
}

fn alive(pid: u32) -> bool {
    // A zombie (reaped later by whoever adopted it) counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn l5_worker_killed_mid_task() {
    watchdog(60, || {
        for m in METHODS {
            let p = pool(m, 2);
            let path = std::env::temp_dir().join(format!(
                "mp-pool-l5-{}-{}",
                std::process::id(),
                m.as_str()
            ));
            let _ = std::fs::remove_file(&path);
            let items: Vec<(u64, String)> = (0..8)
                .map(|i| (i, path.to_string_lossy().into_owned()))
                .collect();
            let r = p.chunksize(1).map_async(victim, items.clone()).unwrap();
            // Task 3 writes its worker's pid, then sleeps.
            let t0 = Instant::now();
            let pid: u32 = loop {
                if let Ok(s) = std::fs::read_to_string(&path) {
                    if let Ok(pid) = s.parse() {
                        break pid;
                    }
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "task 3 never started"
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            let _ = std::fs::remove_file(&path);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            // The map's task 3 ran first (it was submitted first): the map fails with WorkerLost.
            match r.get_timeout(Duration::from_secs(20)) {
                Err(Error::WorkerLost {
                    pid: p2, signal, ..
                }) => {
                    assert_eq!(p2, pid);
                    assert_eq!(signal, Some(9));
                }
                other => panic!("{other:?}"),
            }
            // Now an imap (lazy: its first `next` submits the first chunks).
            let mut it = p.chunksize(1).imap(victim, items).unwrap();
            assert_eq!(it.next().unwrap().unwrap(), 0);
            let t0 = Instant::now();
            let pid2: u32 = loop {
                if let Ok(s) = std::fs::read_to_string(&path) {
                    if let Ok(pid) = s.parse() {
                        break pid;
                    }
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "imap task 3 never started"
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            let _ = std::fs::remove_file(&path);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid2 as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let got: Vec<Result<u64, Error>> = std::iter::once(Ok(0)).chain(it.by_ref()).collect();
            assert_eq!(got.len(), 8);
            for (i, g) in got.iter().enumerate() {
                if i == 3 {
                    assert!(
                        matches!(g, Err(Error::WorkerLost { pid, signal: Some(9), .. }) if *pid == pid2),
                        "{g:?}"
                    );
                } else {
                    assert_eq!(g.as_ref().unwrap(), &(i as u64 * 10));
                }
            }
            // The dead workers were replaced and the pool works.
            let t0 = Instant::now();
            loop {
                let now = p.worker_pids();
                if now.len() == 2 && !now.contains(&pid) && !now.contains(&pid2) {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "workers not replaced: {now:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(p.map(square, 0..20).unwrap()[19], 361);
        }
    });
}
