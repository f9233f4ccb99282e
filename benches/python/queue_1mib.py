"""queue 1 MiB: one producer process puts 1 MiB bytes objects on a multiprocessing.Queue, the
parent gets them. Prints GB/s (10^9 bytes per second)."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pin, report

MIB = 1 << 20


def producer(q, n, cpu, start):
    pin(cpu)
    payload = b"\x5a" * MIB
    start.wait()
    for _ in range(n):
        q.put(payload)


def run_once(n):
    q = mp.Queue()
    start = mp.Barrier(2)
    p = mp.Process(target=producer, args=(q, n, child_cpu(opts.placement, 0), start))
    p.start()
    start.wait()
    t0 = now()
    for _ in range(n):
        assert len(q.get()) == MIB
    dt = now() - t0
    p.join()
    return dt


if __name__ == "__main__":
    opts = options()
    n = 50 if opts.quick else 500
    report(n * MIB / measure(run_once, n, 2 if opts.quick else 5) / 1e9)
