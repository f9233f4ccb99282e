//! Shared by mp-redis's test files: a redis-server for the test, unique prefixes, workers as
//! child processes, a watchdog.
//!
//! Where the server comes from: the one at `MP_REDIS_URL` when set, else a `redis-server`
//! child of the test on a free loopback port when the binary is on PATH (killed by pid when
//! the guard drops, also on failure); tests that restart the server or need a password always
//! start their own. With neither, a test prints why and passes as skipped, unless
//! `MP_REQUIRE_REDIS=1` (CI), where it fails.

#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mp_process::{Process, StartMethod};

/// Makes the program that `cmd` starts die (SIGKILL) when the thread that starts it dies, so
/// that a test killed by its watchdog or a panic leaves no server or worker behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        })
    }
}

/// The redis-server binary on PATH, if any.
pub fn redis_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn required() -> bool {
    std::env::var("MP_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

/// Says why a test does not run; panics instead under `MP_REQUIRE_REDIS=1`.
pub fn skip(why: &str) {
    assert!(!required(), "MP_REQUIRE_REDIS=1 but {why}");
    eprintln!("skipped: {why}");
}

/// A redis-server started by the test (or an outside one).
pub struct Server {
    pub url: String,
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Server {
    /// The server at `MP_REDIS_URL` if set, else one of our own if the binary exists, else
    /// `None` (skipped).
    pub fn any() -> Option<Server> {
        if let Ok(url) = std::env::var("MP_REDIS_URL") {
            return Some(Server {
                url,
                child: None,
                port: 0,
                args: Vec::new(),
            });
        }
        if redis_binary().is_some() {
            return Server::own(&[]);
        }
        skip("no redis-server on PATH and no MP_REDIS_URL (install redis-server or set it)");
        None
    }

    /// A server of our own, with extra arguments (a password, ...); `None` when the binary is
    /// missing (skipped).
    pub fn own(extra: &[&str]) -> Option<Server> {
        Server::own_with(|_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// A server of our own whose extra arguments depend on its port (`--port 0 --tls-port
    /// PORT` for a TLS-only server: later arguments win).
    pub fn own_with(extra: impl FnOnce(u16) -> Vec<String>) -> Option<Server> {
        if redis_binary().is_none() {
            skip("this test needs its own redis-server and none is on PATH");
            return None;
        }
        let port = free_port();
        let mut s = Server {
            url: format!("redis://127.0.0.1:{port}/0"),
            child: None,
            port,
            args: extra(port),
        };
        s.start();
        Some(s)
    }

    fn start(&mut self) {
        let bin = redis_binary().expect("redis-server");
        let child = die_with_parent(&mut Command::new(bin))
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "redis-server did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own unreaped child: the pid cannot be reused.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Kills the server (its data is gone: persistence is off) and starts a new one on the
    /// same port after `pause`.
    pub fn restart(&mut self, pause: Duration) {
        assert!(self.port != 0, "cannot restart an outside server");
        self.kill();
        std::thread::sleep(pause);
        self.start();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A prefix no other test (or run) uses.
pub fn prefix(test: &str) -> String {
    format!(
        "mptest:{test}:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// What a worker child needs: (url, prefix, lease ms, max tries).
pub type WorkerArgs = (String, String, u64, u64);

fn worker_main(args: WorkerArgs) {
    let (url, prefix, lease, tries) = args;
    let cluster = mp_redis::Cluster::builder(&url)
        .prefix(&prefix)
        .lease(Duration::from_millis(lease))
        .max_tries(tries)
        .connect()
        .expect("worker: connect");
    let e = cluster.serve(1).expect_err("serve returns only on error");
    panic!("worker: {e}");
}

/// A worker process (a spawn child of the test binary, a daemon: it dies with the test).
pub struct Worker {
    pub child: mp_process::Child<()>,
}

impl Worker {
    pub fn start(args: &WorkerArgs) -> Worker {
        let child = Process::new(worker_main, args.clone())
            .start_method(StartMethod::Spawn)
            .daemon(true)
            .start()
            .expect("starting a worker");
        Worker { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.join();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.join_timeout(Duration::from_secs(10));
    }
}

/// Runs `f` on its own thread and fails the test if it takes longer than `secs`.
pub fn watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: test still running after {secs} s")
        }
    }
}

/// Polls `f` (a test-side check, not library code) until it is true, failing after `secs`.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes the test's keys when dropped (declare it before the workers, so that it drops
/// after them).
pub struct Purge(pub String, pub String);

impl Drop for Purge {
    fn drop(&mut self) {
        if let Ok(c) = mp_redis::Cluster::builder(&self.0)
            .prefix(&self.1)
            .retry_for(Duration::from_secs(2))
            .connect()
        {
            let _ = c.purge();
        }
    }
}
