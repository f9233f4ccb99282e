//! Workers' lives: the initializer, max_tasks_per_child, backpressure of imap on an endless
//! input, and Ctrl-C (SIGINT to the process group) during a map.

mp_process::test_support!();

mod common;
use common::watchdog;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_core::Shared;
use mp_pool::{Error, Pool};
use mp_process::{Process, ProcessError, StartMethod};

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many times the initializer ran in this process.
static INITIALIZED: AtomicU32 = AtomicU32::new(0);

fn init(counter: Shared<AtomicU64>) {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
    counter.fetch_add(1, Ordering::SeqCst);
}

fn init_count_and_pid(_: u64) -> (u32, u32) {
    (INITIALIZED.load(Ordering::SeqCst), std::process::id())
}

fn bad_init(_: u32) {
    panic!("no database");
}

fn crashing_init(_: u32) {
    // SAFETY: kill(2) on ourselves; no memory is involved (SIGKILL: no core dump).
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

fn square(x: u64) -> u64 {
    x * x
}

fn square_and_pid(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn initializer_runs_once_per_worker() {
    watchdog(60, || {
        for m in METHODS {
            let counter = Shared::new(AtomicU64::new(0)).unwrap();
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(init, counter.clone())
                .build()
                .unwrap();
            let got = pool.chunksize(1).map(init_count_and_pid, 0..40).unwrap();
            // Every task ran in a worker that had run the initializer exactly once.
            assert!(got.iter().all(|(n, _)| *n == 1), "{got:?}");
            let pids: std::collections::HashSet<u32> = got.iter().map(|(_, p)| *p).collect();
            assert!(pids.iter().all(|p| pool.worker_pids().contains(p)));
            wait_until("both initializers", 10, || {
                counter.load(Ordering::SeqCst) == 2
            });
            pool.close();
            pool.join().unwrap();
            assert_eq!(counter.load(Ordering::SeqCst), 2);
            assert_eq!(INITIALIZED.load(Ordering::SeqCst), 0, "never in the parent");
        }
    });
}

#[test]
fn failing_initializer_breaks_the_pool_without_hanging() {
    watchdog(60, || {
        for m in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(bad_init, 0)
                .build()
                .unwrap();
            match pool.map(square, 0..10) {
                Err(Error::Initializer(msg)) => assert!(msg.contains("no database"), "{msg}"),
                other => panic!("{other:?}"),
            }
            assert!(matches!(pool.apply(square, 1), Err(Error::Initializer(_))));
            pool.close();
            pool.join().unwrap();
            // An initializer that crashes the worker (Python restarts it forever).
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(crashing_init, 0)
                .build()
                .unwrap();
            match pool.map(square, 0..10) {
                Err(Error::Initializer(msg)) => assert!(msg.contains("signal 9"), "{msg}"),
                other => panic!("{other:?}"),
            }
            pool.terminate();
        }
    });
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    watchdog(60, || {
        for m in METHODS {
            let counter = Shared::new(AtomicU64::new(0)).unwrap();
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .max_tasks_per_child(3)
                .initializer(init, counter.clone())
                .build()
                .unwrap();
            let first = pool.worker_pids();
            let got = pool.chunksize(1).map(square_and_pid, 0..30).unwrap();
            for (i, (v, _)) in got.iter().enumerate() {
                assert_eq!(*v, (i * i) as u64);
            }
            let pids: std::collections::HashSet<u32> = got.iter().map(|(_, p)| *p).collect();
            // 30 tasks, at most 3 per worker: at least 10 different workers ran them.
            assert!(pids.len() >= 10, "{} workers ran 30 tasks", pids.len());
            assert!(counter.load(Ordering::SeqCst) >= 10);
            wait_until("the first workers to be replaced", 10, || {
                let now = pool.worker_pids();
                now.len() == 2 && now.iter().all(|p| !first.contains(p))
            });
            // Still correct through imap too.
            let v: Vec<u64> = pool
                .imap(square, 0..20)
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(v, (0..20).map(|x| x * x).collect::<Vec<u64>>());
            pool.close();
            pool.join().unwrap();
        }
    });
}

#[test]
fn endless_input_through_imap_stays_bounded() {
    watchdog(60, || {
        for m in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .unwrap();
            for (chunksize, in_flight) in [(1, 4), (10, 3)] {
                let pulled = Arc::new(AtomicU64::new(0));
                let p2 = pulled.clone();
                let endless = (0u64..).inspect(move |_| {
                    p2.fetch_add(1, Ordering::Relaxed);
                });
                let mut it = pool
                    .chunksize(chunksize)
                    .in_flight(in_flight)
                    .imap(square, endless)
                    .unwrap();
                for i in 0..2_000u64 {
                    assert_eq!(it.next().unwrap().unwrap(), i * i);
                    let ahead = pulled.load(Ordering::Relaxed) - (i + 1);
                    assert!(
                        ahead <= (chunksize * (in_flight + 1)) as u64,
                        "read {ahead} items ahead of the consumer"
                    );
                }
                // Unordered too.
                let pulled = Arc::new(AtomicU64::new(0));
                let p2 = pulled.clone();
                let endless = (0u64..).inspect(move |_| {
                    p2.fetch_add(1, Ordering::Relaxed);
                });
                let it = pool
                    .chunksize(chunksize)
                    .in_flight(in_flight)
                    .imap_unordered(square, endless)
                    .unwrap();
                assert_eq!(it.take(500).filter(|r| r.is_ok()).count(), 500);
                assert!(
                    pulled.load(Ordering::Relaxed) <= 500 + (chunksize * (in_flight + 1)) as u64
                );
            }
            // Dropping an unfinished imap leaves the pool usable and joinable.
            assert_eq!(pool.map(square, [3]).unwrap(), [9]);
            pool.close();
            pool.join().unwrap();
            // An imap outliving its pool: the pool's drop terminates it, the iterator ends.
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .unwrap();
            let mut it = pool.in_flight(2).imap(square, 0u64..).unwrap();
            assert_eq!(it.next().unwrap().unwrap(), 0);
            drop(pool);
            let mut rest = 0;
            loop {
                match it.next() {
                    Some(Ok(_)) => rest += 1,
                    Some(Err(Error::Terminated)) => break,
                    other => panic!("{other:?}"),
                }
                assert!(rest <= 4, "only what was in flight may still come");
            }
            assert!(it.next().is_none());
        }
    });
}

