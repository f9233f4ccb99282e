"""event ping-pong: the parent sets one multiprocessing.Event, a child waits for it, clears it
and sets a second one the parent waits for. Prints microseconds per round trip."""
import multiprocessing as mp

from _common import child_cpu, measure, now, options, pin, report


def ponger(ping, pong, n, cpu, start):
    pin(cpu)
    start.wait()
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def run_once(n):
    ping, pong = mp.Event(), mp.Event()
    start = mp.Barrier(2)
    p = mp.Process(target=ponger, args=(ping, pong, n, child_cpu(opts.placement, 0), start))
    p.start()
    start.wait()
    t0 = now()
    for _ in range(n):
        ping.set()
        pong.wait()
        pong.clear()
    dt = now() - t0
    p.join()
    return dt


if __name__ == "__main__":
    opts = options()
    n = 1_000 if opts.quick else 10_000
    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e6)
