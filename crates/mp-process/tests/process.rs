//! Process across real children, under every start method (CONFORMANCE.md P1–P7).
//!
//! Fork children here do only what the crate doc's "Fork and threads" allows in a threaded
//! parent (compute, allocate, use shared atomics, return, panic); tests whose children do
//! more (start children of their own, run many) are `isolate!`d into their own process.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp_core::Shared;
use mp_process::{
    active_children, current_process, parent_process, Child, ClosureProcess, Process, ProcessError,
    StartMethod,
};

mp_process::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];
/// Watchdog for every join: a test that would hang fails instead.
const WATCHDOG: Duration = Duration::from_secs(30);

fn join<R: mp_core::Message + std::fmt::Debug>(c: &mut Child<R>) -> Result<R, ProcessError> {
    match c.join_timeout(WATCHDOG) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => {
            let _ = c.kill();
            panic!("child {} still running after {WATCHDOG:?}", c.pid())
        }
        Err(e) => Err(e),
    }
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn returns_value_under_every_method() {
    for m in METHODS {
        let mut c = Process::new(square, 12).start_method(m).start().unwrap();
        assert_eq!(join(&mut c).unwrap(), 144, "{m}");
        assert_eq!(c.exitcode(), Some(0));
        assert!(!c.is_alive());
        assert!(matches!(c.join(), Err(ProcessError::AlreadyJoined)));
    }
}

fn sleeper(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// P1: lifecycle and active_children.
#[test]
fn p1_lifecycle() {
    for m in METHODS {
        let mut c = Process::new(sleeper, 300)
            .name(format!("p1-{m}"))
            .start_method(m)
            .start()
            .unwrap();
        assert!(c.is_alive(), "{m}");
        assert_eq!(c.exitcode(), None);
        assert!(active_children().iter().any(|a| a.pid() == c.pid()));
        join(&mut c).unwrap();
        assert_eq!(c.exitcode(), Some(0));
        assert!(!c.is_alive());
        assert!(!active_children().iter().any(|a| a.pid() == c.pid()));
    }
}

type Identity = (String, u32, Option<(u32, String)>, bool);

fn report_identity(tag: String) -> (String, Identity) {
    let me = current_process();
    (
        tag,
        (
            me.name().to_string(),
            me.pid(),
            parent_process().map(|p| (p.pid(), p.name().to_string())),
            me.daemon(),
        ),
    )
}

/// P2 and P6: arguments, name, pid, parent.
#[test]
fn p2_p6_arguments_identity_parent() {
    assert!(parent_process().is_none(), "the test process is a root");
    assert_eq!(current_process().name(), "MainProcess");
    for m in METHODS {
        for daemon in [false, true] {
            let mut c = Process::new(report_identity, format!("arg-{m}"))
                .name(format!("child-{m}"))
                .daemon(daemon)
                .start_method(m)
                .start()
                .unwrap();
            let (tag, (name, pid, parent, d)) = join(&mut c).unwrap();
            assert_eq!(tag, format!("arg-{m}"));
            assert_eq!(name, format!("child-{m}"));
            assert_eq!(c.name(), name);
            assert_eq!(pid, c.pid());
            assert_eq!(
                parent,
                Some((std::process::id(), "MainProcess".to_string()))
            );
            assert_eq!(d, daemon);
        }
    }
    // Default names count this process's children.
    let c = Process::new(sleeper, 0).start().unwrap();
    assert!(c.name().starts_with("Process-"), "{}", c.name());
}

/// P3: join(0) returns at once; terminate gives SIGTERM, kill gives SIGKILL.
#[test]
fn p3_terminate_and_kill() {
    for m in METHODS {
        let mut c = Process::new(sleeper, 20_000)
            .start_method(m)
            .start()
            .unwrap();
        let t0 = Instant::now();
        assert!(c.join_timeout(Duration::ZERO).unwrap().is_none());
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert!(c.is_alive());
        c.terminate().unwrap();
        assert_eq!(
            join(&mut c),
            Err(ProcessError::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false
            }),
            "{m}"
        );
        assert_eq!(c.exitcode(), Some(-15));
        c.terminate().unwrap(); // a no-op once ended

        let mut c = Process::new(sleeper, 20_000)
            .start_method(m)
            .start()
            .unwrap();
        c.kill().unwrap();
        assert!(matches!(
            join(&mut c),
            Err(ProcessError::Signaled {
                signal: libc::SIGKILL,
                ..
            })
        ));
        assert_eq!(c.exitcode(), Some(-9));
    }
}

