//! Barrier across real processes: CONFORMANCE S6, abort, reset, timeout, a dead party.

mod common;

mp_process::test_support!();

use std::time::{Duration, Instant};

use common::{assert_about, eventually, start, under, Exit, Mode};
use mp_sync::{Array, Barrier, Error, Event, Value};
use static_assertions::assert_impl_all;

assert_impl_all!(Barrier: Send, Sync, Clone, std::fmt::Debug);

const CYCLES: usize = 10;

/// Passes the barrier CYCLES times; counts index 0 per cycle in `zeros`. With `set_action`,
/// sets the action itself (a spawned child has none: closures do not cross exec).
fn child_cycles(
    (barrier, zeros, actions, set_action): (Barrier, Array<u32>, Value<u32>, bool),
) -> i32 {
    let barrier = if set_action {
        barrier.with_action(move || *actions.lock().unwrap() += 1)
    } else {
        barrier
    };
    for c in 0..CYCLES {
        match barrier.wait_timeout(Duration::from_secs(20)) {
            Ok(0) => {
                let g = zeros.lock().unwrap();
                g.set(c, g.get(c).unwrap() + 1).unwrap();
            }
            Ok(i) if i < barrier.parties() => {}
            _ => return 1,
        }
    }
    0
}

fn child_expect_broken(barrier: Barrier) -> i32 {
    match barrier.wait_timeout(Duration::from_secs(20)) {
        Err(Error::BrokenBarrier) => 0,
        Ok(_) => 1,
        Err(_) => 2,
    }
}

fn child_pass_once_then_sleep((barrier, passed): (Barrier, Event)) -> i32 {
    if barrier.wait_timeout(Duration::from_secs(20)).is_err() {
        return 1;
    }
    passed.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn s6_five_processes_ten_cycles(mode: Mode) {
    let actions = Value::new(0u32).unwrap();
    let a2 = actions.clone();
    let barrier = Barrier::new(5)
        .unwrap()
        .with_action(move || *a2.lock().unwrap() += 1);
    let zeros = Array::<u32>::zeroed(CYCLES).unwrap();
    // Under fork the children inherit the action; under spawn they set it themselves.
    let args = (
        barrier.clone(),
        zeros.clone(),
        actions.clone(),
        mode == Mode::Spawn,
    );
    let mut kids: Vec<_> = (0..5).map(|_| start(mode, child_cycles, &args)).collect();
    for k in &mut kids {
        k.join_ok();
    }
    assert_eq!(
        zeros.to_vec(),
        vec![1; CYCLES],
        "exactly one index 0 per cycle"
    );
    assert_eq!(
        actions.get(),
        CYCLES as u32,
        "the action ran once per cycle"
    );
    assert!(!barrier.broken());
    assert_eq!(barrier.n_waiting(), 0);
}

#[test]
fn s6_five_processes_ten_cycles_fork() {
    under(
        Mode::Fork,
        "s6_five_processes_ten_cycles_fork",
        s6_five_processes_ten_cycles,
    );
}

#[test]
fn s6_five_processes_ten_cycles_spawn() {
    s6_five_processes_ten_cycles(Mode::Spawn);
}

fn abort_breaks_waiters(mode: Mode) {
    let barrier = Barrier::new(3).unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|_| start(mode, child_expect_broken, &barrier))
        .collect();
    assert!(eventually(Duration::from_secs(30), || barrier.n_waiting() == 2));
    barrier.abort();
    for k in &mut kids {
        k.join_ok();
    }
    assert!(barrier.broken());
    assert!(matches!(barrier.wait(), Err(Error::BrokenBarrier)));
    barrier.reset();
    assert!(!barrier.broken());
    pass_with_threads(&barrier);
}

#[test]
fn abort_breaks_waiters_fork() {
    under(
        Mode::Fork,
        "abort_breaks_waiters_fork",
        abort_breaks_waiters,
    );
}

#[test]
fn abort_breaks_waiters_spawn() {
    abort_breaks_waiters(Mode::Spawn);
}

