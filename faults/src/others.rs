//! mp-pipe, mp-pool, mp-manager and mp-process under fire: a pipe sender killed inside `send`
//! (whole and streamed messages), a pool worker killed inside a task, the parent of a pool
//! killed during `map`, a manager server killed inside a call, and the fork server killed while
//! it forks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mp::pipe::Error as PipeError;
use mp::process::StartMethod;
use mp::{Duplex, Manager, Pipe, Pool, Process, Shared};

use crate::common::{fork, join_killed, join_ok, spin};
use crate::harness::{check_of, kill, Fault, Round, RECOVERY_BOUND};

/// A sender loops `send` of numbered, checksummed messages, some larger than the ring (they
/// are streamed in fragments); it is killed at a random moment. The receiver gets every message
/// in order and intact, then a typed end-of-file within a second: never a torn message.
pub(crate) fn pipe_sender(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let (a, b) =
        Pipe::<(u64, u64, Vec<u8>)>::with_capacity(Duplex, 16 << 10).map_err(|e| e.to_string())?;
    let mut child = fork(move || {
        let mut seq = 0u64;
        loop {
            let pad = if seq % 4 == 0 { 40 << 10 } else { 64 };
            let body = vec![(seq & 0xff) as u8; pad];
            if a.send(&(seq, check_of(seq), body)).is_err() {
                return 1u32;
            }
            seq += 1;
        }
    })?;
    let mut next = 0u64;
    let until = Instant::now() + r.rng.micros(200, 5000);
    let mut t = None;
    loop {
        if t.is_none() && Instant::now() >= until {
            t = Some(kill(child.pid()));
        }
        match b.recv_timeout(Duration::from_secs(3)) {
            Ok((seq, check, body)) => {
                if check != check_of(seq) || body.iter().any(|&x| x != (seq & 0xff) as u8) {
                    r.torn(format!("message {seq} arrived corrupted"));
                }
                if seq != next {
                    r.lost(
                        seq.saturating_sub(next),
                        format!("expected {next}, got {seq}"),
                    );
                }
                next = seq + 1;
            }
            // End-of-file, or a message cut short by the sender's death: both typed, and
            // nothing half-read is handed out.
            Err(PipeError::Eof) | Err(PipeError::BrokenPipe) | Err(PipeError::Truncated { .. }) => {
                if let Some(t) = t {
                    r.recovered(t.elapsed());
                } else {
                    r.wrong("end-of-file before the sender died");
                }
                break;
            }
            Err(PipeError::Timeout) => {
                r.hang("recv after the sender died");
                break;
            }
            Err(e) => {
                r.wrong(format!("recv after the sender died: {e}"));
                break;
            }
        }
    }
    join_killed(r, &mut child, "sender");
    Ok(())
}

fn slow_square(x: u64) -> u64 {
    spin(20_000);
    x * x
}

/// A pool of two workers maps 200 slow items; one worker is killed inside a task. The map ends
/// with every result right, or with `WorkerLost`; the pool goes on serving after it.
pub(crate) fn pool_worker(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let pool = Pool::new(2).map_err(|e| e.to_string())?;
    let pids = pool.worker_pids();
    let victim = pids[r.rng.below(pids.len() as u64) as usize];
    let delay = r.rng.micros(0, 20_000);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill(victim)
    });
    let items: Vec<u64> = (0..200).collect();
    let res = pool.chunksize(1).map(slow_square, items.clone());
    let t = killer
        .join()
        .map_err(|_| "the killer thread panicked".to_string())?;
    match res {
        Ok(v) => {
            if v.len() != items.len() || v.iter().zip(&items).any(|(a, b)| *a != b * b) {
                r.torn("map returned wrong results after a worker died");
            }
        }
        Err(mp::pool::Error::WorkerLost { .. }) => {}
        Err(e) => r.wrong(format!("map after a worker died: {e}")),
    }
    match pool.apply(slow_square, 7) {
        Ok(49) => r.recovered(t.elapsed().min(RECOVERY_BOUND)),
        Ok(v) => r.torn(format!("apply gave {v}")),
        Err(e) => r.wrong(format!("the pool after a worker died: {e}")),
    }
    pool.close();
    if pool.join().is_err() {
        r.wrong("join of the pool after a worker died");
    }
    Ok(())
}

