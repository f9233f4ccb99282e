"""pipe one-way small: a child sends small ints over a multiprocessing.Pipe, the parent receives
them. Prints messages per second."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pin, report


def sender(conn, n, cpu, start):
    pin(cpu)
    start.wait()
    for i in range(n):
        conn.send(i)


def run_once(n):
    a, b = mp.Pipe(duplex=False)
    start = mp.Barrier(2)
    p = mp.Process(target=sender, args=(b, n, child_cpu(opts.placement, 0), start))
    p.start()
    start.wait()
    t0 = now()
    for _ in range(n):
        a.recv()
    dt = now() - t0
    p.join()
    return dt


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
