"""queue small 2->1: two producer processes put small ints on one multiprocessing.Queue, the
parent gets them all. Prints messages per second."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pin, report


def producer(q, n, cpu, start):
    pin(cpu)
    start.wait()
    for i in range(n):
        q.put(i)


def run_once(n):
    q = mp.Queue()
    start = mp.Barrier(3)
    halves = [n // 2, n - n // 2]
    ps = [
        mp.Process(target=producer, args=(q, h, child_cpu(opts.placement, i), start))
        for i, h in enumerate(halves)
    ]
    for p in ps:
        p.start()
    start.wait()
    t0 = now()
    for _ in range(n):
        q.get()
    dt = now() - t0
    for p in ps:
        p.join()
    return dt


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
