//! More roles under fire: a `JoinableQueue` worker around `task_done`, a Manager client killed
//! while it holds a manager lock, a Listener's client killed inside the handshake, a spawn child
//! killed before it has read its arguments, and a process out of file descriptors.

use std::time::{Duration, Instant};

use mp::pipe::{Address, Client, Connection, Listener};
use mp::process::{ProcessError, StartMethod};
use mp::{JoinableQueue, Manager, Process, Queue};

use crate::common::{fork, join_killed, join_ok, spin};
use crate::harness::{kill, Fault, Round, RECOVERY_BOUND};

/// A worker loops `get` + `task_done` on a joinable queue of 200 items and is killed at a
/// random moment (between the two, over the rounds). The parent takes the rest, marks them
/// done, and then `join` succeeds after at most one more `task_done` (the item the dead worker
/// had taken and not marked): the count of unfinished tasks is never lost or doubled.
pub(crate) fn joinable_task_done(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let q: JoinableQueue<u64> = JoinableQueue::new().map_err(|e| e.to_string())?;
    for i in 0..200u64 {
        q.put(i).map_err(|e| e.to_string())?;
    }
    let wq = q.clone();
    let mut worker = fork(move || loop {
        match wq.get_timeout(Duration::from_secs(5)) {
            Ok(_) => {
                spin(300);
                if wq.task_done().is_err() {
                    return 1u32;
                }
            }
            Err(_) => return 0,
        }
    })?;
    std::thread::sleep(r.rng.micros(0, 3000));
    kill(worker.pid());
    join_killed(r, &mut worker, "joinable worker");
    loop {
        match q.get_timeout(Duration::from_millis(20)) {
            Ok(_) => {
                if let Err(e) = q.task_done() {
                    r.wrong(format!("task_done of an item the parent took: {e}"));
                }
            }
            Err(mp::queue::Error::Empty) => break,
            Err(e) => {
                r.wrong(format!("get after the worker died: {e}"));
                break;
            }
        }
    }
    if q.join_timeout(Duration::from_millis(50)).is_ok() {
        return Ok(());
    }
    // The dead worker's one item: one more task_done, and join must succeed.
    if q.task_done().is_err() {
        r.wrong("join waited, but no task was unfinished");
    } else if q.join_timeout(Duration::from_millis(200)).is_err() {
        r.lost(
            1,
            "join still waits after the dead worker's item was marked done",
        );
    }
    Ok(())
}

/// A client process loops acquire/set/release on a manager lock and dict, and is killed at a
/// random moment (inside a request, or holding the lock). The server releases what the dead
/// connection held: the parent takes the lock within a second.
pub(crate) fn manager_client(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let m = Manager::start().map_err(|e| e.to_string())?;
    let lock = m.lock().map_err(|e| e.to_string())?;
    let d = m.dict::<u64, u64>().map_err(|e| e.to_string())?;
    let (cl, cd) = (lock.clone(), d.clone());
    let mut client = fork(move || {
        let mut i = 0u64;
        loop {
            if cl.acquire().is_err() {
                return 1u32;
            }
            let _ = cd.set(&(i % 8), &i);
            if cl.release().is_err() {
                return 2;
            }
            i += 1;
        }
    })?;
    std::thread::sleep(r.rng.micros(500, 8000));
    let t = kill(client.pid());
    join_killed(r, &mut client, "manager client");
    match lock.acquire_timeout(Some(Duration::from_secs(3))) {
        Ok(true) => {
            r.recovered(t.elapsed());
            if lock.release().is_err() {
                r.wrong("release of the lock taken back from a dead client");
            }
        }
        Ok(false) => r.hang("the manager lock a dead client held"),
        Err(e) => r.wrong(format!("acquire after a client died: {e}")),
    }
    if let Err(e) = d.set(&99, &99) {
        r.wrong(format!("the dict after a client died: {e}"));
    }
    drop((lock, d));
    let _ = m.shutdown();
    Ok(())
}

/// A client process loops connect + handshake + one message against a Listener with an
/// authkey, and is killed at a random moment (inside the handshake, over the rounds). The
/// listener goes on: a real client gets in within a second.
pub(crate) fn listener_handshake(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let key = b"faults-key".to_vec();
    let listener = Listener::bind(
        Address::tcp("127.0.0.1", 0).map_err(|e| e.to_string())?,
        Some(&key),
    )
    .map_err(|e| e.to_string())?;
    let addr = listener.address().clone();
    let (a2, k2) = (addr.clone(), key.clone());
    let mut client = fork(move || {
        for _ in 0..u64::MAX {
            if let Ok(c) = Client::connect::<u64>(a2.clone(), Some(&k2)) {
                let _ = c.send(&1);
            }
        }
        0u32
    })?;
    let accepting = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut real = None;
        while Instant::now() < deadline {
            match listener.accept::<u64>() {
                Ok(c) => {
                    if let Ok(7) = c.recv_timeout(Duration::from_millis(200)) {
                        real = Some(Instant::now());
                        break;
                    }
                }
                Err(_) => continue,
            }
        }
        real
    });
    std::thread::sleep(r.rng.micros(200, 5000));
    let t = kill(client.pid());
    join_killed(r, &mut client, "handshaking client");
    let real: Result<Connection<u64>, _> =
        Client::connect_timeout(addr, Some(&key), Some(Duration::from_secs(3)));
    match real {
        Ok(c) => {
            if c.send(&7).is_err() {
                r.wrong("send of a real client after another died in its handshake");
            }
            match accepting.join() {
                Ok(Some(at)) => {
                    r.recovered(at.saturating_duration_since(t).min(RECOVERY_BOUND * 2))
                }
                Ok(None) => r.hang("the listener did not accept the real client"),
                Err(_) => r.wrong("the accepting thread panicked"),
            }
        }
        Err(e) => {
            r.hang(format!(
                "a real client after another died in its handshake: {e}"
            ));
            let _ = accepting.join();
        }
    }
    Ok(())
}

