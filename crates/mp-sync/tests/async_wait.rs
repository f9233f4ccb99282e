//! `Lock::acquire_async` and `Event::wait_async` (feature `async`) across real processes, on
//! tokio's current-thread and multi-thread runtimes: a release or a `set` in another process
//! wakes the future, a dead holder is taken over, a dropped future takes nothing, and many
//! waiting futures share a few threads (no thread, no spin per future).

use std::future::Future;
use std::time::Duration;

use mp_process::{Process, StartMethod};
use mp_sync::{Event, Lock};

mp_process::test_support!();

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];

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

/// True when `f` is still pending after `t`.
async fn pending_for<F: Future + Unpin>(f: &mut F, t: Duration) -> bool {
    tokio::time::timeout(t, f).await.is_err()
}

fn hold_until_told((lock, held, go): (Lock, Event, Event)) -> i32 {
    lock.acquire().expect("acquire");
    held.set();
    go.wait();
    lock.release().expect("release");
    0
}

fn hold_for_ever((lock, held): (Lock, Event)) -> i32 {
    lock.acquire().expect("acquire");
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn set_when_told((ev, go): (Event, Event)) -> i32 {
    go.wait();
    ev.set();
    0
}

#[test]
fn acquire_async_is_woken_by_a_release_in_another_process() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (lock, held, go) = (
                Lock::new().unwrap(),
                Event::new().unwrap(),
                Event::new().unwrap(),
            );
            let mut child = Process::new(hold_until_told, (lock.clone(), held.clone(), go.clone()))
                .start_method(m)
                .start()
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(10)), "{rt_name} {m}");
            rt.block_on(async {
                let mut acquire = Box::pin(lock.acquire_async());
                assert!(
                    pending_for(&mut acquire, Duration::from_millis(100)).await,
                    "{rt_name} {m}: acquired while another process holds it"
                );
                go.set();
                tokio::time::timeout(Duration::from_secs(10), acquire)
                    .await
                    .unwrap_or_else(|_| panic!("{rt_name} {m}: the release did not wake it"))
                    .expect("a clean acquire");
            });
            assert!(lock.is_locked());
            lock.release().unwrap();
            assert_eq!(child.join().unwrap(), 0);
        }
    }
}

#[test]
fn acquire_async_takes_over_from_a_killed_holder() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (lock, held) = (Lock::new().unwrap(), Event::new().unwrap());
            let mut child = Process::new(hold_for_ever, (lock.clone(), held.clone()))
                .start_method(m)
                .start()
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(10)), "{rt_name} {m}");
            let pid = child.pid();
            let got = rt.block_on(async {
                let mut acquire = Box::pin(lock.acquire_async());
                assert!(pending_for(&mut acquire, Duration::from_millis(50)).await);
                child.kill().unwrap();
                tokio::time::timeout(Duration::from_secs(10), acquire)
                    .await
                    .unwrap_or_else(|_| panic!("{rt_name} {m}: the holder's death did not wake it"))
            });
            match got {
                Err(died) => assert_eq!(died.pid(), pid, "{rt_name} {m}"),
                Ok(()) => panic!("{rt_name} {m}: a dead holder's lock must say OwnerDied"),
            }
            lock.release().unwrap();
            let _ = child.join();
        }
    }
}

#[test]
fn a_dropped_acquire_async_takes_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (lock, held, go) = (
        Lock::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let mut child = Process::new(hold_until_told, (lock.clone(), held.clone(), go.clone()))
        .start()
        .unwrap();
    assert!(held.wait_timeout(Duration::from_secs(10)));
    rt.block_on(async {
        let mut first = Box::pin(lock.acquire_async());
        assert!(pending_for(&mut first, Duration::from_millis(50)).await);
        drop(first);
        go.set();
        // The release is not lost with the dropped future: a new one gets the lock.
        tokio::time::timeout(Duration::from_secs(10), lock.acquire_async())
            .await
            .expect("woken")
            .expect("clean");
    });
    lock.release().unwrap();
    assert_eq!(child.join().unwrap(), 0);
    // And the blocking path still works after async waiters came and went.
    lock.acquire().unwrap();
    lock.release().unwrap();
}

/// The threads of this process named like mp-core's reactor shards.
fn reactor_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "mp-async-futex")
        .count()
}

#[test]
fn many_wait_async_share_a_few_threads_and_all_wake_on_set() {
    const N: usize = 300;
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (ev, go) = (Event::new().unwrap(), Event::new().unwrap());
            let mut child = Process::new(set_when_told, (ev.clone(), go.clone()))
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut waits: Vec<_> = (0..N).map(|_| Box::pin(ev.wait_async())).collect();
                for w in waits.iter_mut() {
                    assert!(pending_for(w, Duration::from_millis(1)).await);
                }
                // 300 registrations fit in 3 shards of 127 (other tests of this binary may
                // add one more): never a thread per future.
                let threads = reactor_threads();
                assert!(
                    (1..=4).contains(&threads),
                    "{rt_name} {m}: {threads} reactor threads"
                );
                go.set();
                for w in waits {
                    tokio::time::timeout(Duration::from_secs(10), w)
                        .await
                        .unwrap_or_else(|_| panic!("{rt_name} {m}: a waiter was not woken"));
                }
            });
            assert!(ev.is_set());
            assert_eq!(child.join().unwrap(), 0);
        }
    }
}