/// Program run in a child that leads its own process group: a pool whose workers' pids go
/// to `dir/pids`, then a long map. With `handler`, SIGINT is caught and the map's outcome is
/// written to `dir/outcome`.
fn ctrl_c_program(args: (String, bool, bool)) {
    let (dir, spawn_workers, handler) = args;
    let dir = PathBuf::from(dir);
    // SAFETY: setpgid on ourselves; no memory is involved.
    unsafe { libc::setpgid(0, 0) };
    if handler {
        extern "C" fn on_sigint(_: libc::c_int) {}
        // SAFETY: the handler is async-signal-safe (it does nothing).
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    } else {
        // A program at a terminal: Ctrl-C kills it. The disposition is set, not inherited,
        // because a test run started in the background (`cmd &` in a script) ignores SIGINT,
        // and an ignored signal stays ignored across exec.
        // SAFETY: SIG_DFL is always a valid disposition.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    }
    let m = if spawn_workers {
        StartMethod::Spawn
    } else {
        StartMethod::Fork
    };
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let pids: Vec<String> = pool.worker_pids().iter().map(|p| p.to_string()).collect();
    std::fs::write(dir.join("pids.tmp"), pids.join(",")).unwrap();
    std::fs::rename(dir.join("pids.tmp"), dir.join("pids")).unwrap();
    let r = pool.chunksize(1).map(nap_ms, vec![30_000u64; 4]);
    std::fs::write(dir.join("outcome"), format!("{r:?}")).unwrap();
}

fn read_pids(dir: &Path) -> Vec<u32> {
    let mut s = String::new();
    wait_until("the program's pool", 20, || {
        s = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
        !s.is_empty()
    });
    s.split(',').map(|p| p.parse().unwrap()).collect()
}

#[test]
fn ctrl_c_during_map_returns_promptly_and_leaves_no_orphans() {
    watchdog(120, || {
        // Every start method behaves the same (issue 13 item 11): with a handler in the
        // program, fork workers do not keep it (they die of SIGINT, as spawn workers do).
        for (spawn_workers, handler) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let dir = std::env::temp_dir().join(format!(
                "mp-pool-ctrlc-{}-{spawn_workers}-{handler}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut prog = Process::new(
                ctrl_c_program,
                (dir.to_string_lossy().into_owned(), spawn_workers, handler),
            )
            .start_method(StartMethod::Spawn)
            .start()
            .unwrap();
            let pids = read_pids(&dir);
            assert_eq!(pids.len(), 2);
            std::thread::sleep(Duration::from_millis(200)); // the map is under way
            let t0 = Instant::now();
            // Ctrl-C: SIGINT to the whole process group.
            nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(prog.pid() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
            let r = prog.join_timeout(Duration::from_secs(10));
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "took {:?}",
                t0.elapsed()
            );
            if handler {
                // The program survives Ctrl-C; its map fails with the lost workers at once.
                assert!(matches!(r, Ok(Some(()))), "{r:?}");
                let outcome = std::fs::read_to_string(dir.join("outcome")).unwrap();
                assert!(
                    outcome.contains("WorkerLost") && outcome.contains("signal: Some(2)"),
                    "{outcome}"
                );
            } else {
                assert!(
                    matches!(r, Err(ProcessError::Signaled { signal: 2, .. })),
                    "{r:?}"
                );
                assert!(!dir.join("outcome").exists());
            }
            wait_until("the workers to be gone", 3, || {
                pids.iter().all(|p| !alive(*p))
            });
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

/// After `terminate`, an `imap` over an endless input yields what had already come, then
/// one `Err(Terminated)`, then ends; it reads no more input (issue 20 F1, issue 13 item 12).
#[test]
fn imap_after_terminate_ends_after_one_terminated() {
    watchdog(60, || {
        for m in METHODS {
            for ordered in [true, false] {
                let pool = Pool::builder()
                    .processes(2)
                    .start_method(m)
                    .build()
                    .unwrap();
                let pulled = Arc::new(AtomicU64::new(0));
                let p2 = pulled.clone();
                let endless = (0u64..).inspect(move |_| {
                    p2.fetch_add(1, Ordering::Relaxed);
                });
                let mut it = if ordered {
                    pool.in_flight(4).imap(square, endless).unwrap()
                } else {
                    pool.in_flight(4).imap_unordered(square, endless).unwrap()
                };
                assert!(it.next().unwrap().is_ok());
                pool.terminate();
                let read = pulled.load(Ordering::Relaxed);
                let mut terminated = 0;
                for step in 0.. {
                    assert!(step < 100, "the iterator goes on after terminate");
                    match it.next() {
                        Some(Ok(_)) => assert_eq!(terminated, 0, "a value after Terminated"),
                        Some(Err(Error::Terminated)) => terminated += 1,
                        Some(Err(e)) => panic!("{e:?}"),
                        None => break,
                    }
                }
                assert_eq!(terminated, 1);
                assert!(it.next().is_none(), "ended for good");
                assert!(
                    pulled.load(Ordering::Relaxed) <= read + 1,
                    "input read after terminate"
                );
            }
        }
    });
}

/// Waits (at most 20 s) for `go` to be set, then crashes the worker.
fn crash_on_go(go: Shared<AtomicU64>) {
    let t0 = Instant::now();
    while go.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on ourselves; no memory is involved (SIGKILL: no core dump).
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// A pool broken by its initializer (a crash in every worker) while it holds far more
/// chunks than the task queue does: the blocking map returns the initializer's error, the
/// feeder of an `_async` map stops, and `join` returns (issue 20 F2).
#[test]
fn broken_pool_does_not_hang_a_big_map_the_feeder_or_join() {
    watchdog(90, || {
        for m in METHODS {
            let go = Shared::new(AtomicU64::new(0)).unwrap();
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(crash_on_go, go.clone())
                .build()
                .unwrap();
            // Fills the task queue (nobody takes a task: the workers are in their
            // initializer); the rest waits in the feeder.
            let pending = pool.chunksize(1).map_async(square, 0..400_000u64).unwrap();
            // The workers crash while the blocking map below waits for room.
            let trigger = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                go.store(1, Ordering::SeqCst);
            });
            match pool.chunksize(1).map(square, 0..400_000u64) {
                Err(Error::Initializer(msg)) => assert!(msg.contains("signal 9"), "{msg}"),
                other => panic!("{other:?}"),
            }
            trigger.join().unwrap();
            assert!(matches!(pending.get(), Err(Error::Initializer(_))));
            pool.close();
            pool.join().unwrap();
        }
    });
}

/// The start number of this worker's initializer (see `flaky_init`).
static INIT_N: AtomicU64 = AtomicU64::new(u64::MAX);
/// `flaky_init`'s `go` flag, kept by the worker for `signal_go`.
static GO: std::sync::OnceLock<Shared<AtomicU64>> = std::sync::OnceLock::new();

/// Panics in the first worker only.
fn panics_first(counter: Shared<AtomicU64>) {
    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("the first worker's initializer panics");
    }
}

/// Starts number 1 and 2 crash; start 3 succeeds; start 4 waits for `go` (set by a task of
/// start 3, after it completed its initializer), then crashes; the others succeed.
fn flaky_init(st: (Shared<AtomicU64>, Shared<AtomicU64>)) {
    let (counter, go) = st;
    let n = counter.fetch_add(1, Ordering::SeqCst);
    INIT_N.store(n, Ordering::SeqCst);
    let go = GO.get_or_init(|| go);
    if n == 4 {
        let t0 = Instant::now();
        while go.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if matches!(n, 1 | 2 | 4) {
        // SAFETY: kill(2) on ourselves; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn signal_go(_: u64) -> u64 {
    let n = INIT_N.load(Ordering::SeqCst);
    if let (3, Some(go)) = (n, GO.get()) {
        go.store(1, Ordering::SeqCst);
    }
    n
}

/// One rule for initializer failures, panics and crashes alike: the pool breaks after
/// three in a row, and an initializer that completes resets the count (issue 20 F10).
#[test]
fn initializer_failures_follow_one_rule() {
    watchdog(90, || {
        for m in METHODS {
            // One panic among successes does not break the pool (a crash did not either).
            let counter = Shared::new(AtomicU64::new(0)).unwrap();
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(panics_first, counter.clone())
                .build()
                .unwrap();
            assert_eq!(pool.chunksize(1).map(square, 0..20).unwrap().len(), 20);
            pool.close();
            pool.join().unwrap();

            // Crashes 1, 2 and 4 are not three in a row: start 3 succeeded in between.
            let counter = Shared::new(AtomicU64::new(0)).unwrap();
            let go = Shared::new(AtomicU64::new(0)).unwrap();
            let pool = Pool::builder()
                .processes(3)
                .start_method(m)
                .initializer(flaky_init, (counter.clone(), go.clone()))
                .build()
                .unwrap();
            let mut rounds = 0;
            while counter.load(Ordering::SeqCst) < 6 {
                rounds += 1;
                assert!(rounds < 5_000, "start 5 never came");
                if let Err(e) = pool.chunksize(1).map(signal_go, [0, 1, 2]) {
                    panic!("round {rounds}: {e:?}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(pool.map(square, [5]).unwrap(), [25]);
            pool.close();
            pool.join().unwrap();
        }
    });
}
