"""pool map: Pool(2).map over 1_000_000 trivial items (100_000 with --quick), default chunksize.
Prints items per second."""
from _common import ident, now, pool_rate_main


def run_once(pool, n):
    t0 = now()
    out = pool.map(ident, range(n))
    dt = now() - t0
    assert len(out) == n
    return dt


if __name__ == "__main__":
    pool_rate_main(run_once, 1_000_000, 100_000)
