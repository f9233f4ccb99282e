//! `Connection::recv_async` / `send_async` and `ready` (feature `async`) with real peer
//! processes (fork and spawn), on tokio's current-thread and multi-thread runtimes: a send in
//! another process wakes the receiving future, a full ring makes a send wait for the peer's
//! receive, a dropped future loses no message, a killed peer wakes its futures with the typed
//! error, and one thread awaits 1,000 pipes at once.

use std::future::Future;
use std::time::Duration;

use mp_pipe::{Connection, Duplex, Error, Pipe, MIN_RING_CAPACITY};
use mp_process::{Process, StartMethod};

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

/// Waits for the go signal (a message on `c`), then sends `n` values and waits for the
/// parent's "done".
fn echo_after_go(c: Connection<u64>) -> u64 {
    let n = c.recv().expect("go");
    for i in 0..n {
        c.send(&(i * 3)).expect("send");
    }
    c.recv().expect("done")
}

#[test]
fn recv_async_is_woken_by_a_send_in_another_process() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (a, b) = Pipe::<u64>::new(Duplex).unwrap();
            let mut child = Process::new(echo_after_go, b)
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut first = Box::pin(a.recv_async());
                // Nothing is sent yet: the future waits (the peer waits for the go).
                assert!(pending_for(&mut first, Duration::from_millis(50))
                    .await
                    .is_none());
                a.send_async(&5).await.unwrap();
                let got = tokio::time::timeout(WATCHDOG, first).await.expect("woken");
                assert_eq!(got.unwrap(), 0, "{rt_name} {m}");
                for i in 1..5 {
                    assert_eq!(a.recv_async().await.unwrap(), i * 3, "{rt_name} {m}");
                }
                a.send_async(&99).await.unwrap();
            });
            assert_eq!(child.join_timeout(WATCHDOG).unwrap().unwrap(), 99);
        }
    }
}

/// Waits for `n` on `go`, then receives `n` messages from `c` and returns their total length.
fn sink_after_go((c, go): (Connection<Vec<u8>>, Connection<u64>)) -> u64 {
    let n = go.recv().expect("go");
    (0..n).map(|_| c.recv().expect("recv").len() as u64).sum()
}

#[test]
fn send_async_on_a_full_ring_waits_for_the_peers_receive() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (a, b) = Pipe::<Vec<u8>>::with_capacity(Duplex, MIN_RING_CAPACITY).unwrap();
            let (go, go_child) = Pipe::<u64>::new(Duplex).unwrap();
            let mut child = Process::new(sink_after_go, (b, go_child))
                .start_method(m)
                .start()
                .unwrap();
            let item = vec![7u8; 1000];
            rt.block_on(async {
                // Fill the ring: the peer does not read before the go.
                let mut sent = 0u64;
                let mut waiting = loop {
                    let mut f = Box::pin(a.send_async(&item));
                    match pending_for(&mut f, Duration::from_millis(50)).await {
                        None => break f,
                        Some(r) => r.unwrap(),
                    }
                    sent += 1;
                };
                assert!(sent > 0, "{rt_name} {m}");
                // The waiting send completes once the peer reads.
                go.send(&(sent + 1)).unwrap();
                tokio::time::timeout(WATCHDOG, &mut waiting)
                    .await
                    .expect("the send was woken")
                    .unwrap();
                assert_eq!(
                    child.join_timeout(WATCHDOG).unwrap().unwrap(),
                    (sent + 1) * 1000,
                    "{rt_name} {m}"
                );
            });
        }
    }
}

/// Sends `v` on `c` once it gets the go, then waits for "done".
fn send_one_after_go(c: Connection<u64>) -> u64 {
    let v = c.recv().expect("go");
    c.send(&v).expect("send");
    c.recv().expect("done")
}

#[test]
fn a_dropped_recv_async_loses_no_message() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (a, b) = Pipe::<u64>::new(Duplex).unwrap();
            let mut child = Process::new(send_one_after_go, b)
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut f = Box::pin(a.recv_async());
                assert!(pending_for(&mut f, Duration::from_millis(20))
                    .await
                    .is_none());
                drop(f);
                a.send(&41).unwrap();
                // The message the dropped future was waiting for is there for the next one.
                let got = tokio::time::timeout(WATCHDOG, a.recv_async())
                    .await
                    .unwrap();
                assert_eq!(got.unwrap(), 41, "{rt_name} {m}");
                a.send(&0).unwrap();
            });
            assert_eq!(child.join_timeout(WATCHDOG).unwrap().unwrap(), 0);
        }
    }
}

