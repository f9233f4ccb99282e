"""queue small 2->1: two producer processes put small ints on one multiprocessing.Queue, the
parent gets them all. Prints messages per second."""
import multiprocessing as mp

from _common import measure, options, put_range, report, timed_children


def run_once(n):
    q = mp.Queue()
    halves = [n // 2, n - n // 2]

    def body():
        for _ in range(n):
            q.get()

    return timed_children(opts.placement, [(put_range, (q, h)) for h in halves], body)


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
