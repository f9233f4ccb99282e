//! Progress of `apply_async` batches and `imap_unordered` (a [`Progress`] tracker shared by
//! the calls), with the ETA, under fork and spawn.

mp_process::test_support!();

mod common;
use common::watchdog;

use std::sync::{Arc, Mutex};

use mp_pool::{Error, Pool, Progress, ProgressState};
use mp_process::StartMethod;

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];

fn square(x: u64) -> u64 {
    x * x
}

fn checked(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

fn pool(m: StartMethod) -> Pool {
    Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap()
}

/// A tracker whose callback records every state it is given.
fn recording() -> (Progress, Arc<Mutex<Vec<ProgressState>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let p = Progress::new().on_update(move |st| s.lock().unwrap().push(*st));
    (p, seen)
}

fn check_reached(seen: &Mutex<Vec<ProgressState>>, total: u64, failed: u64) {
    // A copy: an assertion that fails must not poison the lock the callback takes.
    let seen = seen.lock().unwrap().clone();
    let last = seen.last().expect("the callback ran");
    assert_eq!(
        (last.done, last.total, last.failed),
        (total, Some(total), failed)
    );
    // Done only grows, never past the total, and an ETA comes with every update once a
    // task is done (the total being known).
    for w in seen.windows(2) {
        assert!(w[0].done <= w[1].done);
    }
    assert!(seen.iter().all(|s| s.done <= total));
    assert!(seen.iter().filter(|s| s.done > 0).all(|s| s.eta.is_some()));
    assert_eq!(last.eta, Some(std::time::Duration::ZERO), "nothing left");
}

/// A batch of `apply_async` calls sharing one tracker: the callback reaches the total
/// (every call counted when submitted), with an ETA; a failing call counts as done and
/// failed.
#[test]
fn an_apply_async_batch_reports_progress_up_to_its_total() {
    watchdog(120, || {
        for m in METHODS {
            let p = pool(m);
            let (progress, seen) = recording();
            let batch: Vec<_> = (0..20)
                .map(|x| p.track(&progress).apply_async(square, x).unwrap())
                .collect();
            for (x, r) in batch.iter().enumerate() {
                assert_eq!(r.get().unwrap(), (x * x) as u64);
            }
            check_reached(&seen, 20, 0);

            let (progress, seen) = recording();
            let batch: Vec<_> = (0..6)
                .map(|x| p.track(&progress).apply_async(checked, x).unwrap())
                .collect();
            for r in &batch {
                r.wait();
            }
            assert!(matches!(batch[3].get(), Err(Error::Panicked { .. })));
            check_reached(&seen, 6, 1);
        }
    });
}

/// `imap_unordered` reports its progress too: the total from the input's exact length
/// (or from `with_total` when the iterator does not tell), with an ETA.
#[test]
fn imap_unordered_reports_progress_up_to_its_total() {
    watchdog(120, || {
        for m in METHODS {
            let p = pool(m);
            let (progress, seen) = recording();
            let got: Vec<u64> = p
                .track(&progress)
                .chunksize(3)
                .imap_unordered(square, 0..50)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got.len(), 50);
            check_reached(&seen, 50, 0);

            // An input of unknown length: no total (and no ETA) unless given.
            let unknown = Progress::new();
            let n = p
                .track(&unknown)
                .imap_unordered(square, (0..10).filter(|x| x % 2 == 0))
                .unwrap()
                .count();
            assert_eq!(n, 5);
            let st = unknown.state();
            assert_eq!((st.done, st.total, st.eta), (5, None, None));
            let (progress, seen) = recording();
            let progress = progress.with_total(5);
            let n = p
                .track(&progress)
                .imap_unordered(square, (0..10).filter(|x| x % 2 == 0))
                .unwrap()
                .count();
            assert_eq!(n, 5);
            check_reached(&seen, 5, 0);

            // A map tracked too; a failed item counts as failed, and its call's other
            // items as finished.
            let (progress, seen) = recording();
            assert!(p.track(&progress).chunksize(1).map(checked, 0..8).is_err());
            let st = progress.state();
            assert_eq!((st.done, st.total), (8, Some(8)));
            assert!(st.failed >= 1);
            assert!(!seen.lock().unwrap().is_empty());
        }
    });
}
