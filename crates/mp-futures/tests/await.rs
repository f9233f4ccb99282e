//! `Future<R>` as a `std::future::Future`: awaited on tokio's current-thread and multi-thread
//! runtimes while the task runs in a real worker process; the await moves the value out (as
//! `take`); a cancelled future awaits to `Cancelled`, a failed one to its error.

mp_process::test_support!();

mod common;
use common::{checked, gated, square, watchdog, Gate};

use std::time::Duration;

use mp_futures::{Error, ProcessPoolExecutor};
use mp_process::StartMethod;

const LONG: Duration = Duration::from_secs(30);

fn runtimes() -> Vec<tokio::runtime::Runtime> {
    vec![
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime"),
    ]
}

#[test]
fn a_future_awaits_its_workers_value() {
    watchdog(120, || {
        for rt in runtimes() {
            let ex = ProcessPoolExecutor::builder()
                .max_workers(1)
                .start_method(StartMethod::Fork)
                .build()
                .unwrap();
            let gate = Gate::new("await");
            let held = ex.submit(gated, gate.arg()).unwrap();
            let pid = rt.block_on(async {
                let mut f = std::pin::pin!(held.clone());
                // The task waits at its gate: the await is pending.
                assert!(tokio::time::timeout(Duration::from_millis(30), &mut f)
                    .await
                    .is_err());
                gate.wait_started();
                gate.open();
                tokio::time::timeout(LONG, f).await.expect("woken")
            });
            assert!(pid.unwrap() > 0);
            // The await took the value: `result` of the same future says so.
            assert!(matches!(held.result(LONG), Err(Error::AlreadyTaken)));
            let values = rt.block_on(async {
                let fs: Vec<_> = (0..20u64).map(|i| ex.submit(square, i).unwrap()).collect();
                let mut out = Vec::new();
                for f in fs {
                    out.push(f.await.unwrap());
                }
                out
            });
            assert_eq!(values, (0..20u64).map(|i| i * i).collect::<Vec<_>>());
            let failed = rt.block_on(ex.submit(checked, 3).unwrap());
            assert!(failed.is_err(), "{failed:?}");
            ex.shutdown(true, false);
        }
    });
}

#[test]
fn a_cancelled_future_awaits_to_cancelled() {
    watchdog(120, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .start_method(StartMethod::Fork)
            .build()
            .unwrap();
        let gate = Gate::new("await-cancel");
        let running = ex.submit(gated, gate.arg()).unwrap();
        gate.wait_started();
        // Queued behind the running task (one worker): still pending, so it can be cancelled.
        let queued: Vec<_> = (0..4u64).map(|i| ex.submit(square, i).unwrap()).collect();
        let last = queued.last().unwrap().clone();
        assert!(last.cancel());
        let r = rt.block_on(last);
        assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
        gate.open();
        assert!(running.result(LONG).is_ok());
        ex.shutdown(true, false);
    });
}
