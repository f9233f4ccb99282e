//! Roles the first scenarios left out: a `Condition` waiter killed inside `wait`, an `Event`
//! setter killed inside `set`, a pipe receiver killed inside `recv`, and a pool worker killed
//! while it puts a large result.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mp::pipe::Error as PipeError;
use mp::sync::{Condition, Event, TryLockError};
use mp::{Duplex, Pipe, Pool, Shared};

use crate::common::{fork, join_killed, join_ok, spin};
use crate::harness::{check_of, kill, Fault, Round, RECOVERY_BOUND};

/// The bound of a call that waits for a dead peer's recovery.
const WAIT_BOUND: Duration = Duration::from_secs(3);

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Takes the condition's lock, also from a dead holder (the victim may die holding it, as it
/// takes it back on its way out of `wait`). `None` when it stays held for `RECOVERY_BOUND`.
fn lock_cond(cond: &Condition) -> Option<mp::sync::CondGuard<'_>> {
    match cond.lock_timeout(RECOVERY_BOUND) {
        Ok(g) => Some(g),
        Err(TryLockError::OwnerDied(o)) => Some(o.into_inner()),
        Err(TryLockError::Timeout) => None,
    }
}

/// A victim loops short timed `Condition::wait`s (registering, sleeping, being notified or
/// timing out, taking the lock back: the kill lands anywhere in there); two other waiters
/// sleep in untimed waits. After the kill, the parent sets the quit flag under the lock and
/// calls `notify(1)` once per living waiter, one hold of the lock each: both must return. A
/// dead waiter must not take a notification meant for the living (a lost wake-up would leave
/// one asleep for ever).
pub(crate) fn condition_waiter(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let cond = Condition::new().map_err(e)?;
    let quit = Shared::new(AtomicU32::new(0)).map_err(e)?;
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let (c, q) = (cond.clone(), quit.clone());
        waiters.push(fork(move || {
            let mut g = c.lock().unwrap_or_else(|d| d.into_inner());
            let mut woken = 0u32;
            while q.load(Ordering::Acquire) == 0 {
                g = c.wait(g).unwrap_or_else(|d| d.into_inner());
                woken += 1;
            }
            woken
        })?);
    }
    let c = cond.clone();
    let mut victim = fork(move || -> u32 {
        loop {
            let g = c.lock().unwrap_or_else(|d| d.into_inner());
            let g = match c.wait_timeout(g, Duration::from_micros(200)) {
                Ok((g, _)) => g,
                Err(d) => d.into_inner().0,
            };
            drop(g);
            spin(200);
        }
    })?;
    // The parent notifies too meanwhile, so that the victim is also killed as it is notified.
    let until = Instant::now() + r.rng.micros(500, 5000);
    while Instant::now() < until {
        if let Some(g) = lock_cond(&cond) {
            let _ = cond.notify(1);
            drop(g);
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    let t = kill(victim.pid());
    join_killed(r, &mut victim, "condition waiter");
    match lock_cond(&cond) {
        Some(g) => {
            quit.store(1, Ordering::Release);
            drop(g);
        }
        None => {
            r.hang("the condition's lock after a waiter died");
            quit.store(1, Ordering::Release);
        }
    }
    for _ in 0..waiters.len() {
        if let Some(g) = lock_cond(&cond) {
            let _ = cond.notify(1);
            drop(g);
        }
    }
    let deadline = Instant::now() + WAIT_BOUND;
    let mut out = vec![false; waiters.len()];
    while out.iter().any(|o| !o) && Instant::now() < deadline {
        for (w, o) in waiters.iter_mut().zip(out.iter_mut()) {
            if !*o && matches!(w.join_timeout(Duration::from_millis(5)), Ok(Some(_))) {
                *o = true;
            }
        }
    }
    let asleep = out.iter().filter(|o| !**o).count() as u64;
    if asleep > 0 {
        r.lost(
            asleep,
            "a notify(1) per living waiter left a waiter asleep after another waiter died",
        );
        // Wake them for good, so that the round ends.
        if let Some(g) = lock_cond(&cond) {
            let _ = cond.notify_all();
            drop(g);
        }
        for (w, o) in waiters.iter_mut().zip(&out) {
            if !*o {
                join_ok(r, w, "condition waiter after notify_all");
            }
        }
    } else {
        r.recovered(t.elapsed());
    }
    Ok(())
}

/// A setter loops `set` and `clear`; two waiters loop untimed `wait`s until a quit flag; the
/// setter is killed at a random moment (inside `set` or `clear`). Then the parent sets the
/// flag and the event: every waiter returns, and `clear`, `is_set` and `set` still work.
pub(crate) fn event_setter(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let ev = Event::new().map_err(e)?;
    let quit = Shared::new(AtomicU32::new(0)).map_err(e)?;
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let (ev, q) = (ev.clone(), quit.clone());
        waiters.push(fork(move || {
            let mut woken = 0u32;
            while q.load(Ordering::Acquire) == 0 {
                ev.wait();
                woken += 1;
            }
            woken
        })?);
    }
    let s = ev.clone();
    let mut setter = fork(move || -> u32 {
        loop {
            s.set();
            spin(100);
            s.clear();
            spin(100);
        }
    })?;
    std::thread::sleep(r.rng.micros(200, 5000));
    let t = kill(setter.pid());
    join_killed(r, &mut setter, "event setter");
    quit.store(1, Ordering::Release);
    ev.set();
    let mut living = 0u64;
    for w in &mut waiters {
        if join_ok(r, w, "event waiter").is_some() {
            living += 1;
        }
    }
    if living == waiters.len() as u64 {
        r.recovered(t.elapsed());
    } else {
        r.lost(
            waiters.len() as u64 - living,
            "a set after the setter died did not wake a waiter",
        );
    }
    ev.clear();
    if ev.is_set() {
        r.wrong("the event stayed set after clear (a dead setter's state)");
    }
    ev.set();
    if !ev.is_set() || !ev.wait_timeout(Duration::ZERO) {
        r.wrong("the event did not stay set after set");
    }
    Ok(())
}

