//! Condition across real processes: CONFORMANCE S5, notify(n) exactness, dead lock holder.

mod common;

mp_process::test_support!();

use std::time::{Duration, Instant};

use common::{assert_about, eventually, start, under, Exit, Mode};
use mp_sync::{CondLock, Condition, Error, Event, Lock, RLock, RawValue, TryLockError};
use static_assertions::assert_impl_all;

assert_impl_all!(Condition: Send, Sync, Clone, std::fmt::Debug);
static_assertions::assert_not_impl_any!(mp_sync::CondGuard<'static>: Send);

/// Registers (counted in `ready`), waits up to 20 s; counts itself in `woken` if notified.
fn child_wait((cond, ready, woken): (Condition, RawValue<u32>, RawValue<u32>)) -> i32 {
    let g = cond.lock().unwrap_or_else(|e| e.into_inner());
    ready.set(ready.get() + 1);
    let (g, notified) = cond
        .wait_timeout(g, Duration::from_secs(20))
        .unwrap_or_else(|e| e.into_inner());
    if notified {
        woken.set(woken.get() + 1);
    }
    drop(g);
    if notified {
        0
    } else {
        3
    }
}

fn child_set_and_notify((cond, flag): (Condition, RawValue<u32>)) -> i32 {
    std::thread::sleep(Duration::from_millis(50));
    let g = cond.lock().unwrap_or_else(|e| e.into_inner());
    flag.set(1);
    let r = cond.notify_all();
    drop(g);
    match r {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

fn child_hold_forever((cond, ready): (Condition, Event)) -> i32 {
    let _g = cond.lock().ok();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn s5_timed_wait_without_notify() {
    for cond in [
        Condition::new().unwrap(),
        Condition::with_lock(Lock::new().unwrap()).unwrap(),
    ] {
        let g = cond.lock().unwrap();
        let t0 = Instant::now();
        let (g, notified) = cond.wait_timeout(g, Duration::from_millis(100)).unwrap();
        assert!(!notified);
        assert_about(t0.elapsed(), Duration::from_millis(100));
        assert!(cond.is_held(), "the lock is held again after the wait");
        drop(g);
        assert!(!cond.is_held());
    }
}

#[test]
fn s5_notify_without_the_lock_is_an_error() {
    let cond = Condition::new().unwrap();
    assert!(matches!(cond.notify(1), Err(Error::NotOwner)));
    assert!(matches!(cond.notify_all(), Err(Error::NotOwner)));
    // Held by another thread is not held by us.
    let c2 = cond.clone();
    let g = cond.lock().unwrap();
    let other = std::thread::spawn(move || matches!(c2.notify(1), Err(Error::NotOwner)));
    assert!(other.join().unwrap());
    assert_eq!(cond.notify(1).unwrap(), 0);
    drop(g);
}

#[test]
#[should_panic(expected = "another condition")]
fn waiting_with_the_guard_of_another_condition_panics() {
    let a = Condition::new().unwrap();
    let b = Condition::new().unwrap();
    let g = a.lock().unwrap();
    let _ = b.wait_timeout(g, Duration::from_millis(1));
}

#[test]
fn wait_releases_every_level_of_the_rlock() {
    let r = RLock::new().unwrap();
    let cond = Condition::with_lock(r.clone()).unwrap();
    let g1 = cond.lock().unwrap();
    let g2 = cond.lock().unwrap();
    assert_eq!(r.depth(), 2);
    let c2 = cond.clone();
    let r2 = r.clone();
    let t = std::thread::spawn(move || {
        // Gets the lock while the main thread waits: every level was released.
        let g = c2.lock_timeout(Duration::from_secs(10)).unwrap();
        let free = r2.depth() == 1;
        c2.notify(1).unwrap();
        drop(g);
        free
    });
    let (g2, notified) = cond.wait_timeout(g2, Duration::from_secs(10)).unwrap();
    assert!(notified);
    assert!(t.join().unwrap());
    assert_eq!(r.depth(), 2, "every level is restored");
    drop(g2);
    drop(g1);
    assert_eq!(r.depth(), 0);
}

fn notify_wakes_exactly_n(mode: Mode, lock: CondLock) {
    const N: u32 = 6;
    let cond = Condition::with_lock(lock).unwrap();
    let ready = RawValue::new(0u32).unwrap();
    let woken = RawValue::new(0u32).unwrap();
    let args = (cond.clone(), ready.clone(), woken.clone());
    let mut kids: Vec<_> = (0..N).map(|_| start(mode, child_wait, &args)).collect();
    // Each child counts itself ready and registers as a waiter under the lock, so once all
    // are ready and we hold the lock, all are registered.
    assert!(eventually(Duration::from_secs(30), || ready.get() == N));
    let woken_now = || {
        let _g = cond.lock().unwrap();
        woken.get()
    };
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify(2).unwrap(), 2);
    drop(g);
    assert!(eventually(Duration::from_secs(10), || woken_now() == 2));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(woken_now(), 2, "notify(2) woke exactly two");
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify(3).unwrap(), 3);
    drop(g);
    assert!(eventually(Duration::from_secs(10), || woken_now() == 5));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(woken_now(), 5);
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify_all().unwrap(), 1);
    assert_eq!(cond.notify_all().unwrap(), 0);
    drop(g);
    for k in &mut kids {
        k.join_ok();
    }
    assert_eq!(woken.get(), N);
}

#[test]
fn notify_wakes_exactly_n_rlock_fork() {
    under(Mode::Fork, "notify_wakes_exactly_n_rlock_fork", |m| {
        notify_wakes_exactly_n(m, RLock::new().unwrap().into())
    });
}

#[test]
fn notify_wakes_exactly_n_rlock_spawn() {
    notify_wakes_exactly_n(Mode::Spawn, RLock::new().unwrap().into());
}

#[test]
fn notify_wakes_exactly_n_lock_fork() {
    under(Mode::Fork, "notify_wakes_exactly_n_lock_fork", |m| {
        notify_wakes_exactly_n(m, Lock::new().unwrap().into())
    });
}

#[test]
fn notify_wakes_exactly_n_lock_spawn() {
    notify_wakes_exactly_n(Mode::Spawn, Lock::new().unwrap().into());
}

fn s5_notify_all_wakes_every_process(mode: Mode) {
    let cond = Condition::new().unwrap();
    let ready = RawValue::new(0u32).unwrap();
    let woken = RawValue::new(0u32).unwrap();
    let args = (cond.clone(), ready.clone(), woken.clone());
    let mut kids: Vec<_> = (0..4).map(|_| start(mode, child_wait, &args)).collect();
    assert!(eventually(Duration::from_secs(30), || ready.get() == 4));
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify_all().unwrap(), 4);
    drop(g);
    for k in &mut kids {
        k.join_ok();
    }
    assert_eq!(woken.get(), 4);
}

