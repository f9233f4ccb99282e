"""queue small 1->1: one producer process puts small ints on a multiprocessing.Queue, the parent
gets them. Prints messages per second."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pin, report


def producer(q, n, cpu, start):
    pin(cpu)
    start.wait()
    for i in range(n):
        q.put(i)


def run_once(n):
    q = mp.Queue()
    start = mp.Barrier(2)
    p = mp.Process(target=producer, args=(q, n, child_cpu(opts.placement, 0), start))
    p.start()
    start.wait()
    t0 = now()
    for _ in range(n):
        q.get()
    dt = now() - t0
    p.join()
    return dt


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
