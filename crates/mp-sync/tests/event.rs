//! Event across real processes: CONFORMANCE S4.

mod common;

mp_process::test_support!();

use std::time::{Duration, Instant};

use common::{assert_about, start, under, Mode};
use mp_sync::Event;
use static_assertions::assert_impl_all;

assert_impl_all!(Event: Send, Sync, Clone, std::fmt::Debug);

fn child_set_later((ev, parent_waits): (Event, Event)) -> i32 {
    // The parent sets `parent_waits` just before it blocks on `ev`.
    if !parent_waits.wait_timeout(Duration::from_secs(20)) {
        return 1;
    }
    std::thread::sleep(Duration::from_millis(100));
    ev.set();
    0
}

fn child_ping_pong((ping, pong, rounds): (Event, Event, u32)) -> i32 {
    for _ in 0..rounds {
        if !ping.wait_timeout(Duration::from_secs(10)) {
            return 1;
        }
        ping.clear();
        pong.set();
    }
    0
}

#[test]
fn s4_event_semantics() {
    let ev = Event::new().unwrap();
    let t0 = Instant::now();
    assert!(!ev.wait_timeout(Duration::ZERO));
    assert!(t0.elapsed() < Duration::from_millis(50));
    let t0 = Instant::now();
    assert!(!ev.wait_timeout(Duration::from_millis(100)));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    ev.set();
    let t0 = Instant::now();
    assert!(ev.wait_timeout(Duration::from_secs(5)));
    ev.wait();
    assert!(t0.elapsed() < Duration::from_millis(50));
    assert!(ev.is_set());
    ev.clear();
    assert!(!ev.is_set());
    assert!(!ev.wait_timeout(Duration::from_millis(1)));
}

fn child_set_wakes_parent(mode: Mode) {
    let ev = Event::new().unwrap();
    let parent_waits = Event::new().unwrap();
    let mut kid = start(mode, child_set_later, &(ev.clone(), parent_waits.clone()));
    parent_waits.set();
    let t0 = Instant::now();
    assert!(
        ev.wait_timeout(Duration::from_secs(20)),
        "the child's set wakes us"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "woken before the set"
    );
    kid.join_ok();
}

#[test]
fn s4_child_set_wakes_parent_fork() {
    under(
        Mode::Fork,
        "s4_child_set_wakes_parent_fork",
        child_set_wakes_parent,
    );
}

#[test]
fn s4_child_set_wakes_parent_spawn() {
    under(Mode::Spawn, "", child_set_wakes_parent);
}

fn ping_pong(mode: Mode) {
    let ping = Event::new().unwrap();
    let pong = Event::new().unwrap();
    let rounds = 2_000;
    let mut kid = start(mode, child_ping_pong, &(ping.clone(), pong.clone(), rounds));
    for i in 0..rounds {
        ping.set();
        assert!(pong.wait_timeout(Duration::from_secs(10)), "round {i}");
        pong.clear();
    }
    kid.join_ok();
}

#[test]
fn ping_pong_fork() {
    under(Mode::Fork, "ping_pong_fork", ping_pong);
}

#[test]
fn ping_pong_spawn() {
    under(Mode::Spawn, "", ping_pong);
}

#[test]
fn set_wakes_every_waiting_thread() {
    let ev = Event::new().unwrap();
    let ts: Vec<_> = (0..4)
        .map(|_| {
            let ev = ev.clone();
            std::thread::spawn(move || ev.wait_timeout(Duration::from_secs(10)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    ev.set();
    for t in ts {
        assert!(t.join().unwrap());
    }
}

/// Says it is about to wait (`ready`), then waits without a timeout; 0 once it returns.
fn child_wait_untimed((ev, ready): (Event, mp_sync::RawValue<u32>)) -> i32 {
    ready.set(1);
    ev.wait();
    0
}

/// True while the main thread of `pid` sleeps in a futex wait: its wchan names a futex
/// function, or (on kernels that hide wchan) the system call it is blocked in is `futex`.
fn in_futex_wait(pid: u32) -> bool {
    let task = format!("/proc/{pid}/task/{pid}");
    let wchan = std::fs::read_to_string(format!("{task}/wchan")).unwrap_or_default();
    let syscall = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
    wchan.starts_with("futex")
        || syscall.split_whitespace().next() == Some(&libc::SYS_futex.to_string())
}

/// Issue 13: an untimed `wait` asleep when `set()` and `clear()` come back to back returns
/// (it was set while it waited), as Python's `Event.wait` does.
fn untimed_wait_sees_a_set_clear_pulse(mode: Mode) {
    let ev = Event::new().unwrap();
    let ready = mp_sync::RawValue::new(0u32).unwrap();
    let mut kid = start(mode, child_wait_untimed, &(ev.clone(), ready.clone()));
    assert!(common::eventually(Duration::from_secs(30), || ready.get() == 1));
    // After `ready`, the only futex sleep of the child's main thread is the one in `wait`.
    assert!(
        common::eventually(Duration::from_secs(30), || in_futex_wait(kid.pid())),
        "the child never slept in Event::wait"
    );
    ev.set();
    ev.clear();
    // Before the fix the woken waiter found the flag clear and slept again, for good.
    assert_eq!(kid.join(Duration::from_secs(20)), common::Exit::Code(0));
    assert!(!ev.is_set());
}

#[test]
fn untimed_wait_sees_a_set_clear_pulse_fork() {
    under(
        Mode::Fork,
        "untimed_wait_sees_a_set_clear_pulse_fork",
        untimed_wait_sees_a_set_clear_pulse,
    );
}

#[test]
fn untimed_wait_sees_a_set_clear_pulse_spawn() {
    untimed_wait_sees_a_set_clear_pulse(Mode::Spawn);
}
