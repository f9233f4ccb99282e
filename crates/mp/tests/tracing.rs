//! With the feature `tracing`, what mp decides or repairs on its own is a `tracing` event:
//! a process started and ended (fork and spawn), a dead holder's lock taken over, a queue's
//! journal repaired after a producer died holding its lock. Each test collects the events of
//! its own thread (`tracing::subscriber::with_default`) and asserts on their fields.
//!
//! `cargo test -p mp --features tracing --test tracing` (`.ci/run` runs it).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use mp::core::rkyv::rancor::Fallible;
use mp::core::rkyv::{Archive, Place, Serialize};
use mp::process::StartMethod;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

mp_process::test_support!();

/// One event: its target and its fields as `name=value` words (the message is `message`).
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    fields: String,
}

/// A layer that keeps every event.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Seen>>>);

impl<S: tracing::Subscriber> Layer<S> for Collect {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(String);
        impl Visit for Fields {
            fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={:?} ", f.name(), v);
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(Seen {
            target: event.metadata().target().to_string(),
            fields: fields.0,
        });
    }
}

/// Runs `f` with a subscriber that collects this thread's events; returns them.
fn events_of(f: impl FnOnce()) -> Vec<Seen> {
    let collect = Collect::default();
    let subscriber = tracing_subscriber::registry().with(collect.clone());
    tracing::subscriber::with_default(subscriber, f);
    let seen = collect.0.lock().unwrap().clone();
    seen
}

/// The collector of events from threads mp starts (a server's, a pool's supervisor): the
/// global default, set once for this binary. Tests filter its events by their own pids.
fn global() -> &'static Collect {
    static GLOBAL: std::sync::OnceLock<Collect> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| {
        let collect = Collect::default();
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(collect.clone()),
        )
        .expect("the only global subscriber of this binary");
        collect
    })
}

fn double(x: u32) -> u32 {
    2 * x
}

#[test]
fn a_started_and_an_ended_process_are_events_under_fork_and_spawn() {
    for method in [StartMethod::Fork, StartMethod::Spawn] {
        let mut pid = 0;
        let seen = events_of(|| {
            let mut child = mp::Process::new(double, 21)
                .name("doubler")
                .start_method(method)
                .start()
                .expect("start");
            pid = child.pid();
            assert_eq!(child.join().expect("join"), 42);
        });
        let of_child: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.target == "mp::process" && s.fields.contains(&format!("pid={pid} ")))
            .collect();
        assert_eq!(of_child.len(), 2, "{method}: {seen:#?}");
        assert!(
            of_child[0].fields.contains("process started"),
            "{of_child:?}"
        );
        assert!(of_child[0].fields.contains("name=doubler"), "{of_child:?}");
        assert!(
            of_child[0].fields.contains(&format!("method={method}")),
            "{of_child:?}"
        );
        assert!(of_child[1].fields.contains("process ended"), "{of_child:?}");
        assert!(of_child[1].fields.contains("Exited(0)"), "{of_child:?}");
    }
}

#[test]
fn a_dead_holders_lock_taken_over_is_an_event() {
    let lock = mp::Lock::new().expect("lock");
    let l2 = lock.clone();
    // The child takes the lock and ends without releasing it.
    let mut child = mp::process::Process::fork(move || {
        l2.acquire().expect("acquire");
        std::process::id()
    })
    .expect("fork");
    let dead = child.join().expect("join");
    let seen = events_of(|| {
        let died = lock.acquire().expect_err("the holder died");
        assert_eq!(died.pid(), dead);
    });
    let takeover: Vec<&Seen> = seen.iter().filter(|s| s.target == "mp::sync").collect();
    assert_eq!(takeover.len(), 1, "{seen:#?}");
    assert!(
        takeover[0].fields.contains(&format!("dead_pid={dead} ")),
        "{takeover:?}"
    );
    assert!(takeover[0].fields.contains("taken over"), "{takeover:?}");
    lock.release().expect("release");
}

/// A value that archives as a `u32` and whose serialization ends the process: a producer
/// that puts one (`put_as`) dies inside `put`, holding the queue's producer lock (values are
/// serialized straight into the ring under it).
struct DiesInPut;

