"""Shared helpers of the CPython reference scripts run by `cargo xtask bench`.

Every script measures one workload with `multiprocessing` the way a Python user would write it,
in the placement given on the command line, and prints one line `RESULT <value>` in the unit of
the workload (see docs/benchmarks.md). Placements match the Rust side exactly: "spread" puts the
parent on CPU 0 and child i on CPU 1, 0, 1, ...; "packed" puts everyone on CPU 0; "single" pins
the only process to CPU 0; "loaded" pins as "spread" (the busy loop on each CPU that makes it
loaded is started around the script by `cargo xtask bench`, as around mp's). Children pin
themselves with os.sched_setaffinity before the clock starts (pool workers in their
initializer).
"""

import argparse
import os
import statistics
import sys
import time


# Read once (os.cpu_count() reads sysfs on every call); forked children inherit it, as the
# Rust side's cached `cpus()`.
_CPUS = os.cpu_count() or 1


def _cpus():
    return _CPUS


def pin(cpu):
    """Pin the calling process to `cpu` (CPU 0 if the machine has no such CPU)."""
    if cpu >= _cpus():
        cpu = 0
    os.sched_setaffinity(0, {cpu})


def child_cpu(placement, i):
    """The CPU of child number i (from 0) in a placement."""
    if placement in ("spread", "loaded") and _cpus() > 1:
        return 1 if i % 2 == 0 else 0
    return 0


# `--runs N`: the timed runs of every `measure`, instead of the script's own count.
_RUNS = None


def options():
    global _RUNS
    p = argparse.ArgumentParser()
    p.add_argument("--placement", choices=["spread", "packed", "loaded", "single"], default="spread")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--runs",
        type=int,
        help="timed runs per measurement instead of the script's (xtask: 1 for loaded with --quick)",
    )
    a = p.parse_args()
    _RUNS = a.runs
    pin(0)
    return a


def measure(run_once, n, repeats):
    """Run `run_once(n)` (which returns seconds) `repeats` times (or `--runs`) after one warm-up
    run of a tenth of the size, and return the median time."""
    run_once(max(1, n // 10))
    return statistics.median(run_once(n) for _ in range(_RUNS or repeats))


def report(value):
    print(f"RESULT {value!r}")
    sys.stdout.flush()


def now():
    return time.perf_counter()


def pin_worker(counter, placement):
    """Pool initializer: worker number i (in start order) pins itself to child_cpu(i)."""
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    pin(child_cpu(placement, i))


def ident(x):
    return x


def pinned_noop(cpu):
    pin(cpu)


def process_start_main(method, n_full, n_quick):
    """The process start+join workload for one start method: start a Process whose target pins
    itself to the child's CPU and returns, then join it; report microseconds per start+join."""
    import multiprocessing as mp

    opts = options()
    ctx = mp.get_context(method)
    cpu = child_cpu(opts.placement, 0)

    def run_once(n):
        t0 = now()
        for _ in range(n):
            p = ctx.Process(target=pinned_noop, args=(cpu,))
            p.start()
            p.join()
            assert p.exitcode == 0
        return now() - t0

    n = n_quick if opts.quick else n_full
    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e6)


def pool_rate_main(run_once, n_full, n_quick):
    """The rate workloads of a Pool(2) whose workers pin themselves: `run_once(pool, n)` returns
    the seconds `n` items took (n_full, or n_quick with --quick); report items per second."""
    import multiprocessing as mp

    opts = options()
    n = n_quick if opts.quick else n_full
    counter = mp.Value("i", 0)
    with mp.Pool(2, initializer=pin_worker, initargs=(counter, opts.placement)) as pool:
        report(n / measure(lambda k: run_once(pool, k), n, 1 if opts.quick else 3))


def timed_children(placement, children, body):
    """Start one Process per (target, args) of `children`; child i is called with
    args + (its CPU, a start barrier), pins itself and waits at the barrier. Once all have
    arrived, time `body()` in the parent, join the children and return the seconds `body`
    took."""
    import multiprocessing as mp

    start = mp.Barrier(len(children) + 1)
    ps = [
        mp.Process(target=target, args=(*args, child_cpu(placement, i), start))
        for i, (target, args) in enumerate(children)
    ]
    for p in ps:
        p.start()
    start.wait()
    t0 = now()
    body()
    dt = now() - t0
    for p in ps:
        p.join()
    return dt


def put_range(q, n, cpu, start):
    """Producer of the small-message queue workloads: pin, wait at `start`, put 0..n on `q`."""
    pin(cpu)
    start.wait()
    for i in range(n):
        q.put(i)
