"""pipe round trip awaited in asyncio: the parent sends a small int over a multiprocessing.Pipe
and awaits the echo (the pipe's descriptor registered with the event loop, as asyncio code does
with `loop.add_reader`), a child echoes it back with blocking calls. Prints microseconds per
round trip."""
import asyncio
import multiprocessing as mp

from _common import measure, options, pin, report, timed_children


def echo(conn, n, cpu, start):
    pin(cpu)
    start.wait()
    for _ in range(n):
        conn.send(conn.recv())


async def rounds(a, n):
    loop = asyncio.get_running_loop()
    for i in range(n):
        a.send(i)
        if not a.poll():
            ready = loop.create_future()
            loop.add_reader(a.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(a.fileno())
        a.recv()


def run_once(n):
    a, b = mp.Pipe()

    def body():
        asyncio.run(rounds(a, n))

    return timed_children(opts.placement, [(echo, (b, n))], body)


if __name__ == "__main__":
    opts = options()
    n = 2_000 if opts.quick else 20_000
    report(measure(run_once, n, 2 if opts.quick else 5) / n * 1e6)
