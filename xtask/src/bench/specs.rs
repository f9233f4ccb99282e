//! What `cargo xtask bench` measures: the workloads (each a criterion group of mp-benches and a
//! CPython script of the same name), the units their numbers are in, and the machine limits
//! they are compared to.

/// How a workload's number reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// Nanoseconds per operation (lower is better).
    Ns,
    /// Microseconds per operation (lower is better).
    Us,
    /// Messages per second (higher is better).
    Msgs,
    /// Items per second (higher is better).
    Items,
    /// Operations per second (higher is better).
    Ops,
    /// 10^9 bytes per second (higher is better).
    GBps,
    /// A speed-up, time(1 worker) / time(2 workers) (higher is better).
    Speedup,
}

impl Unit {
    /// The unit as the table prints it.
    pub(super) fn label(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::Us => "µs",
            Unit::Msgs => "msgs/s",
            Unit::Items => "items/s",
            Unit::Ops => "ops/s",
            Unit::GBps => "GB/s",
            Unit::Speedup => "× (1→2 workers)",
        }
    }

    /// True for throughputs, false for latencies.
    pub(super) fn higher_is_better(self) -> bool {
        !matches!(self, Unit::Ns | Unit::Us)
    }
}

/// One workload of the table.
pub(super) struct Spec {
    /// Criterion group and CPython script name.
    pub(super) name: &'static str,
    /// The primitive crate that provides mp's side.
    pub(super) krate: &'static str,
    pub(super) unit: Unit,
    pub(super) single: bool,
    /// The machine limits it is compared to (criterion group, label): the best of them in
    /// each placement is its limit.
    pub(super) limit: &'static [(&'static str, &'static str)],
    /// Peer implementations (criterion implementation names).
    pub(super) peers: &'static [&'static str],
}

/// The Rust peer libraries some workloads are also measured with.
pub(super) const PEERS: &[&str] = &["crossbeam", "ipc-channel"];

/// Every workload of the suite, in the order of the table.
pub(super) const SPECS: &[Spec] = &[
    Spec {
        name: "queue_small_1to1",
        krate: "mp-queue",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: PEERS,
    },
    Spec {
        name: "queue_batch_1to1",
        krate: "mp-queue",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: &[],
    },
    Spec {
        name: "queue_small_2to1",
        krate: "mp-queue",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: PEERS,
    },
    Spec {
        name: "queue_1mib",
        krate: "mp-queue",
        unit: Unit::GBps,
        single: false,
        limit: &[("limit_memcpy_1mib", "memcpy 1 MiB")],
        peers: PEERS,
    },
    Spec {
        name: "pipe_rt",
        krate: "mp-pipe",
        unit: Unit::Us,
        single: false,
        limit: &[
            ("limit_cacheline_rt", "spinning cache line"),
            ("limit_futex_rt", "futex rt"),
            ("limit_pipe_rt", "pipe(2) rt"),
        ],
        peers: PEERS,
    },
    Spec {
        name: "pipe_rt_async",
        krate: "mp-pipe",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_pipe_rt", "pipe(2) rt")],
        peers: &[],
    },
    Spec {
        name: "pipe_oneway_small",
        krate: "mp-pipe",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: PEERS,
    },
    Spec {
        name: "manager_dict_rt",
        krate: "mp-manager",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_pipe_rt", "pipe(2) rt")],
        peers: &[],
    },
    Spec {
        name: "shareable_list_rw",
        krate: "mp-shared-memory",
        unit: Unit::Ns,
        single: true,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "lock_uncontended",
        krate: "mp-sync",
        unit: Unit::Ns,
        single: true,
        limit: &[("limit_atomic_cas", "CAS+store")],
        peers: &[],
    },
    Spec {
        name: "lock_contended_counter",
        krate: "mp-sync",
        unit: Unit::Ops,
        single: false,
        limit: &[("limit_spinlock_counter", "spinlock counter")],
        peers: &[],
    },
    Spec {
        name: "event_pingpong",
        krate: "mp-sync",
        unit: Unit::Us,
        single: false,
        limit: &[
            ("limit_cacheline_rt", "spinning cache line"),
            ("limit_futex_rt", "futex rt"),
            ("limit_pipe_rt", "pipe(2) rt"),
        ],
        peers: &[],
    },
    Spec {
        name: "process_start_fork",
        krate: "mp-process",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_fork_wait", "fork+wait")],
        peers: &[],
    },
    Spec {
        name: "process_start_spawn",
        krate: "mp-process",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_exec_wait", "exec /bin/true")],
        peers: &[],
    },
    Spec {
        name: "process_start_forkserver",
        krate: "mp-process",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_fork_wait", "fork+wait")],
        peers: &[],
    },
    Spec {
        name: "pool_map",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_map_chunksize1",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_imap_unordered",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_apply_async",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "executor_submit",
        krate: "mp-futures",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_cpu_scaling",
        krate: "mp-pool",
        unit: Unit::Speedup,
        single: false,
        limit: &[("limit_cpu", "bare processes")],
        peers: &[],
    },
    Spec {
        name: "redis_pool_map",
        krate: "mp-redis",
        unit: Unit::Items,
        single: true,
        limit: &[],
        // mp's local backend (mp-pool) on the same items; CPython's column is RQ.
        peers: &["local"],
    },
];

/// The machine limits, in the order of their table: (criterion group, label, unit).
pub(super) const LIMITS: &[(&str, &str, Unit)] = &[
    ("limit_memcpy", "memcpy 64 MiB", Unit::GBps),
    ("limit_memcpy_1mib", "memcpy 1 MiB (in cache)", Unit::GBps),
    (
        "limit_cacheline_rt",
        "cache-line ping-pong, 2 threads spinning",
        Unit::Ns,
    ),
    ("limit_futex_rt", "futex ping-pong, 2 processes", Unit::Us),
    ("limit_pipe_rt", "pipe(2) ping-pong, 2 processes", Unit::Us),
    (
        "limit_spsc_ring",
        "SPSC ring of u64, 2 processes spinning",
        Unit::Msgs,
    ),
    (
        "limit_atomic_cas",
        "uncontended CAS + release store",
        Unit::Ns,
    ),
    (
        "limit_atomic_counter",
        "2 processes fetch_add one word",
        Unit::Ops,
    ),
    (
        "limit_spinlock_counter",
        "2 processes increment under a bare spinlock",
        Unit::Ops,
    ),
    ("limit_fork_wait", "fork + _exit + waitpid", Unit::Us),
    ("limit_exec_wait", "fork + exec /bin/true + wait", Unit::Us),
    ("limit_cpu", "CPU batch, 2 processes vs 1", Unit::Speedup),
];

/// The loaded placement: pinned as `spread`, run beside one busy loop pinned on each CPU.
pub(super) const LOADED: &str = "loaded";

/// Every placement, in the order of the table (the names of `mp_benches::Placement`).
pub(super) const PLACEMENTS: &[&str] = &["spread", "packed", LOADED, "single"];

/// The placements a workload runs in: `spread`, `packed` and `loaded` (two or more processes),
/// or `single`.
pub(super) fn placements(single: bool) -> &'static [&'static str] {
    if single {
        &["single"]
    } else {
        &["spread", "packed", LOADED]
    }
}

/// True for the limits measured in one placement only.
pub(super) fn limit_single(group: &str) -> bool {
    matches!(
        group,
        "limit_memcpy" | "limit_memcpy_1mib" | "limit_atomic_cas"
    )
}