/// A receiver loops `recv` of numbered, checksummed messages (some larger than the ring,
/// streamed in fragments); the parent sends; the receiver is killed at a random moment (inside
/// a receive, over the rounds). The parent's sends then end with a typed error
/// (`BrokenPipe`) within a second of the death, or complete while the ring has room: never a
/// send that blocks for ever on a dead reader.
pub(crate) fn pipe_receiver(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let (a, b) =
        Pipe::<(u64, u64, Vec<u8>)>::with_capacity(Duplex, 16 << 10).map_err(|e| e.to_string())?;
    let mut child = fork(move || {
        let mut next = 0u64;
        loop {
            match b.recv() {
                Ok((seq, check, body)) => {
                    let intact =
                        check == check_of(seq) && body.iter().all(|&x| x == (seq & 0xff) as u8);
                    if seq != next || !intact {
                        return 2u32;
                    }
                    next += 1;
                }
                Err(_) => return 1,
            }
        }
    })?;
    let until = Instant::now() + r.rng.micros(200, 5000);
    let mut t = None;
    let mut seq = 0u64;
    loop {
        if t.is_none() && Instant::now() >= until {
            t = Some(kill(child.pid()));
        }
        let pad = if seq % 4 == 0 { 40 << 10 } else { 64 };
        let body = vec![(seq & 0xff) as u8; pad];
        match a.send(&(seq, check_of(seq), body)) {
            Ok(()) => seq += 1,
            Err(PipeError::BrokenPipe) | Err(PipeError::Eof) => {
                match t {
                    Some(t) if t.elapsed() <= WAIT_BOUND => r.recovered(t.elapsed()),
                    Some(_) => r.hang("sends went on long after the receiver died"),
                    None => r.wrong("a broken pipe before the receiver died"),
                }
                break;
            }
            Err(e) => {
                r.wrong(format!("send after the receiver died: {e}"));
                break;
            }
        }
        if t.is_some_and(|t| t.elapsed() > WAIT_BOUND) {
            r.hang("sends to a dead receiver still succeed after 3 s");
            break;
        }
    }
    match child.join_timeout(crate::common::JOIN_BOUND) {
        Err(mp::process::ProcessError::Signaled { signal: 9, .. }) => {}
        Ok(Some(2)) => r.torn("the receiver got a message out of order or corrupted"),
        Ok(Some(c)) => r.wrong(format!("the receiver ended by itself with {c}")),
        Ok(None) => {
            r.hang("the killed receiver did not end");
            let _ = child.kill();
            let _ = child.join();
        }
        Err(e) => r.wrong(format!("the killed receiver ended with {e}")),
    }
    Ok(())
}

/// A large result: 48 KiB of `x`'s low byte, then its checksum.
fn big_result(x: u64) -> (u64, Vec<u8>) {
    (check_of(x), vec![(x & 0xff) as u8; 48 << 10])
}

/// A pool of two workers maps 600 items whose task is trivial and whose result is large (48
/// KiB), so that a worker spends most of its time putting results; one worker is killed at a
/// random moment of the map (0 to 12 ms in, while the map lasts longer), mostly inside that
/// put. The map ends with every result right (none torn
/// or duplicated), or with `WorkerLost`; the pool then serves `apply`.
pub(crate) fn pool_worker_result(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let pool = Pool::new(2).map_err(|e| e.to_string())?;
    let pids = pool.worker_pids();
    let victim = pids[r.rng.below(pids.len() as u64) as usize];
    let delay = r.rng.micros(0, 12_000);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill(victim)
    });
    let items: Vec<u64> = (0..600).collect();
    let res = pool.chunksize(1).map(big_result, items.clone());
    let t = killer
        .join()
        .map_err(|_| "the killer thread panicked".to_string())?;
    match res {
        Ok(v) => {
            let right = v.len() == items.len()
                && v.iter().zip(&items).all(|((c, body), &x)| {
                    *c == check_of(x)
                        && body.len() == 48 << 10
                        && body.iter().all(|&b| b == (x & 0xff) as u8)
                });
            if !right {
                r.torn("map returned wrong results after a worker died in a result put");
            }
        }
        Err(mp::pool::Error::WorkerLost { .. }) => {}
        Err(e) => r.wrong(format!("map after a worker died in a result put: {e}")),
    }
    match pool.apply(big_result, 7) {
        Ok((c, body)) if c == check_of(7) && body.len() == 48 << 10 => {
            r.recovered(t.elapsed().min(RECOVERY_BOUND))
        }
        Ok(_) => r.torn("apply gave a wrong result"),
        Err(e) => r.wrong(format!("the pool after a worker died: {e}")),
    }
    pool.close();
    if pool.join().is_err() {
        r.wrong("join of the pool after a worker died");
    }
    Ok(())
}
