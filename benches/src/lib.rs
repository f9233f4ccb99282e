//! The benchmark suite of mp: the same workloads measured for mp, for the Rust peers
//! (`crossbeam-channel` between threads, `ipc-channel` between processes) and for the machine's
//! own limits, side by side with CPython's `multiprocessing` (the scripts in `benches/python/`).
//!
//! Run it with `cargo xtask bench` (`--quick` for a smoke run, `--filter NAME` for one
//! workload); `docs/benchmarks.md` explains the table it prints.
//!
//! # One shape for every implementation
//!
//! Every measurement is a [`Measure`]: a plain function that performs `iters` operations of a
//! workload in a [`Placement`] and returns the time they took, which is exactly what criterion's
//! `iter_custom` wants. The criterion bench (`benches/suite.rs`) registers one `Measure` per
//! workload, implementation and placement; the ids are `<workload>/<implementation>/<placement>`.
//!
//! ```
//! use mp_benches::{limits, Placement};
//! // 1000 uncontended compare-and-swap + release-store pairs: the floor of a lock.
//! let took = limits::atomic_cas(1000, Placement::Single);
//! assert!(took.as_nanos() > 0);
//! ```
//!
//! # Placements
//!
//! Every workload with two or more processes (or threads) runs pinned: [`Placement::Spread`]
//! puts the parent on CPU 0 and the children on CPU 1, 0, 1, ...; [`Placement::Packed`] puts
//! everyone on CPU 0; [`Placement::Loaded`] pins as spread, and `cargo xtask bench` runs it
//! beside one busy loop pinned on each CPU. CPython's scripts apply the same placements with
//! `os.sched_setaffinity`.
//!
//! # Children
//!
//! Helper processes are forked from the single-threaded bench process with [`proc::fork_child`]
//! and meet the parent at a [`proc::Gate`] before the clock starts, so process creation is not
//! part of a measurement (except for the process start workloads, where it is the point).

use std::time::Duration;

pub mod limits;
pub mod mp;
pub mod peers;
pub mod placement;
pub mod proc;
pub mod redis;

pub use placement::Placement;

/// One measurement: perform `iters` operations in the given placement and return how long they
/// took (the shape of criterion's `iter_custom`).
pub type Measure = fn(iters: u64, placement: Placement) -> Duration;

/// True when `cargo xtask bench --quick` runs the suite (the `MP_BENCH_QUICK` variable is set):
/// workloads with a fixed batch size (the pool's million items) use a smaller batch.
pub fn quick() -> bool {
    std::env::var_os("MP_BENCH_QUICK").is_some_and(|v| v == "1")
}

/// Items per `Pool::map` call in the pool workloads: 1_000_000, or 100_000 under `--quick`.
/// The CPython scripts use the same sizes.
pub fn pool_map_items() -> u64 {
    if quick() {
        100_000
    } else {
        1_000_000
    }
}

/// A small, deterministic CPU-bound task (the unit of the pool scaling workload): about a
/// millisecond of integer work that the optimiser cannot remove.
pub fn cpu_task(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..1_500_000u32 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// CPU tasks per batch in the pool scaling workload (split over 1 or 2 workers).
pub const CPU_TASKS: u64 = 16;

/// Size of the large message of the `queue_1mib` workload.
pub const MIB: usize = 1 << 20;

/// What one iteration of a workload moves, for criterion's throughput (and the report's units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerIter {
    /// A latency: the report shows the time per iteration.
    Time,
    /// This many items or messages per iteration (the report shows items/s).
    Elements(u64),
    /// This many bytes per iteration (the report shows GB/s).
    Bytes(u64),
}

