"""pool apply_async: submit 10_000 apply_async calls of a trivial function to Pool(2), then get
every result. Prints items per second."""
import multiprocessing as mp

from _common import ident, measure, now, options, pin_worker, report


def run_once(pool, n):
    t0 = now()
    results = [pool.apply_async(ident, (i,)) for i in range(n)]
    total = sum(r.get() for r in results)
    dt = now() - t0
    assert total == n * (n - 1) // 2
    return dt


if __name__ == "__main__":
    opts = options()
    n = 10_000
    counter = mp.Value("i", 0)
    with mp.Pool(2, initializer=pin_worker, initargs=(counter, opts.placement)) as pool:
        report(n / measure(lambda k: run_once(pool, k), n, 1 if opts.quick else 3))
