"""pool CPU-bound scaling: the same batch of 16 CPU-bound tasks with Pool(1).map and with
Pool(2).map (chunksize 1). Prints the speed-up, time(1 worker) / time(2 workers)."""
import multiprocessing as mp

from _common import measure, now, options, pin_worker, report

TASKS = 16
MASK = (1 << 64) - 1


def cpu_task(seed):
    # xorshift64, as the Rust task (fewer rounds: CPython runs it ~100x slower).
    x = seed | 1
    for _ in range(20_000):
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
    return x


def batch_time(workers, repeats):
    counter = mp.Value("i", 0)
    with mp.Pool(workers, initializer=pin_worker, initargs=(counter, opts.placement)) as pool:
        def run_once(_n):
            t0 = now()
            pool.map(cpu_task, range(TASKS), chunksize=1)
            return now() - t0

        return measure(run_once, 1, repeats)


if __name__ == "__main__":
    opts = options()
    repeats = 1 if opts.quick else 3
    one = batch_time(1, repeats)
    two = batch_time(2, repeats)
    report(one / two)
