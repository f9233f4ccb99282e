use super::*;

/// This process's token, and one that names it with another start time: a process that
/// is gone (the pid was reused).
fn tokens() -> (u64, u64) {
    let me = ident::process_token();
    (me, me ^ 1)
}

/// A waiter registered under `token`, as `wait` does before it sleeps.
fn register(r: &RawCondition, token: u64) -> (usize, u32) {
    r.register(token).expect("a free slot")
}

fn taken(r: &RawCondition) -> usize {
    r.slots
        .iter()
        .filter(|s| Slot::taken(s.word.load(Ordering::Relaxed)))
        .count()
}

#[test]
fn a_slow_notified_waiter_keeps_its_notification() {
    let (me, _) = tokens();
    let r = RawCondition::new();
    let a = register(&r, me);
    assert_eq!(r.notify(me, 1), 1);
    // A has not run yet; two waiters register after the notify, and one more notify comes:
    // it is for the older of the two, and A's stays A's.
    let d1 = register(&r, me);
    let d2 = register(&r, me);
    assert_eq!(r.notify(me, 1), 1);
    assert!(r.leave(d1.0, d1.1), "the older later waiter was notified");
    assert!(
        !r.leave(d2.0, d2.1),
        "one notification each: the younger times out"
    );
    assert!(r.leave(a.0, a.1), "A was notified");
    assert_eq!(taken(&r), 0);
    assert_eq!(r.notify(me, u32::MAX), 0);
}

#[test]
fn a_dead_waiter_takes_no_notification() {
    let (me, dead) = tokens();
    let r = RawCondition::new();
    // The dead waiter is the oldest: notify(1) passes over it to the living one.
    let _d = register(&r, dead);
    let a = register(&r, me);
    assert_eq!(r.waiting(), 2);
    assert_eq!(r.notify(me, 1), 1);
    assert!(r.leave(a.0, a.1));
    // Its slot was freed on the way, so nobody is left.
    assert_eq!(taken(&r), 0);
    assert_eq!(r.notify(me, u32::MAX), 0);
}

#[test]
fn tickets_wrap_and_keep_the_order() {
    let (me, _) = tokens();
    let r = RawCondition::new();
    r.next.store(TICKET_MASK, Ordering::Relaxed);
    let a = register(&r, me);
    let b = register(&r, me);
    assert_eq!(ticket_of(a.1), TICKET_MASK);
    assert_eq!(ticket_of(b.1), 0);
    assert_eq!(r.notify(me, 1), 1);
    assert!(!r.leave(b.0, b.1), "b is younger");
    assert!(r.leave(a.0, a.1), "a, before the wrap, is older");
}

#[test]
fn a_full_table_reclaims_dead_slots_then_waits_without_a_record() {
    let (me, dead) = tokens();
    let r = RawCondition::new();
    // A dead notified waiter (it died before it freed its slot) and dead waiting ones fill
    // the table: a registration reclaims them.
    let d = register(&r, dead);
    r.slots[d.0]
        .word
        .store(slot_word(NOTIFIED, ticket_of(d.1)), Ordering::Relaxed);
    for _ in 1..SLOTS {
        register(&r, dead);
    }
    assert_eq!(taken(&r), SLOTS);
    let a = register(&r, me);
    assert_eq!(taken(&r), 1, "every dead slot was reclaimed");
    r.leave(a.0, a.1);
    // Living waiters fill it: one more waits without a record, not notified.
    for _ in 0..SLOTS {
        register(&r, me);
    }
    assert_eq!(r.register(me), None);
    let (notified, relocked) = r.wait(me, Deadline::after(Some(Duration::ZERO)), || 1, |_| Ok(()));
    assert_eq!((notified, relocked), (false, Ok(())));
    assert_eq!(r.notify(me, u32::MAX), SLOTS as u32);
}

#[test]
fn unknown_state_words_are_free_slots() {
    let (me, _) = tokens();
    let r = RawCondition::new();
    for s in &r.slots {
        s.word.store(u32::MAX, Ordering::Relaxed);
    }
    assert_eq!(taken(&r), 0);
    assert_eq!(r.notify(me, u32::MAX), 0);
    let a = register(&r, me);
    assert_eq!(r.notify(me, 1), 1);
    assert!(r.leave(a.0, a.1));
}