fn exit8(_: ()) {
    std::process::exit(8)
}

fn panicker(n: u32) -> u32 {
    if n > 0 {
        panic!("boom {n}");
    }
    n
}

/// P4: exit codes, return values, panics.
#[test]
fn p4_exit_status() {
    for m in METHODS {
        let mut c = Process::new(exit8, ()).start_method(m).start().unwrap();
        assert_eq!(join(&mut c), Err(ProcessError::Exited { code: 8 }), "{m}");
        assert_eq!(c.exitcode(), Some(8));

        let mut c = Process::new(panicker, 42).start_method(m).start().unwrap();
        match join(&mut c) {
            Err(ProcessError::Panicked { message, location }) => {
                assert_eq!(message, "boom 42");
                assert!(location.contains("process.rs:"), "{location}");
            }
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(c.exitcode(), Some(1));

        let mut c = Process::new(panicker, 0).start_method(m).start().unwrap();
        assert_eq!(join(&mut c), Ok(0));
    }
}

/// P4: the panic message is on the child's stderr (checked in a copy of this binary whose
/// stderr is piped).
#[test]
fn p4_panic_message_on_child_stderr() {
    for m in METHODS {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "panic_stderr_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MP_TEST_PANIC_METHOD", m.as_str())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{m}: {err}");
        assert!(err.contains("boom 7"), "{m}: {err}");
        assert!(err.contains("panicked at"), "{m}: {err}");
    }
}

/// Child side of the test above.
#[test]
fn panic_stderr_entry() {
    let Ok(m) = std::env::var("MP_TEST_PANIC_METHOD") else {
        return;
    };
    let mut c = Process::new(panicker, 7)
        .start_method(m.parse().unwrap())
        .start()
        .unwrap();
    assert!(matches!(join(&mut c), Err(ProcessError::Panicked { .. })));
}

fn poll_ready(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of pollfds for the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    assert!(r >= 0);
    p.iter().map(|x| x.revents != 0).collect()
}

