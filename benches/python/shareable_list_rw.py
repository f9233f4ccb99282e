"""shareable list get+set: a child reads and writes one item of a
multiprocessing.shared_memory.ShareableList its parent made (`sl[0]`, then `sl[0] = i`), timed in
the parent from the child's start signal to its end, as the Rust side. Prints nanoseconds per
get+set."""
import multiprocessing as mp
from multiprocessing import shared_memory

from _common import child_cpu, measure, now, options, pin, report


def child(sl, n, cpu, ready, go):
    pin(cpu)
    ready.set()
    go.wait()
    for i in range(n):
        sl[0]
        sl[0] = i


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    ctx = mp.get_context("fork")
    sl = shared_memory.ShareableList([0, "a string", 0.5])

    def run_once(n):
        ready, go = ctx.Event(), ctx.Event()
        p = ctx.Process(target=child, args=(sl, n, child_cpu(opts.placement, 0), ready, go))
        p.start()
        ready.wait()
        t0 = now()
        go.set()
        p.join()
        took = now() - t0
        assert sl[0] == n - 1, sl[0]
        return took

    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e9)
    sl.shm.close()
    sl.shm.unlink()
