//! mp's implementations of the workloads, one per primitive as it lands.
//!
//! Children are started the way the workload says: raw forks from [`crate::proc`] for the
//! messaging and locking workloads (process creation is not what they measure), mp's own
//! `Process` for the process start workloads and mp's `Pool` (default start method, fork)
//! for the pool workloads. Each function mirrors its CPython script in
//! `benches/python/` line for line where the APIs allow.

use std::time::{Duration, Instant};

use mp_core::shareable::{Item, ShareableList};
use mp_core::Shared;
use mp_pipe::{Duplex, OneWay, Pipe};
use mp_pool::Pool;
use mp_process::{Process, StartMethod};
use mp_queue::Queue;
use mp_sync::{Event, Lock, RawValue};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::proc::{timed, Gate};
use crate::{Measure, Placement};

/// mp's implementation of `workload`, or `None` while its primitive is not built.
pub fn implementation(workload: &str) -> Option<Measure> {
    Some(match workload {
        "lock_uncontended" => lock_uncontended as Measure,
        "lock_contended_counter" => lock_contended_counter,
        "event_pingpong" => event_pingpong,
        "process_start_fork" => process_start_fork,
        "process_start_spawn" => process_start_spawn,
        "process_start_forkserver" => process_start_forkserver,
        "queue_small_1to1" => queue_small_1to1,
        "queue_small_2to1" => queue_small_2to1,
        "queue_batch_1to1" => queue_batch_1to1,
        "queue_1mib" => queue_1mib,
        "pool_map" => pool_map,
        "pool_map_chunksize1" => pool_map_chunksize1,
        "pool_imap_unordered" => pool_imap_unordered,
        "pool_apply_async" => pool_apply_async,
        "executor_submit" => executor_submit,
        "pipe_rt" => pipe_rt,
        "pipe_rt_async" => pipe_rt_async,
        "pipe_oneway_small" => pipe_oneway_small,
        "manager_dict_rt" => manager_dict_rt,
        "shareable_list_rw" => shareable_list_rw,
        _ => return None,
    })
}

/// mp's pool CPU-bound batch on 1 and on 2 workers, or `None` while the pool is not built.
pub fn scaling_pair() -> Option<(Measure, Measure)> {
    Some((pool_cpu_1w as Measure, pool_cpu_2w as Measure))
}

/// `with lock: pass` in one process: `Lock::lock` and dropping the guard.
pub fn lock_uncontended(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    let lock = Lock::new().expect("Lock::new");
    let start = Instant::now();
    for _ in 0..iters {
        let guard = lock.lock().expect("lock");
        drop(std::hint::black_box(guard));
    }
    start.elapsed()
}

/// The parent and one child each increment a shared `RawValue<u64>` under a `Lock`, `iters / 2`
/// times each (one iteration = one increment).
pub fn lock_contended_counter(iters: u64, placement: Placement) -> Duration {
    let lock = Lock::new().expect("Lock::new");
    let value = RawValue::<u64>::new(0).expect("RawValue::new");
    let half = iters / 2;
    let (l2, v2) = (lock.clone(), value.clone());
    let child = move |g: &Gate| {
        for _ in 0..half {
            let _guard = l2.lock().expect("lock");
            v2.set(v2.get() + 1);
        }
        g.finish();
    };
    timed(placement, vec![child], |g| {
        for _ in 0..iters - half {
            let _guard = lock.lock().expect("lock");
            value.set(value.get() + 1);
        }
        g.wait_finished(1);
        assert_eq!(value.get(), iters);
    })
}

/// Round trips through two `Event`s: the parent sets `ping` and waits for `pong`; the child
/// waits for `ping`, clears it and sets `pong`.
pub fn event_pingpong(iters: u64, placement: Placement) -> Duration {
    let ping = Event::new().expect("Event::new");
    let pong = Event::new().expect("Event::new");
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let child = move |_: &Gate| {
        for _ in 0..iters {
            ping2.wait();
            ping2.clear();
            pong2.set();
        }
    };
    timed(placement, vec![child], |_| {
        for _ in 0..iters {
            ping.set();
            pong.wait();
            pong.clear();
        }
    })
}

/// The target of the process start workloads: pin to `cpu` and return.
fn pinned_noop(cpu: u32) -> u32 {
    crate::placement::pin_current(cpu as usize);
    cpu
}

