use super::*;
use crate::raw::RawLock;
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use mp_core::ident::loom_dead;
use mp_core::lock::Acquire;

fn token(id: u32) -> u64 {
    (u64::from(id) << 32) | 7
}

/// What the model knows, kept under the condition's lock: the reference the real counts
/// are checked against.
#[derive(Default)]
struct Book {
    /// Waiters registered and neither notified nor returned.
    waiting: u32,
    /// Notifications handed out (the sum of what `notify` returned).
    notified: u32,
    /// Waits that returned `true`.
    woke: u32,
    /// Waiters that returned.
    done: u32,
}

struct Model {
    lock: RawLock,
    cond: RawCondition,
    book: UnsafeCell<Book>,
}

// SAFETY: `book` is touched only under `lock` (loom's cell checks that the lock orders
// every access).
unsafe impl Sync for Model {}

impl Model {
    fn new() -> Model {
        Model {
            lock: RawLock::new(),
            cond: RawCondition::new(),
            book: UnsafeCell::new(Book::default()),
        }
    }

    fn lock(&self, id: u32) {
        assert_eq!(self.lock.lock(token(id), Deadline::never()), Acquire::Clean);
    }

    /// Runs `f` on the book; only the lock's holder calls this.
    fn book<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        // SAFETY: the caller holds the lock (what loom's cell checks).
        self.book.with_mut(|b| f(unsafe { &mut *b }))
    }

    /// One `wait` as `Condition::wait_until` makes it, over the raw lock.
    fn wait(&self, id: u32, deadline: Deadline) -> bool {
        self.lock(id);
        self.book(|b| b.waiting += 1);
        let (notified, r) = self.cond.wait(
            token(id),
            deadline,
            || {
                self.lock.unlock();
                1
            },
            |_| {
                self.lock(id);
                Ok(())
            },
        );
        assert_eq!(r, Ok(()));
        self.book(|b| {
            if notified {
                b.woke += 1;
            } else {
                // Not notified: it was still counted as waiting, and no longer is.
                assert!(
                    b.waiting > 0,
                    "a waiter left out was not counted as waiting"
                );
                b.waiting -= 1;
            }
            b.done += 1;
        });
        self.lock.unlock();
        notified
    }

    /// One `notify(1)` under the lock, checked against the book: it notifies exactly one
    /// of the waiters registered and not yet notified or returned, or none when there is
    /// none. Returns what it notified.
    fn notify_one(&self, id: u32) -> u32 {
        self.lock(id);
        let k = self.cond.notify(token(id), 1);
        self.book(|b| {
            assert_eq!(
                k,
                b.waiting.min(1),
                "notify(1) notified {k} of {}",
                b.waiting
            );
            b.waiting -= k;
            b.notified += k;
        });
        self.lock.unlock();
        k
    }

    fn end(&self) {
        let b = self.book(|b| std::mem::take(b));
        assert_eq!(b.woke, b.notified, "exactly the notified waits return true");
        assert_eq!(b.waiting, 0);
        for s in &self.cond.slots {
            let w = s.word.load(Ordering::Relaxed);
            assert!(!Slot::taken(w), "a slot left taken: {w:#x}");
        }
    }
}

/// Task `id` registers as `wait` does, releases the lock and dies asleep (its token is
/// marked dead and its thread ends without leaving its slot): a waiter killed inside `wait`.
fn register_and_die(m: &Model, id: u32) {
    m.lock(id);
    assert!(m.cond.register(token(id)).is_some());
    m.lock.unlock();
    loom_dead::mark_dead(token(id));
}

/// True when the slot of task `id` says notified.
fn notified(m: &Model, id: u32) -> bool {
    m.cond.slots.iter().any(|s| {
        state_of(s.word.load(Ordering::Relaxed)) == NOTIFIED
            && s.token.load(Ordering::Relaxed) == token(id)
    })
}

