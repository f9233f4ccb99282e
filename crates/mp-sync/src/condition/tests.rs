use super::*;

fn raw() -> RawCondition {
    RawCondition {
        state: AtomicU64::new(0),
        wake: [AtomicU32::new(0), AtomicU32::new(0)],
    }
}

fn notify(r: &RawCondition, n: u32) -> u32 {
    let (new, k, _) = r.load().notify(n);
    r.state.store(new.pack(), Ordering::Relaxed);
    k
}

#[test]
fn a_slow_notified_waiter_keeps_its_notification() {
    let r = raw();
    let a = r.register().unwrap();
    assert_eq!(notify(&r, 1), 1);
    // A has not run yet; two waiters register after the notify, and one more notify
    // comes: it is for one of the three, and A's stays A's.
    let d1 = r.register().unwrap();
    let d2 = r.register().unwrap();
    assert!(
        !r.try_consume(d1),
        "a later waiter cannot take A's notification"
    );
    assert_eq!(notify(&r, 1), 1);
    // Either of the later two may take it (both waited before the second notify).
    assert!(r.try_consume(d1));
    assert!(!r.try_consume(d2), "one notification each");
    assert!(r.try_consume(a), "A was notified");
    // The waiter left out times out: it takes itself out, and nobody is counted.
    assert!(!r.settle(d2));
    let s = r.load();
    assert_eq!((s.pending, s.signals, s.newer), (0, 0, 0));
    assert_eq!(notify(&r, u32::MAX), 0);
}

#[test]
fn group_numbers_wrap() {
    let r = raw();
    r.state.store(
        State {
            epoch: u16::MAX,
            pending: 0,
            signals: 0,
            newer: 0,
        }
        .pack(),
        Ordering::Relaxed,
    );
    let a = r.register().unwrap();
    assert_eq!(a, 0);
    assert_eq!(r.load().standing(a), Standing::Newer);
    assert_eq!(notify(&r, 1), 1);
    assert_eq!(r.load().standing(a), Standing::Current);
    let b = r.register().unwrap();
    assert_eq!(notify(&r, 1), 1);
    assert_eq!(r.load().standing(a), Standing::Notified);
    assert!(r.try_consume(a) && r.try_consume(b));
}

#[test]
fn a_full_group_refuses_registration() {
    let r = raw();
    r.state.store(
        State {
            epoch: 7,
            pending: 0,
            signals: 0,
            newer: u16::MAX,
        }
        .pack(),
        Ordering::Relaxed,
    );
    assert_eq!(r.register(), None);
    assert_eq!(notify(&r, u32::MAX), u32::from(u16::MAX));
}
