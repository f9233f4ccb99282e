"""lock uncontended: acquire and release a multiprocessing.Lock (`with lock:`) in one process.
Prints nanoseconds per acquire+release."""
import multiprocessing as mp

from _common import measure, now, options, report


def run_once(n):
    lock = mp.Lock()
    t0 = now()
    for _ in range(n):
        with lock:
            pass
    return now() - t0


if __name__ == "__main__":
    opts = options()
    n = 100_000 if opts.quick else 1_000_000
    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e9)
