//! `AsyncResult` as a `std::future::Future`, `IMap::next_async` and `IMap` as a stream, on tokio's
//! current-thread and multi-thread runtimes, with real worker processes: an await resolves
//! with the workers' value (moved out, as `get`), a failed task with its error, and an async
//! imap yields every result in order while the thread is free for other tasks.

use std::time::Duration;

use mp_pool::{Error, Pool};
use mp_process::StartMethod;

mp_process::test_support!();

const LONG: Duration = Duration::from_secs(30);

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

fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    x * 2
}

fn square(x: u64) -> u64 {
    x * x
}

fn fails_on_three(x: u64) -> Result<u64, String> {
    if x == 3 {
        Err("three".into())
    } else {
        Ok(x)
    }
}

fn panics_on_three(x: u64) -> u64 {
    assert!(x != 3, "three");
    x
}

fn pool() -> Pool {
    Pool::builder()
        .processes(2)
        .start_method(StartMethod::Fork)
        .build()
        .unwrap()
}

#[test]
fn an_async_result_awaits_the_workers_value() {
    for (rt_name, rt) in runtimes() {
        let pool = pool();
        let r = pool.apply_async(slow_double, 21).unwrap();
        let v = rt.block_on(async {
            let mut r = std::pin::pin!(r);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), &mut r)
                    .await
                    .is_err(),
                "{rt_name}: ready before the worker answered"
            );
            tokio::time::timeout(LONG, r).await.expect("woken")
        });
        assert_eq!(v.unwrap(), 42, "{rt_name}");
        let m = pool.map_async(square, 0..100u64).unwrap();
        let all = rt.block_on(m).unwrap();
        assert_eq!(all, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        let failed = rt.block_on(pool.try_map_async(fails_on_three, 0..5u64).unwrap());
        assert!(matches!(failed, Err(Error::Failed { .. })), "{failed:?}");
        // The await took the value, as `get` does.
        let mut r = pool.apply_async(square, 5).unwrap();
        assert_eq!(rt.block_on(&mut r).unwrap(), 25);
        assert!(matches!(r.get(), Err(Error::AlreadyTaken)));
    }
}

#[test]
fn an_async_imap_yields_every_result_in_order() {
    for (rt_name, rt) in runtimes() {
        let pool = pool();
        let got = rt.block_on(async {
            let mut it = pool.imap(square, 0..500u64).unwrap();
            let mut out = Vec::new();
            while let Some(r) = tokio::time::timeout(LONG, it.next_async())
                .await
                .expect("woken")
            {
                out.push(r.unwrap());
            }
            out
        });
        assert_eq!(
            got,
            (0..500u64).map(|x| x * x).collect::<Vec<_>>(),
            "{rt_name}"
        );
        // A dropped next_async loses nothing: the result comes with the next call.
        let got = rt.block_on(async {
            let mut it = pool.imap(slow_double, 0..3u64).unwrap();
            {
                let f = it.next_async();
                assert!(tokio::time::timeout(Duration::from_millis(10), f)
                    .await
                    .is_err());
            }
            let mut out = Vec::new();
            while let Some(r) = it.next_async().await {
                out.push(r.unwrap());
            }
            out
        });
        assert_eq!(got, vec![0, 2, 4], "{rt_name}");
    }
}

/// The next item of a stream (what `StreamExt::next` does, without the futures crate).
async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

#[test]
fn an_imap_is_a_stream_of_every_result_and_a_pending_poll_loses_nothing() {
    for (rt_name, rt) in runtimes() {
        let pool = pool();
        let got = rt.block_on(async {
            let mut it = pool.imap_unordered(square, 0..300u64).unwrap();
            let mut out = Vec::new();
            while let Some(r) = tokio::time::timeout(LONG, next(&mut it))
                .await
                .expect("woken")
            {
                out.push(r.unwrap());
            }
            out.sort();
            out
        });
        assert_eq!(
            got,
            (0..300u64).map(|x| x * x).collect::<Vec<_>>(),
            "{rt_name}"
        );
        // A poll that found nothing (the workers are slow) leaves the results for the next.
        let got = rt.block_on(async {
            let mut it = pool.imap(slow_double, 0..3u64).unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(10), next(&mut it))
                    .await
                    .is_err(),
                "{rt_name}: a result before the workers answered"
            );
            let mut out = Vec::new();
            while let Some(r) = next(&mut it).await {
                out.push(r.unwrap());
            }
            out
        });
        assert_eq!(got, vec![0, 2, 4], "{rt_name}");
        // A failed chunk is an item of the stream, and the stream goes on.
        let got = rt.block_on(async {
            let mut it = pool.imap(panics_on_three, 0..5u64).unwrap();
            let mut out = Vec::new();
            while let Some(r) = next(&mut it).await {
                out.push(r.is_ok());
            }
            out
        });
        assert_eq!(got, [true, true, true, false, true], "{rt_name}");
    }
}
