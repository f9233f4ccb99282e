"""pipe one-way small: a child sends small ints over a multiprocessing.Pipe, the parent receives
them. Prints messages per second."""
import multiprocessing as mp

from _common import measure, options, pin, report, timed_children


def sender(conn, n, cpu, start):
    pin(cpu)
    start.wait()
    for i in range(n):
        conn.send(i)


def run_once(n):
    a, b = mp.Pipe(duplex=False)

    def body():
        for _ in range(n):
            a.recv()

    return timed_children(opts.placement, [(sender, (b, n))], body)


if __name__ == "__main__":
    opts = options()
    n = 20_000 if opts.quick else 200_000
    report(n / measure(run_once, n, 2 if opts.quick else 5))
