"""redis pool map: the peer of mp-redis's Pool.map, RQ on the same redis-server: 100_000 small
items (also with --quick) squared by 2 `rq worker` processes (SimpleWorker: RQ's faster worker,
no fork per job), chunked as Pool.map chunks them by default, ceil(n / (4 * workers)) items per
job (8 jobs of 12_500). Prints items per second.

The server: MP_BENCH_REDIS_URL (set by `cargo xtask bench`, the one mp's side uses), else a
redis-server of our own on a free loopback port, persistence off, killed by pid at the end.
RQ: imported from this python3, else from the venv target/bench/venv, which is made with
`pip install rq` (from PyPI) when missing; the script then re-runs itself under the venv.
Placement: the parent on CPU 0 (as every script); the workers are left to the scheduler,
as mp's are.
"""
import os
import socket
import subprocess
import sys
import time

from _common import measure, now, options, report

N = 100_000
WORKERS = 2
# MP_BENCH_RQ_WORKER=rq.worker.Worker measures RQ's default worker (a fork per job) instead.
WORKER_CLASS = os.environ.get("MP_BENCH_RQ_WORKER", "rq.worker.SimpleWorker")
HERE = os.path.dirname(os.path.abspath(__file__))


def square_chunk(xs):
    """The task of one job: the square of each small int of a chunk."""
    return [x * x for x in xs]


def _venv_dir():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(HERE, "..", "..", "target")
    return os.path.abspath(os.path.join(target, "bench", "venv"))


def _ensure_rq():
    """Import rq, or make the venv with it and re-run this script there."""
    try:
        import rq  # noqa: F401

        return
    except ImportError:
        pass
    venv = _venv_dir()
    py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        sys.exit("rq is missing from the bench venv " + venv)
    if not os.path.exists(os.path.join(venv, "bin", "rq")):
        print("installing rq from PyPI into " + venv, file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "rq"], check=True)
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unpin():
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _server():
    """(url, child or None)."""
    url = os.environ.get("MP_BENCH_REDIS_URL")
    if url:
        return url, None
    port = _free_port()
    try:
        child = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, preexec_fn=_unpin)
    except FileNotFoundError:
        sys.exit("redis-server is not installed (and MP_BENCH_REDIS_URL is not set)")
    t0 = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() - t0 > 20:
                child.kill()
                sys.exit("redis-server did not listen in 20 s")
            time.sleep(0.01)
    return "redis://127.0.0.1:%d/0" % port, child


def main():
    opts = options()
    _ensure_rq()
    from redis import Redis
    from rq import Queue

    url, server = _server()
    qname = "mpbench-rq-%d" % os.getpid()
    conn = Redis.from_url(url)
    rq_bin = os.path.join(os.path.dirname(sys.executable), "rq")
    workers = [
        subprocess.Popen(
            [rq_bin, "worker", "-q", "-u", url, "-w", WORKER_CLASS, "-P", HERE,
             "--results-ttl", "600", qname],
            cwd=HERE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_unpin)
        for _ in range(WORKERS)
    ]
    try:
        q = Queue(qname, connection=conn)
        # The workers are up once both have registered.
        from rq import Worker

        t0 = time.monotonic()
        while len([w for w in Worker.all(queue=q)]) < WORKERS:
            if time.monotonic() - t0 > 60:
                sys.exit("the rq workers did not register in 60 s")
            time.sleep(0.05)

        def run_once(n):
            chunk = -(-n // (4 * WORKERS))
            t0 = now()
            jobs = [q.enqueue("redis_pool_map.square_chunk", list(range(i, min(i + chunk, n))))
                    for i in range(0, n, chunk)]
            out = []
            for job in jobs:
                while True:
                    r = job.return_value()
                    if r is not None:
                        break
                    if job.is_failed:
                        sys.exit("an rq job failed: %s" % job.exc_info)
                    time.sleep(0.0005)
                out.extend(r)
            dt = now() - t0
            assert len(out) == n and out[-1] == (n - 1) ** 2
            return dt

        report(N / measure(run_once, N, 3 if opts.quick else 5))
    finally:
        for w in workers:
            w.kill()
            w.wait()
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