fn reset_breaks_waiters(mode: Mode) {
    let barrier = Barrier::new(3).unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|_| start(mode, child_expect_broken, &barrier))
        .collect();
    assert!(eventually(Duration::from_secs(30), || barrier.n_waiting() == 2));
    barrier.reset();
    for k in &mut kids {
        k.join_ok();
    }
    assert!(!barrier.broken(), "reset leaves the barrier usable");
    assert_eq!(barrier.n_waiting(), 0);
    pass_with_threads(&barrier);
}

#[test]
fn reset_breaks_waiters_fork() {
    under(
        Mode::Fork,
        "reset_breaks_waiters_fork",
        reset_breaks_waiters,
    );
}

#[test]
fn reset_breaks_waiters_spawn() {
    reset_breaks_waiters(Mode::Spawn);
}

fn timeout_breaks_the_barrier(mode: Mode) {
    let barrier = Barrier::new(3).unwrap();
    let mut kid = start(mode, child_expect_broken, &barrier);
    assert!(eventually(Duration::from_secs(30), || barrier.n_waiting() == 1));
    let t0 = Instant::now();
    assert!(matches!(
        barrier.wait_timeout(Duration::from_millis(100)),
        Err(Error::BrokenBarrier)
    ));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    kid.join_ok();
    assert!(barrier.broken());
}

#[test]
fn timeout_breaks_the_barrier_fork() {
    under(
        Mode::Fork,
        "timeout_breaks_the_barrier_fork",
        timeout_breaks_the_barrier,
    );
}

#[test]
fn timeout_breaks_the_barrier_spawn() {
    timeout_breaks_the_barrier(Mode::Spawn);
}

#[test]
fn default_timeout_applies_to_wait() {
    let barrier = Barrier::with_timeout(2, Duration::from_millis(100)).unwrap();
    let t0 = Instant::now();
    assert!(matches!(barrier.wait(), Err(Error::BrokenBarrier)));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    assert!(barrier.broken());
}

fn dead_party_breaks_the_barrier(mode: Mode) {
    let barrier = Barrier::new(2).unwrap();
    let passed = Event::new().unwrap();
    let mut kid = start(
        mode,
        child_pass_once_then_sleep,
        &(barrier.clone(), passed.clone()),
    );
    // Cycle 0: the child and the parent pass together.
    barrier.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(passed.wait_timeout(Duration::from_secs(20)));
    kid.kill();
    assert_eq!(kid.join(Duration::from_secs(10)), Exit::Signal(9));
    // Cycle 1: the child will never arrive; the parent's wait breaks instead of hanging.
    let t0 = Instant::now();
    assert!(matches!(
        barrier.wait_timeout(Duration::from_secs(20)),
        Err(Error::BrokenBarrier)
    ));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(barrier.broken());
}

#[test]
fn dead_party_breaks_the_barrier_fork() {
    under(
        Mode::Fork,
        "dead_party_breaks_the_barrier_fork",
        dead_party_breaks_the_barrier,
    );
}

#[test]
fn dead_party_breaks_the_barrier_spawn() {
    dead_party_breaks_the_barrier(Mode::Spawn);
}

