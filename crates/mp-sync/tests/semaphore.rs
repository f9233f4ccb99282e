//! Semaphore and BoundedSemaphore across real processes: CONFORMANCE S3, and a permit holder
//! that is SIGKILLed.

mod common;

mp_process::test_support!();

use std::time::{Duration, Instant};

use common::{assert_about, start, under, Exit, Mode};
use mp_sync::{BoundedSemaphore, Error, Event, Semaphore};
use static_assertions::assert_impl_all;

assert_impl_all!(Semaphore: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(BoundedSemaphore: Send, Sync, Clone, std::fmt::Debug);

fn child_acquire_then_flag((sem, started, done): (Semaphore, Event, Event)) -> i32 {
    started.set();
    if !sem.acquire_timeout(Duration::from_secs(20)) {
        return 1;
    }
    done.set();
    0
}

fn child_release_bounded(sem: BoundedSemaphore) -> i32 {
    match (sem.release(), sem.release()) {
        (Ok(()), Err(Error::TooManyReleases { limit: 1 })) => 0,
        _ => 1,
    }
}

fn child_hold_permit_forever((sem, ready): (Semaphore, Event)) -> i32 {
    sem.acquire();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn s3_semaphore_semantics() {
    let s = Semaphore::new(2).unwrap();
    assert_eq!(s.get_value(), 2);
    assert!(s.try_acquire());
    assert_eq!(s.get_value(), 1);
    s.acquire();
    assert_eq!(s.get_value(), 0);
    assert!(!s.try_acquire());
    let t0 = Instant::now();
    assert!(!s.acquire_timeout(Duration::from_millis(100)));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    for want in 1..=4 {
        s.release().unwrap();
        assert_eq!(s.get_value(), want);
    }
    assert!(Semaphore::new(mp_sync::SEM_VALUE_MAX + 1).is_err());
    let top = Semaphore::new(mp_sync::SEM_VALUE_MAX).unwrap();
    assert!(matches!(top.release(), Err(Error::TooManyReleases { .. })));
    // Guards.
    {
        let _p = s.permit();
        assert_eq!(s.get_value(), 3);
        let _q = s.permit_timeout(Duration::from_millis(1)).unwrap();
        assert_eq!(s.get_value(), 2);
    }
    assert_eq!(s.get_value(), 4);
}

#[test]
fn s3_bounded_semaphore() {
    let s = BoundedSemaphore::new(2).unwrap();
    assert!(matches!(
        s.release(),
        Err(Error::TooManyReleases { limit: 2 })
    ));
    s.acquire();
    s.acquire();
    assert!(!s.try_acquire());
    let t0 = Instant::now();
    assert!(!s.acquire_timeout(Duration::from_millis(100)));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    s.release().unwrap();
    s.release().unwrap();
    assert!(s.release().is_err());
    assert_eq!(s.get_value(), 2);
}

fn bounded_semaphore_in_a_child(mode: Mode) {
    let sem = BoundedSemaphore::new(1).unwrap();
    sem.acquire();
    let mut kid = start(mode, child_release_bounded, &sem);
    kid.join_ok();
    assert_eq!(sem.get_value(), 1);
}

#[test]
fn bounded_semaphore_in_a_child_fork() {
    under(
        Mode::Fork,
        "bounded_semaphore_in_a_child_fork",
        bounded_semaphore_in_a_child,
    );
}

#[test]
fn bounded_semaphore_in_a_child_spawn() {
    under(Mode::Spawn, "", bounded_semaphore_in_a_child);
}

fn child_acquire_untimed_then_flag((sem, done): (Semaphore, Event)) -> i32 {
    sem.acquire();
    done.set();
    0
}

/// A waiter killed just as a `release` wakes it (found by the fault campaign,
/// `semaphore_waiter`): the wake went to the dying process, and the other waiter, asleep
/// without a timeout, slept forever with a permit free. Waiters now sleep in slices and
/// re-check the value, so the other takes the permit.
fn waiter_killed_as_the_release_wakes_it(mode: Mode) {
    for _ in 0..5 {
        let sem = Semaphore::new(0).unwrap();
        let (victim_done, done) = (Event::new().unwrap(), Event::new().unwrap());
        let mut victim = start(
            mode,
            child_acquire_untimed_then_flag,
            &(sem.clone(), victim_done.clone()),
        );
        // Let the victim fall asleep first: a futex wakes its sleepers in order.
        std::thread::sleep(Duration::from_millis(30));
        let mut other = start(
            mode,
            child_acquire_untimed_then_flag,
            &(sem.clone(), done.clone()),
        );
        std::thread::sleep(Duration::from_millis(30));
        victim.kill();
        sem.release().unwrap();
        assert!(
            done.wait_timeout(Duration::from_secs(10)),
            "the surviving waiter never took the free permit"
        );
        other.join_ok();
        assert_eq!(victim.join(Duration::from_secs(10)), Exit::Signal(9));
        assert!(!victim_done.is_set());
    }
}

#[test]
fn waiter_killed_as_the_release_wakes_it_fork() {
    under(
        Mode::Fork,
        "waiter_killed_as_the_release_wakes_it_fork",
        waiter_killed_as_the_release_wakes_it,
    );
}

#[test]
fn waiter_killed_as_the_release_wakes_it_spawn() {
    under(Mode::Spawn, "", waiter_killed_as_the_release_wakes_it);
}

fn release_wakes_a_waiting_process(mode: Mode) {
    let sem = Semaphore::new(0).unwrap();
    let started = Event::new().unwrap();
    let done = Event::new().unwrap();
    let mut kid = start(
        mode,
        child_acquire_then_flag,
        &(sem.clone(), started.clone(), done.clone()),
    );
    assert!(started.wait_timeout(Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(30));
    assert!(!done.is_set(), "no permit yet");
    sem.release().unwrap();
    assert!(done.wait_timeout(Duration::from_secs(10)));
    kid.join_ok();
    assert_eq!(sem.get_value(), 0);
}

#[test]
fn release_wakes_a_waiting_process_fork() {
    under(
        Mode::Fork,
        "release_wakes_a_waiting_process_fork",
        release_wakes_a_waiting_process,
    );
}

#[test]
fn release_wakes_a_waiting_process_spawn() {
    under(Mode::Spawn, "", release_wakes_a_waiting_process);
}

/// The documented behaviour: a semaphore has no owner, so the permits of a dead holder are
/// lost; others do not hang when they use a timeout, and the permit can be given back.
fn permit_holder_killed(mode: Mode) {
    let sem = Semaphore::new(1).unwrap();
    let ready = Event::new().unwrap();
    let mut kid = start(
        mode,
        child_hold_permit_forever,
        &(sem.clone(), ready.clone()),
    );
    assert!(ready.wait_timeout(Duration::from_secs(20)));
    kid.kill();
    assert_eq!(kid.join(Duration::from_secs(10)), Exit::Signal(9));
    let t0 = Instant::now();
    assert!(
        !sem.acquire_timeout(Duration::from_millis(200)),
        "the permit is lost"
    );
    assert_about(t0.elapsed(), Duration::from_millis(200));
    assert_eq!(sem.get_value(), 0);
    // Whoever knows the holder died gives the permit back.
    sem.release().unwrap();
    assert!(sem.acquire_timeout(Duration::from_secs(1)));
}

#[test]
fn permit_holder_killed_fork() {
    under(
        Mode::Fork,
        "permit_holder_killed_fork",
        permit_holder_killed,
    );
}

#[test]
fn permit_holder_killed_spawn() {
    under(Mode::Spawn, "", permit_holder_killed);
}

#[test]
fn many_threads_share_few_permits() {
    let sem = Semaphore::new(2).unwrap();
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let max = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ts: Vec<_> = (0..6)
        .map(|_| {
            let (sem, inside, max) = (sem.clone(), inside.clone(), max.clone());
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::SeqCst;
                for _ in 0..200 {
                    let _p = sem.permit_timeout(Duration::from_secs(10)).expect("permit");
                    let n = inside.fetch_add(1, SeqCst) + 1;
                    max.fetch_max(n, SeqCst);
                    std::hint::spin_loop();
                    inside.fetch_sub(1, SeqCst);
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    assert!(max.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    assert_eq!(sem.get_value(), 2);
}
