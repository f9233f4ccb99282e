//! Named objects across processes on a real redis-server: queues (bounded, timeouts, a
//! consumer killed between get and ack), locks (lease expiry after the holder is killed,
//! release by a non-holder), events, barriers, dicts.

mp_process::test_support!();

mod common;
use common::{prefix, watchdog, Purge, Server};

use std::collections::HashSet;
use std::time::Duration;

use mp_process::{Process, ProcessError, StartMethod};
use mp_redis::{Cluster, Error};

type Where = (String, String);

fn open(w: &Where) -> Cluster {
    Cluster::builder(&w.0).prefix(&w.1).connect().unwrap()
}

fn spawn<A: mp_core::Message, R: mp_core::Message>(f: fn(A) -> R, a: A) -> mp_process::Child<R> {
    Process::new(f, a)
        .start_method(StartMethod::Spawn)
        .daemon(true)
        .start()
        .unwrap()
}

fn kill_myself() {
    // SAFETY: kill(2) on ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// Takes an item with get_ack and dies before acknowledging it.
fn take_and_die(w: Where) -> u64 {
    let q = open(&w)
        .queue::<u64>("jobs")
        .unwrap()
        .visibility(Duration::from_millis(300));
    let d = q.get_ack_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(d.value(), Some(&42));
    std::mem::forget(d); // not even a drop: the process just dies
    kill_myself();
    0
}

#[test]
fn queue_fifo_bounds_and_timeouts() {
    let Some(s) = Server::any() else { return };
    watchdog(60, move || {
        let pre = prefix("q");
        let _purge = Purge(s.url.clone(), pre.clone());
        let c = Cluster::builder(&s.url).prefix(&pre).connect().unwrap();
        let q = c.bounded_queue::<String>("b", 2).unwrap();
        q.put(&"a".into()).unwrap();
        q.put(&"b".into()).unwrap();
        assert!(q.full().unwrap());
        assert!(matches!(
            q.put_timeout(&"c".into(), Duration::from_millis(100)),
            Err(Error::Full)
        ));
        assert!(matches!(q.put_nowait(&"c".into()), Err(Error::Full)));
        assert_eq!(q.qsize().unwrap(), 2);
        assert_eq!(q.get().unwrap(), "a");
        q.put_nowait(&"c".into()).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), "b");
        assert_eq!(q.get_nowait().unwrap(), "c");
        assert!(matches!(
            q.get_timeout(Duration::from_millis(100)),
            Err(Error::Empty)
        ));
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
        assert!(q.empty().unwrap());
        // Another handle must agree on the bound.
        assert!(matches!(
            c.bounded_queue::<String>("b", 3),
            Err(Error::MaxsizeMismatch {
                existing: 2,
                requested: 3,
                ..
            })
        ));
        // A blocked put is woken by a get in another thread.
        let q2 = c.bounded_queue::<String>("b", 2).unwrap();
        q.put(&"x".into()).unwrap();
        q.put(&"y".into()).unwrap();
        let t = std::thread::spawn(move || q2.put_timeout(&"z".into(), Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.get().unwrap(), "x");
        t.join().unwrap().unwrap();
        assert_eq!(q.get().unwrap(), "y");
        assert_eq!(q.get().unwrap(), "z");
        // A delivery dropped without ack goes back; an acked one is gone.
        let u = c.queue::<u32>("u").unwrap();
        u.put(&1).unwrap();
        drop(u.get_ack().unwrap());
        let d = u.get_ack().unwrap();
        assert_eq!(d.value(), Some(&1));
        d.ack().unwrap();
        assert!(matches!(
            u.get_ack_timeout(Duration::from_millis(100)),
            Err(Error::Empty)
        ));
        // An item of another type is an error, not garbage, and is not lost.
        let as_str = c.queue::<String>("u").unwrap();
        u.put(&7).unwrap();
        assert!(as_str.get_ack().is_err());
        assert_eq!(u.get().unwrap(), 7);
    });
}

