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
