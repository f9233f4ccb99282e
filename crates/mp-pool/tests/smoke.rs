//! Smoke tests: map, apply and imap under fork and spawn; the auto traits of the public
//! types; the progress bar (feature `progress`).

mp_process::test_support!();

use mp_pool::{
    AsyncResult, Error, FnPool, IMap, Insights, Pool, PoolBuilder, Progress, ProgressState,
    SlowTask, Tasks, WorkerInsights,
};
use mp_process::StartMethod;
use static_assertions::assert_impl_all;

assert_impl_all!(Pool: Send, Sync);
assert_impl_all!(PoolBuilder: Send);
assert_impl_all!(Tasks<'static>: Send, Sync, Copy);
assert_impl_all!(AsyncResult<Vec<u64>>: Send, Sync);
assert_impl_all!(IMap<'static, u64>: Send);
assert_impl_all!(Error: Send, Sync, std::error::Error);
assert_impl_all!(FnPool<u64, u64, fn(u64) -> u64>: Send, Sync);
assert_impl_all!(Progress: Send, Sync, Clone);
assert_impl_all!(ProgressState: Send, Sync, Copy);
assert_impl_all!(Insights: Send, Sync, Clone, std::fmt::Display);
assert_impl_all!(WorkerInsights: Send, Sync);
assert_impl_all!(SlowTask: Send, Sync, Copy);

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn smoke() {
    for m in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ] {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        assert_eq!(pool.start_method(), m);
        assert_eq!(pool.processes(), 2);
        assert_eq!(
            pool.map(square, 0..10).unwrap(),
            (0..10).map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        let v: Vec<u64> = pool
            .imap(square, 0..100)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(v.len(), 100);
        pool.close();
        pool.join().unwrap();
    }
}

#[test]
fn default_chunksize_is_cpythons() {
    assert_eq!(mp_pool::default_chunksize(1_000_000, 2), 125_000);
    assert_eq!(mp_pool::default_chunksize(10, 4), 1);
    assert_eq!(mp_pool::default_chunksize(17, 2), 3);
    assert_eq!(mp_pool::default_chunksize(0, 2), 1);
}

#[cfg(feature = "progress")]
#[test]
fn progress_bar() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.progress().chunksize(5).map(square, 0..100).unwrap()[99],
        9801
    );
    let n = pool.progress().imap(square, 0..50).unwrap().count();
    assert_eq!(n, 50);
    let n = pool
        .progress()
        .imap_unordered(square, 0..50)
        .unwrap()
        .count();
    assert_eq!(n, 50);
    // A tracker drawn as a bar, over a batch of apply_async.
    let tracker = Progress::new().bar();
    let batch: Vec<_> = (0..20)
        .map(|x| pool.track(&tracker).apply_async(square, x).unwrap())
        .collect();
    for r in &batch {
        r.wait();
    }
    let st = tracker.state();
    assert_eq!((st.done, st.total), (20, Some(20)));
}
