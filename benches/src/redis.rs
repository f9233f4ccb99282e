//! The scale-out workload: mp-redis's `Pool::map` on a real redis-server with two worker
//! processes of this very binary, beside RQ on the same server (`benches/python/`).
//!
//! The server: the one at `MP_BENCH_REDIS_URL` (`cargo xtask bench` starts one redis-server
//! for both mp and the Python peer and sets it), else a redis-server child of the bench on a
//! free loopback port, persistence off, killed by its pid when the measurement ends. Without
//! either the workload is not registered, and the report says "not built (mp-redis)".
//!
//! The workers: `<this binary> --mp-worker URL --mp-workers 1 --mp-prefix P`, made workers by
//! [`mp_redis::init`] in the bench's `main`; each measurement uses a fresh prefix (so that
//! workers of an earlier one, killed but not yet reaped, do not count in the default chunk
//! size) and deletes its keys at the end.
//!
//! Placement: the parent is pinned to CPU 0 (as every workload's parent); the server and the
//! workers are left to the scheduler, on both sides.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Placement;

/// Items per `map` call of `redis_pool_map` (the 100 000, also under `--quick`).
pub const REDIS_MAP_ITEMS: u64 = 100_000;

/// Worker processes of `redis_pool_map`.
pub const REDIS_WORKERS: usize = 2;

/// The task: the square of a small integer (RQ runs the same one).
fn square(x: u64) -> u64 {
    x * x
}

/// The redis-server binary on PATH, if any.
pub fn redis_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// True when the workload can run: a server URL was given, or redis-server is installed.
pub fn available() -> bool {
    std::env::var_os("MP_BENCH_REDIS_URL").is_some() || redis_binary().is_some()
}

/// A child process killed (SIGKILL, by its pid) and reaped when dropped; it also dies with
/// the thread that started it (`PR_SET_PDEATHSIG`), so a bench killed by its watchdog leaves
/// nothing behind.
struct Owned(Child);

impl Owned {
    fn spawn(cmd: &mut Command) -> Owned {
        use std::os::unix::process::CommandExt;
        // The CPU count is read (and cached) before the fork: the child only makes system calls.
        let _ = crate::placement::cpus();
        // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2)
        // and sched_setaffinity(2), which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                crate::placement::unpin_current();
                Ok(())
            });
        }
        Owned(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
        )
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own unreaped child: the pid cannot be reused.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The server of a measurement: the given one, or our own child.
struct Server {
    url: String,
    _child: Option<Owned>,
}

impl Server {
    fn get() -> Server {
        if let Ok(url) = std::env::var("MP_BENCH_REDIS_URL") {
            return Server { url, _child: None };
        }
        let bin = redis_binary().expect("redis-server on PATH");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = Owned::spawn(
            Command::new(bin)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--loglevel", "warning"]),
        );
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "redis-server did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            url: format!("redis://127.0.0.1:{port}/0"),
            _child: Some(child),
        }
    }
}

/// The local backend on the same items: `mp_pool::Pool(2).map(square, 0..100_000)`, default
/// chunk size, the workers left to the scheduler as the redis workers are (the `local` column
/// of `redis_pool_map`).
pub fn local_pool_map(iters: u64, placement: Placement) -> Duration {
    placement.pin_parent();
    let pool = mp_pool::Pool::builder()
        .processes(REDIS_WORKERS)
        .initializer(unpin, ())
        .build()
        .expect("Pool::build");
    pool.chunksize(1)
        .map(square, 0..(64 * REDIS_WORKERS as u64))
        .expect("warm-up map");
    let n = REDIS_MAP_ITEMS;
    let start = Instant::now();
    for _ in 0..iters {
        let out = pool.map(square, 0..n).expect("map");
        assert_eq!(out.len() as u64, n);
    }
    start.elapsed()
}

fn unpin((): ()) {
    crate::placement::unpin_current();
}

/// `cluster.pool().map(square, 0..100_000)` with the default chunk size (Python's:
/// `ceil(n / (4 × workers))`, 8 chunks of 12 500 on 2 workers) on 2 worker processes of one
/// thread each; one iteration = one `map` call.
pub fn redis_pool_map(iters: u64, placement: Placement) -> Duration {
    static RUN: AtomicU64 = AtomicU64::new(0);
    placement.pin_parent();
    let server = Server::get();
    let prefix = format!(
        "mpbench:{}:{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let exe = std::env::current_exe().expect("the bench executable");
    let workers: Vec<Owned> = (0..REDIS_WORKERS)
        .map(|_| {
            Owned::spawn(
                Command::new(&exe)
                    .args(["--mp-worker", &server.url, "--mp-workers", "1"])
                    .args(["--mp-prefix", &prefix]),
            )
        })
        .collect();
    let cluster = mp_redis::Cluster::builder(&server.url)
        .prefix(&prefix)
        .connect()
        .expect("connect to redis-server");
    let pool = cluster.pool().expect("cluster pool");
    let t0 = Instant::now();
    while pool.workers().expect("workers") < REDIS_WORKERS {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the redis workers did not register within 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Warm-up: connections, and each worker's first resolution of the task.
    for _ in 0..4 {
        pool.map_chunked(square, 0..(64 * REDIS_WORKERS as u64), 1)
            .expect("warm-up map");
    }
    let n = REDIS_MAP_ITEMS;
    let start = Instant::now();
    for _ in 0..iters {
        let out = pool.map(square, 0..n).expect("map");
        assert_eq!(out.len() as u64, n);
    }
    let took = start.elapsed();
    drop(pool);
    drop(workers);
    let _ = cluster.purge();
    took
}
