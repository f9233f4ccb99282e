//! `Child::join_async` (feature `async`) on tokio's current-thread and multi-thread runtimes,
//! under fork and spawn: the future waits while the child runs, resolves with its value when
//! it returns and with how it ended when it is killed; a dropped future leaves the child to a
//! later join.

use std::future::Future;
use std::time::Duration;

use mp_process::{Process, ProcessError, StartMethod};

mp_process::test_support!();

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];
const WATCHDOG: Duration = Duration::from_secs(20);

fn runtimes() -> Vec<(&'static str, tokio::runtime::Runtime)> {
    vec![
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime"),
        ),
        (
            "multi-thread",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("runtime"),
        ),
    ]
}

/// `None` while `f` is still pending after `t`, else its output.
async fn pending_for<F: Future + Unpin>(f: &mut F, t: Duration) -> Option<F::Output> {
    tokio::time::timeout(t, f).await.ok()
}

/// Sleeps `ms` milliseconds, then returns `ms + 1`.
fn sleep_then_answer(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms + 1
}

#[test]
fn join_async_resolves_when_the_child_returns() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let mut c = Process::new(sleep_then_answer, 300)
                .start_method(m)
                .start()
                .unwrap();
            let v = rt.block_on(async {
                let mut f = Box::pin(c.join_async());
                assert!(
                    pending_for(&mut f, Duration::from_millis(20))
                        .await
                        .is_none(),
                    "{rt_name} {m}: resolved while the child runs"
                );
                tokio::time::timeout(WATCHDOG, f).await.expect("woken")
            });
            assert_eq!(v.unwrap(), 301, "{rt_name} {m}");
            assert_eq!(c.exitcode(), Some(0));
        }
    }
}

#[test]
fn join_async_reports_a_killed_child_and_a_dropped_one_loses_nothing() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let mut c = Process::new(sleep_then_answer, 60_000)
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut f = Box::pin(c.join_async());
                assert!(pending_for(&mut f, Duration::from_millis(20))
                    .await
                    .is_none());
            });
            // The dropped future left the child alone.
            assert!(c.is_alive(), "{rt_name} {m}");
            c.kill().unwrap();
            let r = rt.block_on(async { tokio::time::timeout(WATCHDOG, c.join_async()).await });
            let r = r.expect("woken");
            assert!(
                matches!(r, Err(ProcessError::Signaled { signal: 9, .. })),
                "{rt_name} {m}: {r:?}"
            );
        }
    }
}
