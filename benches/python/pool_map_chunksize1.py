"""pool map, chunksize 1: Pool(2).map over 100_000 trivial items (10_000 with --quick), one
task per item. Prints items per second."""
import multiprocessing as mp

from _common import ident, measure, now, options, pin_worker, report


def run_once(pool, n):
    t0 = now()
    out = pool.map(ident, range(n), chunksize=1)
    dt = now() - t0
    assert len(out) == n
    return dt


if __name__ == "__main__":
    opts = options()
    n = 10_000 if opts.quick else 100_000
    counter = mp.Value("i", 0)
    with mp.Pool(2, initializer=pin_worker, initargs=(counter, opts.placement)) as pool:
        report(n / measure(lambda k: run_once(pool, k), n, 1 if opts.quick else 3))
