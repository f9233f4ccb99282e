//! FnPool: a closure fixed at construction, under fork.

mp_process::test_support!();

mod common;
use common::watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mp_pool::{Error, Pool};
use mp_process::StartMethod;

#[test]
fn closure_captures_state_and_survives_worker_replacement() {
    watchdog(60, || {
        let table: HashMap<u64, String> = (0..100).map(|i| (i, format!("item-{i}"))).collect();
        let offset = 1000u64;
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(4)
            .build_with(move |k: u64| {
                (
                    table.get(&k).cloned().unwrap_or_default(),
                    k + offset,
                    std::process::id(),
                )
            })
            .unwrap();
        let got = pool.chunksize(1).map(0..40).unwrap();
        for (i, (name, v, _)) in got.iter().enumerate() {
            assert_eq!(name, &format!("item-{i}"));
            assert_eq!(*v, i as u64 + 1000);
        }
        let pids: std::collections::HashSet<u32> = got.iter().map(|t| t.2).collect();
        assert!(pids.len() >= 10, "replacement workers ran the closure too");
        assert_eq!(pool.apply(7).unwrap().0, "item-7");
        assert_eq!(pool.apply_async(8).unwrap().get().unwrap().1, 1008);
        let v: Vec<u64> = pool.imap(0..10).unwrap().map(|r| r.unwrap().1).collect();
        assert_eq!(v, (1000..1010).collect::<Vec<u64>>());
        assert_eq!(pool.imap_unordered(0..10).unwrap().count(), 10);
        assert!(pool.map(Vec::<u64>::new()).unwrap().is_empty());
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn closure_pool_errors_and_worker_death() {
    watchdog(60, || {
        assert!(matches!(
            Pool::builder()
                .processes(1)
                .start_method(StartMethod::Spawn)
                .build_with(|x: u64| x),
            Err(Error::Config(_))
        ));
        let pool = Pool::builder()
            .processes(2)
            .build_with(|x: u64| {
                if x == 3 {
                    panic!("three");
                }
                if x == 99 {
                    std::thread::sleep(Duration::from_secs(60));
                }
                x
            })
            .unwrap();
        match pool.map(0..10) {
            Err(Error::Panicked { message, .. }) => assert_eq!(message, "three"),
            other => panic!("{other:?}"),
        }
        let r = pool.apply_async(99).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        for pid in pool.worker_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(matches!(
            r.get_timeout(Duration::from_secs(20)),
            Err(Error::WorkerLost {
                signal: Some(9),
                ..
            })
        ));
        assert_eq!(pool.map([1, 2]).unwrap(), [1, 2]);
    });
}

#[test]
fn the_closure_is_dropped_after_the_workers() {
    struct Guard(Arc<AtomicU32>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    watchdog(60, || {
        let drops = Arc::new(AtomicU32::new(0));
        let g = Guard(drops.clone());
        let pool = Pool::builder()
            .processes(1)
            .build_with(move |x: u64| {
                let _ = &g;
                x
            })
            .unwrap();
        let pids = pool.worker_pids();
        assert_eq!(pool.map([5]).unwrap(), [5]);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(pool);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "dropped once, in the parent"
        );
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "worker gone: {stat}"
        );
    });
}