fn sum(v: Vec<u64>) -> u64 {
    v.iter().sum()
}

/// A spawn child is killed a few microseconds to milliseconds after its start: before it has
/// read its arguments, while it reads them, or while it runs. Its join reports the signal (or
/// its value), at once.
pub(crate) fn spawn_child_early(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let args: Vec<u64> = (0..20_000).collect();
    let mut c = Process::new(sum, args)
        .start_method(StartMethod::Spawn)
        .daemon(true)
        .start()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(r.rng.micros(0, 4000));
    kill(c.pid());
    match c.join_timeout(Duration::from_secs(5)) {
        Ok(Some(199_990_000)) => {}
        Ok(Some(v)) => r.torn(format!("the child returned {v}")),
        Err(ProcessError::Signaled { signal: 9, .. }) => {}
        Ok(None) => {
            r.hang("join of a spawn child killed early");
            let _ = c.kill();
            let _ = c.join();
        }
        Err(e) => r.wrong(format!("join of a spawn child killed early: {e}")),
    }
    Ok(())
}

/// In a child limited to a few free file descriptors (`RLIMIT_NOFILE`), primitives are made
/// until the limit: each failure is a typed error, never a panic; after dropping them, making
/// one works again.
///
/// The limit is set a few dozen above the highest descriptor the child already holds: a
/// campaign started with many inherited descriptors (as CI may start it) would otherwise have
/// no free one below a fixed limit. The numbers below that limit that no descriptor holds are
/// free too, and a campaign started from a shell has gaps (bash keeps its fd 255 open): so the
/// child then fills every free number with `/dev/null` and closes `margin` of them, which
/// leaves exactly `margin` free descriptors in every environment. A pipe end holds at least
/// one descriptor, and 50 of the 200 primitives are pipes: more than `margin` (at most 47).
pub(crate) fn fd_exhaustion(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let margin = 24 + r.rng.below(24);
    let mut child = fork(move || {
        let Some(highest) = highest_open_fd() else {
            return 13u32;
        };
        let limit = highest + 1 + margin;
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit reads the struct; lowering our own limit is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return 10u32;
        }
        let mut fill = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fill.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(_) => return 14,
            }
        }
        let Some(keep) = fill.len().checked_sub(margin as usize) else {
            return 15;
        };
        // Closed: exactly `margin` free descriptors below the limit.
        fill.truncate(keep);
        let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
        let mut failures = 0u32;
        for i in 0..200u32 {
            let made: Result<Box<dyn std::any::Any>, String> = match i % 4 {
                0 => Queue::<u64>::new()
                    .map(|q| Box::new(q) as _)
                    .map_err(|e| e.to_string()),
                1 => mp::Pipe::<u64>::new(mp::Duplex)
                    .map(|p| Box::new(p) as _)
                    .map_err(|e| e.to_string()),
                2 => mp::Lock::new()
                    .map(|l| Box::new(l) as _)
                    .map_err(|e| e.to_string()),
                _ => mp::Event::new()
                    .map(|e| Box::new(e) as _)
                    .map_err(|e| e.to_string()),
            };
            match made {
                Ok(x) => held.push(x),
                Err(_) => failures += 1,
            }
        }
        if failures == 0 {
            return 11;
        }
        held.clear();
        match Queue::<u64>::new() {
            Ok(q) if q.put(1).is_ok() && q.get().ok() == Some(1) => 0,
            _ => 12,
        }
    })?;
    match join_ok(r, &mut child, "process out of descriptors") {
        Some(0) => {}
        Some(10) => return Err("setrlimit failed".into()),
        Some(11) => r.wrong("no primitive failed at a descriptor limit of a few dozen"),
        Some(12) => r.wrong("a primitive could not be made after the others were dropped"),
        Some(13) => return Err("/proc/self/fd could not be read".into()),
        Some(14) => return Err("/dev/null could not be opened".into()),
        Some(15) => return Err("fewer free descriptors below the limit than the margin".into()),
        Some(c) => r.wrong(format!("exit code {c}")),
        None => {}
    }
    Ok(())
}

/// The highest file descriptor this process holds, from `/proc/self/fd`.
fn highest_open_fd() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
}
