"""queue batch 1->1: one producer process puts small ints on a multiprocessing.Queue in lists of
256 (what a Python program does to batch: one pickle, one pipe write per list), the parent
gets the lists. Prints items per second."""
import multiprocessing as mp

from _common import measure, options, pin, report, timed_children

BATCH = 256


def put_lists(q, n, cpu, start):
    pin(cpu)
    start.wait()
    items = list(range(BATCH))
    left = n
    while left > 0:
        k = min(left, BATCH)
        q.put(items[:k])
        left -= k


def run_once(n):
    q = mp.Queue()

    def body():
        got = 0
        while got < n:
            got += len(q.get())

    return timed_children(opts.placement, [(put_lists, (q, n))], body)


if __name__ == "__main__":
    opts = options()
    n = 200_000 if opts.quick else 2_000_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
