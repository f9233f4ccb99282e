"""executor submit: 10_000 `submit` of a trivial function to a
concurrent.futures.ProcessPoolExecutor(2) whose workers pin themselves, then every `result()`.
Prints items per second."""
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

from _common import ident, measure, now, options, pin_worker, report


def run_once(ex, n):
    t0 = now()
    futures = [ex.submit(ident, i) for i in range(n)]
    total = sum(f.result() for f in futures)
    dt = now() - t0
    assert total == n * (n - 1) // 2
    return dt


if __name__ == "__main__":
    opts = options()
    n = 2_000 if opts.quick else 10_000
    counter = mp.Value("i", 0)
    with ProcessPoolExecutor(2, initializer=pin_worker, initargs=(counter, opts.placement)) as ex:
        for f in [ex.submit(ident, i) for i in range(128)]:
            f.result()
        report(n / measure(lambda k: run_once(ex, k), n, 1 if opts.quick else 3))
