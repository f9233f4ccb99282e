//! Unit tests of the lock functions on words in ordinary memory (the cross-process tests, with
//! holders killed by SIGKILL, are mp-sync's and mp-queue's).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A lock's two words, as a caller's shared struct would hold them.
#[derive(Default)]
struct Words {
    owner: AtomicU64,
    seq: AtomicU32,
}

/// The token of a thread that has exited: a task that is really gone, with the right form.
fn dead_token() -> u64 {
    let t = std::thread::spawn(ident::thread_token).join().unwrap();
    assert!(!ident::is_alive(t));
    t
}

#[test]
fn clean_lock_and_unlock() {
    let w = Words::default();
    let me = ident::process_token();
    assert_eq!(
        lock(&w.owner, &w.seq, me, Deadline::never()),
        Acquire::Clean
    );
    assert_eq!(holder(&w.owner), me);
    // Held: a second fast attempt fails, a non-blocking one finds a live holder.
    assert!(!try_lock_fast(&w.owner, ident::thread_token()));
    assert_eq!(try_lock(&w.owner, ident::thread_token()), Acquire::Timeout);
    assert_eq!(take_if_dead(&w.owner, ident::thread_token()), None);
    // No sleeper: the release does not bump the wake sequence.
    assert_eq!(unlock(&w.owner, &w.seq), me);
    assert_eq!(w.seq.load(Ordering::Relaxed), 0);
    assert_eq!(holder(&w.owner), 0);
    // Unlocking a free lock changes nothing.
    assert_eq!(unlock(&w.owner, &w.seq), 0);
    assert_eq!(try_lock(&w.owner, me), Acquire::Clean);
    assert_eq!(unlock(&w.owner, &w.seq), me);
}

#[test]
fn timeout_on_a_live_holder() {
    let w = Words::default();
    let holder_token = ident::process_token();
    assert!(try_lock_fast(&w.owner, holder_token));
    let me = ident::thread_token();
    // A zero timeout gives up at once.
    assert_eq!(
        lock(&w.owner, &w.seq, me, Deadline::after(Some(Duration::ZERO))),
        Acquire::Timeout
    );
    let t = Instant::now();
    let a = lock(&w.owner, &w.seq, me, Deadline::after(Some(3 * SLICE)));
    let took = t.elapsed();
    assert_eq!(a, Acquire::Timeout);
    assert!(took >= 3 * SLICE, "gave up after {took:?}");
    // The waiter announced itself: the word says so, and the release wakes (bumps `seq`).
    assert_eq!(w.owner.load(Ordering::Relaxed), holder_token | CONTENDED);
    assert_eq!(unlock(&w.owner, &w.seq), holder_token | CONTENDED);
    assert_eq!(w.seq.load(Ordering::Relaxed), 1);
}

#[test]
fn a_dead_holder_is_taken_over() {
    let w = Words::default();
    let dead = dead_token();
    w.owner.store(dead, Ordering::Relaxed);
    let me = ident::process_token();
    // A waiter without a deadline notices after its first slice.
    let t = Instant::now();
    let a = lock(&w.owner, &w.seq, me, Deadline::never());
    assert_eq!(a, Acquire::OwnerDied(ident::id_of(dead)));
    assert!(t.elapsed() >= SLICE, "no liveness check before a slice");
    assert_eq!(holder(&w.owner), me);
    unlock(&w.owner, &w.seq);

    // A caller whose deadline has passed, and a non-blocking one, check once.
    w.owner.store(dead | CONTENDED, Ordering::Relaxed);
    let zero = Deadline::after(Some(Duration::ZERO));
    assert_eq!(
        lock(&w.owner, &w.seq, me, zero),
        Acquire::OwnerDied(ident::id_of(dead))
    );
    w.owner.store(dead, Ordering::Relaxed);
    assert_eq!(
        try_lock(&w.owner, me),
        Acquire::OwnerDied(ident::id_of(dead))
    );
    // The taker holds it as contended (others may sleep) and only one takes it.
    assert_eq!(w.owner.load(Ordering::Relaxed), me | CONTENDED);
    assert_eq!(take_if_dead(&w.owner, ident::thread_token()), None);
}

#[test]
fn a_sleeper_is_woken_by_the_release() {
    let w = Arc::new(Words::default());
    let main = ident::process_token();
    assert!(try_lock_fast(&w.owner, main));
    let waiter = {
        let w = w.clone();
        std::thread::spawn(move || {
            let me = ident::thread_token();
            let a = lock(&w.owner, &w.seq, me, Deadline::never());
            let word = w.owner.load(Ordering::Relaxed);
            unlock(&w.owner, &w.seq);
            (a, word, me)
        })
    };
    // Wait until the waiter sleeps (it has announced itself).
    while w.owner.load(Ordering::Relaxed) & CONTENDED == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(unlock(&w.owner, &w.seq), main | CONTENDED);
    let (a, word, me) = waiter.join().unwrap();
    assert_eq!(a, Acquire::Clean);
    // A former sleeper keeps the flag: others might sleep too.
    assert_eq!(word, me | CONTENDED);
    assert_eq!(w.owner.load(Ordering::Relaxed), 0);
}

/// Four threads increment a plain counter (two separate steps) under the lock.
#[test]
fn mutual_exclusion_under_contention() {
    let w = Arc::new(Words::default());
    let counter = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (w, counter) = (w.clone(), counter.clone());
            std::thread::spawn(move || {
                let me = ident::thread_token();
                for _ in 0..2000 {
                    assert_eq!(
                        lock(&w.owner, &w.seq, me, Deadline::never()),
                        Acquire::Clean
                    );
                    let v = counter.load(Ordering::Relaxed);
                    std::hint::spin_loop();
                    counter.store(v + 1, Ordering::Relaxed);
                    assert_eq!(unlock(&w.owner, &w.seq) & !CONTENDED, me);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 8000);
    assert_eq!(w.owner.load(Ordering::Relaxed), 0);
}
