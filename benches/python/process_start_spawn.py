"""process start+join (spawn): start a multiprocessing Process (context "spawn") whose target pins
itself to the child's CPU and returns, then join it. Prints microseconds per start+join."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pinned_noop, report


def run_once(n):
    ctx = mp.get_context("spawn")
    cpu = child_cpu(opts.placement, 0)
    t0 = now()
    for _ in range(n):
        p = ctx.Process(target=pinned_noop, args=(cpu,))
        p.start()
        p.join()
        assert p.exitcode == 0
    return now() - t0


if __name__ == "__main__":
    opts = options()
    n = 5 if opts.quick else 30
    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e6)
