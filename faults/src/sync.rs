//! mp-sync under fire: lock holders, semaphore, event and condition waiters and notifiers, and
//! barrier parties, killed or frozen at random moments.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mp::sync::{Barrier, Condition, Event, Lock, RLock, RawArray, Semaphore, TryLockError};
use mp::Shared;

use crate::common::{fork, join_killed, join_ok, spin};
use crate::harness::{cont, kill, stop, Fault, Round, RECOVERY_BOUND};

/// The bound of a call that waits for a dead peer's recovery.
const WAIT_BOUND: Duration = Duration::from_secs(3);

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// A child takes the lock, writes a counter into two words one after the other, and releases;
/// the fault hits it anywhere in that loop. The parent then takes the lock: a dead holder's lock
/// comes with `OwnerDied` (the words may differ: the parent repairs them), a free lock with
/// equal words; a frozen holder's lock is never taken over.
pub(crate) fn lock_holder(r: &mut Round<'_>, fault: Fault) -> Result<(), String> {
    let lock = Lock::new().map_err(e)?;
    let words = RawArray::<u64>::zeroed(2).map_err(e)?;
    let quit = Shared::new(AtomicU32::new(0)).map_err(e)?;
    let (l, w, q) = (lock.clone(), words.clone(), quit.clone());
    let mut child = fork(move || {
        let mut i = 0u64;
        while q.load(Ordering::Acquire) == 0 {
            let g = l.lock().unwrap_or_else(|d| d.into_inner());
            i += 1;
            let _ = w.set(0, i);
            spin(200);
            let _ = w.set(1, i);
            drop(g);
        }
        0u32
    })?;
    std::thread::sleep(r.rng.micros(100, 3000));
    let pid = child.pid();
    match fault {
        Fault::Kill => {
            let t = kill(pid);
            match lock.lock_timeout(WAIT_BOUND) {
                Ok(g) => {
                    if words.get(0).ok() != words.get(1).ok() {
                        r.torn("the lock was free but the words it guards differ");
                    }
                    r.recovered(t.elapsed());
                    drop(g);
                }
                Err(TryLockError::OwnerDied(o)) => {
                    let _ = words.set(1, words.get(0).unwrap_or(0));
                    r.recovered(t.elapsed());
                    drop(o.into_inner());
                }
                Err(TryLockError::Timeout) => r.hang("lock of a dead holder"),
            }
            join_killed(r, &mut child, "lock holder");
        }
        Fault::Stop | Fault::Garbage | Fault::Exhaustion(_) => {
            stop(pid);
            let frozen = r.rng.micros(2_000, 40_000);
            let t = Instant::now();
            match lock.lock_timeout(frozen / 2) {
                Ok(g) => {
                    if words.get(0).ok() != words.get(1).ok() {
                        r.torn("the lock was free but the words it guards differ");
                    }
                    drop(g);
                }
                Err(TryLockError::Timeout) => {}
                Err(TryLockError::OwnerDied(_)) => {
                    r.wrong("took the lock of a frozen, live holder")
                }
            }
            std::thread::sleep(frozen.saturating_sub(t.elapsed()));
            cont(pid);
            quit.store(1, Ordering::Release);
            join_ok(r, &mut child, "frozen lock holder");
        }
    }
    Ok(())
}

/// As [`lock_holder`], for an `RLock` taken twice by its holder.
pub(crate) fn rlock_holder(r: &mut Round<'_>, _fault: Fault) -> Result<(), String> {
    let lock = RLock::new().map_err(e)?;
    let words = RawArray::<u64>::zeroed(2).map_err(e)?;
    let (l, w) = (lock.clone(), words.clone());
    let mut child = fork(move || {
        let mut i = 0u64;
        loop {
            let outer = l.lock().unwrap_or_else(|d| d.into_inner());
            let inner = l.lock().unwrap_or_else(|d| d.into_inner());
            i += 1;
            let _ = w.set(0, i);
            spin(200);
            let _ = w.set(1, i);
            drop(inner);
            drop(outer);
            if i == u64::MAX {
                return 0u32;
            }
        }
    })?;
    std::thread::sleep(r.rng.micros(100, 3000));
    let t = kill(child.pid());
    match lock.lock_timeout(WAIT_BOUND) {
        Ok(g) => {
            if words.get(0).ok() != words.get(1).ok() {
                r.torn("the rlock was free but the words it guards differ");
            }
            r.recovered(t.elapsed());
            drop(g);
        }
        Err(TryLockError::OwnerDied(o)) => {
            r.recovered(t.elapsed());
            drop(o.into_inner());
        }
        Err(TryLockError::Timeout) => r.hang("rlock of a dead holder"),
    }
    // Taken over once, the lock works as new: twice more, released twice.
    match (lock.try_acquire(), lock.try_acquire()) {
        (Ok(()), Ok(())) => {
            if lock.release().is_err() || lock.release().is_err() {
                r.wrong("the taken-over rlock could not be released");
            }
        }
        _ => r.wrong("the taken-over rlock could not be taken again"),
    }
    join_killed(r, &mut child, "rlock holder");
    Ok(())
}

