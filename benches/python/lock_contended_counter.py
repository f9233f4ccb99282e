"""lock contended counter: the parent and one child each increment a shared multiprocessing.Value
under a multiprocessing.Lock, n/2 times each. Prints increments per second (both together)."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pin, report


def worker(lock, value, n, cpu, start):
    pin(cpu)
    start.wait()
    for _ in range(n):
        with lock:
            value.value += 1


def run_once(n):
    lock = mp.Lock()
    value = mp.Value("q", 0, lock=False)
    start = mp.Barrier(2)
    half = n // 2
    p = mp.Process(target=worker, args=(lock, value, half, child_cpu(opts.placement, 0), start))
    p.start()
    start.wait()
    t0 = now()
    for _ in range(n - half):
        with lock:
            value.value += 1
    p.join()
    dt = now() - t0
    assert value.value == n
    return dt


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
