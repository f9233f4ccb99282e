//! The executor: submit/result, map (order, timeout), shutdown (wait, cancel_futures), a
//! worker SIGKILLed mid-task, settings. Real worker processes, fork and spawn.

mp_process::test_support!();

mod common;
use common::{checked, gated, square, touch, watchdog, Gate};

use std::time::Duration;

use mp_futures::{Error, ProcessPoolExecutor};
use mp_process::StartMethod;

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];
const LONG: Duration = Duration::from_secs(30);

fn executor(m: StartMethod, n: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(n)
        .start_method(m)
        .build()
        .unwrap()
}

fn parse(s: String) -> Result<u64, std::num::ParseIntError> {
    s.parse()
}

static_assertions::assert_impl_all!(ProcessPoolExecutor: Send, Sync);
static_assertions::assert_impl_all!(mp_futures::Future<u64>: Send, Sync, Clone, Unpin);
static_assertions::assert_impl_all!(Error: Send, Sync, Clone, std::error::Error);
static_assertions::assert_impl_all!(mp_futures::Map<u64>: Send, Sync);
static_assertions::assert_impl_all!(mp_futures::AsCompleted<'static, u64>: Send, Sync);

#[test]
fn submit_and_result() {
    watchdog(120, || {
        for m in [
            StartMethod::Fork,
            StartMethod::Spawn,
            StartMethod::ForkServer,
        ] {
            let ex = executor(m, 2);
            let f = ex.submit(square, 12).unwrap();
            assert_eq!(f.result(LONG).unwrap(), 144);
            assert_eq!(
                f.result(None).unwrap(),
                144,
                "result() gives the value again"
            );
            assert!(f.done() && !f.running() && !f.cancelled());
            assert!(f.error(None).unwrap().is_none());
            assert_eq!(f.take(None).unwrap(), 144);
            assert!(matches!(f.result(None), Err(Error::AlreadyTaken)));
            assert!(f.error(None).unwrap().is_none(), "taken, still a success");

            let bad = ex.submit(checked, 3).unwrap();
            match bad.result(LONG) {
                Err(Error::Panicked { message, .. }) => {
                    assert_eq!(message, "three is not allowed")
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(bad.error(None), Ok(Some(Error::Panicked { .. }))));
            let failed = ex.try_submit(parse, "one".to_string()).unwrap();
            assert!(matches!(failed.result(LONG), Err(Error::Failed { .. })));
            let ok = ex.try_submit(parse, "7".to_string()).unwrap();
            assert_eq!(ok.result(LONG).unwrap(), 7);

            // Many at once: more than the workers, all in.
            let fs: Vec<_> = (0..50).map(|x| ex.submit(square, x).unwrap()).collect();
            for (x, f) in fs.iter().enumerate() {
                assert_eq!(f.result(LONG).unwrap(), (x * x) as u64);
            }
            ex.shutdown(true, false);
            assert!(matches!(ex.submit(square, 1), Err(Error::Shutdown)));
        }
    });
}

#[test]
fn bad_settings_are_typed_errors() {
    assert!(matches!(ProcessPoolExecutor::new(0), Err(Error::Config(_))));
    assert!(matches!(
        ProcessPoolExecutor::builder()
            .max_workers(1)
            .max_in_flight(0)
            .build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        ProcessPoolExecutor::builder()
            .max_workers(1)
            .max_tasks_per_child(0)
            .build(),
        Err(Error::Config(_))
    ));
}

fn count_init(path: String) {
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"i"));
}

fn pid(_: u64) -> u32 {
    std::process::id()
}

#[test]
fn builder_initializer_and_max_tasks_per_child() {
    watchdog(120, || {
        for m in METHODS {
            let path = std::env::temp_dir()
                .join(format!("mp-futures-{}-init-{m:?}", std::process::id()))
                .display()
                .to_string();
            let _ = std::fs::remove_file(&path);
            let ex = ProcessPoolExecutor::builder()
                .max_workers(1)
                .initializer(count_init, path.clone())
                .max_tasks_per_child(2)
                .start_method(m)
                .build()
                .unwrap();
            let pids: Vec<u32> = ex
                .map(pid, 0..6, LONG)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            ex.shutdown(true, false);
            // 6 tasks, 2 per worker: 3 workers, one after the other, each initialized.
            let mut distinct = pids.clone();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{pids:?}");
            // (A fourth worker may start to replace the third before the shutdown.)
            assert!(std::fs::read_to_string(&path).unwrap().len() >= 3);
            let _ = std::fs::remove_file(&path);
        }
    });
}