/// Two children sleep in `acquire` on an empty semaphore; one is killed (or frozen) while
/// asleep. One `release` must still reach the other.
pub(crate) fn semaphore_waiter(r: &mut Round<'_>, fault: Fault) -> Result<(), String> {
    let sem = Semaphore::new(0).map_err(e)?;
    let (s1, s2) = (sem.clone(), sem.clone());
    let mut victim = fork(move || s1.acquire_timeout(Duration::from_secs(10)))?;
    let mut other = fork(move || s2.acquire_timeout(WAIT_BOUND))?;
    std::thread::sleep(r.rng.micros(0, 3000));
    let pid = victim.pid();
    match fault {
        Fault::Kill => {
            let t = kill(pid);
            // The victim may have been woken already by nothing: it cannot have the permit.
            let _ = sem.release();
            if join_ok(r, &mut other, "surviving waiter") != Some(true) {
                r.lost(
                    1,
                    "a release after a waiter's death did not reach the other waiter",
                );
            } else {
                r.recovered(t.elapsed());
            }
            join_killed(r, &mut victim, "semaphore waiter");
        }
        Fault::Stop | Fault::Garbage | Fault::Exhaustion(_) => {
            stop(pid);
            let _ = sem.release();
            let _ = sem.release();
            let got = join_ok(r, &mut other, "running waiter");
            cont(pid);
            let got2 = join_ok(r, &mut victim, "frozen waiter");
            if got != Some(true) || got2 != Some(true) {
                r.lost(
                    1,
                    "two releases did not reach two waiters when one was frozen",
                );
            }
        }
    }
    Ok(())
}

/// Waiters sleep in an untimed `Event::wait`; one is killed (or frozen), another process sets
/// the event: every living waiter returns.
pub(crate) fn event_waiter(r: &mut Round<'_>, fault: Fault) -> Result<(), String> {
    let ev = Event::new().map_err(e)?;
    let (e1, e2) = (ev.clone(), ev.clone());
    let mut victim = fork(move || {
        e1.wait();
        1u32
    })?;
    let mut other = fork(move || {
        e2.wait();
        1u32
    })?;
    std::thread::sleep(r.rng.micros(0, 3000));
    let pid = victim.pid();
    let setter = ev.clone();
    let mut set_child = fork(move || {
        setter.set();
        0u32
    })?;
    let t = match fault {
        Fault::Kill => Some(kill(pid)),
        _ => {
            stop(pid);
            None
        }
    };
    join_ok(r, &mut set_child, "setter");
    if join_ok(r, &mut other, "waiter").is_none() {
        r.lost(1, "a set event did not wake a waiter");
    }
    match t {
        Some(t) => {
            r.recovered(t.elapsed());
            join_killed(r, &mut victim, "event waiter");
        }
        None => {
            std::thread::sleep(r.rng.micros(1000, 20_000));
            cont(pid);
            join_ok(r, &mut victim, "frozen waiter");
        }
    }
    Ok(())
}

