//! The cluster pool with real worker processes and a real redis-server: map across workers,
//! workers killed mid-task and added mid-map, tasks lost on every try, a server restarted
//! mid-map, wrong passwords, another build, oversized values.

mp_process::test_support!();

mod common;
use common::{prefix, wait_until, watchdog, Purge, Server, Worker, WorkerArgs};

use std::collections::HashSet;
use std::time::Duration;

use mp_redis::{Cluster, Error};

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("three is right out");
    }
    x
}

/// Meets the other party at a cluster barrier: succeeds only when two workers run two of
/// these tasks at the same time. Returns the worker's pid.
fn meet((url, pre): (String, String)) -> u32 {
    let c = Cluster::builder(&url).prefix(&pre).connect().unwrap();
    c.barrier("meet", 2)
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    std::process::id()
}

/// Item 7, on its first try, records its worker's pid and never returns (the test kills that
/// worker); every other run returns x * 10.
fn hang_once((url, pre, x): (String, String, u64)) -> u64 {
    if x == 7 {
        let c = Cluster::builder(&url).prefix(&pre).connect().unwrap();
        let d = c.dict::<String, u32>("hang");
        if d.setdefault(&"pid".into(), &std::process::id()).unwrap() == std::process::id() {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(10));
    x * 10
}

/// Kills its own worker process, on every try.
fn die(_: u64) -> u64 {
    // SAFETY: kill(2) on ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x + 1
}

/// Records that it ran (in the cluster dict `ran`), then takes 30 ms.
fn record_slowly((url, pre, x): (String, String, u64)) -> u64 {
    let c = Cluster::builder(&url).prefix(&pre).connect().unwrap();
    c.dict::<u64, u32>("ran").set(&x, &1).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    x
}

/// An iterator whose exact size hint (`says`) is not how many items it has (`left`).
struct Liar {
    says: usize,
    left: u64,
}

impl Iterator for Liar {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.left = self.left.checked_sub(1)?;
        Some(self.left)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.says, Some(self.says))
    }
}

fn cluster(s: &Server, pre: &str) -> Cluster {
    Cluster::builder(&s.url)
        .prefix(pre)
        .lease(Duration::from_millis(600))
        .connect()
        .unwrap()
}