/// P5: the sentinel is a pollable pidfd, ready within 1 s of the end, usable in a wait on
/// several objects; asked for first after the child was reaped, it is ready at once.
#[test]
fn p5_sentinel() {
    for m in METHODS {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut c = Process::new(sleeper, 20_000)
            .start_method(m)
            .start()
            .unwrap();
        let s = c.sentinel().unwrap();
        assert_eq!(poll_ready(&[s, a.as_fd()], 0), vec![false, false]);
        c.kill().unwrap();
        let t0 = Instant::now();
        assert_eq!(poll_ready(&[s, a.as_fd()], 1000), vec![true, false], "{m}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        // The other object of the wait works too.
        use std::io::Write;
        (&b).write_all(b"x").unwrap();
        assert_eq!(poll_ready(&[s, a.as_fd()], 1000), vec![true, true]);
        assert_eq!(c.exitcode(), Some(-9));
        // The same descriptor on every call, for the life of the handle, even once reaped.
        assert_eq!(c.sentinel().unwrap().as_raw_fd(), s.as_raw_fd());
        assert!(matches!(
            join(&mut c),
            Err(ProcessError::Signaled { signal: 9, .. })
        ));

        // A child whose sentinel was never asked for until after it was reaped.
        let mut d = Process::new(square, 3).start_method(m).start().unwrap();
        assert_eq!(join(&mut d).unwrap(), 9);
        assert_eq!(poll_ready(&[d.sentinel().unwrap()], 0), vec![true], "{m}");
    }
}

fn middle(args: (String, Shared<AtomicU32>)) {
    let (m, pid_out) = args;
    let c = Process::new(sleeper, 60_000)
        .daemon(true)
        .start_method(m.parse().unwrap())
        .start()
        .unwrap();
    pid_out.store(c.pid(), Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(60));
}

/// P7: a daemon child dies when its parent is SIGKILLed.
#[test]
fn p7_daemon_dies_with_killed_parent() {
    for m in METHODS {
        let pid_out = Shared::new(AtomicU32::new(0)).unwrap();
        // The middle process is spawned (so that under fork it is single-threaded).
        let mut mid = Process::new(middle, (m.as_str().to_string(), pid_out.clone()))
            .start_method(StartMethod::Spawn)
            .start()
            .unwrap();
        let t0 = Instant::now();
        while pid_out.load(Ordering::SeqCst) == 0 {
            assert!(t0.elapsed() < WATCHDOG, "{m}: the daemon never started");
            assert!(mid.is_alive(), "{m}: the middle died: {:?}", mid.join());
            std::thread::sleep(Duration::from_millis(2));
        }
        let daemon = pid_out.load(Ordering::SeqCst);
        // SAFETY: pidfd_open has no memory-safety preconditions.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, daemon as libc::pid_t, 0) };
        assert!(fd >= 0, "{m}: the daemon {daemon} is not running");
        // SAFETY: a fresh descriptor we own.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        mid.kill().unwrap();
        assert!(matches!(
            join(&mut mid),
            Err(ProcessError::Signaled { signal: 9, .. })
        ));
        assert_eq!(
            poll_ready(&[fd.as_fd()], 5000),
            vec![true],
            "{m}: the daemon outlived its killed parent"
        );
    }
}

fn add_shared(args: (Shared<AtomicU64>, u64)) -> u64 {
    args.0.fetch_add(args.1, Ordering::SeqCst) + args.1
}

/// Shared primitives cross every start method as arguments.
#[test]
fn shared_arguments_cross_every_method() {
    let counter = Shared::new(AtomicU64::new(0)).unwrap();
    for (i, m) in METHODS.into_iter().enumerate() {
        let mut c = Process::new(add_shared, (counter.clone(), 10))
            .start_method(m)
            .start()
            .unwrap();
        assert_eq!(join(&mut c).unwrap(), 10 * (i as u64 + 1), "{m}");
    }
    assert_eq!(counter.load(Ordering::SeqCst), 30);
}

#[test]
fn fork_closure_and_large_values() {
    let data: Vec<u64> = (0..300_000).collect();
    let mut c = ClosureProcess::new(move || data.iter().map(|x| x * 2).collect::<Vec<u64>>())
        .name("doubler")
        .start()
        .unwrap();
    assert_eq!(c.name(), "doubler");
    let v = join(&mut c).unwrap();
    assert_eq!(v.len(), 300_000);
    assert_eq!(v[299_999], 599_998);
    // A large value under spawn and forkserver too (bigger than a socket buffer).
    fn big(n: u64) -> Vec<u64> {
        (0..n).collect()
    }
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let mut c = Process::new(big, 500_000).start_method(m).start().unwrap();
        assert_eq!(join(&mut c).unwrap().len(), 500_000, "{m}");
        let mut c = Process::new(big, 500_000).start_method(m).start().unwrap();
        // Arguments larger than the socket buffer too.
        assert_eq!(c.join_timeout(WATCHDOG).unwrap().unwrap().len(), 500_000);
    }
    let arg: Vec<u64> = (0..500_000).collect();
    fn sum(v: Vec<u64>) -> u64 {
        v.iter().sum()
    }
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let mut c = Process::new(sum, arg.clone())
            .start_method(m)
            .start()
            .unwrap();
        assert_eq!(join(&mut c).unwrap(), 499_999 * 500_000 / 2, "{m}");
    }
}