fn process_start(iters: u64, placement: Placement, method: StartMethod) -> Duration {
    placement.pin_parent();
    let cpu = placement.child_cpu(0) as u32;
    let start = Instant::now();
    for _ in 0..iters {
        let mut child = Process::new(pinned_noop, cpu)
            .start_method(method)
            .start()
            .expect("start");
        assert_eq!(child.join().expect("join"), cpu);
    }
    start.elapsed()
}

/// `Process::new(target, cpu).start_method(Fork).start()` then `join`.
pub fn process_start_fork(iters: u64, placement: Placement) -> Duration {
    process_start(iters, placement, StartMethod::Fork)
}

/// The same under the spawn start method (re-executes the bench binary).
pub fn process_start_spawn(iters: u64, placement: Placement) -> Duration {
    process_start(iters, placement, StartMethod::Spawn)
}

/// The same under the forkserver start method (the server starts on first use, in warm-up).
pub fn process_start_forkserver(iters: u64, placement: Placement) -> Duration {
    process_start(iters, placement, StartMethod::ForkServer)
}

/// Round trips on a duplex `Pipe<u64>`: the parent sends, a child echoes what it receives.
pub fn pipe_rt(iters: u64, placement: Placement) -> Duration {
    let (a, b) = Pipe::<u64>::new(Duplex).expect("Pipe::new");
    let child = move |_: &Gate| {
        for _ in 0..iters {
            let v = b.recv().expect("recv");
            b.send(&v).expect("send");
        }
    };
    timed(placement, vec![child], |_| {
        for i in 0..iters {
            a.send(&i).expect("send");
            assert_eq!(a.recv().expect("recv"), i);
        }
    })
}

/// [`pipe_rt`] with the parent awaiting: `send_async` then `recv_async`, polled by a minimal
/// executor on the parent's thread (it parks until the reactor's waker unparks it), the child
/// echoing with blocking calls.
pub fn pipe_rt_async(iters: u64, placement: Placement) -> Duration {
    let (a, b) = Pipe::<u64>::new(Duplex).expect("Pipe::new");
    let child = move |_: &Gate| {
        for _ in 0..iters {
            let v = b.recv().expect("recv");
            b.send(&v).expect("send");
        }
    };
    timed(placement, vec![child], |_| {
        block_on(async {
            for i in 0..iters {
                a.send_async(&i).await.expect("send");
                assert_eq!(a.recv_async().await.expect("recv"), i);
            }
        })
    })
}

/// Runs `f` to completion on this thread: polls it, parks until woken, polls again.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A child sends `iters` u64 on a one-way `Pipe<u64>`, the parent receives them.
pub fn pipe_oneway_small(iters: u64, placement: Placement) -> Duration {
    let (reader, writer) = Pipe::<u64>::new(OneWay).expect("Pipe::new");
    let child = move |_: &Gate| {
        for i in 0..iters {
            writer.send(&i).expect("send");
        }
    };
    timed(placement, vec![child], |_| {
        for _ in 0..iters {
            reader.recv().expect("recv");
        }
    })
}

/// A child puts `iters` u64 on a `Queue`, the parent gets them.
pub fn queue_small_1to1(iters: u64, placement: Placement) -> Duration {
    let q: Queue<u64> = Queue::new().expect("Queue::new");
    let q2 = q.clone();
    let child = move |_: &Gate| {
        for i in 0..iters {
            q2.put(i).expect("put");
        }
    };
    timed(placement, vec![child], |_| {
        for _ in 0..iters {
            q.get().expect("get");
        }
    })
}

/// How many u64 one `put_many` / `get_many` of [`queue_batch_1to1`] moves.
pub const BATCH: usize = 256;

/// A child puts `iters` u64 on a `Queue` with `put_many`, [`BATCH`] at a time; the parent takes
/// them with `get_many` (up to [`BATCH`] at a time, into one reused `Vec`).
pub fn queue_batch_1to1(iters: u64, placement: Placement) -> Duration {
    let q: Queue<u64> = Queue::new().expect("Queue::new");
    let q2 = q.clone();
    let child = move |_: &Gate| {
        let items: Vec<u64> = (0..BATCH as u64).collect();
        let mut left = iters as usize;
        while left > 0 {
            let n = left.min(BATCH);
            assert_eq!(q2.put_many(&items[..n], None).expect("put_many"), n);
            left -= n;
        }
    };
    timed(placement, vec![child], |_| {
        let mut out = Vec::with_capacity(BATCH);
        let mut got = 0;
        while got < iters as usize {
            out.clear();
            got += q.get_many(&mut out, BATCH, None).expect("get_many");
        }
    })
}

