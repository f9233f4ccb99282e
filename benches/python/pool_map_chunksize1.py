"""pool map, chunksize 1: Pool(2).map over 100_000 trivial items (10_000 with --quick), one
task per item. Prints items per second."""
from _common import ident, now, pool_rate_main


def run_once(pool, n):
    t0 = now()
    out = pool.map(ident, range(n), chunksize=1)
    dt = now() - t0
    assert len(out) == n
    return dt


if __name__ == "__main__":
    pool_rate_main(run_once, 100_000, 10_000)
