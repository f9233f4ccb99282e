//! Object lifetime across real processes, as in Python's managers: an object is freed when
//! the last proxy to it is dropped in every process, or when the process holding it dies
//! (SIGKILL included); named objects stay until removed; `register_with` makes a fresh object
//! per call, and a constructor that panics is an error, not a dead server.

use std::time::{Duration, Instant};

use mp_manager::{Custom, Dict, Error, Event, Manager, Served};
use mp_process::{Process, StartMethod};

mp_process::test_support!();

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];
const WATCHDOG: Duration = Duration::from_secs(30);

// Each test runs isolated, in a process of its own: a forked child holds every proxy of the
// process it was forked from (as in Python), so another test's fork could hold this test's
// objects for a while and change the counts asserted here.

/// A manager whose server is spawned (a forked server would start threads in a copy of this
/// multi-threaded test process), with the test types registered.
fn manager() -> Manager {
    Manager::builder()
        .start_method(StartMethod::Spawn)
        .register_with("Counter", counter_at_100)
        .register_with("Bad", bad_counter)
        .register_with("Gated", gated_counter)
        .start()
        .unwrap()
}

/// Waits (up to the watchdog) until the server holds `n` objects: other processes' releases
/// (a child's exit) reach the server in their own time.
fn wait_count(m: &Manager, n: usize) {
    let end = Instant::now() + WATCHDOG;
    loop {
        let c = m.object_count().unwrap();
        if c == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "the server holds {c} objects, not {n}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Counter {
    n: u64,
}

impl Served for Counter {
    type Request = u64;
    type Reply = u64;
    fn handle(&mut self, add: u64) -> u64 {
        self.n += add;
        self.n
    }
}

fn counter_at_100() -> Counter {
    Counter { n: 100 }
}

fn bad_counter() -> Counter {
    panic!("no counter today")
}

/// A file named for the process that started the server (the test's).
fn test_file(what: &str, pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mp-manager-lifetime-{what}-{pid}"))
}

/// A constructor that says it started, then waits for the test's gate: a counter at 0, or
/// at 1000 when the gate did not open within the watchdog.
fn gated_counter() -> Counter {
    let test = std::os::unix::process::parent_id();
    let _ = std::fs::write(test_file("started", test), b"");
    let end = Instant::now() + WATCHDOG;
    while !test_file("gate", test).exists() {
        if Instant::now() > end {
            return Counter { n: 1000 };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Counter { n: 0 }
}

#[test]
fn the_last_proxy_dropped_frees_the_object() {
    mp_process::isolate!(the_last_proxy_dropped_frees_the_object);
    let m = manager();
    assert_eq!(m.object_count().unwrap(), 0);
    let d = m.dict::<String, u64>().unwrap();
    let l = m.list::<u64>().unwrap();
    assert_eq!(m.object_count().unwrap(), 2);
    let d2 = d.clone();
    drop(d);
    assert_eq!(m.object_count().unwrap(), 2, "a clone still holds the dict");
    d2.set(&"k".into(), &1).unwrap();
    assert_eq!(d2.get(&"k".into()).unwrap(), Some(1));
    drop(d2);
    assert_eq!(m.object_count().unwrap(), 1);
    drop(l);
    assert_eq!(m.object_count().unwrap(), 0);
}

/// A message decoded after its object was freed gives a proxy whose calls are
/// `NoSuchObject`, never a use of a freed object.
#[test]
fn a_freed_object_is_a_typed_error() {
    mp_process::isolate!(a_freed_object_is_a_typed_error);
    let m = manager();
    let d = m.dict::<String, u64>().unwrap();
    let bytes = mp_core::message::encode(&d).unwrap().to_vec();
    drop(d);
    assert_eq!(
        m.object_count().unwrap(),
        1,
        "the encoded proxy's ticket holds it"
    );
    let first: Dict<String, u64> = mp_core::message::decode(&bytes).unwrap();
    let second: Dict<String, u64> = mp_core::message::decode(&bytes).unwrap();
    first.set(&"a".into(), &1).unwrap();
    drop(first);
    assert_eq!(second.len().unwrap(), 1, "the second decode holds it too");
    drop(second);
    assert_eq!(m.object_count().unwrap(), 0);
    let late: Dict<String, u64> = mp_core::message::decode(&bytes).unwrap();
    assert!(matches!(late.len(), Err(Error::NoSuchObject(_))));
    assert!(matches!(late.clone().len(), Err(Error::NoSuchObject(_))));
}

fn use_after_parent_dropped((d, go): (Dict<String, u64>, Event)) -> String {
    let r = (|| -> mp_manager::Result<u64> {
        if !go.wait(Some(WATCHDOG))? {
            return Err(Error::Malformed("no go".into()));
        }
        d.set(&"child".into(), &7)?;
        Ok(d.get_item(&"child".into())? + d.len()? as u64)
    })();
    match r {
        Ok(8) => String::new(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_proxy_passed_to_a_child_outlives_the_parents() {
    mp_process::isolate!(a_proxy_passed_to_a_child_outlives_the_parents);
    let m = manager();
    let go = m.named::<Event>("go").unwrap();
    for method in METHODS {
        go.clear().unwrap();
        let d = m.dict::<String, u64>().unwrap();
        let mut c = Process::new(use_after_parent_dropped, (d.clone(), go.clone()))
            .start_method(method)
            .start()
            .unwrap();
        drop(d);
        // The parent holds no proxy of the dict now; the child's keeps it.
        assert_eq!(m.object_count().unwrap(), 2, "{method}");
        go.set().unwrap();
        assert_eq!(c.join_timeout(WATCHDOG).unwrap().unwrap(), "", "{method}");
        wait_count(&m, 1);
    }
}

fn hold_until_killed((d, ready, never): (Dict<String, u64>, Event, Event)) {
    if d.set(&"held".into(), &1).is_ok() {
        let _ = ready.set();
    }
    let _ = never.wait(None);
}

#[test]
fn a_killed_childs_references_are_released() {
    mp_process::isolate!(a_killed_childs_references_are_released);
    let m = manager();
    let ready = m.named::<Event>("ready").unwrap();
    let never = m.named::<Event>("never").unwrap();
    for method in METHODS {
        ready.clear().unwrap();
        let d = m.dict::<String, u64>().unwrap();
        let mut c = Process::new(hold_until_killed, (d.clone(), ready.clone(), never.clone()))
            .start_method(method)
            .start()
            .unwrap();
        drop(d);
        assert!(ready.wait(Some(WATCHDOG)).unwrap(), "{method}");
        assert_eq!(
            m.object_count().unwrap(),
            3,
            "the child holds the dict ({method})"
        );
        c.kill().unwrap();
        assert!(c.join_timeout(WATCHDOG).is_err(), "killed ({method})");
        wait_count(&m, 2);
    }
}

#[test]
fn named_objects_stay_until_removed() {
    mp_process::isolate!(named_objects_stay_until_removed);
    let m = manager();
    let d = m.named::<Dict<String, u64>>("keep").unwrap();
    d.set(&"k".into(), &3).unwrap();
    drop(d);
    assert_eq!(
        m.object_count().unwrap(),
        1,
        "a named object outlives its proxies"
    );
    let again = m.named::<Dict<String, u64>>("keep").unwrap();
    assert_eq!(again.get(&"k".into()).unwrap(), Some(3));
    assert!(m.remove_named("keep").unwrap());
    assert!(!m.remove_named("keep").unwrap());
    assert_eq!(m.object_count().unwrap(), 1, "its proxy still holds it");
    assert_eq!(again.len().unwrap(), 1);
    let fresh = m.named::<Dict<String, u64>>("keep").unwrap();
    assert_eq!(fresh.len().unwrap(), 0, "the name makes a new one");
    drop(again);
    assert_eq!(m.object_count().unwrap(), 1);
    drop(fresh);
    assert_eq!(m.object_count().unwrap(), 1, "named again, so kept");
    assert!(m.remove_named("keep").unwrap());
    assert_eq!(m.object_count().unwrap(), 0);
}

fn add_in_child((c, n): (Custom<Counter>, u64)) -> u64 {
    c.call(&n).unwrap_or(0)
}

#[test]
fn register_with_makes_a_fresh_object_per_call() {
    mp_process::isolate!(register_with_makes_a_fresh_object_per_call);
    let m = manager();
    let a = m.custom::<Counter>("Counter").unwrap();
    let b = m.custom::<Counter>("Counter").unwrap();
    assert_eq!(a.call(&5).unwrap(), 105);
    assert_eq!(b.call(&1).unwrap(), 101, "another object, made afresh");
    assert_eq!(m.object_count().unwrap(), 2);
    for method in METHODS {
        let mut c = Process::new(add_in_child, (a.clone(), 10))
            .start_method(method)
            .start()
            .unwrap();
        let seen = c.join_timeout(WATCHDOG).unwrap().unwrap();
        assert!(seen == 115 || seen == 125, "{method}: {seen}");
    }
    assert_eq!(a.call(&0).unwrap(), 125);
    drop(a);
    wait_count(&m, 1);
}

#[test]
fn a_panicking_constructor_is_an_error_and_the_server_goes_on() {
    mp_process::isolate!(a_panicking_constructor_is_an_error_and_the_server_goes_on);
    let m = manager();
    match m.custom::<Counter>("Bad") {
        Err(Error::Raised(msg)) => assert!(msg.contains("no counter today"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m.named_custom::<Counter>("Bad", "bad"),
        Err(Error::Raised(_))
    ));
    assert_eq!(m.object_count().unwrap(), 0, "nothing was made");
    let c = m.named_custom::<Counter>("Counter", "bad").unwrap();
    assert_eq!(
        c.call(&1).unwrap(),
        101,
        "the name was not taken by the failure"
    );
    assert_eq!(m.dict::<u8, u8>().unwrap().len().unwrap(), 0);
}

/// Proxies dropped after their server died neither panic nor wait.
#[test]
fn proxies_outliving_their_server_drop_quietly() {
    mp_process::isolate!(proxies_outliving_their_server_drop_quietly);
    let m = manager();
    let d = m.dict::<u8, u8>().unwrap();
    let copies = vec![d.clone(); 8];
    let pid = m.server_pid().unwrap();
    // SAFETY: kill has no memory effects; the server is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // The signal takes effect in its own time: call until the calls fail.
    let end = Instant::now() + WATCHDOG;
    while d.len().is_ok() {
        assert!(Instant::now() < end, "the server outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(d.len(), Err(Error::ServerGone(_))));
    drop(copies);
    drop(d);
    drop(m);
}

/// References belong to the process, not the thread: a proxy dropped by another thread
/// than the one that made it is counted all the same.
#[test]
fn proxies_dropped_on_other_threads_count() {
    mp_process::isolate!(proxies_dropped_on_other_threads_count);
    let m = manager();
    let q = m.queue::<u64>(0).unwrap();
    let copies: Vec<_> = (0..4).map(|_| q.clone()).collect();
    drop(q);
    let threads: Vec<_> = copies
        .into_iter()
        .map(|c| std::thread::spawn(move || c.put(&1).is_ok()))
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    assert_eq!(m.object_count().unwrap(), 0);
}

#[test]
fn proxies_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Dict<String, u64>>();
    check::<Event>();
    check::<Custom<Counter>>();
}

/// A proxy's `Drop` does not wait for another thread's round trip to the server (here a
/// create whose constructor waits): it leaves its release to that thread, which sends it.
#[test]
fn a_drop_never_waits_for_another_threads_round_trip() {
    mp_process::isolate!(a_drop_never_waits_for_another_threads_round_trip);
    let m = manager();
    let me = std::process::id();
    let (started, gate) = (test_file("started", me), test_file("gate", me));
    // Removed now (a stale gate would open at once) and at the end, also when an assertion
    // fails.
    let files = RemoveOnDrop(vec![started.clone(), gate.clone()]);
    files.remove();
    let d = m.dict::<u8, u8>().unwrap();
    let (address, key) = (m.address().unwrap(), m.authkey().to_vec());
    let maker = std::thread::spawn(move || {
        let m = Manager::connect(address, &key)?;
        m.custom::<Counter>("Gated")?.call(&1)
    });
    let end = Instant::now() + WATCHDOG;
    while !started.exists() {
        assert!(Instant::now() < end, "the constructor did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The maker holds the table for its create now; this must not wait for it.
    drop(d);
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(
        maker.join().unwrap().unwrap(),
        1,
        "the drop waited for the create"
    );
    assert_eq!(
        m.object_count().unwrap(),
        0,
        "the dict and the counter are both gone"
    );
}

struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl RemoveOnDrop {
    fn remove(&self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.remove();
    }
}

fn take_from_queue(q: mp_manager::Queue<Dict<String, u64>>) -> u64 {
    let r = (|| -> mp_manager::Result<u64> {
        let d = q.get_timeout(Some(WATCHDOG))?;
        d.set(&"via queue".into(), &5)?;
        d.get_item(&"via queue".into())
    })();
    r.unwrap_or(0)
}

/// A proxy sent as an item (here on a manager queue) holds its object until the receiver
/// decodes it, after the sender dropped its own.
#[test]
fn a_proxy_sent_on_a_queue_holds_its_object_until_received() {
    mp_process::isolate!(a_proxy_sent_on_a_queue_holds_its_object_until_received);
    let m = manager();
    let q = m.queue::<Dict<String, u64>>(0).unwrap();
    for method in METHODS {
        let d = m.dict::<String, u64>().unwrap();
        q.put(&d).unwrap();
        drop(d);
        assert_eq!(
            m.object_count().unwrap(),
            2,
            "the queued proxy holds it ({method})"
        );
        let mut c = Process::new(take_from_queue, q.clone())
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(c.join_timeout(WATCHDOG).unwrap().unwrap(), 5, "{method}");
        wait_count(&m, 1);
    }
}

/// A `fork` made to `exec` (here by `std::process::Command`, which forks when given a
/// `pre_exec`) makes no connection to the server: before, the child's fork handler connected
/// to redeem its parent's ticket before the `exec`, a connection counted against the server's
/// cap (another thread of the parent was refused while the child waited to `exec`) and a
/// handshake from a child of a multi-threaded process, where a lock held by a thread it does
/// not have could hang it.
#[test]
fn a_fork_that_execs_does_not_connect_to_the_server() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    mp_process::isolate!(a_fork_that_execs_does_not_connect_to_the_server);
    let m = Manager::builder()
        .start_method(StartMethod::Spawn)
        .max_connections(3)
        .start()
        .unwrap();
    let d = m.dict::<u8, u8>().unwrap(); // this process's session: connection 1
    d.set(&1, &1).unwrap(); // this thread's requests: connection 2
    let (mut forked, forked_child) = std::os::unix::net::UnixStream::pair().unwrap();
    let (mut go, go_child) = std::os::unix::net::UnixStream::pair().unwrap();
    let (forked_fd, go_fd) = (forked_child.as_raw_fd(), go_child.as_raw_fd());
    let mut cmd = std::process::Command::new("true");
    // SAFETY: the closure only calls write(2) and read(2) on descriptors that stay open in the
    // child (their owners live until the spawn returns), both async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut b = [0u8; 1];
            libc::write(forked_fd, b"f".as_ptr().cast(), 1);
            libc::read(go_fd, b.as_mut_ptr().cast(), 1);
            Ok(())
        })
    };
    let spawner = std::thread::spawn(move || cmd.status());
    // The child has forked (its fork handlers have run) and waits before its exec.
    let mut b = [0u8; 1];
    forked.read_exact(&mut b).unwrap();
    let other = {
        let d = d.clone();
        std::thread::spawn(move || d.len()).join().unwrap()
    };
    go.write_all(b"g").unwrap();
    let status = spawner.join().unwrap().unwrap();
    drop((forked_child, go_child));
    assert!(status.success());
    assert_eq!(
        other.unwrap(),
        1,
        "the third connection was the forked child's"
    );
}

/// A child of a plain `fork` (not mp's) keeps the objects its parent held at the fork, also
/// those the parent drops before the child first uses them: the parent's ticket holds them
/// until the child redeems it, on its first call; when the child ends, the server lets go.
#[test]
fn a_plain_fork_child_keeps_its_parents_objects_until_it_ends() {
    use std::io::{Read, Write};
    mp_process::isolate!(a_plain_fork_child_keeps_its_parents_objects_until_it_ends);
    let m = manager();
    let d = m.dict::<String, u64>().unwrap();
    assert_eq!(m.object_count().unwrap(), 1);
    let (mut dropped, mut dropped_child) = std::os::unix::net::UnixStream::pair().unwrap();
    // SAFETY: the child only uses the proxy (what this test is about: mp's state is renewed
    // after a fork) and its end of the socket pair, then leaves with `_exit`.
    match unsafe { libc::fork() } {
        0 => {
            let mut b = [0u8; 1];
            let ok = dropped_child.read_exact(&mut b).is_ok()
                && d.set(&"child".into(), &7).is_ok()
                && d.get(&"child".into()).ok() == Some(Some(7));
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => {
            drop(d);
            // The child has not used its proxy yet: the parent's ticket holds the dict.
            assert_eq!(m.object_count().unwrap(), 1);
            dropped.write_all(b"d").unwrap();
            let mut status = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the child's calls failed"
            );
            wait_count(&m, 0);
        }
    }
}

fn returns_at_once(_: Dict<String, u64>) {}

/// A child of the fork start method that never touches its copied proxies still lets go of
/// them when it ends (it redeems its parent's ticket before its target, as Python's proxies
/// incref after a fork): a fork handler that only left the ticket owed would keep the
/// objects alive as long as the parent.
#[test]
fn a_fork_child_that_never_uses_its_proxies_lets_go_when_it_ends() {
    mp_process::isolate!(a_fork_child_that_never_uses_its_proxies_lets_go_when_it_ends);
    let m = manager();
    let d = m.dict::<String, u64>().unwrap();
    let mut c = Process::new(returns_at_once, d.clone())
        .start_method(StartMethod::Fork)
        .start()
        .unwrap();
    c.join_timeout(WATCHDOG).unwrap().unwrap();
    drop(d);
    wait_count(&m, 0);
}
