//! Task timeouts (mpire's `task_timeout` and `worker_init_timeout`) and insights, with real
//! worker processes under fork and spawn. Only "the timeout happened" is asserted, never how
//! long anything took.

mp_process::test_support!();

mod common;
use common::watchdog;

use std::time::{Duration, Instant};

use mp_pool::{Error, Pool};
use mp_process::StartMethod;

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

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn square(x: u64) -> u64 {
    x * x
}

/// Blocks every signal and ignores SIGTERM, then sleeps: only SIGKILL can stop it.
fn stubborn(ms: u64) -> u64 {
    // SAFETY: a full set initialized by sigfillset, installed as this thread's mask; the
    // worker runs tasks on this one thread.
    unsafe {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_BLOCK, all.as_ptr(), std::ptr::null_mut());
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    nap_ms(ms)
}

fn hanging_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn pool(m: StartMethod, n: usize) -> Pool {
    Pool::builder()
        .processes(n)
        .start_method(m)
        .build()
        .unwrap()
}

/// A task that sleeps past its call's timeout fails with `TaskTimeout` naming the worker,
/// which is killed and replaced; the other tasks of the batch succeed, and the pool goes on.
#[test]
fn a_task_past_its_timeout_fails_with_its_pid_and_the_others_succeed() {
    watchdog(120, || {
        for m in METHODS {
            let p = pool(m, 2);
            let before = p.worker_pids();
            let results: Vec<Result<u64, Error>> = p
                .timeout(Duration::from_millis(300))
                .imap_unordered(nap_ms, [1, 60_000, 2, 3, 4])
                .unwrap()
                .collect();
            let ok: Vec<u64> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .collect();
            assert_eq!(ok.len(), 4, "{m}: {results:?}");
            let pids: Vec<u32> = results
                .iter()
                .filter_map(|r| match r {
                    Err(Error::TaskTimeout { pid, timeout }) => {
                        assert_eq!(*timeout, Duration::from_millis(300));
                        Some(*pid)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(pids.len(), 1, "{m}: {results:?}");
            assert!(
                before.contains(&pids[0]),
                "{m}: the pid of a worker of the pool"
            );
            wait_until("the killed worker to be gone", 10, || !alive(pids[0]));
            wait_until("a replacement", 10, || p.worker_pids().len() == 2);
            assert!(!p.worker_pids().contains(&pids[0]));
            assert_eq!(p.apply(square, 7).unwrap(), 49);
        }
    });
}

/// The pool default (`task_timeout`) applies to every call; a call can set its own; a
/// `map` fails with the timeout; tasks within the timeout are not stopped.
#[test]
fn the_pool_default_timeout_applies_and_a_call_can_override_it() {
    watchdog(120, || {
        for m in METHODS {
            let p = Pool::builder()
                .processes(2)
                .start_method(m)
                .task_timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            let r = p.chunksize(1).map(nap_ms, [1, 60_000]);
            assert!(matches!(r, Err(Error::TaskTimeout { .. })), "{m}: {r:?}");
            // A batch of apply_async: only the slow one fails.
            let rs: Vec<_> = [2, 60_000, 3]
                .into_iter()
                .map(|ms| p.apply_async(nap_ms, ms).unwrap())
                .collect();
            let outs: Vec<_> = rs.iter().map(|r| r.get()).collect();
            assert!(
                matches!(outs[0], Ok(2)) && matches!(outs[2], Ok(3)),
                "{outs:?}"
            );
            assert!(
                matches!(outs[1], Err(Error::TaskTimeout { .. })),
                "{outs:?}"
            );
            // Per item: each item of a chunk has its own deadline, so a chunk whose items
            // together take longer than the timeout is not stopped (each is far within it).
            let quick = p
                .timeout(Duration::from_secs(1))
                .chunksize(12)
                .map(nap_ms, [100; 12]);
            assert_eq!(quick.unwrap(), [100; 12]);
            let p2 = p.timeout(Duration::from_millis(300));
            let r = p2.chunksize(3).map(nap_ms, [1, 1, 60_000]);
            assert!(matches!(r, Err(Error::TaskTimeout { .. })), "{m}: {r:?}");
            assert!(matches!(
                p.timeout(Duration::ZERO).map(square, [1]),
                Err(Error::Config(_))
            ));
            p.close();
            p.join().unwrap();
        }
    });
}

/// A task that blocks every signal and ignores SIGTERM is still stopped (SIGKILL).
#[test]
fn a_task_that_blocks_signals_is_still_stopped() {
    watchdog(120, || {
        for m in METHODS {
            let p = pool(m, 1);
            let r = p
                .timeout(Duration::from_millis(300))
                .apply(stubborn, 60_000);
            match r {
                Err(Error::TaskTimeout { pid, .. }) => {
                    wait_until("the stubborn worker to die", 10, || !alive(pid))
                }
                other => panic!("{m}: {other:?}"),
            }
            assert_eq!(p.apply(square, 3).unwrap(), 9);
        }
    });
}

/// An initializer that hangs past `worker_init_timeout` breaks the pool: the pending call
/// fails with `InitTimeout` (it does not hang), new work is refused with it, and `join`
/// returns.
#[test]
fn an_initializer_past_its_timeout_fails_the_pool_instead_of_hanging() {
    watchdog(120, || {
        for m in METHODS {
            let p = Pool::builder()
                .processes(2)
                .start_method(m)
                .initializer(hanging_init, 60_000)
                .worker_init_timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            let pids = p.worker_pids();
            let r = p.map(square, 0..10);
            match r {
                Err(Error::InitTimeout { pid, timeout }) => {
                    assert!(pids.contains(&pid), "{m}: {pid} in {pids:?}");
                    assert_eq!(timeout, Duration::from_millis(300));
                }
                other => panic!("{m}: {other:?}"),
            }
            assert!(matches!(p.apply(square, 1), Err(Error::InitTimeout { .. })));
            p.close();
            p.join().unwrap();
            for pid in pids {
                wait_until("the workers to be gone", 10, || !alive(pid));
            }
            // An initializer within its timeout is not stopped.
            let ok = Pool::builder()
                .processes(1)
                .start_method(m)
                .initializer(hanging_init, 1)
                .worker_init_timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            assert_eq!(ok.map(square, [2, 3]).unwrap(), [4, 9]);
        }
    });
}

/// Insights count the tasks each worker place did (replaced workers included); the total
/// is the number of tasks run, and the table prints a row per place.
#[test]
fn insights_count_the_tasks_of_each_worker() {
    watchdog(120, || {
        for m in METHODS {
            assert!(pool(m, 1).insights().is_none(), "off unless asked for");
            let p = Pool::builder()
                .processes(2)
                .start_method(m)
                .insights(true)
                .max_tasks_per_child(4)
                .build()
                .unwrap();
            let v = p.chunksize(7).map(square, 0..200).unwrap();
            assert_eq!(v.len(), 200);
            assert_eq!(p.apply(nap_ms, 2).unwrap(), 2);
            p.close();
            p.join().unwrap();
            let i = p.insights().unwrap();
            assert_eq!(i.workers.len(), 2);
            assert_eq!(i.tasks(), 201, "{m}:\n{i}");
            let chunks: u64 = i.workers.iter().map(|w| w.chunks).sum();
            assert_eq!(chunks, 200u64.div_ceil(7) + 1);
            // 30 chunks, at most 4 per worker: places were taken over by new workers.
            let started: u64 = i.workers.iter().map(|w| w.started).sum();
            assert!(started >= 8, "{m}: {started}");
            assert!(!i.slowest.is_empty() && i.slowest.len() <= 5);
            assert!(i.workers.iter().all(|w| w.starting > Duration::ZERO));
            let table = i.to_string();
            assert_eq!(table.lines().filter(|l| l.contains("total")).count(), 1);
            assert!(table.contains("slowest tasks"), "{table}");
        }
    });
}

/// Writes the file `path` (the task has started), then sleeps for a minute.
fn mark_and_nap(path: String) -> u64 {
    std::fs::write(&path, b"started").unwrap();
    nap_ms(60_000)
}

/// A worker killed by someone else while its task has a (long) timeout is a lost worker,
/// not a timeout; the insights keep what it did before and go on with its replacement.
#[test]
fn a_worker_killed_by_someone_else_is_lost_not_timed_out() {
    watchdog(120, || {
        for m in METHODS {
            let dir =
                std::env::temp_dir().join(format!("mp-pool-ptime-{}-{m}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let marker = dir.join("started");
            let p = Pool::builder()
                .processes(1)
                .start_method(m)
                .insights(true)
                .task_timeout(Duration::from_secs(600))
                .build()
                .unwrap();
            assert_eq!(p.chunksize(1).map(square, 0..10).unwrap().len(), 10);
            let r = p
                .apply_async(mark_and_nap, marker.to_string_lossy().into_owned())
                .unwrap();
            wait_until("the task to start", 30, || marker.exists());
            let pid = p.worker_pids()[0];
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            match r.get() {
                Err(Error::WorkerLost {
                    pid: lost,
                    signal: Some(9),
                    ..
                }) => assert_eq!(lost, pid),
                other => panic!("{m}: {other:?}"),
            }
            assert_eq!(p.apply(square, 5).unwrap(), 25);
            let i = p.insights().unwrap();
            assert_eq!(i.tasks(), 11, "{m}:\n{i}");
            assert_eq!(i.workers[0].started, 2);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    });
}

/// A `FnPool` (a closure under fork) takes a per-call timeout too.
#[test]
fn a_closure_pool_task_past_its_timeout_is_stopped() {
    watchdog(60, || {
        let extra = 1u64;
        let p = Pool::builder()
            .processes(1)
            .build_with(move |ms: u64| nap_ms(ms) + extra)
            .unwrap();
        let r = p.timeout(Duration::from_millis(300)).apply(60_000);
        assert!(matches!(r, Err(Error::TaskTimeout { .. })), "{r:?}");
        assert_eq!(p.apply(1).unwrap(), 2);
    });
}
