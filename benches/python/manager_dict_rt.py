"""manager dict round trip: `d[1] = i` and `d[1]` in turn on a multiprocessing.Manager().dict(),
from the parent to the manager's server process (all its threads pinned to the child's CPU).
Prints microseconds per call."""
import multiprocessing as mp
import os

from _common import child_cpu, measure, now, options, report


def pin_all(pid, cpu):
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


if __name__ == "__main__":
    opts = options()
    n = 2_000 if opts.quick else 20_000
    manager = mp.Manager()
    d = manager.dict()
    d[1] = 0
    pin_all(manager._process.pid, child_cpu(opts.placement, 0))

    def run_once(n):
        t0 = now()
        for i in range(n):
            if i % 2 == 0:
                d[1] = i
            else:
                d[1]
        return now() - t0

    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e6)
    manager.shutdown()