fn returns_region(_: ()) -> mp_core::Region {
    mp_core::Region::anonymous(1, 8, 8).unwrap()
}

/// A return value that cannot be sent back is reported as lost, not as success.
#[test]
fn unserializable_result_is_reported() {
    for m in METHODS {
        let mut c = Process::new(returns_region, ())
            .start_method(m)
            .start()
            .unwrap();
        match join(&mut c) {
            Err(ProcessError::ResultLost(msg)) => assert!(msg.contains("serialized"), "{msg}"),
            other => panic!("{m}: {other:?}"),
        }
    }
}

/// A spawn child starts fine from a parent running 8 busy threads.
#[test]
fn spawn_and_forkserver_from_a_parent_with_8_threads() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lock = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let stop = stop.clone();
            let lock = lock.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut g = lock.lock().unwrap();
                    g.push(format!("thread {i}"));
                    if g.len() > 1000 {
                        g.clear();
                    }
                }
            })
        })
        .collect();
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        for i in 0..5u64 {
            let mut c = Process::new(square, i).start_method(m).start().unwrap();
            assert_eq!(join(&mut c).unwrap(), i * i);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The children of `pid` that are not zombies.
fn live_children_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|(_, state)| state != "Z")
        .map(|(p, _)| p)
        .collect()
}

fn zombies_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|(_, state)| state == "Z")
        .map(|(p, _)| p)
        .collect()
}

/// The children of `pid` with their states.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim().to_string()) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: u32 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((p, state.to_string()));
        }
    }
    out
}

fn shm_entries() -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("mp-"))
                .count()
        })
        .unwrap_or(0)
}

