"""pool imap_unordered: iterate Pool(2).imap_unordered over 100_000 trivial items (10_000 with
--quick), default chunksize (1). Prints items per second."""
import multiprocessing as mp

from _common import ident, measure, now, options, pin_worker, report


def run_once(pool, n):
    t0 = now()
    count = sum(1 for _ in pool.imap_unordered(ident, range(n)))
    dt = now() - t0
    assert count == n
    return dt


if __name__ == "__main__":
    opts = options()
    n = 10_000 if opts.quick else 100_000
    counter = mp.Value("i", 0)
    with mp.Pool(2, initializer=pin_worker, initargs=(counter, opts.placement)) as pool:
        report(n / measure(lambda k: run_once(pool, k), n, 1 if opts.quick else 3))