#[test]
fn s5_notify_all_wakes_every_process_fork() {
    under(
        Mode::Fork,
        "s5_notify_all_wakes_every_process_fork",
        s5_notify_all_wakes_every_process,
    );
}

#[test]
fn s5_notify_all_wakes_every_process_spawn() {
    s5_notify_all_wakes_every_process(Mode::Spawn);
}

fn wait_for_a_childs_update(mode: Mode) {
    let cond = Condition::new().unwrap();
    let flag = RawValue::new(0u32).unwrap();
    let g = cond.lock().unwrap();
    let mut kid = start(mode, child_set_and_notify, &(cond.clone(), flag.clone()));
    let (g, ok) = cond
        .wait_for(g, || flag.get() == 1, Some(Duration::from_secs(20)))
        .unwrap();
    assert!(ok);
    drop(g);
    kid.join_ok();
    // A predicate that never holds: false after the timeout.
    let g = cond.lock().unwrap();
    let t0 = Instant::now();
    let (_g, ok) = cond
        .wait_for(g, || flag.get() == 2, Some(Duration::from_millis(100)))
        .unwrap();
    assert!(!ok);
    assert_about(t0.elapsed(), Duration::from_millis(100));
}

#[test]
fn wait_for_a_childs_update_fork() {
    under(
        Mode::Fork,
        "wait_for_a_childs_update_fork",
        wait_for_a_childs_update,
    );
}

#[test]
fn wait_for_a_childs_update_spawn() {
    wait_for_a_childs_update(Mode::Spawn);
}