impl Archive for DiesInPut {
    type Archived = mp::core::rkyv::Archived<u32>;
    type Resolver = ();
    fn resolve(&self, _: (), _: Place<Self::Archived>) {
        unreachable!("serialize never returns")
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for DiesInPut {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        // SAFETY: ends this (forked, single-threaded) child at once, as a crash would.
        unsafe { libc::_exit(0) }
    }
}

#[test]
fn a_queue_repaired_after_a_dead_producer_is_an_event() {
    let q = mp::Queue::<u32>::new().expect("queue");
    q.put(1).expect("put");
    let q2 = q.clone();
    let mut child = mp::process::Process::fork(move || {
        let _ = q2.put_as(&DiesInPut, None);
        0u32
    })
    .expect("fork");
    // It ended inside put, by `_exit(0)`, without a result.
    assert!(child.join().is_err(), "the child died inside put");
    let seen = events_of(|| {
        // The next put takes the dead producer's lock over and repairs its journal.
        q.put(2).expect("put after the takeover");
    });
    let repaired: Vec<&Seen> = seen.iter().filter(|s| s.target == "mp::queue").collect();
    assert_eq!(repaired.len(), 1, "{seen:#?}");
    assert!(repaired[0].fields.contains("dead producer"), "{repaired:?}");
    assert_eq!(q.get().expect("get"), 1);
    assert_eq!(q.get().expect("get"), 2);
    assert!(q.empty());
}

#[test]
fn a_manager_client_gone_is_an_event_of_the_server() {
    // The server's connection threads are not this thread: collect through the global
    // default (the other tests' thread-local subscribers take precedence on their threads).
    let collect = global();
    let server = mp::Manager::builder()
        .address(mp::pipe::Address::tcp("127.0.0.1", 0).expect("address"))
        .authkey(b"tracing")
        .bind()
        .expect("bind");
    let address = server.address().clone();
    let serving = std::thread::spawn(move || server.serve_forever());
    let m = mp::Manager::connect(address.clone(), b"tracing").expect("connect");
    let d = m.dict::<u32, u32>().expect("dict");
    d.set(&1, &2).expect("set");
    drop(d);
    drop(m);
    // Another client stops the server; its connections end before serve_forever returns.
    mp::Manager::connect(address, b"tracing")
        .expect("connect")
        .shutdown()
        .expect("shutdown");
    serving.join().expect("server thread").expect("serve");
    let seen = collect.0.lock().unwrap().clone();
    let gone: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target == "mp::manager" && s.fields.contains("client is gone"))
        .collect();
    assert!(!gone.is_empty(), "{seen:#?}");
    assert!(gone.iter().all(|s| s.fields.contains("conn=")), "{gone:?}");
}

/// Dies (SIGKILL) on 13, else returns the item.
fn dies_on_13(x: u32) -> u32 {
    if x == 13 {
        // SAFETY: raise has no memory-safety preconditions; the worker dies as a crash would.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    x
}

#[test]
fn a_pool_worker_lost_and_replaced_are_events() {
    let collect = global();
    let pool = mp::Pool::new(1).expect("pool");
    let lost = match pool.map(dies_on_13, [13u32]) {
        Err(mp::pool::Error::WorkerLost { pid, .. }) => pid,
        other => panic!("expected WorkerLost, got {other:?}"),
    };
    // The replacement serves the next call.
    assert_eq!(pool.map(dies_on_13, [1u32, 2]).expect("map"), [1, 2]);
    drop(pool);
    let seen = collect.0.lock().unwrap().clone();
    let of_pool: Vec<&Seen> = seen.iter().filter(|s| s.target == "mp::pool").collect();
    assert!(
        of_pool
            .iter()
            .any(|s| s.fields.contains("worker died") && s.fields.contains(&format!("pid={lost} "))),
        "{of_pool:#?}"
    );
    assert!(
        of_pool
            .iter()
            .any(|s| s.fields.contains("replacement worker started")),
        "{of_pool:#?}"
    );
}
