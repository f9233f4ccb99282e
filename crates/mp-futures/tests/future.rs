//! Futures: cancel of pending vs running, done callbacks (once, outside locks),
//! `as_completed` (order, timeout) and `wait` (its three modes). Real worker processes.

mp_process::test_support!();

mod common;
use common::{checked, gated, square, touch, watchdog, Gate};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use mp_futures::{
    as_completed, wait, Error, ProcessPoolExecutor, ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION,
};
use mp_process::StartMethod;

const LONG: Duration = Duration::from_secs(30);

fn executor(n: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(n)
        .start_method(StartMethod::Fork)
        .build()
        .unwrap()
}

#[test]
fn cancel_stops_a_pending_future_not_a_running_one() {
    watchdog(120, || {
        for method in [StartMethod::Fork, StartMethod::Spawn] {
            let ex = ProcessPoolExecutor::builder()
                .max_workers(1)
                .start_method(method)
                .build()
                .unwrap();
            let g = Gate::new(&format!("cancel-{method:?}"));
            let running = ex.submit(gated, g.arg()).unwrap();
            g.wait_started();
            assert!(running.running());
            let mark = format!("{}.mark", g.gate);
            // As in Python, one task more than the workers is handed over at once: running
            // (it waits in the pool behind the busy worker), and no longer cancellable.
            let queued = ex.submit(touch, format!("{mark}.queued")).unwrap();
            assert!(queued.running() && !queued.cancel() && !queued.cancelled());
            let pending = ex.submit(touch, mark.clone()).unwrap();
            assert!(!pending.running() && !pending.done());
            assert!(pending.cancel());
            assert!(pending.cancel(), "cancel again: still cancelled");
            assert!(pending.cancelled() && pending.done() && !pending.running());
            assert!(matches!(pending.result(None), Err(Error::Cancelled)));
            assert!(matches!(pending.error(None), Err(Error::Cancelled)));
            assert!(!running.cancel(), "a running future is not cancelled");
            assert!(!running.cancelled());
            let after = ex.submit(touch, format!("{mark}.after")).unwrap();
            g.open();
            assert!(running.result(LONG).is_ok());
            assert!(queued.result(LONG).unwrap());
            assert!(after.result(LONG).unwrap());
            assert!(!running.cancel(), "a finished future is not cancelled");
            // One worker, one in flight, first in first out: `after` ran, so `pending`
            // would have run before it.
            assert!(
                !std::path::Path::new(&mark).exists(),
                "the cancelled task ran"
            );
            let _ = std::fs::remove_file(format!("{mark}.after"));
            let _ = std::fs::remove_file(format!("{mark}.queued"));
        }
    });
}