#[test]
fn consumer_killed_between_get_and_ack() {
    let Some(s) = Server::any() else { return };
    watchdog(60, move || {
        let w: Where = (s.url.clone(), prefix("ack"));
        let _purge = Purge(w.0.clone(), w.1.clone());
        let c = open(&w);
        let q = c.queue::<u64>("jobs").unwrap();
        q.put(&42).unwrap();
        let mut child = spawn(take_and_die, w.clone());
        assert!(matches!(
            child.join(),
            Err(ProcessError::Signaled { signal: 9, .. })
        ));
        // The item was taken: nothing is waiting, but it is not lost either.
        assert_eq!(q.qsize().unwrap(), 0);
        let d = q.get_ack_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(d.value(), Some(&42));
        d.ack().unwrap();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(700)),
            Err(Error::Empty)
        ));
    });
}

/// Takes the lock with a short lease and dies holding it.
fn hold_and_die(w: Where) -> u32 {
    let l = open(&w).lock("l").lease(Duration::from_millis(400));
    l.acquire().unwrap();
    std::fs::write(format!("/tmp/{}-held", w.1.replace(':', "_")), b"1").unwrap();
    kill_myself();
    0
}

#[test]
fn lock_lease_expiry_and_release_by_non_holder() {
    let Some(s) = Server::any() else { return };
    watchdog(60, move || {
        let w: Where = (s.url.clone(), prefix("lock"));
        let _purge = Purge(w.0.clone(), w.1.clone());
        let c = open(&w);
        let mut child = spawn(hold_and_die, w.clone());
        assert!(child.join().is_err());
        let marker = format!("/tmp/{}-held", w.1.replace(':', "_"));
        assert!(
            std::fs::remove_file(&marker).is_ok(),
            "the child held the lock"
        );
        let l = c.lock("l").lease(Duration::from_secs(30));
        // Held by a dead process: taken once its lease runs out.
        assert!(l.acquire_timeout(Duration::from_secs(20)).unwrap());
        assert!(l.is_locked().unwrap());
        let other = c.lock("l");
        assert!(!other.try_acquire().unwrap());
        assert!(!other.acquire_timeout(Duration::from_millis(100)).unwrap());
        assert!(matches!(other.release(), Err(Error::NotHolder { .. })));
        l.release().unwrap();
        assert!(matches!(l.release(), Err(Error::NotHolder { .. })));
        // A holder whose lease ran out cannot release what another now holds.
        let short = c.lock("s").lease(Duration::from_millis(100));
        short.acquire().unwrap();
        let next = c.lock("s");
        assert!(next.acquire_timeout(Duration::from_secs(10)).unwrap());
        assert!(matches!(short.release(), Err(Error::NotHolder { .. })));
        assert!(matches!(short.extend(), Err(Error::NotHolder { .. })));
        next.extend().unwrap();
        let g = c.lock("g");
        {
            let _g = g.lock().unwrap();
            assert!(!c.lock("g").try_acquire().unwrap());
        }
        assert!(c.lock("g").try_acquire().unwrap());
        next.release().unwrap();
    });
}

fn wait_event(w: Where) -> bool {
    open(&w)
        .event("go")
        .wait(Some(Duration::from_secs(30)))
        .unwrap()
}

fn barrier_party(w: Where) -> u32 {
    open(&w)
        .barrier("b", 3)
        .unwrap()
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
}

fn dict_writer(w: Where) -> usize {
    let d = open(&w).dict::<String, Vec<u32>>("d");
    d.set(&"child".into(), &vec![1, 2, 3]).unwrap();
    d.len().unwrap()
}