/// 1_000 children started and joined (and more dropped unjoined) leave no descriptor,
/// zombie or shared-memory entry behind.
#[test]
fn thousand_children_leave_nothing_behind() {
    mp_process::isolate!(thousand_children_leave_nothing_behind, 120);
    // Warm up the lazily opened state (the fork server's socket, the idle socket pair that
    // fork starts use again) before counting.
    for m in [StartMethod::ForkServer, StartMethod::Fork] {
        let mut c = Process::new(square, 1).start_method(m).start().unwrap();
        join(&mut c).unwrap();
    }
    let counter = Shared::new(AtomicU64::new(0)).unwrap();
    let fds = count_fds();
    let shm = shm_entries();
    for i in 0..1000u64 {
        let m = match i % 20 {
            0 | 10 => StartMethod::ForkServer,
            1 => StartMethod::Spawn,
            _ => StartMethod::Fork,
        };
        let mut c = Process::new(add_shared, (counter.clone(), 1))
            .start_method(m)
            .start()
            .unwrap();
        join(&mut c).unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 1000);
    // Children dropped without join are reaped by later starts / active_children.
    for _ in 0..20 {
        drop(Process::new(sleeper, 0).start().unwrap());
    }
    let t0 = Instant::now();
    while !active_children().is_empty() {
        assert!(t0.elapsed() < WATCHDOG);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The dropped children's pairs were closed, not kept: one more joined fork start leaves
    // the pool as the warm-up did, with one idle pair.
    let mut c = Process::new(square, 1).start().unwrap();
    join(&mut c).unwrap();
    drop(c);
    assert_eq!(count_fds(), fds, "descriptors leaked");
    assert_eq!(
        zombies_of(std::process::id()),
        Vec::<u32>::new(),
        "zombies left"
    );
    assert_eq!(shm_entries(), shm, "shared memory entries left");
}

#[test]
fn isolated_fork_children_may_do_anything() {
    mp_process::isolate!(isolated_fork_children_may_do_anything);
    // In the isolated copy the process is effectively single-threaded: a forked child may
    // print, start threads, and start children of its own.
    let mut c = Process::fork(|| {
        println!("hello from a forked child");
        let t = std::thread::spawn(|| 5u32).join().unwrap();
        let mut g = Process::fork(move || t * 2).unwrap();
        let v = g.join().unwrap();
        // Grandchildren under spawn and forkserver: the forked child starts its own launcher
        // thread and fork server, not its parent's.
        let mut via = Vec::new();
        for m in [StartMethod::Spawn, StartMethod::ForkServer] {
            let mut g = Process::new(square, 5).start_method(m).start().unwrap();
            via.push(g.join().unwrap());
        }
        (v, via, mp_process::current_process().name().to_string())
    })
    .unwrap();
    let (v, via, name) = join(&mut c).unwrap();
    assert_eq!(v, 10);
    assert_eq!(via, vec![25, 25]);
    assert!(name.starts_with("Process-"));
    // The parent's own fork server is untouched by the child's.
    let mut c = Process::new(square, 6)
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(join(&mut c).unwrap(), 36);
}

/// PR_SET_PDEATHSIG fires when the creating *thread* exits: mp starts daemons from a
/// long-lived launcher thread, so a daemon started from a short-lived thread outlives that
/// thread (and still dies with the process: p7).
#[test]
fn daemon_started_from_a_short_lived_thread_survives_the_thread() {
    for m in METHODS {
        let c = std::thread::spawn(move || {
            Process::new(sleeper, 20_000)
                .daemon(true)
                .start_method(m)
                .start()
                .unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            c.is_alive(),
            "{m}: the daemon died with the thread that started it"
        );
        c.kill().unwrap();
        let mut c = c;
        assert!(matches!(
            join(&mut c),
            Err(ProcessError::Signaled { signal: 9, .. })
        ));
    }
}

#[test]
fn join_timeout_returns_after_the_timeout() {
    for m in METHODS {
        let mut c = Process::new(sleeper, 20_000)
            .start_method(m)
            .start()
            .unwrap();
        let t0 = Instant::now();
        assert!(c
            .join_timeout(Duration::from_millis(200))
            .unwrap()
            .is_none());
        let dt = t0.elapsed();
        assert!(dt >= Duration::from_millis(200), "{dt:?}");
        assert!(dt < Duration::from_millis(2200), "{dt:?}");
        // close refuses a running child and gives the handle back.
        let c2 = c.close().unwrap_err();
        c2.kill().unwrap();
        let mut c = c2;
        assert!(join(&mut c).is_err());
        c.close().unwrap();
    }
}

#[test]
fn closures_that_capture_nothing_are_targets() {
    for m in METHODS {
        let mut c = Process::new(|v: Vec<String>| v.join("+"), vec!["a".into(), "b".into()])
            .start_method(m)
            .start()
            .unwrap();
        assert_eq!(join(&mut c).unwrap(), "a+b");
    }
}

fn grandparent(m: String) -> (String, String, Option<String>) {
    let m: StartMethod = m.parse().unwrap();
    let mut c = Process::new(report_identity, String::new())
        .start_method(m)
        .start()
        .unwrap();
    let (_, (name, _, parent, _)) = c.join().unwrap();
    (
        current_process().name().to_string(),
        name,
        parent.map(|p| p.1),
    )
}

/// A child starts children of its own: Python's nested default names.
#[test]
fn nested_children() {
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        for inner in METHODS {
            let mut c = Process::new(grandparent, inner.as_str().to_string())
                .name("outer")
                .start_method(m)
                .start()
                .unwrap();
            let (me, child_name, childs_parent) = join(&mut c).unwrap();
            assert_eq!(me, "outer");
            assert!(
                child_name.starts_with("Process-") && child_name.contains(':'),
                "{child_name}"
            );
            assert_eq!(childs_parent.as_deref(), Some("outer"), "{m}/{inner}");
        }
    }
}

#[test]
fn start_method_configuration() {
    mp_process::isolate!(start_method_configuration);
    use mp_process::{
        get_all_start_methods, get_context, get_start_method, set_start_method, Error,
    };
    assert_eq!(get_start_method(), mp_process::DEFAULT_START_METHOD);
    assert_eq!(get_all_start_methods()[0], StartMethod::Fork);
    assert_eq!(get_all_start_methods().len(), 3);
    set_start_method(StartMethod::Spawn, false).unwrap();
    assert!(matches!(
        set_start_method(StartMethod::Fork, false),
        Err(Error::StartMethodAlreadySet {
            current: StartMethod::Spawn
        })
    ));
    assert_eq!(get_start_method(), StartMethod::Spawn);
    let mut c = Process::new(square, 3).start().unwrap();
    assert_eq!(c.start_method(), StartMethod::Spawn);
    assert_eq!(join(&mut c).unwrap(), 9);
    set_start_method(StartMethod::ForkServer, true).unwrap();
    let ctx = get_context(Some(StartMethod::Fork));
    assert_eq!(ctx.start_method(), StartMethod::Fork);
    let mut c = ctx.process(square, 4).start().unwrap();
    assert_eq!(c.start_method(), StartMethod::Fork);
    assert_eq!(join(&mut c).unwrap(), 16);
    assert_eq!(get_context(None).start_method(), StartMethod::ForkServer);
    assert_eq!(
        "forkserver".parse::<StartMethod>(),
        Ok(StartMethod::ForkServer)
    );
    assert!("vfork".parse::<StartMethod>().is_err());
}

/// A killed fork server is replaced on the next start.
#[test]
fn forkserver_is_restarted_after_it_dies() {
    mp_process::isolate!(forkserver_is_restarted_after_it_dies);
    let mut c = Process::new(square, 2)
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(join(&mut c).unwrap(), 4);
    let server = mp_process::forkserver_pid().unwrap();
    // SAFETY: kill has no memory effects; the server is our child, not yet reaped.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(50));
    let mut c = Process::new(square, 3)
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(join(&mut c).unwrap(), 9);
    assert_ne!(mp_process::forkserver_pid(), Some(server));
    assert!(zombies_of(std::process::id()).is_empty());
}

/// The fork server dies after its `clone` but before its reply (issue 13, item 7): the retry
/// must not hand the boot frame to the first, unknown child. It used to reuse the channel, so
/// the first child and the retry's child waited on one socket: the first could take the boot
/// frame (and run the target in a process the parent does not know), and the other stayed
/// blocked in `recv` for as long as the first ran.
#[test]
fn forkserver_dying_between_clone_and_reply_starts_the_right_child() {
    mp_process::isolate!(forkserver_dying_between_clone_and_reply_starts_the_right_child);
    let marker = std::env::temp_dir().join(format!("mp-fs-hook-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let go = Shared::new(AtomicU32::new(0)).unwrap();
    std::env::set_var(mp_process::__private::ENV_TEST_DIE_AFTER_CLONE, &marker);
    let started = Process::new(pid_after_go, go.clone())
        .start_method(StartMethod::ForkServer)
        .start();
    std::env::remove_var(mp_process::__private::ENV_TEST_DIE_AFTER_CLONE);
    assert!(marker.exists(), "the first server ran the hook");
    let _ = std::fs::remove_file(&marker);
    let mut c = started.unwrap();
    // While the target waits for `go`, the only child of ours still running besides the new
    // server is the one the parent was given: the first server's child read end-of-file on
    // its own channel and exited.
    let server = mp_process::forkserver_pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: Vec<u32> = live_children_of(std::process::id())
            .into_iter()
            .filter(|p| Some(*p) != server)
            .collect();
        if live == [c.pid()] {
            break;
        }
        if Instant::now() > deadline {
            go.store(1, Ordering::Release);
            let _ = c.kill();
            let _ = c.join();
            panic!(
                "children running besides the server: {live:?}, given {}",
                c.pid()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    go.store(1, Ordering::Release);
    assert_eq!(
        join(&mut c).unwrap(),
        c.pid(),
        "the target ran in the given child"
    );
    // The server that serves now is the second one, and works.
    let mut again = Process::new(square, 8)
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(join(&mut again).unwrap(), 64);
}

/// A fork child's first panic while another thread of the parent was inside `set_var` at the
/// fork (issue 13, item 8): the panic hook used to read `RUST_BACKTRACE` in the child, waiting
/// forever for the environment lock that the copied thread held. Now the parent reads it
/// before forking; every child reports its panic.
#[test]
fn fork_child_panics_while_a_parent_thread_sets_the_environment() {
    mp_process::isolate!(fork_child_panics_while_a_parent_thread_sets_the_environment);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                std::env::set_var("MP_TEST_CHURN", i.to_string());
            }
        })
    };
    let mut hung = 0;
    for _ in 0..30 {
        let mut c = Process::fork(|| -> u32 { panic!("boom") }).unwrap();
        match c.join_timeout(Duration::from_secs(5)) {
            Err(ProcessError::Panicked { message, .. }) => assert_eq!(message, "boom"),
            Ok(None) => {
                hung += 1;
                let _ = c.kill();
                let _ = c.join();
            }
            other => panic!("unexpected: {other:?}"),
        }
        if hung > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(hung, 0, "a panicking fork child blocked in its panic hook");
}

fn pid_after_go(go: Shared<AtomicU32>) -> u32 {
    while go.load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::process::id()
}

#[test]
fn cpu_count_respects_affinity_and_quota() {
    let n = mp_process::cpu_count();
    assert!(n >= 1);
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0);
    // SAFETY: `set` was filled by the kernel.
    let affinity = unsafe { libc::CPU_COUNT(&set) } as usize;
    assert!(n <= affinity, "{n} > {affinity}");
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        let mut it = max.split_whitespace();
        if let (Some(q), Some(p)) = (it.next(), it.next()) {
            if let (Ok(q), Ok(p)) = (q.parse::<u64>(), p.parse::<u64>()) {
                assert!(n as u64 <= q.div_ceil(p).max(1), "{n} vs quota {q}/{p}");
            }
        }
    }
}

