"""queue 1 MiB: one producer process puts 1 MiB bytes objects on a multiprocessing.Queue, the
parent gets them. Prints GB/s (10^9 bytes per second)."""
import multiprocessing as mp

from _common import measure, options, pin, report, timed_children

MIB = 1 << 20


def producer(q, n, cpu, start):
    pin(cpu)
    payload = b"\x5a" * MIB
    start.wait()
    for _ in range(n):
        q.put(payload)


def run_once(n):
    q = mp.Queue()

    def body():
        for _ in range(n):
            assert len(q.get()) == MIB

    return timed_children(opts.placement, [(producer, (q, n))], body)


if __name__ == "__main__":
    opts = options()
    n = 50 if opts.quick else 500
    report(n * MIB / measure(run_once, n, 2 if opts.quick else 5) / 1e9)