/// Holds `c` and `full` until killed.
fn hold((c, _full): (Connection<u64>, Connection<Vec<u8>>)) {
    let _ = c.recv();
    std::thread::sleep(WATCHDOG * 2);
}

#[test]
fn a_killed_peer_wakes_its_futures_with_the_typed_error() {
    for (rt_name, rt) in runtimes() {
        for m in METHODS {
            let (a, b) = Pipe::<u64>::new(Duplex).unwrap();
            let (full, full_child) =
                Pipe::<Vec<u8>>::with_capacity(Duplex, MIN_RING_CAPACITY).unwrap();
            let mut child = Process::new(hold, (b, full_child))
                .start_method(m)
                .start()
                .unwrap();
            rt.block_on(async {
                let mut recv = Box::pin(a.recv_async());
                assert!(pending_for(&mut recv, Duration::from_millis(20))
                    .await
                    .is_none());
                let item = vec![1u8; 1000];
                let mut send = loop {
                    let mut f = Box::pin(full.send_async(&item));
                    match pending_for(&mut f, Duration::from_millis(50)).await {
                        None => break f,
                        Some(r) => r.unwrap(),
                    }
                };
                child.kill().unwrap();
                let r = tokio::time::timeout(WATCHDOG, &mut recv)
                    .await
                    .expect("woken");
                assert!(matches!(r, Err(Error::Eof)), "{rt_name} {m}: {r:?}");
                let s = tokio::time::timeout(WATCHDOG, &mut send)
                    .await
                    .expect("woken");
                assert!(matches!(s, Err(Error::BrokenPipe)), "{rt_name} {m}: {s:?}");
            });
            let _ = child.join_timeout(WATCHDOG);
        }
    }
}

/// Raises this process's soft limit of descriptors to its hard limit.
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

#[test]
fn one_thread_awaits_a_thousand_pipes() {
    const N: usize = 1_000;
    mp_process::isolate!(one_thread_awaits_a_thousand_pipes);
    raise_nofile();
    let (ours, theirs): (Vec<_>, Vec<_>) =
        (0..N).map(|_| Pipe::<u64>::new(Duplex).unwrap()).unzip();
    // The child answers in the reverse order, once every future is waiting.
    let mut child = Process::fork(move || {
        for (i, c) in theirs.iter().enumerate().rev() {
            let go = c.recv().expect("go");
            c.send(&(go + i as u64)).expect("send");
        }
        0u8
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let sum = local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for c in ours {
            tasks.push(tokio::task::spawn_local(async move {
                c.send_async(&1_000_000).await.unwrap();
                c.recv_async().await.unwrap()
            }));
        }
        let mut sum = 0u64;
        for t in tasks {
            sum += tokio::time::timeout(WATCHDOG, t).await.unwrap().unwrap();
        }
        sum
    });
    let expected: u64 = (0..N as u64).map(|i| 1_000_000 + i).sum();
    assert_eq!(sum, expected);
    assert_eq!(child.join_timeout(WATCHDOG).unwrap().unwrap(), 0);
}

#[test]
fn ready_waits_for_a_process_sentinel() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (a, b) = Pipe::<u64>::new(Duplex).unwrap();
    let mut child = Process::new(send_one_after_go, b)
        .start_method(StartMethod::Spawn)
        .start()
        .unwrap();
    let sentinel = child.sentinel().unwrap();
    rt.block_on(async {
        let mut ended = Box::pin(mp_pipe::ready(&sentinel));
        assert!(pending_for(&mut ended, Duration::from_millis(20))
            .await
            .is_none());
        a.send(&1).unwrap();
        assert_eq!(a.recv_async().await.unwrap(), 1);
        a.send(&0).unwrap();
        tokio::time::timeout(WATCHDOG, ended)
            .await
            .unwrap()
            .unwrap();
    });
    assert_eq!(child.join_timeout(WATCHDOG).unwrap().unwrap(), 0);
}