#[test]
fn event_barrier_and_dict_across_processes() {
    let Some(s) = Server::any() else { return };
    watchdog(90, move || {
        let w: Where = (s.url.clone(), prefix("objs"));
        let _purge = Purge(w.0.clone(), w.1.clone());
        let c = open(&w);
        // Event: two children wait; one set wakes both.
        let e = c.event("go");
        assert!(!e.is_set().unwrap());
        assert!(!e.wait(Some(Duration::from_millis(100))).unwrap());
        let mut waiters = [spawn(wait_event, w.clone()), spawn(wait_event, w.clone())];
        std::thread::sleep(Duration::from_millis(100));
        e.set().unwrap();
        for c in &mut waiters {
            assert!(c.join().unwrap());
        }
        assert!(e.wait(None).unwrap());
        e.clear().unwrap();
        assert!(!e.is_set().unwrap());
        // Barrier: two children and this process; indices are 0, 1, 2.
        let mut parties = [
            spawn(barrier_party, w.clone()),
            spawn(barrier_party, w.clone()),
        ];
        let mine = c
            .barrier("b", 3)
            .unwrap()
            .wait_timeout(Duration::from_secs(30))
            .unwrap();
        let mut all: HashSet<u32> = parties.iter_mut().map(|p| p.join().unwrap()).collect();
        all.insert(mine);
        assert_eq!(all, HashSet::from([0, 1, 2]));
        // A party alone times out and withdraws: the barrier is still usable.
        let lone = c.barrier("lone", 2).unwrap();
        assert!(matches!(
            lone.wait_timeout(Duration::from_millis(200)),
            Err(Error::Timeout)
        ));
        assert!(c.barrier("z", 0).is_err());
        // Dict: a child writes, this process reads.
        let d = c.dict::<String, Vec<u32>>("d");
        d.set(&"parent".into(), &vec![9]).unwrap();
        assert_eq!(spawn(dict_writer, w.clone()).join().unwrap(), 2);
        assert_eq!(d.get(&"child".into()).unwrap(), Some(vec![1, 2, 3]));
        assert!(d.contains(&"parent".into()).unwrap());
        let mut keys = d.keys().unwrap();
        keys.sort();
        assert_eq!(keys, ["child", "parent"]);
        assert_eq!(d.items().unwrap().len(), 2);
        assert_eq!(d.values().unwrap().len(), 2);
        assert_eq!(d.pop(&"parent".into()).unwrap(), vec![9]);
        assert!(matches!(d.pop(&"parent".into()), Err(Error::KeyNotFound)));
        assert!(matches!(
            d.get_item(&"nope".into()),
            Err(Error::KeyNotFound)
        ));
        assert_eq!(
            d.setdefault(&"child".into(), &vec![0]).unwrap(),
            vec![1, 2, 3]
        );
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
        // purge removes every key of this prefix, and only those.
        let other = Cluster::builder(&s.url)
            .prefix(&prefix("other"))
            .connect()
            .unwrap();
        other.dict::<u8, u8>("keep").set(&1, &1).unwrap();
        assert!(c.purge().unwrap() > 0);
        assert_eq!(c.purge().unwrap(), 0);
        assert_eq!(other.dict::<u8, u8>("keep").len().unwrap(), 1);
        assert_eq!(other.purge().unwrap(), 1);
    });
}

#[test]
fn public_types_are_send_and_sync() {
    static_assertions::assert_impl_all!(Cluster: Send, Sync, Clone);
    static_assertions::assert_impl_all!(mp_redis::Pool: Send, Sync);
    static_assertions::assert_impl_all!(mp_redis::Queue<u64>: Send, Sync);
    static_assertions::assert_impl_all!(mp_redis::Lock: Send, Sync);
    static_assertions::assert_impl_all!(mp_redis::Event: Send, Sync);
    static_assertions::assert_impl_all!(mp_redis::Barrier: Send, Sync);
    static_assertions::assert_impl_all!(mp_redis::Dict<String, u64>: Send, Sync);
    static_assertions::assert_impl_all!(mp_redis::AsyncResult<Vec<u64>>: Send, Sync);
    static_assertions::assert_impl_all!(Error: Send, Sync);
}