static_assertions::assert_impl_all!(Child<u32>: Send, Sync);
static_assertions::assert_impl_all!(Child<std::rc::Rc<u32>>: Send, Sync);
static_assertions::assert_impl_all!(mp_process::ActiveChild: Send, Sync);
static_assertions::assert_impl_all!(mp_process::Error: Send, Sync);
static_assertions::assert_impl_all!(ProcessError: Send, Sync, Clone);
static_assertions::assert_impl_all!(Process<u32, u32>: Send, Sync);
static_assertions::assert_impl_all!(StartMethod: Send, Sync, Copy);

fn say(m: String) {
    println!("child-says-{m}");
}

/// A child's stdout is the parent's, without the test harness's banner of the re-run binary.
#[test]
fn child_stdout_reaches_the_parent_without_harness_noise() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stdout_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("MP_TEST_STDOUT", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in METHODS {
        assert!(text.contains(&format!("child-says-{m}\n")), "{m}: {text}");
    }
    assert_eq!(text.matches("running 1 test").count(), 1, "{text}");
}

/// Child side of the test above.
#[test]
fn stdout_entry() {
    if std::env::var_os("MP_TEST_STDOUT").is_none() {
        return;
    }
    for m in METHODS {
        let mut c = Process::new(say, m.as_str().to_string())
            .start_method(m)
            .start()
            .unwrap();
        join(&mut c).unwrap();
    }
}