/// Two children put `iters` u64 between them on one `Queue`, the parent gets them all.
pub fn queue_small_2to1(iters: u64, placement: Placement) -> Duration {
    let q: Queue<u64> = Queue::new().expect("Queue::new");
    let children: Vec<_> = [iters / 2, iters - iters / 2]
        .into_iter()
        .map(|n| {
            let q = q.clone();
            move |_: &Gate| {
                for i in 0..n {
                    q.put(i).expect("put");
                }
            }
        })
        .collect();
    timed(placement, children, |_| {
        for _ in 0..iters {
            q.get().expect("get");
        }
    })
}

/// A child puts `iters` messages of 1 MiB (`Vec<u8>`, a fresh copy of a template each time, as
/// Python pickles its `bytes` on every put) on a `Queue`, the parent gets them as owned `Vec`s.
pub fn queue_1mib(iters: u64, placement: Placement) -> Duration {
    let q: Queue<Vec<u8>> = Queue::new().expect("Queue::new");
    let q2 = q.clone();
    let child = move |_: &Gate| {
        let template = vec![0x5au8; crate::MIB];
        for _ in 0..iters {
            q2.put(template.clone()).expect("put");
        }
    };
    timed(placement, vec![child], |_| {
        for _ in 0..iters {
            let v = q.get().expect("get");
            assert_eq!(v.len(), crate::MIB);
        }
    })
}

/// The trivial task of the pool workloads.
fn ident(x: u64) -> u64 {
    x
}

/// Pool initializer: worker number i (in start order, counted in shared memory) pins itself to
/// `child_cpu(i)`, as the CPython scripts' `pin_worker` does. `spread`: the workers alternate
/// over the CPUs (spread and loaded, which pin alike), else they share CPU 0 (packed).
fn pin_worker((counter, spread): (Shared<AtomicU32>, bool)) {
    let i = counter.fetch_add(1, Ordering::AcqRel) as usize;
    let placement = if spread {
        Placement::Spread
    } else {
        Placement::Packed
    };
    crate::placement::pin_current(placement.child_cpu(i));
}

/// A pool of `workers` pinned by [`pin_worker`], warmed up (every worker has started and pinned
/// itself) before it is returned, so the clock never sees pool creation.
fn pinned_pool(workers: usize, placement: Placement) -> Pool {
    placement.pin_parent();
    let counter = Shared::new(AtomicU32::new(0)).expect("shared counter");
    let pool = Pool::builder()
        .processes(workers)
        .initializer(
            pin_worker,
            (counter.clone(), placement != Placement::Packed),
        )
        .build()
        .expect("Pool::build");
    pool.chunksize(1)
        .map(ident, 0..(64 * workers as u64))
        .expect("warm-up map");
    // Acquire pairs with the AcqRel increments in `pin_worker`.
    crate::proc::spin_until(|| counter.load(Ordering::Acquire) as usize >= workers);
    pool
}

/// `Pool(2).map(ident, 0..n)` with the default chunksize, `n` = [`crate::pool_map_items`]
/// (one iteration = one `map` call).
pub fn pool_map(iters: u64, placement: Placement) -> Duration {
    let pool = pinned_pool(2, placement);
    let n = crate::pool_map_items();
    let start = Instant::now();
    for _ in 0..iters {
        let out = pool.map(ident, 0..n).expect("map");
        assert_eq!(out.len() as u64, n);
    }
    start.elapsed()
}

/// `Pool(2).chunksize(1).map(ident, 0..n/10)`: one task per item, `n` =
/// [`crate::pool_map_items`] (one iteration = one `map` call).
pub fn pool_map_chunksize1(iters: u64, placement: Placement) -> Duration {
    let pool = pinned_pool(2, placement);
    let n = crate::pool_map_items() / 10;
    let start = Instant::now();
    for _ in 0..iters {
        let out = pool.chunksize(1).map(ident, 0..n).expect("map");
        assert_eq!(out.len() as u64, n);
    }
    start.elapsed()
}

/// `Pool(2).imap_unordered(ident, 0..n/10)` with the default chunksize, consumed to the end
/// (one iteration = one pass).
pub fn pool_imap_unordered(iters: u64, placement: Placement) -> Duration {
    let pool = pinned_pool(2, placement);
    let n = crate::pool_map_items() / 10;
    let start = Instant::now();
    for _ in 0..iters {
        let mut count = 0u64;
        for r in pool.imap_unordered(ident, 0..n).expect("imap_unordered") {
            r.expect("task");
            count += 1;
        }
        assert_eq!(count, n);
    }
    start.elapsed()
}

