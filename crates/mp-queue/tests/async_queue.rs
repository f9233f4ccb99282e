//! `Queue::get_async` and `Queue::put_async` (feature `async`) with real producer and consumer
//! processes (fork and spawn), on tokio's current-thread and multi-thread runtimes: a put or a
//! get in another process wakes the future, a dropped future loses no item, and many waiting
//! futures each get one item exactly once.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use mp_process::{Process, StartMethod};
use mp_queue::Queue;

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

async fn pending_for<F: Future + Unpin>(f: &mut F, t: Duration) -> bool {
    tokio::time::timeout(t, f).await.is_err()
}

/// Waits for the go signal (an item on `go`), then puts `0..n` on `q`.
fn produce((q, go, n): (Queue<u64>, Queue<u8>, u64)) -> u64 {
    go.get().expect("go");
    for i in 0..n {
        q.put(i).expect("put");
    }
    n
}

/// Waits for the go signal, then takes `n` items.
fn consume((q, go, n): (Queue<u64>, Queue<u8>, u64)) -> u64 {
    go.get().expect("go");
    (0..n).map(|_| q.get().expect("get")).sum()
}

#[test]
fn get_async_is_woken_by_a_put_in_another_process() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (q, go) = (Queue::<u64>::new().unwrap(), Queue::<u8>::new().unwrap());
            let mut child = Process::new(produce, (q.clone(), go.clone(), 1))
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut get = Box::pin(q.get_async());
                assert!(pending_for(&mut get, Duration::from_millis(100)).await);
                go.put(1).unwrap();
                let got = tokio::time::timeout(WATCHDOG, get)
                    .await
                    .unwrap_or_else(|_| panic!("{rt_name} {m}: the put did not wake it"));
                assert_eq!(got.unwrap(), 0);
            });
            assert_eq!(child.join().unwrap(), 1);
        }
    }
}

#[test]
fn a_dropped_get_async_loses_no_item() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (q, go) = (Queue::<u64>::new().unwrap(), Queue::<u8>::new().unwrap());
    let mut child = Process::new(produce, (q.clone(), go.clone(), 1))
        .start()
        .unwrap();
    rt.block_on(async {
        let mut get = Box::pin(q.get_async());
        assert!(pending_for(&mut get, Duration::from_millis(50)).await);
        drop(get);
    });
    go.put(1).unwrap();
    assert_eq!(child.join().unwrap(), 1);
    // The item the dropped future never took is still there.
    assert_eq!(q.get_timeout(WATCHDOG).unwrap(), 0);
    assert!(q.empty());
}

#[test]
fn put_async_waits_for_room_made_by_another_process() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (q, go) = (
                Queue::<u64>::with_maxsize(1).unwrap(),
                Queue::<u8>::new().unwrap(),
            );
            q.put(10).unwrap();
            let mut child = Process::new(consume, (q.clone(), go.clone(), 2))
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut put = Box::pin(q.put_async(32));
                assert!(
                    pending_for(&mut put, Duration::from_millis(100)).await,
                    "{rt_name} {m}: put into a full queue"
                );
                go.put(1).unwrap();
                tokio::time::timeout(WATCHDOG, put)
                    .await
                    .unwrap_or_else(|_| panic!("{rt_name} {m}: the get did not wake it"))
                    .unwrap_or_else(|e| panic!("{rt_name} {m}: {e}"));
            });
            assert_eq!(child.join().unwrap(), 42, "{rt_name} {m}");
        }
    }
}

#[test]
fn many_get_async_each_take_one_item_once() {
    const N: u64 = 200;
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (q, go) = (Queue::<u64>::new().unwrap(), Queue::<u8>::new().unwrap());
            let mut child = Process::new(produce, (q.clone(), go.clone(), N))
                .start_method(m)
                .start()
                .unwrap();
            let got: Vec<u64> = rt.block_on(async {
                let mut gets: Vec<_> = (0..N).map(|_| Box::pin(q.get_async())).collect();
                for g in gets.iter_mut() {
                    assert!(pending_for(g, Duration::from_millis(1)).await);
                }
                go.put(1).unwrap();
                let mut got = Vec::new();
                for g in gets {
                    let item = tokio::time::timeout(WATCHDOG, g)
                        .await
                        .unwrap_or_else(|_| panic!("{rt_name} {m}: a get was not woken"));
                    got.push(item.unwrap());
                }
                got
            });
            let distinct: BTreeSet<u64> = got.iter().copied().collect();
            assert_eq!(
                distinct.len() as u64,
                N,
                "{rt_name} {m}: an item taken twice"
            );
            assert_eq!(distinct, (0..N).collect(), "{rt_name} {m}");
            assert_eq!(child.join().unwrap(), N);
        }
    }
}
