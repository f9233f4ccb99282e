//! Running things: the build of mp-benches, criterion groups under a watchdog, the CPython
//! scripts, and the lock that keeps two runs from sharing the machine.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::criterion::json_string_field;
use super::specs::LOADED;

/// `mp_benches::placement::BUSY_LOOPS_VAR`: set for a run of the loaded benchmarks.
pub(super) const BUSY_LOOPS_VAR: &str = "MP_BENCH_BUSY_LOOPS";

/// One `cargo xtask bench` at a time per target directory: a second run would delete the
/// first one's results and, worse, compete with it for the CPUs. The lock is a file holding
/// the pid of the run; a lock left by a run that died is taken over.
pub(super) struct RunLock(PathBuf);

impl RunLock {
    /// Takes the lock, or says which live run holds it.
    pub(super) fn take(path: &Path) -> Result<RunLock, String> {
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    use std::io::Write as _;
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(RunLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path).unwrap_or_default();
                    let owner = owner.trim();
                    let alive = !owner.is_empty() && Path::new(&format!("/proc/{owner}")).exists();
                    if alive {
                        return Err(format!(
                            "another `cargo xtask bench` is running (pid {owner}, lock {}); \
                             two runs at once would spoil each other's numbers",
                            path.display()
                        ));
                    }
                    let _ = std::fs::remove_file(path); // stale: its run is gone
                }
                Err(e) => return Err(format!("create {}: {e}", path.display())),
            }
        }
        Err(format!("could not take {}", path.display()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds the criterion bench in the release profile and returns its executable.
pub(super) fn build(root: &Path) -> Result<PathBuf, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "bench",
            "-p",
            "mp-benches",
            "--bench",
            "suite",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !out.status.success() {
        return Err("building the benches failed (cargo bench -p mp-benches --no-run)".into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        if line.contains("\"compiler-artifact\"") && line.contains("\"name\":\"suite\"") {
            if let Some(exe) = json_string_field(line, "executable") {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err("cargo did not report the bench executable of mp-benches".into())
}

/// The benchmark ids the executable holds.
pub(super) fn list(exe: &Path, root: &Path) -> Result<BTreeSet<String>, String> {
    let out = Command::new(exe)
        .args(["--bench", "--list"])
        .current_dir(root.join("benches"))
        .output()
        .map_err(|e| format!("could not run {}: {e}", exe.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": benchmark"))
        .map(str::to_string)
        .collect())
}

/// Runs `cmd` with stdout and stderr captured, killing it after `limit`.
pub(super) fn run_with_timeout(
    mut cmd: Command,
    limit: Duration,
) -> Result<(bool, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    let mut so = child.stdout.take().ok_or("no stdout")?;
    let mut se = child.stderr.take().ok_or("no stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let (ok, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), false),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break (false, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    let mut text = t_out.join().unwrap_or_default();
    text.push_str(&t_err.join().unwrap_or_default());
    if timed_out {
        let _ = writeln!(
            text,
            "\n[killed by the watchdog after {} s]",
            limit.as_secs()
        );
    }
    Ok((ok, text))
}

/// Runs the benchmarks of one criterion group in the given placements under the watchdog
/// (`busy_loops`: how many run beside it, for the loaded placement); returns whether it
/// succeeded, and its output.
pub(super) fn run_group(
    exe: &Path,
    root: &Path,
    home: &Path,
    (group, placements): (&str, &[&str]),
    busy_loops: Option<usize>,
    quick: bool,
) -> Result<(bool, String), String> {
    let mut cmd = Command::new(exe);
    cmd.current_dir(root.join("benches"))
        .env("CRITERION_HOME", home)
        .env("MP_BENCH_QUICK", if quick { "1" } else { "0" })
        .args(["--bench", "--noplot"]);
    if let Some(n) = busy_loops {
        cmd.env(BUSY_LOOPS_VAR, n.to_string());
    }
    if quick {
        // Loaded with --quick: half the times (a loaded run takes up to twice as long per
        // iteration), so that the smoke run grows by about half, not double.
        let (warm_up, measurement) = if busy_loops.is_some() {
            ("0.1", "0.25")
        } else {
            ("0.2", "0.5")
        };
        cmd.args([
            "--warm-up-time",
            warm_up,
            "--measurement-time",
            measurement,
            "--sample-size",
            "10",
        ])
        .args(["--nresamples", "1000"]);
    } else {
        cmd.args([
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
            "--sample-size",
            "50",
        ]);
    }
    // criterion's filter is a regex over the ids `<workload>/<implementation>/<placement>`.
    cmd.arg(format!("^{group}/[^/]+/({})$", placements.join("|")));
    run_with_timeout(cmd, Duration::from_secs(if quick { 120 } else { 900 }))
}

/// The machine's `python3 --version`, or `None` when there is none.
pub(super) fn python_version() -> Option<String> {
    let out = Command::new("python3").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a workload's CPython script in a placement and returns its number.
pub(super) fn run_python(
    root: &Path,
    name: &str,
    placement: &str,
    quick: bool,
) -> Result<f64, String> {
    let dir = root.join("benches").join("python");
    let mut cmd = Command::new("python3");
    cmd.current_dir(&dir)
        .arg(format!("{name}.py"))
        .args(["--placement", placement]);
    if quick {
        cmd.arg("--quick");
        if placement == LOADED {
            // One timed run after the warm-up, not the median of two (see `run_group`).
            cmd.args(["--runs", "1"]);
        }
    }
    let (ok, out) = run_with_timeout(cmd, Duration::from_secs(if quick { 120 } else { 600 }))?;
    let value = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    match (ok, value) {
        (true, Some(v)) => Ok(v),
        _ => Err(last_lines(&out, 6)),
    }
}

/// The last `n` lines of a text (for failure reports).
pub(super) fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The busy loops of the loaded placement: one CPU-bound process pinned on each online CPU
/// (`taskset -c CPU xtask busy-loop PID`, a re-exec of this binary, see [`busy_loop`]), started
/// before a loaded run and killed by their pids, and reaped, when dropped: on success, on an
/// error and on a panic alike. A loop whose xtask dies without dropping it (SIGKILL) sees its
/// parent change and exits within milliseconds; Ctrl-C reaches it with the rest of the
/// foreground process group.
pub(super) struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    /// Starts one loop per online CPU and waits until each runs the loop (not `taskset`).
    pub(super) fn start() -> Result<BusyLoops, String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let exe =
            std::env::current_exe().map_err(|e| format!("busy loops: no current exe: {e}"))?;
        let me = std::process::id().to_string();
        let mut loops = BusyLoops(Vec::new());
        for cpu in 0..cpus {
            let child = Command::new("taskset")
                .args(["-c", &cpu.to_string()])
                .arg(&exe)
                .args(["busy-loop", &me])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("start a busy loop with taskset (util-linux): {e}"))?;
            loops.0.push(child);
        }
        let t0 = Instant::now();
        for c in &mut loops.0 {
            let comm = format!("/proc/{}/comm", c.id());
            while std::fs::read_to_string(&comm).is_ok_and(|s| s.trim() == "taskset") {
                if t0.elapsed() > Duration::from_secs(5) {
                    return Err("the busy loops did not start in 5 s".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("a busy loop exited at once ({status})"));
            }
        }
        Ok(loops)
    }

    /// How many loops run.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill(); // SIGKILL by its pid: our own unreaped child
            let _ = c.wait();
        }
    }
}

/// `xtask busy-loop PID`: spins on its CPU until it is killed, or until its parent is no longer
/// `PID` (the xtask that started it died and it was reparented): the `PR_SET_PDEATHSIG` of a
/// binary without `libc`, checked about every millisecond.
pub(crate) fn busy_loop(args: &[String]) -> Result<(), String> {
    let parent: u32 = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: xtask busy-loop PARENT_PID")?;
    loop {
        for i in 0..200_000u64 {
            std::hint::black_box(i);
        }
        if std::os::unix::process::parent_id() != parent {
            return Ok(());
        }
    }
}

/// The redis-server of the workloads on Redis (mp-redis and its Python peer, RQ): one child on
/// a free loopback port with persistence off, shared by both sides through
/// `MP_BENCH_REDIS_URL`, killed by its pid when dropped.
pub(super) struct RedisServer {
    child: std::process::Child,
    pub(super) url: String,
}

impl RedisServer {
    /// Starts the server; `Ok(None)` when `redis-server` is not installed (the workloads then
    /// report "not built" and CPython's side fails with the reason).
    pub(super) fn start() -> Result<Option<RedisServer>, String> {
        let Some(bin) = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        }) else {
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))?;
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "redis-server did not listen on port {port} in 20 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(server))
    }

    /// `redis-server --version`, for the report.
    pub(super) fn version() -> Option<String> {
        let out = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout);
        s.split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map(|v| format!("Redis {v}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill(); // by its pid: our own unreaped child
        let _ = self.child.wait();
    }
}