/// One workload of the suite and every implementation of it that exists in this build.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Criterion group: the workload's name (`queue_small_1to1`) or `limit_<name>`.
    pub group: &'static str,
    /// What one iteration moves.
    pub per_iter: PerIter,
    /// One iteration takes milliseconds or more: 10 samples, flat sampling.
    pub heavy: bool,
    /// The placements it runs in.
    pub placements: &'static [Placement],
    /// `(implementation, measure)`: `mp`, `crossbeam`, `ipc-channel`, `bare` (limits), ...
    pub impls: Vec<(&'static str, Measure)>,
}

const MULTI: &[Placement] = &Placement::MULTI;
const SINGLE: &[Placement] = &[Placement::Single];

/// Every workload of the suite, in report order, with the implementations this build has
/// (a workload whose mp primitive is not built yet simply has no `mp` entry; `cargo xtask
/// bench` reports it as "not built").
pub fn workloads() -> Vec<Workload> {
    use PerIter::{Bytes, Elements, Time};
    let w = |group, per_iter, heavy, placements, impls: Vec<(&'static str, Measure)>| Workload {
        group,
        per_iter,
        heavy,
        placements,
        impls,
    };
    let with_mp = |name: &'static str, mut impls: Vec<(&'static str, Measure)>| {
        if let Some(m) = mp::implementation(name) {
            impls.insert(0, ("mp", m));
        }
        impls
    };
    let pool_items = pool_map_items();
    vec![
        // The machine's limits.
        w(
            "limit_memcpy",
            Bytes(64 * MIB as u64),
            true,
            SINGLE,
            vec![("bare", limits::memcpy as Measure)],
        ),
        w(
            "limit_memcpy_1mib",
            Bytes(MIB as u64),
            false,
            SINGLE,
            vec![("bare", limits::memcpy_1mib as Measure)],
        ),
        w(
            "limit_cacheline_rt",
            Time,
            false,
            MULTI,
            vec![("bare", limits::cacheline_rt as Measure)],
        ),
        w(
            "limit_futex_rt",
            Time,
            false,
            MULTI,
            vec![("bare", limits::futex_rt as Measure)],
        ),
        w(
            "limit_pipe_rt",
            Time,
            false,
            MULTI,
            vec![("bare", limits::pipe_rt as Measure)],
        ),
        w(
            "limit_spsc_ring",
            Elements(1),
            false,
            MULTI,
            vec![("bare", limits::spsc_ring as Measure)],
        ),
        w(
            "limit_atomic_cas",
            Time,
            false,
            SINGLE,
            vec![("bare", limits::atomic_cas as Measure)],
        ),
        w(
            "limit_atomic_counter",
            Elements(1),
            false,
            MULTI,
            vec![("bare", limits::atomic_counter as Measure)],
        ),
        w(
            "limit_spinlock_counter",
            Elements(1),
            false,
            MULTI,
            vec![("bare", limits::spinlock_counter as Measure)],
        ),
        w(
            "limit_fork_wait",
            Time,
            true,
            MULTI,
            vec![("bare", limits::fork_wait as Measure)],
        ),
        w(
            "limit_exec_wait",
            Time,
            true,
            MULTI,
            vec![("bare", limits::exec_wait as Measure)],
        ),
        w(
            "limit_cpu",
            Time,
            true,
            MULTI,
            vec![
                ("1p", limits::cpu_1p as Measure),
                ("2p", limits::cpu_2p as Measure),
            ],
        ),
        // The workloads: mp (when built) and the peers.
        w(
            "queue_small_1to1",
            Elements(1),
            false,
            MULTI,
            with_mp(
                "queue_small_1to1",
                vec![
                    ("crossbeam", peers::crossbeam_small_1to1 as Measure),
                    ("ipc-channel", peers::ipc_small_1to1 as Measure),
                ],
            ),
        ),
        w(
            "queue_batch_1to1",
            Elements(1),
            false,
            MULTI,
            with_mp("queue_batch_1to1", vec![]),
        ),
        w(
            "queue_small_2to1",
            Elements(1),
            false,
            MULTI,
            with_mp(
                "queue_small_2to1",
                vec![
                    ("crossbeam", peers::crossbeam_small_2to1 as Measure),
                    ("ipc-channel", peers::ipc_small_2to1 as Measure),
                ],
            ),
        ),
        w(
            "queue_1mib",
            Bytes(MIB as u64),
            false,
            MULTI,
            with_mp(
                "queue_1mib",
                vec![
                    ("crossbeam", peers::crossbeam_1mib as Measure),
                    ("ipc-channel", peers::ipc_1mib as Measure),
                ],
            ),
        ),
        w(
            "pipe_rt",
            Time,
            false,
            MULTI,
            with_mp(
                "pipe_rt",
                vec![
                    ("crossbeam", peers::crossbeam_rt as Measure),
                    ("ipc-channel", peers::ipc_rt as Measure),
                ],
            ),
        ),
        w(
            "pipe_rt_async",
            Time,
            false,
            MULTI,
            with_mp("pipe_rt_async", vec![]),
        ),
        w(
            "pipe_oneway_small",
            Elements(1),
            false,
            MULTI,
            with_mp(
                "pipe_oneway_small",
                vec![
                    ("crossbeam", peers::crossbeam_small_1to1 as Measure),
                    ("ipc-channel", peers::ipc_small_1to1 as Measure),
                ],
            ),
        ),
        w(
            "manager_dict_rt",
            Time,
            false,
            MULTI,
            with_mp("manager_dict_rt", vec![]),
        ),
        w(
            "shareable_list_rw",
            Time,
            false,
            SINGLE,
            with_mp("shareable_list_rw", vec![]),
        ),
        w(
            "lock_uncontended",
            Time,
            false,
            SINGLE,
            with_mp("lock_uncontended", vec![]),
        ),
        w(
            "lock_contended_counter",
            Elements(1),
            false,
            MULTI,
            with_mp("lock_contended_counter", vec![]),
        ),
        w(
            "event_pingpong",
            Time,
            false,
            MULTI,
            with_mp("event_pingpong", vec![]),
        ),
        w(
            "process_start_fork",
            Time,
            true,
            MULTI,
            with_mp("process_start_fork", vec![]),
        ),
        w(
            "process_start_spawn",
            Time,
            true,
            MULTI,
            with_mp("process_start_spawn", vec![]),
        ),
        w(
            "process_start_forkserver",
            Time,
            true,
            MULTI,
            with_mp("process_start_forkserver", vec![]),
        ),
        w(
            "pool_map",
            Elements(pool_items),
            true,
            MULTI,
            with_mp("pool_map", vec![]),
        ),
        w(
            "pool_map_chunksize1",
            Elements(pool_items / 10),
            true,
            MULTI,
            with_mp("pool_map_chunksize1", vec![]),
        ),
        w(
            "pool_imap_unordered",
            Elements(pool_items / 10),
            true,
            MULTI,
            with_mp("pool_imap_unordered", vec![]),
        ),
        w(
            "pool_apply_async",
            Elements(10_000),
            true,
            MULTI,
            with_mp("pool_apply_async", vec![]),
        ),
        w(
            "executor_submit",
            Elements(10_000),
            true,
            MULTI,
            with_mp("executor_submit", vec![]),
        ),
        w(
            "pool_cpu_scaling",
            Time,
            true,
            MULTI,
            mp::scaling_pair()
                .map_or_else(Vec::new, |(one, two)| vec![("mp_1w", one), ("mp_2w", two)]),
        ),
        // mp-redis on a real redis-server (registered only when one is at hand), beside the
        // local backend on the same items (`local`); CPython's peer is RQ.
        w(
            "redis_pool_map",
            Elements(redis::REDIS_MAP_ITEMS),
            true,
            SINGLE,
            if redis::available() {
                vec![
                    ("mp", redis::redis_pool_map as Measure),
                    ("local", redis::local_pool_map as Measure),
                ]
            } else {
                vec![]
            },
        ),
    ]
}