/// Two waiters loop in untimed `Condition::wait`s counting their wake-ups; a notifier loops
/// `notify(1)`; the fault hits the notifier (inside `notify`, over the rounds). Then the parent
/// asks the waiters to quit and calls `notify_all`: both must return, however the notifier died.
pub(crate) fn condition_notifier(r: &mut Round<'_>, fault: Fault) -> Result<(), String> {
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
    let (c, q) = (cond.clone(), quit.clone());
    let mut notifier = fork(move || {
        while q.load(Ordering::Acquire) == 0 {
            let g = c.lock().unwrap_or_else(|d| d.into_inner());
            let _ = c.notify(1);
            drop(g);
            spin(500);
        }
        0u32
    })?;
    std::thread::sleep(r.rng.micros(500, 5000));
    let pid = notifier.pid();
    let t = match fault {
        Fault::Kill => kill(pid),
        Fault::Stop | Fault::Garbage | Fault::Exhaustion(_) => {
            // Frozen, perhaps inside `notify` with the lock held: everyone waits for it, then
            // it carries on.
            stop(pid);
            std::thread::sleep(r.rng.micros(1_000, 30_000));
            cont(pid);
            Instant::now()
        }
    };
    quit.store(1, Ordering::Release);
    let deadline = Instant::now() + WAIT_BOUND;
    // Notify until every waiter is out (a waiter between its check and its wait needs a later
    // notification, as with any condition variable).
    let mut done = vec![false; waiters.len()];
    while done.iter().any(|d| !d) && Instant::now() < deadline {
        match cond.lock_timeout(RECOVERY_BOUND) {
            Ok(g) => {
                let _ = cond.notify_all();
                drop(g);
            }
            Err(TryLockError::OwnerDied(o)) => {
                let _ = cond.notify_all();
                drop(o.into_inner());
            }
            Err(TryLockError::Timeout) => {}
        }
        for (w, d) in waiters.iter_mut().zip(done.iter_mut()) {
            if !*d && matches!(w.join_timeout(Duration::from_millis(5)), Ok(Some(_))) {
                *d = true;
            }
        }
    }
    if done.iter().any(|d| !d) {
        r.hang("condition waiters did not return after notify_all");
        for w in &mut waiters {
            let _ = w.kill();
            let _ = w.join();
        }
    } else {
        r.recovered(t.elapsed());
    }
    match fault {
        Fault::Kill => join_killed(r, &mut notifier, "notifier"),
        Fault::Stop | Fault::Garbage | Fault::Exhaustion(_) => {
            join_ok(r, &mut notifier, "frozen notifier");
        }
    }
    Ok(())
}

/// Three parties pass a barrier with an action in a loop; one party is killed at a random
/// moment (before arriving, while waiting, or while running the action). The others must get
/// a broken barrier within a second, and `reset` makes it work again.
pub(crate) fn barrier_party(r: &mut Round<'_>, _fault: Fault) -> Result<(), String> {
    let barrier = Barrier::new(3).map_err(e)?.with_action(|| spin(2_000));
    let mut parties = Vec::new();
    for _ in 0..2 {
        let b = barrier.clone();
        parties.push(fork(move || {
            let mut passed = 0u32;
            while b.wait().is_ok() {
                passed += 1;
            }
            passed
        })?);
    }
    let b = barrier.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let first_pass = std::sync::Arc::new(AtomicU32::new(0));
    let fp = first_pass.clone();
    let me = std::thread::spawn(move || {
        let mut passed = 0u32;
        while b.wait().is_ok() {
            passed += 1;
            fp.store(passed, Ordering::Release);
        }
        let _ = tx.send(Instant::now());
        passed
    });
    // Every party has arrived once (a party that dies before its first arrival is not known
    // to the barrier, and only a timeout covers it: documented), then the fault.
    let deadline = Instant::now() + WAIT_BOUND;
    while first_pass.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    std::thread::sleep(r.rng.micros(0, 5000));
    let t = kill(parties[0].pid());
    match rx.recv_timeout(WAIT_BOUND) {
        Ok(at) => r.recovered(at.saturating_duration_since(t)),
        Err(_) => {
            r.hang("a party's wait after another party died");
            barrier.abort();
        }
    }
    let _ = me.join();
    if join_ok(r, &mut parties[1], "surviving party").is_none() {
        barrier.abort();
    }
    join_killed(r, &mut parties[0], "barrier party");
    if !barrier.broken() {
        r.wrong("the barrier is not broken after a party died");
    }
    Ok(())
}