/// 10_000 `apply_async` on `Pool(2)`, then every `get` (one iteration = the 10_000).
pub fn pool_apply_async(iters: u64, placement: Placement) -> Duration {
    let pool = pinned_pool(2, placement);
    let start = Instant::now();
    for _ in 0..iters {
        let results: Vec<_> = (0..10_000u64)
            .map(|i| pool.apply_async(ident, i).expect("apply_async"))
            .collect();
        let total: u64 = results.iter().map(|r| r.get().expect("get")).sum();
        assert_eq!(total, 10_000 * 9_999 / 2);
    }
    start.elapsed()
}

fn pool_cpu(iters: u64, placement: Placement, workers: usize) -> Duration {
    let pool = pinned_pool(workers, placement);
    let start = Instant::now();
    for _ in 0..iters {
        let out = pool
            .chunksize(1)
            .map(crate::cpu_task, 0..crate::CPU_TASKS)
            .expect("map");
        assert_eq!(out.len() as u64, crate::CPU_TASKS);
    }
    start.elapsed()
}

/// A batch of [`crate::CPU_TASKS`] CPU-bound tasks on `Pool(1)` (`chunksize(1).map`).
pub fn pool_cpu_1w(iters: u64, placement: Placement) -> Duration {
    pool_cpu(iters, placement, 1)
}

/// The same batch on `Pool(2)`.
pub fn pool_cpu_2w(iters: u64, placement: Placement) -> Duration {
    pool_cpu(iters, placement, 2)
}

/// A manager dict round trip: `d[1] = i` and `d[1]` in turn, from the parent to the server
/// process (all its threads pinned to the child's CPU); one iteration = one call.
pub fn manager_dict_rt(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    // Started with fork: the bench process is single-threaded here.
    let m = mp_manager::Manager::start().expect("manager");
    let d = m.dict::<u64, u64>().expect("dict");
    // The first call connects (and makes the server's thread for this connection).
    d.set(&1, &0).expect("set");
    if let Some(pid) = m.server_pid() {
        let cpu = placement.child_cpu(0);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() {
                    crate::placement::pin_pid(tid, cpu);
                }
            }
        }
    }
    let start = Instant::now();
    for i in 0..iters {
        if i % 2 == 0 {
            d.set(&1, &i).expect("set");
        } else {
            assert_eq!(d.get(&1).expect("get"), Some(i - 1));
        }
    }
    start.elapsed()
}

/// A child reads and writes one item of a `ShareableList` its parent made: `list[0]`, then
/// `list[0] = i`; one iteration = one get and one set.
pub fn shareable_list_rw(iters: u64, placement: Placement) -> Duration {
    let list = ShareableList::new([Item::Int(0), Item::from("a string"), Item::Float(0.5)])
        .expect("ShareableList::new");
    let l2 = list.clone();
    let child = move |g: &Gate| {
        for i in 0..iters {
            std::hint::black_box(l2.get(0).expect("get"));
            l2.set(0, i as i64).expect("set");
        }
        g.finish();
    };
    timed(placement, vec![child], |g| {
        g.wait_finished(1);
        assert_eq!(list.get(0).expect("get"), Item::Int(iters as i64 - 1));
    })
}

/// `ProcessPoolExecutor::new(2)` (workers pinned as the pool's): 10_000 `submit` of a trivial
/// function, then every `result` (one iteration = one batch).
pub fn executor_submit(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    let counter = Shared::new(AtomicU32::new(0)).expect("shared counter");
    let ex = mp_futures::ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(
            pin_worker,
            (counter.clone(), placement != Placement::Packed),
        )
        .build()
        .expect("executor");
    // Warm-up: every worker started and pinned before the clock runs.
    for f in (0..128u64)
        .map(|i| ex.submit(ident, i).expect("submit"))
        .collect::<Vec<_>>()
    {
        f.result(None::<Duration>).expect("result");
    }
    // Acquire pairs with the AcqRel increments in `pin_worker`.
    crate::proc::spin_until(|| counter.load(Ordering::Acquire) >= 2);
    let start = Instant::now();
    for _ in 0..iters {
        let futures: Vec<_> = (0..10_000u64)
            .map(|i| ex.submit(ident, i).expect("submit"))
            .collect();
        let total: u64 = futures
            .iter()
            .map(|f| f.result(None::<Duration>).expect("result"))
            .sum();
        assert_eq!(total, 10_000 * 9_999 / 2);
    }
    let took = start.elapsed();
    ex.shutdown(true, false);
    took
}