#[test]
fn map_keeps_order_and_times_out() {
    watchdog(120, || {
        for m in METHODS {
            let ex = executor(m, 2);
            let out: Vec<u64> = ex
                .map(square, 0..40, LONG)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(out, (0..40).map(|x| x * x).collect::<Vec<_>>());
            // A failed item yields its error in its place; the others go on.
            let r: Vec<_> = ex.map(checked, 1..6, LONG).unwrap().collect();
            assert!(matches!(r[2], Err(Error::Panicked { .. })));
            assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 4);

            // The first item is held in its worker: the deadline passes.
            let g = Gate::new(&format!("map-{m:?}"));
            let mut it = ex
                .map(gated, vec![g.arg(), g.arg()], Duration::from_millis(200))
                .unwrap();
            assert!(matches!(it.next(), Some(Err(Error::Timeout))));
            assert!(it.next().is_none(), "the iterator ends after its timeout");
            drop(it);
            g.open();
            // The executor goes on.
            assert_eq!(ex.submit(square, 3).unwrap().result(LONG).unwrap(), 9);
            // The gated tasks (not cancelled: they were running) end before the gate's
            // files go.
            ex.shutdown(true, false);
        }
    });
}

#[test]
fn shutdown_wait_waits_for_the_work() {
    watchdog(120, || {
        let ex = executor(StartMethod::Fork, 2);
        let fs: Vec<_> = (0..20).map(|x| ex.submit(square, x).unwrap()).collect();
        ex.shutdown(true, false);
        assert!(
            fs.iter().all(|f| f.done()),
            "shutdown(wait) returned before the work"
        );
        assert_eq!(fs[19].result(None).unwrap(), 361);
        assert!(matches!(ex.submit(square, 1), Err(Error::Shutdown)));
        ex.shutdown(true, false); // again: nothing left to do
    });
}

#[test]
fn shutdown_cancel_futures_cancels_the_pending_ones() {
    watchdog(120, || {
        let ex = executor(StartMethod::Fork, 1);
        let g = Gate::new("shutdown-cancel");
        let held = ex.submit(gated, g.arg()).unwrap();
        g.wait_started();
        let marks: Vec<String> = (0..3).map(|i| format!("{}.{i}", g.gate)).collect();
        let pending: Vec<_> = marks
            .iter()
            .map(|p| ex.submit(touch, p.clone()).unwrap())
            .collect();
        ex.shutdown(false, true);
        // As in Python, one task more than the workers is handed over (`max_in_flight`'s
        // default): the first `touch` is running and runs; the two behind it are cancelled.
        assert!(pending[0].running() && !pending[0].cancelled());
        assert!(pending[1..].iter().all(|f| f.cancelled()));
        assert!(held.running(), "the running task is not cancelled");
        assert!(matches!(ex.submit(square, 1), Err(Error::Shutdown)));
        g.open();
        assert_eq!(held.result(LONG).unwrap(), u64::from(g.wait_started()));
        ex.shutdown(true, false);
        assert!(pending[0].result(LONG).is_ok());
        assert!(
            std::path::Path::new(&marks[0]).exists(),
            "the handed-over task ran"
        );
        let _ = std::fs::remove_file(&marks[0]);
        for p in &marks[1..] {
            assert!(!std::path::Path::new(p).exists(), "a cancelled task ran");
        }
    });
}

#[test]
fn a_sigkilled_worker_fails_only_its_future() {
    watchdog(120, || {
        for m in METHODS {
            let ex = executor(m, 2);
            let g = Gate::new(&format!("kill-{m:?}"));
            let victim = ex.submit(gated, g.arg()).unwrap();
            let others: Vec<_> = (0..10).map(|x| ex.submit(square, x).unwrap()).collect();
            let pid = g.wait_started();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            match victim.result(LONG) {
                Err(Error::WorkerLost { pid: p, signal, .. }) => {
                    assert_eq!(p, pid);
                    assert_eq!(signal, Some(9));
                }
                other => panic!("{other:?}"),
            }
            for (x, f) in others.iter().enumerate() {
                assert_eq!(f.result(LONG).unwrap(), (x * x) as u64);
            }
            // The executor goes on, on a replacement worker.
            assert_eq!(ex.submit(square, 5).unwrap().result(LONG).unwrap(), 25);
        }
    });
}

#[test]
fn dropping_the_executor_waits_for_its_work() {
    watchdog(120, || {
        let ex = executor(StartMethod::Fork, 2);
        let fs: Vec<_> = (0..10).map(|x| ex.submit(square, x).unwrap()).collect();
        drop(ex);
        assert!(fs.iter().all(|f| f.done()));
        assert_eq!(fs[9].result(None).unwrap(), 81);
    });
}
