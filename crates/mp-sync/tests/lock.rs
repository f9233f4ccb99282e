//! Lock and RLock across real processes: CONFORMANCE S1, S2, S7, and lost-update freedom.

mod common;

mp_process::test_support!();

use std::time::{Duration, Instant};

use common::{assert_about, eventually, start, under, Exit, Mode};
use mp_sync::{Error, Event, Lock, RLock, RawValue, TryLockError};
use static_assertions::assert_impl_all;

assert_impl_all!(Lock: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(RLock: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(mp_sync::LockGuard<'static>: Send, Sync);
static_assertions::assert_not_impl_any!(mp_sync::RLockGuard<'static>: Send);

fn child_release(lock: Lock) -> i32 {
    match lock.release() {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn child_increment((lock, counter, n): (Lock, RawValue<u64>, u32)) -> i32 {
    for _ in 0..n {
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Not an atomic increment: only the lock keeps updates from being lost.
        let v = counter.get();
        std::hint::black_box(());
        counter.set(v + 1);
    }
    0
}

fn child_hold_forever((lock, ready): (Lock, Event)) -> i32 {
    lock.acquire().ok();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn child_rlock_release(rlock: RLock) -> i32 {
    match rlock.release() {
        Err(Error::NotOwner) => 0,
        _ => 1,
    }
}

fn child_rlock_hold_forever((rlock, ready): (RLock, Event)) -> i32 {
    let _a = rlock.lock().ok();
    let _b = rlock.lock().ok();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn s1_lock_semantics() {
    let lock = Lock::new().unwrap();
    assert!(lock.acquire().is_ok());
    assert!(lock.is_locked());
    assert_eq!(lock.holder_pid(), Some(std::process::id()));
    assert!(matches!(lock.try_acquire(), Err(TryLockError::Timeout)));
    let t0 = Instant::now();
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(100)),
        Err(TryLockError::Timeout)
    ));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    lock.release().unwrap();
    assert!(matches!(lock.release(), Err(Error::NotLocked)));
    assert!(!lock.is_locked());
    // Guards.
    {
        let g = lock.lock().unwrap();
        assert!(lock.try_lock().is_err());
        g.unlock();
    }
    let g = lock.lock_timeout(Duration::from_millis(10)).unwrap();
    drop(g);
    assert!(!lock.is_locked());
}

#[test]
fn lock_waiter_in_another_thread_is_woken() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let lock = Lock::new().unwrap();
    let g = lock.lock().unwrap();
    let got = Arc::new(AtomicBool::new(false));
    let (l2, got2) = (lock.clone(), got.clone());
    let t = std::thread::spawn(move || {
        let g = l2.lock_timeout(Duration::from_secs(10)).unwrap();
        got2.store(true, Ordering::SeqCst);
        drop(g);
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!got.load(Ordering::SeqCst), "the waiter got a held lock");
    drop(g);
    t.join().unwrap();
    assert!(got.load(Ordering::SeqCst));
}

fn s1_release_from_other_process(mode: Mode) {
    let lock = Lock::new().unwrap();
    lock.acquire().unwrap();
    let mut kid = start(mode, child_release, &lock);
    kid.join_ok();
    assert!(!lock.is_locked(), "the child released the parent's lock");
    // And now the child's release finds it unlocked.
    let mut kid = start(mode, child_release, &lock);
    assert_eq!(kid.join(Duration::from_secs(30)), Exit::Code(1));
}

#[test]
fn s1_release_from_other_process_fork() {
    under(
        Mode::Fork,
        "s1_release_from_other_process_fork",
        s1_release_from_other_process,
    );
}

#[test]
fn s1_release_from_other_process_spawn() {
    under(Mode::Spawn, "", s1_release_from_other_process);
}

fn two_processes_lose_no_increment(mode: Mode) {
    let lock = Lock::new().unwrap();
    let counter = RawValue::new(0u64).unwrap();
    let args = (lock.clone(), counter.clone(), 10_000u32);
    let mut a = start(mode, child_increment, &args);
    let mut b = start(mode, child_increment, &args);
    a.join_ok();
    b.join_ok();
    assert_eq!(counter.get(), 20_000);
    assert!(!lock.is_locked());
}

#[test]
fn two_processes_lose_no_increment_fork() {
    under(
        Mode::Fork,
        "two_processes_lose_no_increment_fork",
        two_processes_lose_no_increment,
    );
}

#[test]
fn two_processes_lose_no_increment_spawn() {
    under(Mode::Spawn, "", two_processes_lose_no_increment);
}

fn s7_holder_killed(mode: Mode) {
    let lock = Lock::new().unwrap();
    let ready = Event::new().unwrap();
    let mut kid = start(mode, child_hold_forever, &(lock.clone(), ready.clone()));
    assert!(
        ready.wait_timeout(Duration::from_secs(20)),
        "the child took the lock"
    );
    assert_eq!(lock.holder_pid(), Some(kid.pid()));
    // A live holder: the lock stays held.
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(30)),
        Err(TryLockError::Timeout)
    ));
    kid.kill();
    // Not reaped yet: a zombie holder is dead too.
    let t0 = Instant::now();
    match lock.lock_timeout(Duration::from_secs(10)) {
        Err(TryLockError::OwnerDied(died)) => {
            assert_eq!(died.pid(), kid.pid());
            let guard = died.into_inner();
            assert_eq!(lock.holder_pid(), Some(std::process::id()));
            drop(guard);
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(kid.join(Duration::from_secs(10)), Exit::Signal(9));
    // Only one acquirer is told; the lock works normally after.
    assert!(lock.lock().is_ok());
}

#[test]
fn s7_lock_holder_killed_fork() {
    under(Mode::Fork, "s7_lock_holder_killed_fork", s7_holder_killed);
}

#[test]
fn s7_lock_holder_killed_spawn() {
    under(Mode::Spawn, "", s7_holder_killed);
}

#[test]
fn blocked_waiter_gets_owner_died_when_holder_is_killed_and_reaped() {
    let lock = Lock::new().unwrap();
    let ready = Event::new().unwrap();
    let mut kid = start(
        Mode::Spawn,
        child_hold_forever,
        &(lock.clone(), ready.clone()),
    );
    assert!(ready.wait_timeout(Duration::from_secs(20)));
    let l2 = lock.clone();
    // Two waiters already asleep when the holder dies: exactly one is told.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let l = l2.clone();
            std::thread::spawn(move || match l.acquire_timeout(Duration::from_secs(10)) {
                Ok(()) => {
                    std::thread::sleep(Duration::from_millis(5));
                    l.release().unwrap();
                    0
                }
                Err(TryLockError::OwnerDied(_)) => {
                    std::thread::sleep(Duration::from_millis(5));
                    l.release().unwrap();
                    1
                }
                Err(TryLockError::Timeout) => 100,
            })
        })
        .collect();
    // Long enough for the waiters to back off to their longest sleep between checks.
    std::thread::sleep(Duration::from_millis(400));
    let killed_at = Instant::now();
    kid.kill();
    assert_eq!(kid.join(Duration::from_secs(10)), Exit::Signal(9));
    let told: i32 = waiters.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(told, 1, "exactly one waiter gets OwnerDied, none times out");
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "the waiters got the lock {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(!lock.is_locked());
}

#[test]
fn s2_rlock_semantics() {
    let r = RLock::new().unwrap();
    for _ in 0..3 {
        r.acquire().unwrap();
    }
    assert_eq!(r.depth(), 3);
    assert!(r.is_owned());
    for _ in 0..3 {
        r.release().unwrap();
    }
    assert!(matches!(r.release(), Err(Error::NotOwner)));
    // Another thread cannot release, nor acquire while we hold it.
    r.acquire().unwrap();
    let r2 = r.clone();
    let t = std::thread::spawn(move || {
        let not_owner = matches!(r2.release(), Err(Error::NotOwner));
        let timed_out = matches!(
            r2.acquire_timeout(Duration::from_millis(50)),
            Err(TryLockError::Timeout)
        );
        not_owner && timed_out
    });
    assert!(t.join().unwrap());
    r.release().unwrap();
    // Guards nest.
    let a = r.lock().unwrap();
    let b = r.try_lock().unwrap();
    assert_eq!(r.depth(), 2);
    drop(b);
    drop(a);
    assert_eq!(r.depth(), 0);
}

fn s2_rlock_release_by_other_process(mode: Mode) {
    let r = RLock::new().unwrap();
    r.acquire().unwrap();
    let mut kid = start(mode, child_rlock_release, &r);
    kid.join_ok();
    assert!(r.is_owned());
    r.release().unwrap();
    // Unlocked: the child's release is still an error.
    let mut kid = start(mode, child_rlock_release, &r);
    kid.join_ok();
}

#[test]
fn s2_rlock_release_by_other_process_fork() {
    under(
        Mode::Fork,
        "s2_rlock_release_by_other_process_fork",
        s2_rlock_release_by_other_process,
    );
}

#[test]
fn s2_rlock_release_by_other_process_spawn() {
    under(Mode::Spawn, "", s2_rlock_release_by_other_process);
}

#[test]
fn rlock_held_by_a_forked_parent_is_not_owned_by_the_child() {
    under(
        Mode::Fork,
        "rlock_held_by_a_forked_parent_is_not_owned_by_the_child",
        |mode| {
            let r = RLock::new().unwrap();
            r.acquire().unwrap();
            // The child is a copy of this thread: it must still not be the owner.
            let mut kid = start(mode, child_rlock_release, &r);
            kid.join_ok();
            assert_eq!(r.depth(), 1);
        },
    );
}

fn rlock_holder_killed(mode: Mode) {
    let r = RLock::new().unwrap();
    let ready = Event::new().unwrap();
    let mut kid = start(mode, child_rlock_hold_forever, &(r.clone(), ready.clone()));
    assert!(ready.wait_timeout(Duration::from_secs(20)));
    kid.kill();
    assert_eq!(kid.join(Duration::from_secs(10)), Exit::Signal(9));
    match r.lock_timeout(Duration::from_secs(10)) {
        Err(TryLockError::OwnerDied(died)) => {
            let g = died.into_inner();
            // Whatever depth the dead owner had, we hold exactly one level.
            assert_eq!(r.depth(), 1);
            drop(g);
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert_eq!(r.depth(), 0);
    assert!(r.try_lock().is_ok());
}

#[test]
fn rlock_holder_killed_fork() {
    under(Mode::Fork, "rlock_holder_killed_fork", rlock_holder_killed);
}

#[test]
fn rlock_holder_killed_spawn() {
    under(Mode::Spawn, "", rlock_holder_killed);
}

#[test]
fn rlock_owner_thread_that_exits_is_dead() {
    let r = RLock::new().unwrap();
    let r2 = r.clone();
    std::thread::spawn(move || {
        r2.acquire().unwrap();
        // Exits holding it.
    })
    .join()
    .unwrap();
    match r.try_acquire() {
        Err(TryLockError::OwnerDied(_)) => {}
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    r.release().unwrap();
}

#[test]
fn a_lock_that_another_thread_waits_on_can_be_waited_with_timeout_without_hanging() {
    // Many short timed attempts against a holder that stays alive: all time out, none hangs.
    let lock = Lock::new().unwrap();
    let _g = lock.lock().unwrap();
    let l = lock.clone();
    let t = std::thread::spawn(move || {
        (0..20).all(|_| {
            matches!(
                l.acquire_timeout(Duration::from_millis(2)),
                Err(TryLockError::Timeout)
            )
        })
    });
    assert!(t.join().unwrap());
    assert!(eventually(Duration::from_secs(1), || lock.is_locked()));
}