/// Two waiters without timeout, and a notifier that notifies one at a time whenever a
/// registered waiter is left, until both are notified. The sleepers' slices never end in
/// the model, so a notify whose wake-up misses its sleeper is a deadlock. Proves: no
/// wake-up is lost, each notify counts exactly one registered waiter, both waits return
/// notified, and the counts end at zero.
#[test]
fn loom_condition_no_lost_wakeup() {
    loom::model(|| {
        let m = Arc::new(Model::new());
        let waiters: Vec<_> = (1..=2)
            .map(|id| {
                let m = m.clone();
                loom::thread::spawn(move || assert!(m.wait(id, Deadline::never())))
            })
            .collect();
        let mut notified = 0;
        while notified < 2 {
            m.lock(3);
            let waiting = m.book(|b| b.waiting);
            m.lock.unlock();
            if waiting > 0 {
                notified += m.notify_one(3);
            } else {
                loom::thread::yield_now();
            }
        }
        for w in waiters {
            w.join().unwrap();
        }
        m.lock(3);
        m.end();
    });
}

/// A waiter without timeout, a waiter whose timeout runs out at once, and a notifier that
/// keeps calling `notify(1)` until the first is done (also when nobody waits). Proves:
/// a notify goes only to a waiter registered before it (a notify that found nobody is
/// taken by nobody: the counts match the book), a timed-out waiter that was notified
/// before it took the lock back returns notified and one that was not takes itself out,
/// and exactly the notified waits return true.
#[test]
fn loom_condition_notify_only_registered() {
    loom::model(|| {
        let m = Arc::new(Model::new());
        let patient = {
            let m = m.clone();
            loom::thread::spawn(move || assert!(m.wait(1, Deadline::never())))
        };
        let hasty = {
            let m = m.clone();
            loom::thread::spawn(move || m.wait(2, Deadline::after(Some(Duration::ZERO))))
        };
        loop {
            m.lock(3);
            let done = m.book(|b| b.done);
            m.lock.unlock();
            if done == 2 {
                break;
            }
            m.notify_one(3);
            loom::thread::yield_now();
        }
        patient.join().unwrap();
        hasty.join().unwrap();
        m.lock(3);
        m.end();
    });
}

/// A waiter that dies asleep in `wait` (the fault campaign's `condition_waiter` finding), a
/// living waiter without timeout, and a notifier calling `notify(1)` until the living one is
/// done. Proves: a notify made once the first waiter is dead goes to the living waiter (the
/// dead one takes no notification, and its slot counts for nothing), one made while it lives
/// may go to either, and the living waiter returns notified, with no wake-up lost.
#[test]
fn loom_condition_dead_waiter_takes_no_notification() {
    loom::model(|| {
        let m = Arc::new(Model::new());
        let dying = {
            let m = m.clone();
            loom::thread::spawn(move || register_and_die(&m, 1))
        };
        let living = {
            let m = m.clone();
            loom::thread::spawn(move || assert!(m.wait(2, Deadline::never())))
        };
        let mut dead_notified = 0;
        loop {
            m.lock(3);
            if m.book(|b| b.done) == 1 {
                m.lock.unlock();
                break;
            }
            let dead_before = loom_dead::is_dead(token(1));
            let living_before = notified(&m, 2);
            let k = m.cond.notify(token(3), 1);
            let to_living = !living_before && notified(&m, 2);
            m.book(|b| {
                if dead_before {
                    assert_eq!(k, b.waiting.min(1), "a dead waiter took a notification");
                }
                if to_living {
                    assert_eq!(k, 1);
                    b.waiting -= 1;
                    b.notified += 1;
                } else if k == 1 {
                    // It went to the first waiter, alive when it was checked.
                    assert!(!dead_before);
                    dead_notified += 1;
                }
            });
            m.lock.unlock();
            loom::thread::yield_now();
        }
        assert!(
            dead_notified <= 1,
            "one notification for the first waiter at most"
        );
        dying.join().unwrap();
        living.join().unwrap();
        m.lock(3);
        let b = m.book(std::mem::take);
        assert_eq!((b.woke, b.notified, b.waiting), (1, 1, 0));
        // Only the dead waiter's slot may be left taken (a notify that met it freed it).
        for s in &m.cond.slots {
            if Slot::taken(s.word.load(Ordering::Relaxed)) {
                assert_eq!(s.token.load(Ordering::Relaxed), token(1));
            }
        }
    });
}