#[test]
fn map_across_two_workers() {
    let Some(s) = Server::any() else { return };
    watchdog(120, move || {
        let pre = prefix("map2");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 600, 3);
        let w = [Worker::start(&args), Worker::start(&args)];
        let c = cluster(&s, &pre);
        let pool = c.pool().unwrap();
        // Two tasks that can only finish together: both workers took part.
        let pids = pool
            .map_chunked(meet, vec![(s.url.clone(), pre.clone()); 2], 1)
            .unwrap();
        let want: HashSet<u32> = w.iter().map(|w| w.pid()).collect();
        assert_eq!(pids.iter().copied().collect::<HashSet<u32>>(), want);

        let xs: Vec<u64> = (0..2000).collect();
        assert_eq!(
            pool.map(square, xs.clone()).unwrap(),
            xs.iter().map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(
            pool.map_chunked(square, xs.clone(), 7).unwrap(),
            xs.iter().map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(
            pool.map(square, Vec::<u64>::new()).unwrap(),
            Vec::<u64>::new()
        );
        // Items without an exact size are collected first; a size hint that lies is an error
        // before anything is sent.
        assert_eq!(
            pool.map(square, (0..10u64).filter(|x| x % 2 == 0)).unwrap(),
            [0, 4, 16, 36, 64]
        );
        for (says, has) in [(100, 3), (1, 3)] {
            let r = pool.map_chunked(square, Liar { says, left: has }, 1);
            assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
        }
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        let a = pool.apply_async(square, 5).unwrap();
        let b = pool.map_async(square, 0..3u64).unwrap();
        assert_eq!(b.get().unwrap(), [0, 1, 4]);
        assert_eq!(a.get().unwrap(), 25);
        assert!(matches!(a.get(), Err(Error::ResultTaken)));
        assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
        let ordered: Vec<u64> = pool
            .imap(square, 0..100u64, 3)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ordered, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        let mut un: Vec<u64> = pool
            .imap_unordered(square, 0..100u64, 1)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        un.sort();
        assert_eq!(un, ordered);
        // A panic is the task's result, and the pool stays usable.
        match pool.map_chunked(boom, 0..6u64, 1) {
            Err(Error::TaskPanicked { message, .. }) => {
                assert!(message.contains("three is right out"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        pool.close();
        pool.join().unwrap();
        assert!(matches!(pool.apply(square, 1), Err(Error::PoolClosed(_))));
    });
}

#[test]
fn worker_killed_mid_task_and_workers_joining() {
    let Some(s) = Server::any() else { return };
    watchdog(120, move || {
        let pre = prefix("killed");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 600, 3);
        let mut workers = vec![Worker::start(&args), Worker::start(&args)];
        let c = cluster(&s, &pre);
        let pool = c.pool().unwrap();
        let items: Vec<(String, String, u64)> =
            (0..40).map(|x| (s.url.clone(), pre.clone(), x)).collect();
        let job = pool.map_async(hang_once, items).unwrap();
        // Item 7's first try hangs in some worker: kill exactly that one, mid-task.
        let hang = c.dict::<String, u32>("hang");
        wait_until("item 7 to start", 60, || {
            hang.contains(&"pid".into()).unwrap()
        });
        let pid = hang.get(&"pid".into()).unwrap().unwrap();
        let i = workers
            .iter()
            .position(|w| w.pid() == pid)
            .expect("a worker's pid");
        workers.remove(i).kill();
        // A worker joins mid-map.
        workers.push(Worker::start(&args));
        let out = job.get().unwrap();
        // Every item's result exactly once, in order (item 7 ran twice).
        assert_eq!(out, (0..40).map(|x| x * 10).collect::<Vec<u64>>());
    });
}

#[test]
fn task_killing_every_worker_ends_with_task_lost() {
    let Some(s) = Server::any() else { return };
    watchdog(120, move || {
        let pre = prefix("lost");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 300, 2);
        // Each try kills one worker: two tries, and the third taker refuses.
        let _w = [
            Worker::start(&args),
            Worker::start(&args),
            Worker::start(&args),
        ];
        let c = Cluster::builder(&s.url)
            .prefix(&pre)
            .lease(Duration::from_millis(300))
            .connect()
            .unwrap();
        let pool = c.pool().unwrap();
        match pool.apply(die, 1) {
            Err(Error::TaskLost { tries }) => assert_eq!(tries, 3),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_terminated_pools_queued_tasks_are_skipped_and_the_worker_goes_on() {
    let Some(s) = Server::any() else { return };
    watchdog(120, move || {
        let pre = prefix("cancel");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 600, 3);
        let _w = Worker::start(&args);
        let c = cluster(&s, &pre);
        let doomed = c.pool().unwrap();
        let jobs: Vec<_> = (0..40)
            .map(|x| {
                doomed
                    .apply_async(record_slowly, (s.url.clone(), pre.clone(), x))
                    .unwrap()
            })
            .collect();
        let ran = c.dict::<u64, u32>("ran");
        wait_until("the first task to run", 60, || ran.len().unwrap() > 0);
        doomed.terminate().unwrap();
        // Each call fails as terminated, but one that finished before the terminate.
        let failed = jobs
            .iter()
            .filter(|j| matches!(j.get(), Err(Error::PoolClosed("terminated"))))
            .count();
        assert!(failed >= 38, "{failed} of 40 calls failed as terminated");
        // Another pool's task, queued behind the 40: the worker reaches it past the skipped
        // ones (each of its takes after the terminate checks the pool it took from).
        let other = c.pool().unwrap();
        assert_eq!(other.apply(square, 9).unwrap(), 81);
        // Only the tasks taken before the terminate ran: the one running then, and at most
        // one more that the step took while the terminate was on its way.
        let n = ran.len().unwrap();
        assert!((1..=3).contains(&n), "{n} of 40 tasks ran");
        // And the worker keeps working for the new pool.
        assert_eq!(other.map_chunked(square, 0..20u64, 1).unwrap().len(), 20);
    });
}

#[test]
fn garbage_under_the_prefix_is_dropped_and_the_pool_goes_on() {
    let Some(s) = Server::any() else { return };
    watchdog(120, move || {
        let pre = prefix("garbage");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 600, 3);
        let _w = Worker::start(&args);
        let c = cluster(&s, &pre);
        let pool = c.pool().unwrap();
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
        let id = format!("{pool:?}");
        let id = id.split('"').nth(1).expect("the pool's id in its Debug");
        let mut con = redis::Client::open(s.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        // Tasks: too short; a header whose message length runs past the end; a well-formed
        // header before a message that is not one.
        let mut junk_meta = format!("00000000{id}00000004junk").into_bytes();
        junk_meta.resize(64, 0);
        let tasks: [&[u8]; 3] = [b"short", b"00000000aaaaaaaaaaaaaaaaffffffff", &junk_meta];
        // Results on the pool's own list: the same kinds of garbage.
        let results: [&[u8]; 3] = [b"x", b"ffffffff        ", b"00000004        junk"];
        let mut p = redis::pipe();
        for t in tasks {
            p.cmd("LPUSH").arg(format!("{pre}:tasks")).arg(t).ignore();
        }
        for r in results {
            p.cmd("LPUSH")
                .arg(format!("{pre}:results:{id}"))
                .arg(r)
                .ignore();
        }
        p.query::<()>(&mut con).unwrap();
        // The worker drops the tasks, the collector the results; both go on.
        let xs: Vec<u64> = (0..50).collect();
        assert_eq!(
            pool.map_chunked(square, xs.clone(), 5).unwrap(),
            xs.iter().map(|x| x * x).collect::<Vec<_>>()
        );
        let left: usize = redis::cmd("LLEN")
            .arg(format!("{pre}:tasks"))
            .query(&mut con)
            .unwrap();
        assert_eq!(left, 0);
    });
}

#[test]
fn server_restarted_mid_map() {
    let Some(mut s) = Server::own(&[]) else {
        return;
    };
    watchdog(180, move || {
        let pre = prefix("restart");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 600, 5);
        let _w = [Worker::start(&args), Worker::start(&args)];
        let c = cluster(&s, &pre);
        let pool = c.pool().unwrap();
        let mut out = Vec::new();
        let mut it = pool.imap(slow, 0..80u64, 1).unwrap();
        for r in it.by_ref().take(20) {
            out.push(r.unwrap());
        }
        // Everything the server held (queued tasks, results) is gone with it.
        s.restart(Duration::from_millis(300));
        for r in it {
            out.push(r.unwrap());
        }
        assert_eq!(out, (1..=80u64).collect::<Vec<_>>());
    });
}

#[test]
fn wrong_password_is_refused() {
    let Some(s) = Server::own(&["--requirepass", "s3cret"]) else {
        return;
    };
    watchdog(60, move || {
        let port = s
            .url
            .trim_start_matches("redis://127.0.0.1:")
            .trim_end_matches("/0");
        let wrong = format!("redis://:nope@127.0.0.1:{port}/0");
        assert!(matches!(Cluster::connect(&wrong), Err(Error::Auth(_))));
        let none = format!("redis://127.0.0.1:{port}/0");
        assert!(matches!(Cluster::connect(&none), Err(Error::Auth(_))));
        let right = format!("redis://:s3cret@127.0.0.1:{port}/0");
        let c = Cluster::builder(&right)
            .prefix(&prefix("auth"))
            .connect()
            .unwrap();
        let d = c.dict::<u32, u32>("d");
        d.set(&1, &2).unwrap();
        assert_eq!(d.get(&1).unwrap(), Some(2));
    });
}

#[test]
fn worker_of_another_build_is_refused() {
    let Some(s) = Server::any() else { return };
    watchdog(60, move || {
        let pre = prefix("build");
        let _purge = Purge(s.url.clone(), pre.clone());
        let args: WorkerArgs = (s.url.clone(), pre.clone(), 600, 3);
        let _w = Worker::start(&args);
        let c = cluster(&s, &pre);
        let mut pool = c.pool().unwrap();
        // As if this pool ran another build than the worker.
        pool.claim_build_id(vec![0xab; 20]);
        match pool.apply(square, 2) {
            Err(e @ Error::WrongBuild { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&"ab".repeat(20)), "{text}");
                let mine: String = mp_process::symbol::image_id()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert!(text.contains(&mine), "{text}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn oversized_values_and_unreachable_server() {
    let Some(s) = Server::any() else { return };
    watchdog(60, move || {
        let pre = prefix("big");
        let _purge = Purge(s.url.clone(), pre.clone());
        let c = Cluster::builder(&s.url)
            .prefix(&pre)
            .max_value_bytes(1024)
            .connect()
            .unwrap();
        let pool = c.pool().unwrap();
        let big = vec![vec![7u8; 4096]];
        assert!(matches!(
            pool.map(|v: Vec<u8>| v.len(), big),
            Err(Error::TooLarge { cap: 1024, .. })
        ));
        // No worker here: a result still waiting when its pool goes fails, never hangs.
        let pending = pool.apply_async(square, 2).unwrap();
        assert!(!pending.wait_timeout(Duration::from_millis(50)));
        assert!(matches!(
            pending.get_timeout(Duration::from_millis(10)),
            Err(Error::Timeout)
        ));
        drop(pool);
        assert!(matches!(pending.get(), Err(Error::PoolClosed("dropped"))));
        // terminate fails what is waiting, and join then returns.
        let pool = c.pool().unwrap();
        assert!(matches!(pool.join(), Err(Error::Config(_))));
        let pending = pool.map_async(square, 0..10u64).unwrap();
        pool.terminate().unwrap();
        assert!(matches!(
            pending.get(),
            Err(Error::PoolClosed("terminated"))
        ));
        pool.join().unwrap();
        assert!(matches!(
            pool.apply_async(square, 1),
            Err(Error::PoolClosed(_))
        ));
        let q = c.queue::<Vec<u8>>("q").unwrap();
        assert!(matches!(q.put(&vec![0; 4096]), Err(Error::TooLarge { .. })));
        assert_eq!(q.qsize().unwrap(), 0);
        // Nothing listens on a port just freed: retried for the budget, then Unreachable.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = Cluster::builder(&format!("redis://127.0.0.1:{port}"))
            .retry_for(Duration::from_millis(300))
            .connect();
        assert!(matches!(r, Err(Error::Unreachable { .. })), "{r:?}");
        // Without the `tls` feature, rediss:// is refused up front, not tried in clear text.
        if cfg!(not(feature = "tls")) {
            let r = Cluster::connect(&format!("rediss://127.0.0.1:{port}"));
            assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
        }
    });
}