fn lock_holder_killed(mode: Mode) {
    let cond = Condition::new().unwrap();
    let ready = Event::new().unwrap();
    let mut kid = start(mode, child_hold_forever, &(cond.clone(), ready.clone()));
    assert!(ready.wait_timeout(Duration::from_secs(20)));
    kid.kill();
    let t0 = Instant::now();
    match cond.lock_timeout(Duration::from_secs(10)) {
        Err(TryLockError::OwnerDied(d)) => {
            let g = d.into_inner();
            assert!(cond.is_held());
            drop(g);
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(kid.join(Duration::from_secs(10)), Exit::Signal(9));
}

#[test]
fn lock_holder_killed_fork() {
    under(Mode::Fork, "lock_holder_killed_fork", lock_holder_killed);
}

#[test]
fn lock_holder_killed_spawn() {
    lock_holder_killed(Mode::Spawn);
}

/// Registers (`ready` set to 1), then waits without a timeout; 0 once it returns notified.
fn child_wait_untimed((cond, ready): (Condition, RawValue<u32>)) -> i32 {
    let g = cond.lock().unwrap_or_else(|e| e.into_inner());
    ready.set(1);
    // The notifier is killed while it holds the lock: the lock comes back as OwnerDied.
    let g = cond.wait(g).unwrap_or_else(|e| e.into_inner());
    drop(g);
    0
}

static PAUSED: std::sync::OnceLock<Event> = std::sync::OnceLock::new();

/// The fault hook: tell the test we are inside `notify`, then wait to be killed.
fn pause_inside_notify() {
    if let Some(ev) = PAUSED.get() {
        ev.set();
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Notifies one waiter, pausing (for good) inside `notify` between its steps.
fn child_notify_and_stall((cond, paused): (Condition, Event)) -> i32 {
    let _ = PAUSED.set(paused);
    assert!(mp_sync::testing::set_notify_fault(pause_inside_notify));
    let g = cond.lock().unwrap_or_else(|e| e.into_inner());
    let _ = cond.notify(1);
    drop(g);
    4 // not reached: killed inside notify
}

/// Issue 13 item 4: a notifier SIGKILLed inside `notify`, after it counted the waiter as
/// notified and before it woke anyone, must not leave the waiter asleep forever.
fn notifier_killed_inside_notify(mode: Mode) {
    let cond = Condition::new().unwrap();
    let ready = RawValue::new(0u32).unwrap();
    let mut waiter = start(mode, child_wait_untimed, &(cond.clone(), ready.clone()));
    assert!(eventually(Duration::from_secs(30), || ready.get() == 1));
    // The waiter registered under the lock: once we get the lock, it waits.
    drop(cond.lock().unwrap());
    let paused = Event::new().unwrap();
    let mut notifier = start(
        mode,
        child_notify_and_stall,
        &(cond.clone(), paused.clone()),
    );
    assert!(
        paused.wait_timeout(Duration::from_secs(30)),
        "the notifier paused"
    );
    notifier.kill();
    assert_eq!(notifier.join(Duration::from_secs(10)), Exit::Signal(9));
    // The waiter wakes (it was notified) and returns; before the fix it slept forever.
    assert_eq!(waiter.join(Duration::from_secs(20)), Exit::Code(0));
}

#[test]
fn notifier_killed_inside_notify_fork() {
    under(
        Mode::Fork,
        "notifier_killed_inside_notify_fork",
        notifier_killed_inside_notify,
    );
}

#[test]
fn notifier_killed_inside_notify_spawn() {
    notifier_killed_inside_notify(Mode::Spawn);
}

/// Waits at most 20 s; 0 when notified, 3 when not.
fn child_wait_once((cond, ready): (Condition, RawValue<u32>)) -> i32 {
    let g = cond.lock().unwrap_or_else(|e| e.into_inner());
    ready.set(1);
    let (g, notified) = cond
        .wait_timeout(g, Duration::from_secs(20))
        .unwrap_or_else(|e| e.into_inner());
    drop(g);
    if notified {
        0
    } else {
        3
    }
}

/// Issue 13 item 9: `notify(1)` goes to the waiter that was asleep when it was called; the
/// notifier, waiting right after, must not take it back (CPython's semantics).
fn notify_goes_to_the_earlier_waiter(mode: Mode) {
    let cond = Condition::new().unwrap();
    let ready = RawValue::new(0u32).unwrap();
    let mut a = start(mode, child_wait_once, &(cond.clone(), ready.clone()));
    assert!(eventually(Duration::from_secs(30), || ready.get() == 1));
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify(1).unwrap(), 1, "A was waiting");
    // B (this process) waits right after its own notify: nobody notifies it.
    let (g, notified) = cond.wait_timeout(g, Duration::from_millis(300)).unwrap();
    assert!(!notified, "the notifier took its own notification back");
    drop(g);
    assert_eq!(
        a.join(Duration::from_secs(30)),
        Exit::Code(0),
        "A was not notified"
    );
}

#[test]
fn notify_goes_to_the_earlier_waiter_fork() {
    under(
        Mode::Fork,
        "notify_goes_to_the_earlier_waiter_fork",
        notify_goes_to_the_earlier_waiter,
    );
}

#[test]
fn notify_goes_to_the_earlier_waiter_spawn() {
    notify_goes_to_the_earlier_waiter(Mode::Spawn);
}

/// Producer and consumers on one condition, notify(1) per item and notify_all at the end:
/// every item is taken, nobody is left waiting, and the counts return to zero.
#[test]
fn producer_consumers_threads_drain_every_item() {
    const ITEMS: u32 = 3000;
    const CONSUMERS: u32 = 4;
    let cond = Condition::new().unwrap();
    let items = RawValue::new(0u32).unwrap();
    let done = RawValue::new(0u32).unwrap();
    let taken = RawValue::new(0u32).unwrap();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (cond, items, done, taken) =
                (cond.clone(), items.clone(), done.clone(), taken.clone());
            std::thread::spawn(move || loop {
                let g = cond.lock().unwrap();
                let (g, _) = cond
                    .wait_for(
                        g,
                        || items.get() > 0 || done.get() == 1,
                        Some(Duration::from_secs(30)),
                    )
                    .unwrap();
                if items.get() > 0 {
                    items.set(items.get() - 1);
                    taken.set(taken.get() + 1);
                } else if done.get() == 1 {
                    drop(g);
                    return;
                } else {
                    panic!("a consumer waited 30 s with nothing to do");
                }
            })
        })
        .collect();
    for i in 0..ITEMS {
        let g = cond.lock().unwrap();
        items.set(items.get() + 1);
        if i % 7 == 0 {
            cond.notify_all().unwrap();
        } else {
            cond.notify(1).unwrap();
        }
        drop(g);
    }
    let g = cond.lock().unwrap();
    done.set(1);
    cond.notify_all().unwrap();
    drop(g);
    for c in consumers {
        c.join().unwrap();
    }
    assert_eq!(taken.get(), ITEMS);
    assert_eq!(items.get(), 0);
    let g = cond.lock().unwrap();
    assert_eq!(
        cond.notify_all().unwrap(),
        0,
        "nobody is counted as waiting"
    );
    drop(g);
}

/// The fault campaign's `condition_waiter` finding (round 206 of `--long`): a waiter killed
/// inside `wait` must take no notification meant for a living waiter. The dead waiter and a
/// living one, A, are notified as one group (A takes the notification: the dead waiter
/// cannot); then two more waiters, B and C, register. Each of the next two `notify(1)` must
/// wake one of them. Before the fix, the dead waiter stayed counted as not yet notified in
/// its group, the first of the two notifies went to it, and B or C slept until its timeout.
fn a_waiter_killed_in_wait_takes_no_notification(mode: Mode) {
    let cond = Condition::new().unwrap();
    let ready = RawValue::new(0u32).unwrap();
    let woken = RawValue::new(0u32).unwrap();
    let args = (cond.clone(), ready.clone(), woken.clone());
    let mut dead = start(mode, child_wait, &args);
    assert!(eventually(Duration::from_secs(30), || ready.get() == 1));
    // It registered under the lock it held when it counted itself: once we get the lock, it
    // waits.
    drop(cond.lock().unwrap());
    dead.kill();
    assert_eq!(dead.join(Duration::from_secs(10)), Exit::Signal(9));

    let mut a = start(mode, child_wait, &args);
    assert!(eventually(Duration::from_secs(30), || ready.get() == 2));
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify(1).unwrap(), 1, "A waits");
    drop(g);
    assert_eq!(
        a.join(Duration::from_secs(30)),
        Exit::Code(0),
        "A was notified"
    );

    let mut b = start(mode, child_wait, &args);
    let mut c = start(mode, child_wait, &args);
    assert!(eventually(Duration::from_secs(30), || ready.get() == 4));
    for _ in 0..2 {
        let g = cond.lock().unwrap();
        assert_eq!(cond.notify(1).unwrap(), 1, "B or C waits");
        drop(g);
    }
    assert_eq!(
        b.join(Duration::from_secs(30)),
        Exit::Code(0),
        "B was notified"
    );
    assert_eq!(
        c.join(Duration::from_secs(30)),
        Exit::Code(0),
        "C was notified"
    );
    assert_eq!(woken.get(), 3);
    // Nobody is left counted: a notify finds nobody.
    let g = cond.lock().unwrap();
    assert_eq!(cond.notify_all().unwrap(), 0);
    drop(g);
}

#[test]
fn a_waiter_killed_in_wait_takes_no_notification_fork() {
    under(
        Mode::Fork,
        "a_waiter_killed_in_wait_takes_no_notification_fork",
        a_waiter_killed_in_wait_takes_no_notification,
    );
}

#[test]
fn a_waiter_killed_in_wait_takes_no_notification_spawn() {
    a_waiter_killed_in_wait_takes_no_notification(Mode::Spawn);
}