#[test]
fn done_callbacks_run_once_outside_the_locks() {
    watchdog(120, || {
        // One task in the pool at a time, so that `other` and `pending` below wait in the
        // executor for as long as the gate is shut.
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .max_in_flight(1)
            .start_method(StartMethod::Fork)
            .build()
            .unwrap();
        let ex = Arc::new(ex);
        let g = Gate::new("callbacks");
        let f = ex.submit(gated, g.arg()).unwrap();
        let other = ex.submit(square, 4).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        {
            let (calls, tx) = (calls.clone(), tx.clone());
            let other = other.clone();
            let ex = ex.clone();
            f.add_done_callback(move |fut| {
                calls.fetch_add(1, Ordering::SeqCst);
                // The callback's own future is done: result() and done() do not deadlock.
                assert!(fut.done());
                let pid = fut.result(None).unwrap();
                // Waiting for another unfinished future here is refused, not a deadlock.
                let waited = other.result(None);
                // So are as_completed and wait (wait returns at once, as if timed out).
                let ac = matches!(
                    as_completed([&other], None).next(),
                    Some(Err(Error::InCallback))
                );
                let w = wait([&other], None, ALL_COMPLETED).not_done.len() == 1;
                assert!(ac && w, "as_completed: {ac}, wait: {w}");
                // Submitting from a callback works.
                let more = ex.submit(square, 6).unwrap();
                tx.send((pid, waited.map_err(|e| e.to_string()), more))
                    .unwrap();
            });
        }
        g.open();
        let (pid, waited, more) = rx.recv_timeout(LONG).unwrap();
        assert_eq!(pid, f.result(None).unwrap());
        // `other` waits behind `f` (one in flight): not done when f's callback runs.
        assert!(
            waited.as_ref().is_err_and(|e| e.contains("callback")),
            "{waited:?}"
        );
        assert_eq!(more.result(LONG).unwrap(), 36);
        assert_eq!(other.result(LONG).unwrap(), 16);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Added once done: runs at once, on this thread, once.
        let here = std::thread::current().id();
        let (tx2, rx2) = mpsc::channel();
        f.add_done_callback(move |fut| {
            tx2.send((std::thread::current().id(), fut.done())).unwrap();
        });
        assert_eq!(rx2.try_recv().unwrap(), (here, true));
        assert!(rx2.try_recv().is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A cancelled future runs its callbacks too, on the thread of cancel; a panicking
        // callback is ignored and the next one still runs.
        let g2 = Gate::new("callbacks-2");
        let busy = ex.submit(gated, g2.arg()).unwrap();
        g2.wait_started();
        let pending = ex.submit(square, 1).unwrap();
        let (tx3, rx3) = mpsc::channel();
        pending.add_done_callback(|_| panic!("a callback that panics"));
        pending.add_done_callback(move |fut| {
            tx3.send((std::thread::current().id(), fut.cancelled()))
                .unwrap();
        });
        assert!(pending.cancel());
        assert_eq!(rx3.try_recv().unwrap(), (here, true));
        g2.open();
        assert!(busy.result(LONG).is_ok());
    });
}

#[test]
fn as_completed_yields_in_completion_order_and_times_out() {
    watchdog(120, || {
        let ex = executor(2);
        let g = Gate::new("as-completed");
        let held = ex.submit(gated, g.arg()).unwrap();
        g.wait_started();
        let quick = ex.submit(square, 3).unwrap();
        let fs = vec![held.clone(), quick.clone(), quick.clone()];
        let mut it = as_completed(&fs, LONG);
        // `held` cannot finish before the gate opens: `quick` comes first, once.
        let first = it.next().unwrap().unwrap();
        assert_eq!(first.result(None).unwrap(), 9);
        g.open();
        let second = it.next().unwrap().unwrap();
        assert_eq!(second.result(None).unwrap(), held.result(None).unwrap());
        assert!(it.next().is_none(), "each future once");
        drop(it);

        // Done ones first; then the timeout, once, and the end.
        let g2 = Gate::new("as-completed-2");
        let held2 = ex.submit(gated, g2.arg()).unwrap();
        let fs = vec![held2.clone(), quick.clone()];
        let mut it = as_completed(&fs, Duration::from_millis(200));
        assert_eq!(it.next().unwrap().unwrap().result(None).unwrap(), 9);
        assert!(matches!(it.next(), Some(Err(Error::Timeout))));
        assert!(it.next().is_none());
        assert!(!held2.done(), "the timeout leaves the future running");
        g2.open();
        assert!(held2.result(LONG).is_ok());
        assert_eq!(
            as_completed(Vec::<&mp_futures::Future<u64>>::new(), None).count(),
            0
        );
    });
}

#[test]
fn wait_first_completed_first_exception_all_completed() {
    watchdog(120, || {
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .max_in_flight(3)
            .start_method(StartMethod::Fork)
            .build()
            .unwrap();
        let g = Gate::new("wait");
        let held = ex.submit(gated, g.arg()).unwrap();
        g.wait_started();

        // FIRST_COMPLETED: the quick one, not the held one.
        let quick = ex
            .submit(gated, (g.started.clone() + ".q", g.gate.clone() + ".q"))
            .unwrap();
        std::fs::write(g.gate.clone() + ".q", b"go").unwrap();
        let r = wait([&held, &quick], LONG, FIRST_COMPLETED);
        assert_eq!(r.done.len(), 1);
        assert!(std::ptr::eq(r.not_done[0], &held));
        assert!(quick.done());

        // FIRST_EXCEPTION: returns on the failure while `held` still runs.
        let ok = ex.submit(square, 2).unwrap();
        assert_eq!(ok.result(LONG).unwrap(), 4);
        let bad = ex.submit(checked, 3).unwrap();
        let r = wait([&held, &ok, &bad], LONG, FIRST_EXCEPTION);
        assert_eq!(r.done.len(), 2);
        assert_eq!(r.not_done.len(), 1);
        assert!(std::ptr::eq(r.not_done[0], &held));
        assert!(matches!(bad.error(None), Ok(Some(Error::Panicked { .. }))));
        // Without a failure, FIRST_EXCEPTION is ALL_COMPLETED (here: with a timeout).
        let r = wait([&held, &ok], Duration::from_millis(200), FIRST_EXCEPTION);
        assert_eq!((r.done.len(), r.not_done.len()), (1, 1));

        // ALL_COMPLETED: times out while one is held (not an error), then all done.
        let r = wait(
            [&held, &ok, &bad],
            Duration::from_millis(200),
            ALL_COMPLETED,
        );
        assert_eq!((r.done.len(), r.not_done.len()), (2, 1));
        g.open();
        let r = wait([&held, &ok, &bad, &held], LONG, ALL_COMPLETED);
        assert_eq!((r.done.len(), r.not_done.len()), (3, 0), "duplicates once");
        // Cancelled futures count as completed, not as exceptions.
        let g2 = Gate::new("wait-2");
        let a = ex.submit(gated, g2.arg()).unwrap();
        let b = ex.submit(gated, g2.arg()).unwrap();
        let c = ex.submit(gated, g2.arg()).unwrap();
        let pending = ex.submit(square, 1).unwrap();
        assert!(pending.cancel());
        let r = wait([&pending, &a], Duration::from_millis(100), FIRST_EXCEPTION);
        assert_eq!((r.done.len(), r.not_done.len()), (1, 1));
        g2.open();
        let all = [a, b, c];
        assert_eq!(wait(&all, LONG, ALL_COMPLETED).done.len(), 3);
        let _ = std::fs::remove_file(g.started.clone() + ".q");
        let _ = std::fs::remove_file(g.gate.clone() + ".q");
    });
}
