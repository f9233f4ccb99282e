"""pipe round trip: the parent sends a small int over a multiprocessing.Pipe, a child echoes it
back. Prints microseconds per round trip."""
import multiprocessing as mp

from _common import measure, options, pin, report, timed_children


def echo(conn, n, cpu, start):
    pin(cpu)
    start.wait()
    for _ in range(n):
        conn.send(conn.recv())


def run_once(n):
    a, b = mp.Pipe()

    def body():
        for i in range(n):
            a.send(i)
            a.recv()

    return timed_children(opts.placement, [(echo, (b, n))], body)


if __name__ == "__main__":
    opts = options()
    n = 2_000 if opts.quick else 20_000
    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e6)
