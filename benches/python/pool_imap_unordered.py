"""pool imap_unordered: iterate Pool(2).imap_unordered over 100_000 trivial items (10_000 with
--quick), default chunksize (1). Prints items per second."""
from _common import ident, now, pool_rate_main


def run_once(pool, n):
    t0 = now()
    count = sum(1 for _ in pool.imap_unordered(ident, range(n)))
    dt = now() - t0
    assert count == n
    return dt


if __name__ == "__main__":
    pool_rate_main(run_once, 100_000, 10_000)
