"""pool apply_async: submit 10_000 apply_async calls of a trivial function to Pool(2), then get
every result. Prints items per second."""
from _common import ident, now, pool_rate_main


def run_once(pool, n):
    t0 = now()
    results = [pool.apply_async(ident, (i,)) for i in range(n)]
    total = sum(r.get() for r in results)
    dt = now() - t0
    assert total == n * (n - 1) // 2
    return dt


if __name__ == "__main__":
    pool_rate_main(run_once, 10_000, 10_000)