/// A child builds a pool and maps; the child (the pool's parent) is killed during the map. No
/// worker may outlive it: each dies within a second.
pub(crate) fn pool_parent(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let pids = mp::sync::RawArray::<u32>::zeroed(2).map_err(|e| e.to_string())?;
    let ready = Shared::new(AtomicU32::new(0)).map_err(|e| e.to_string())?;
    let (p, rd) = (pids.clone(), ready.clone());
    let mut child = fork(move || {
        let Ok(pool) = Pool::new(2) else {
            return 1u32;
        };
        for (i, pid) in pool.worker_pids().into_iter().enumerate().take(2) {
            let _ = p.set(i, pid);
        }
        rd.store(1, Ordering::Release);
        let items: Vec<u64> = (0..100_000).collect();
        let _ = pool.map(slow_square, items);
        0
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(r.rng.micros(0, 10_000));
    let t = kill(child.pid());
    join_killed(r, &mut child, "pool parent");
    let workers: Vec<u32> = (0..2)
        .filter_map(|i| pids.get(i).ok())
        .filter(|&p| p != 0)
        .collect();
    let gone = Instant::now() + Duration::from_secs(3);
    loop {
        // SAFETY: kill with signal 0 only asks whether the pid exists.
        let alive: Vec<u32> = workers
            .iter()
            .copied()
            .filter(|&p| unsafe { libc::kill(p as libc::pid_t, 0) } == 0 && !zombie(p))
            .collect();
        if alive.is_empty() {
            r.recovered(t.elapsed());
            break;
        }
        if Instant::now() > gone {
            r.hang(format!("workers {alive:?} outlived their pool's parent"));
            for p in alive {
                kill(p);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A client loops `set` on a manager dict; the server is killed inside a call. The client's
/// next call fails with a typed error within a second, never hangs.
pub(crate) fn manager_server(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let m = Manager::start().map_err(|e| e.to_string())?;
    let d = m.dict::<u64, u64>().map_err(|e| e.to_string())?;
    let server = m.server_pid().ok_or("the manager has no server process")?;
    let delay = r.rng.micros(0, 5000);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill(server)
    });
    let mut i = 0u64;
    let outcome = loop {
        let t0 = Instant::now();
        match d.set(&i, &i) {
            Ok(()) => i += 1,
            Err(e) => break Err((e, t0)),
        }
        if i > 1_000_000 {
            break Ok(());
        }
    };
    let t = killer
        .join()
        .map_err(|_| "the killer thread panicked".to_string())?;
    match outcome {
        Ok(()) => r.wrong("the dict kept working after its server died"),
        Err((mp::manager::Error::ServerGone(_), t0)) => {
            r.recovered(t0.elapsed().min(t.elapsed()));
        }
        Err((e, _)) => r.wrong(format!("a call to a dead server: {e}")),
    }
    drop(d);
    let _ = m.shutdown();
    Ok(())
}

fn triple(x: u64) -> u64 {
    x * 3
}

/// Children start through the fork server while it is killed at a random moment. Each start
/// succeeds (the server is replaced) or fails with a typed error; each started child returns
/// its value.
pub(crate) fn forkserver(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let mut first = Process::new(triple, 1)
        .start_method(StartMethod::ForkServer)
        .start()
        .map_err(|e| e.to_string())?;
    join_ok(r, &mut first, "first forkserver child");
    let server = mp::process::forkserver_pid().ok_or("no fork server")?;
    let delay = r.rng.micros(0, 3000);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill(server)
    });
    for i in 0..6u64 {
        match Process::new(triple, i)
            .start_method(StartMethod::ForkServer)
            .start()
        {
            Ok(mut c) => {
                if let Some(v) = join_ok(r, &mut c, "forkserver child") {
                    if v != i * 3 {
                        r.torn(format!("child {i} returned {v}"));
                    }
                }
            }
            Err(mp::process::Error::ForkServer(_)) | Err(mp::process::Error::Io { .. }) => {}
            Err(e) => r.wrong(format!("start while the server died: {e}")),
        }
    }
    let t = killer
        .join()
        .map_err(|_| "the killer thread panicked".to_string())?;
    r.recovered(t.elapsed().min(Duration::from_millis(1)));
    Ok(())
}