fn child_pass_once((barrier, delay_ms): (Barrier, u64)) -> i32 {
    std::thread::sleep(Duration::from_millis(delay_ms));
    match barrier.wait_timeout(Duration::from_secs(20)) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// A party that exits normally, replaced by a new process that arrives a little later: the
/// barrier does not break (the dead party's slot is taken within the grace period).
fn replaced_party_does_not_break_the_barrier(mode: Mode) {
    let barrier = Barrier::new(2).unwrap();
    let mut first = start(mode, child_pass_once, &(barrier.clone(), 0));
    barrier.wait_timeout(Duration::from_secs(20)).unwrap();
    first.join_ok();
    // The first child is gone; the parent waits 300 ms for its replacement.
    let mut second = start(mode, child_pass_once, &(barrier.clone(), 300));
    barrier.wait_timeout(Duration::from_secs(20)).unwrap();
    second.join_ok();
    assert!(!barrier.broken());
}

#[test]
fn replaced_party_does_not_break_the_barrier_fork() {
    under(
        Mode::Fork,
        "replaced_party_does_not_break_the_barrier_fork",
        replaced_party_does_not_break_the_barrier,
    );
}

#[test]
fn replaced_party_does_not_break_the_barrier_spawn() {
    replaced_party_does_not_break_the_barrier(Mode::Spawn);
}

#[test]
fn panicking_action_breaks_the_barrier() {
    let barrier = Barrier::new(2)
        .unwrap()
        .with_action(|| panic!("action failed"));
    let b2 = barrier.clone();
    let t = std::thread::spawn(move || b2.wait_timeout(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || barrier.n_waiting() == 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| barrier.wait()));
    assert!(r.is_err(), "the action's panic reaches the last arriver");
    assert!(matches!(t.join().unwrap(), Err(Error::BrokenBarrier)));
    assert!(barrier.broken());
}

#[test]
fn zero_parties_is_an_error() {
    assert!(matches!(Barrier::new(0), Err(Error::InvalidArgument(_))));
    let one = Barrier::new(1).unwrap();
    assert_eq!(one.wait().unwrap(), 0);
    assert_eq!(one.wait().unwrap(), 0);
}

/// Three threads pass the barrier twice.
fn pass_with_threads(barrier: &Barrier) {
    let ts: Vec<_> = (0..3)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                let a = b.wait_timeout(Duration::from_secs(10)).unwrap();
                let c = b.wait_timeout(Duration::from_secs(10)).unwrap();
                (a, c)
            })
        })
        .collect();
    let mut firsts: Vec<u32> = ts.into_iter().map(|t| t.join().unwrap().0).collect();
    firsts.sort();
    assert_eq!(firsts, [0, 1, 2]);
}

/// Waits without a timeout; 0 when the barrier turns out broken.
fn child_wait_untimed(barrier: Barrier) -> i32 {
    match barrier.wait() {
        Err(Error::BrokenBarrier) => 0,
        Ok(_) => 1,
        Err(_) => 2,
    }
}

/// Arrives last with an action that tells the test it runs, then never ends.
fn child_arrive_with_stuck_action((barrier, in_action): (Barrier, Event)) -> i32 {
    let barrier = barrier.with_action(move || {
        in_action.set();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let _ = barrier.wait();
    4 // not reached: killed inside the action
}

/// Issue 13 item 5: the last arriver SIGKILLed while it runs the action (holding the
/// barrier's mutex) breaks the barrier; the waiter does not hang.
fn last_arriver_killed_in_the_action(mode: Mode) {
    let barrier = Barrier::new(2).unwrap();
    let mut waiter = start(mode, child_wait_untimed, &barrier);
    assert!(eventually(Duration::from_secs(30), || barrier.n_waiting() == 1));
    let in_action = Event::new().unwrap();
    let mut last = start(
        mode,
        child_arrive_with_stuck_action,
        &(barrier.clone(), in_action.clone()),
    );
    assert!(
        in_action.wait_timeout(Duration::from_secs(30)),
        "the action runs"
    );
    last.kill();
    assert_eq!(last.join(Duration::from_secs(10)), Exit::Signal(9));
    // Before the fix the waiter slept forever (the dead party had arrived).
    assert_eq!(waiter.join(Duration::from_secs(20)), Exit::Code(0));
    assert!(barrier.broken());
    assert!(matches!(barrier.wait(), Err(Error::BrokenBarrier)));
    barrier.reset();
    let b = barrier.clone();
    let t = std::thread::spawn(move || b.wait_timeout(Duration::from_secs(10)).unwrap());
    let mine = barrier.wait_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(mine + t.join().unwrap(), 1, "usable again after reset");
}

#[test]
fn last_arriver_killed_in_the_action_fork() {
    under(
        Mode::Fork,
        "last_arriver_killed_in_the_action_fork",
        last_arriver_killed_in_the_action,
    );
}

#[test]
fn last_arriver_killed_in_the_action_spawn() {
    last_arriver_killed_in_the_action(Mode::Spawn);
}