fn sum_all(v: Vec<Shared<AtomicU32>>) -> u32 {
    v.iter().map(|s| s.fetch_add(1, Ordering::SeqCst) + 1).sum()
}

/// Many shared objects in the arguments: 300 descriptors cross exec under spawn; a fork
/// server request is limited to what one SCM_RIGHTS message carries, with a clear error.
#[test]
fn many_shared_arguments() {
    let v: Vec<Shared<AtomicU32>> = (0..300)
        .map(|_| Shared::new(AtomicU32::new(0)).unwrap())
        .collect();
    for m in [StartMethod::Fork, StartMethod::Spawn] {
        let mut c = Process::new(sum_all, v.clone())
            .start_method(m)
            .start()
            .unwrap();
        assert_eq!(
            join(&mut c).unwrap(),
            300 * (1 + (m == StartMethod::Spawn) as u32),
            "{m}"
        );
    }
    match Process::new(sum_all, v.clone())
        .start_method(StartMethod::ForkServer)
        .start()
    {
        Err(mp_process::Error::ForkServer(msg)) => assert!(msg.contains("at most"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let mut c = Process::new(sum_all, v[..200].to_vec())
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(join(&mut c).unwrap(), 200 * 3);
}

/// One fork child of each ending, joined with plain `join` (no pidfd), `rounds` times over:
/// the socket pairs that fork starts use again never carry one child's frames to another.
fn each_ending_in_turn(rounds: u64) {
    for i in 0..rounds {
        let mut c = Process::fork(move || i * 3).unwrap();
        assert_eq!(c.join(), Ok(i * 3));
        let mut c = Process::new(panicker, 7).start().unwrap();
        assert!(matches!(c.join(), Err(ProcessError::Panicked { .. })));
        let mut c = Process::new(exit8, ()).start().unwrap();
        assert_eq!(c.join(), Err(ProcessError::Exited { code: 8 }));
        let mut c = Process::new(sleeper, 20_000).start().unwrap();
        c.kill().unwrap();
        assert!(matches!(
            c.join(),
            Err(ProcessError::Signaled { signal: 9, .. })
        ));
        // Larger than a frame sent inline: travels in a memfd beside the pair.
        let mut c = Process::fork(move || vec![i; 100_000]).unwrap();
        assert_eq!(c.join().unwrap(), vec![i; 100_000]);
        let mut c = Process::new(returns_region, ()).start().unwrap();
        assert!(matches!(c.join(), Err(ProcessError::ResultLost(_))));
    }
}

#[test]
fn reused_socket_pairs_never_mix_children() {
    mp_process::isolate!(reused_socket_pairs_never_mix_children);
    each_ending_in_turn(5);
    // A process forked by other means than mp (here plain fork(2)) inherits the parent's idle
    // pairs: it must not use them, or its children and the parent's would share sockets.
    // Both sides start children at the same time and each must get its own results.
    // SAFETY: the isolated test process is single-threaded here, so the child may run any code;
    // it leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(|| each_ending_in_turn(10)).is_ok();
        // SAFETY: _exit ends the forked copy without running the test harness's teardown.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    each_ending_in_turn(10);
    let mut status = 0;
    // SAFETY: waitpid writes the status of our own child into `status`.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the plain-fork child's starts failed (status {status:#x})"
    );
}

/// `join` sleeps without the status lock while other threads poll and reap the same child
/// (`active_children`, `is_alive`): whoever reaps it, `join` gives the right outcome.
#[test]
fn join_races_with_reaping_threads() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for a in active_children() {
                        let _ = a.is_alive();
                    }
                }
            })
        })
        .collect();
    for i in 0..200u64 {
        let mut c = Process::new(square, i).start().unwrap();
        assert_eq!(c.join(), Ok(i * i));
        let mut c = Process::new(exit8, ()).start().unwrap();
        assert_eq!(c.join(), Err(ProcessError::Exited { code: 8 }));
    }
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.join().unwrap();
    }
}
