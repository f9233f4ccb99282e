//! `cargo xtask bench [--quick] [--filter NAME]`: mp against CPython, the Rust peers and the
//! machine's limits, in one run, on this machine.
//!
//! 1. Builds the criterion bench `mp-benches/benches/suite.rs` and lists its benchmark ids
//!    (`<workload>/<implementation>/<placement>`); a workload without an `mp` id is reported as
//!    "not built".
//! 2. Runs it once per criterion group (each group under a watchdog), with the results in
//!    `target/bench/criterion/`.
//! 3. Runs `benches/python/<workload>.py` with the machine's `python3`, in the same placements.
//! 4. Prints the table, writes `target/bench/report.json`, `report.md` and `chart.svg`.
//!
//! Only the standard library is used here: the report's JSON and SVG are written by hand, and
//! criterion's `estimates.json` is read with a tiny field extractor.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a workload's number reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Nanoseconds per operation (lower is better).
    Ns,
    /// Microseconds per operation (lower is better).
    Us,
    /// Messages per second (higher is better).
    Msgs,
    /// Items per second (higher is better).
    Items,
    /// Operations per second (higher is better).
    Ops,
    /// 10^9 bytes per second (higher is better).
    GBps,
    /// A speed-up, time(1 worker) / time(2 workers) (higher is better).
    Speedup,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::Us => "µs",
            Unit::Msgs => "msgs/s",
            Unit::Items => "items/s",
            Unit::Ops => "ops/s",
            Unit::GBps => "GB/s",
            Unit::Speedup => "× (1→2 workers)",
        }
    }

    fn higher_is_better(self) -> bool {
        !matches!(self, Unit::Ns | Unit::Us)
    }
}

/// One workload of the table.
struct Spec {
    /// Criterion group and CPython script name.
    name: &'static str,
    /// The primitive crate that provides mp's side.
    krate: &'static str,
    unit: Unit,
    single: bool,
    /// The machine limits it is compared to (criterion group, label): the best of them in
    /// each placement is its limit.
    limit: &'static [(&'static str, &'static str)],
    /// Peer implementations (criterion implementation names).
    peers: &'static [&'static str],
}

const PEERS: &[&str] = &["crossbeam", "ipc-channel"];

const SPECS: &[Spec] = &[
    Spec {
        name: "queue_small_1to1",
        krate: "mp-queue",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: PEERS,
    },
    Spec {
        name: "queue_batch_1to1",
        krate: "mp-queue",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: &[],
    },
    Spec {
        name: "queue_small_2to1",
        krate: "mp-queue",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: PEERS,
    },
    Spec {
        name: "queue_1mib",
        krate: "mp-queue",
        unit: Unit::GBps,
        single: false,
        limit: &[("limit_memcpy_1mib", "memcpy 1 MiB")],
        peers: PEERS,
    },
    Spec {
        name: "pipe_rt",
        krate: "mp-pipe",
        unit: Unit::Us,
        single: false,
        limit: &[
            ("limit_cacheline_rt", "spinning cache line"),
            ("limit_futex_rt", "futex rt"),
            ("limit_pipe_rt", "pipe(2) rt"),
        ],
        peers: PEERS,
    },
    Spec {
        name: "pipe_oneway_small",
        krate: "mp-pipe",
        unit: Unit::Msgs,
        single: false,
        limit: &[("limit_spsc_ring", "SPSC ring")],
        peers: PEERS,
    },
    Spec {
        name: "manager_dict_rt",
        krate: "mp-manager",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_pipe_rt", "pipe(2) rt")],
        peers: &[],
    },
    Spec {
        name: "lock_uncontended",
        krate: "mp-sync",
        unit: Unit::Ns,
        single: true,
        limit: &[("limit_atomic_cas", "CAS+store")],
        peers: &[],
    },
    Spec {
        name: "lock_contended_counter",
        krate: "mp-sync",
        unit: Unit::Ops,
        single: false,
        limit: &[("limit_spinlock_counter", "spinlock counter")],
        peers: &[],
    },
    Spec {
        name: "event_pingpong",
        krate: "mp-sync",
        unit: Unit::Us,
        single: false,
        limit: &[
            ("limit_cacheline_rt", "spinning cache line"),
            ("limit_futex_rt", "futex rt"),
            ("limit_pipe_rt", "pipe(2) rt"),
        ],
        peers: &[],
    },
    Spec {
        name: "process_start_fork",
        krate: "mp-process",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_fork_wait", "fork+wait")],
        peers: &[],
    },
    Spec {
        name: "process_start_spawn",
        krate: "mp-process",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_exec_wait", "exec /bin/true")],
        peers: &[],
    },
    Spec {
        name: "process_start_forkserver",
        krate: "mp-process",
        unit: Unit::Us,
        single: false,
        limit: &[("limit_fork_wait", "fork+wait")],
        peers: &[],
    },
    Spec {
        name: "pool_map",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_map_chunksize1",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_imap_unordered",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_apply_async",
        krate: "mp-pool",
        unit: Unit::Items,
        single: false,
        limit: &[],
        peers: &[],
    },
    Spec {
        name: "pool_cpu_scaling",
        krate: "mp-pool",
        unit: Unit::Speedup,
        single: false,
        limit: &[("limit_cpu", "bare processes")],
        peers: &[],
    },
];

/// The machine limits, in the order of their table: (criterion group, label, unit).
const LIMITS: &[(&str, &str, Unit)] = &[
    ("limit_memcpy", "memcpy 64 MiB", Unit::GBps),
    ("limit_memcpy_1mib", "memcpy 1 MiB (in cache)", Unit::GBps),
    (
        "limit_cacheline_rt",
        "cache-line ping-pong, 2 threads spinning",
        Unit::Ns,
    ),
    ("limit_futex_rt", "futex ping-pong, 2 processes", Unit::Us),
    ("limit_pipe_rt", "pipe(2) ping-pong, 2 processes", Unit::Us),
    (
        "limit_spsc_ring",
        "SPSC ring of u64, 2 processes spinning",
        Unit::Msgs,
    ),
    (
        "limit_atomic_cas",
        "uncontended CAS + release store",
        Unit::Ns,
    ),
    (
        "limit_atomic_counter",
        "2 processes fetch_add one word",
        Unit::Ops,
    ),
    (
        "limit_spinlock_counter",
        "2 processes increment under a bare spinlock",
        Unit::Ops,
    ),
    ("limit_fork_wait", "fork + _exit + waitpid", Unit::Us),
    ("limit_exec_wait", "fork + exec /bin/true + wait", Unit::Us),
    ("limit_cpu", "CPU batch, 2 processes vs 1", Unit::Speedup),
];

fn placements(single: bool) -> &'static [&'static str] {
    if single {
        &["single"]
    } else {
        &["spread", "packed"]
    }
}

fn limit_single(group: &str) -> bool {
    matches!(
        group,
        "limit_memcpy" | "limit_memcpy_1mib" | "limit_atomic_cas"
    )
}

struct Options {
    quick: bool,
    filter: Option<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        quick: false,
        filter: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--filter" => {
                o.filter = Some(it.next().ok_or("--filter needs a workload name")?.clone());
            }
            s if s.starts_with("--filter=") => o.filter = Some(s["--filter=".len()..].into()),
            "-h" | "--help" => {
                let names: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
                let limits: Vec<&str> = LIMITS.iter().map(|l| l.0).collect();
                println!(
                    concat!(
                        "usage: cargo xtask bench [--quick] [--filter NAME]\n\n",
                        "  --quick        every workload briefly (smoke run)\n",
                        "  --filter NAME  only the workloads (and limits) whose name contains NAME\n\n",
                        "workloads: {}\nlimits: {}\n\nSee docs/benchmarks.md."
                    ),
                    names.join(", "),
                    limits.join(", ")
                );
                return Ok(None);
            }
            other => return Err(format!("bench: unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Some(o))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

/// Runs the suite.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    let root = root();
    let out_dir = target_dir(&root).join("bench");
    let crit_home = out_dir.join("criterion");
    let specs: Vec<&Spec> = SPECS
        .iter()
        .filter(|s| {
            opts.filter
                .as_ref()
                .is_none_or(|f| s.name.contains(f.as_str()))
        })
        .collect();
    let limit_filter: Vec<&(&str, &str, Unit)> = LIMITS
        .iter()
        .filter(|l| match &opts.filter {
            None => true,
            Some(f) => {
                l.0.contains(f.as_str()) || specs.iter().any(|s| s.limit.iter().any(|x| x.0 == l.0))
            }
        })
        .collect();
    if specs.is_empty() && limit_filter.is_empty() {
        return Err(format!(
            "--filter {:?} matches no workload (try --help for the names)",
            opts.filter.unwrap_or_default()
        ));
    }
    let started = Instant::now();
    let load_start = loadavg();
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let _lock = RunLock::take(&out_dir.join("run.lock"))?;
    if crit_home.exists() {
        std::fs::remove_dir_all(&crit_home)
            .map_err(|e| format!("remove stale {}: {e}", crit_home.display()))?;
    }

    eprintln!("bench: building mp-benches (release profile)...");
    let exe = build(&root)?;
    let listed = list(&exe, &root)?;

    // Criterion, one group at a time.
    let mut groups: Vec<&str> = limit_filter.iter().map(|l| l.0).collect();
    groups.extend(specs.iter().map(|s| s.name));
    let mut failures = BTreeMap::new();
    let log_path = out_dir.join("criterion.log");
    let mut log = String::new();
    for (i, g) in groups.iter().enumerate() {
        if !listed.iter().any(|id| id.starts_with(&format!("{g}/"))) {
            eprintln!(
                "bench: [{}/{}] {g}: nothing built to measure",
                i + 1,
                groups.len()
            );
            continue;
        }
        let t = Instant::now();
        eprint!("bench: [{}/{}] {g} ... ", i + 1, groups.len());
        let (ok, out) = run_group(&exe, &root, &crit_home, g, opts.quick)?;
        let _ = writeln!(log, "===== {g}\n{out}");
        std::fs::write(&log_path, &log)
            .map_err(|e| format!("write {}: {e}", log_path.display()))?;
        if ok {
            eprintln!("{:.1} s", t.elapsed().as_secs_f64());
        } else {
            eprintln!(
                "FAILED after {:.1} s (see {})",
                t.elapsed().as_secs_f64(),
                log_path.display()
            );
            failures.insert(g.to_string(), last_lines(&out, 8));
        }
    }

    // CPython, same workloads and placements.
    let python = python_version();
    let mut cpython: BTreeMap<(String, String), Result<f64, String>> = BTreeMap::new();
    for (i, s) in specs.iter().enumerate() {
        for &p in placements(s.single) {
            eprint!(
                "bench: CPython [{}/{}] {} {p} ... ",
                i + 1,
                specs.len(),
                s.name
            );
            let t = Instant::now();
            let r = match &python {
                Some(_) => run_python(&root, s.name, p, opts.quick),
                None => Err("python3 not found".into()),
            };
            match &r {
                Ok(v) => eprintln!(
                    "{} ({:.1} s)",
                    fmt_value(*v, s.unit),
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("FAILED: {e}"),
            }
            cpython.insert((s.name.to_string(), p.to_string()), r);
        }
    }

    // Assemble.
    let crit = Criterion { home: &crit_home };
    let mut rows = Vec::new();
    for s in &specs {
        for &p in placements(s.single) {
            rows.push(row(s, p, &crit, &listed, &cpython));
        }
    }
    let mut limits = Vec::new();
    for &&(g, label, unit) in &limit_filter {
        for &p in placements(limit_single(g)) {
            let v = limit_value(&crit, g, p, unit);
            limits.push(LimitRow {
                group: g,
                label,
                unit,
                placement: p,
                value: v,
            });
        }
    }
    let mut env = environment(&root, python.as_deref(), opts.quick, opts.filter.as_deref());
    env.load_start = load_start;
    let md = markdown(&env, &rows, &limits);
    println!("\n{md}");
    std::fs::write(out_dir.join("report.md"), &md).map_err(|e| format!("write report.md: {e}"))?;
    std::fs::write(out_dir.join("report.json"), json(&env, &rows, &limits))
        .map_err(|e| format!("write report.json: {e}"))?;
    std::fs::write(out_dir.join("chart.svg"), svg(&env, &rows))
        .map_err(|e| format!("write chart.svg: {e}"))?;
    eprintln!(
        "bench: done in {:.0} s; wrote {}/report.md, report.json, chart.svg",
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    if !failures.is_empty() {
        for (g, tail) in &failures {
            eprintln!("bench: {g} failed:\n{tail}");
        }
        return Err(format!("{} benchmark group(s) failed", failures.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------- running things

/// One `cargo xtask bench` at a time per target directory: a second run would delete the
/// first one's results and, worse, compete with it for the CPUs. The lock is a file holding
/// the pid of the run; a lock left by a run that died is taken over.
struct RunLock(PathBuf);

impl RunLock {
    fn take(path: &Path) -> Result<RunLock, String> {
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

fn build(root: &Path) -> Result<PathBuf, String> {
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

fn list(exe: &Path, root: &Path) -> Result<BTreeSet<String>, String> {
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
fn run_with_timeout(mut cmd: Command, limit: Duration) -> Result<(bool, String), String> {
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

fn run_group(
    exe: &Path,
    root: &Path,
    home: &Path,
    group: &str,
    quick: bool,
) -> Result<(bool, String), String> {
    let mut cmd = Command::new(exe);
    cmd.current_dir(root.join("benches"))
        .env("CRITERION_HOME", home)
        .env("MP_BENCH_QUICK", if quick { "1" } else { "0" })
        .args(["--bench", "--noplot"]);
    if quick {
        cmd.args([
            "--warm-up-time",
            "0.2",
            "--measurement-time",
            "0.5",
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
    cmd.arg(format!("^{group}/"));
    run_with_timeout(cmd, Duration::from_secs(if quick { 120 } else { 900 }))
}

fn python_version() -> Option<String> {
    let out = Command::new("python3").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_python(root: &Path, name: &str, placement: &str, quick: bool) -> Result<f64, String> {
    let dir = root.join("benches").join("python");
    let mut cmd = Command::new("python3");
    cmd.current_dir(&dir)
        .arg(format!("{name}.py"))
        .args(["--placement", placement]);
    if quick {
        cmd.arg("--quick");
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

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------- criterion results

struct Criterion<'a> {
    home: &'a Path,
}

impl Criterion<'_> {
    /// Median time per iteration (ns) and the throughput per iteration (elements or bytes).
    fn get(&self, id: &str) -> Option<(f64, Option<f64>)> {
        let dir = self.home.join(id).join("new");
        let est = std::fs::read_to_string(dir.join("estimates.json")).ok()?;
        let median = &est[est.find("\"median\"")?..];
        let ns = json_number_field(median, "point_estimate")?;
        let bench = std::fs::read_to_string(dir.join("benchmark.json")).unwrap_or_default();
        let per_iter = ["\"Elements\":", "\"Bytes\":"].iter().find_map(|k| {
            let at = bench.find(k)? + k.len();
            leading_number(&bench[at..])
        });
        (ns > 0.0).then_some((ns, per_iter))
    }

    /// The value of `id` in `unit`.
    fn value(&self, id: &str, unit: Unit) -> Option<f64> {
        let (ns, per) = self.get(id)?;
        Some(match unit {
            Unit::Ns => ns,
            Unit::Us => ns / 1e3,
            Unit::Msgs | Unit::Items | Unit::Ops => per.unwrap_or(1.0) * 1e9 / ns,
            Unit::GBps => per.unwrap_or(0.0) / ns,
            Unit::Speedup => return None,
        })
    }

    /// time(first) / time(second).
    fn speedup(&self, one: &str, two: &str) -> Option<f64> {
        Some(self.get(one)?.0 / self.get(two)?.0)
    }
}

fn limit_value(c: &Criterion<'_>, group: &str, placement: &str, unit: Unit) -> Option<f64> {
    if unit == Unit::Speedup {
        c.speedup(
            &format!("{group}/1p/{placement}"),
            &format!("{group}/2p/{placement}"),
        )
    } else {
        c.value(&format!("{group}/bare/{placement}"), unit)
    }
}

fn json_string_field(s: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = s.find(&pat)? + pat.len();
    let mut out = String::new();
    let mut chars = s[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

fn json_number_field(s: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let at = s.find(&pat)? + pat.len();
    leading_number(&s[at..])
}

fn leading_number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(s.len());
    s[..end].parse().ok()
}

// ---------------------------------------------------------------- rows

/// mp's cell: a number, or why there is none.
enum MpCell {
    Value(f64),
    NotBuilt(&'static str),
    Failed,
}

struct Row {
    spec: &'static Spec,
    placement: &'static str,
    mp: MpCell,
    cpython: Result<f64, String>,
    /// The best of the workload's limits in this placement: value, criterion group, label.
    limit: Option<(f64, &'static str, &'static str)>,
    peers: Vec<(&'static str, Option<f64>)>,
}

impl Row {
    fn mp(&self) -> Option<f64> {
        match self.mp {
            MpCell::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Performance ratio of `a` over `b`: above 1 means `a` is better (faster or more per second).
    fn perf(&self, a: Option<f64>, b: Option<f64>) -> Option<f64> {
        let (a, b) = (a?, b?);
        if a <= 0.0 || b <= 0.0 {
            return None;
        }
        Some(if self.spec.unit.higher_is_better() {
            a / b
        } else {
            b / a
        })
    }

    fn vs_cpython(&self) -> Option<f64> {
        self.perf(self.mp(), self.cpython.as_ref().ok().copied())
    }

    fn vs_limit(&self) -> Option<f64> {
        self.perf(self.mp(), self.limit.map(|l| l.0))
    }

    fn cpython_vs_limit(&self) -> Option<f64> {
        self.perf(self.cpython.as_ref().ok().copied(), self.limit.map(|l| l.0))
    }
}

struct LimitRow {
    group: &'static str,
    label: &'static str,
    unit: Unit,
    placement: &'static str,
    value: Option<f64>,
}

fn row(
    spec: &'static Spec,
    placement: &'static str,
    crit: &Criterion<'_>,
    listed: &BTreeSet<String>,
    cpython: &BTreeMap<(String, String), Result<f64, String>>,
) -> Row {
    let (mp_id, mp_value) = if spec.unit == Unit::Speedup {
        let one = format!("{}/mp_1w/{placement}", spec.name);
        let two = format!("{}/mp_2w/{placement}", spec.name);
        let v = crit.speedup(&one, &two);
        (one, v)
    } else {
        let id = format!("{}/mp/{placement}", spec.name);
        let v = crit.value(&id, spec.unit);
        (id, v)
    };
    let mp = match mp_value {
        Some(v) => MpCell::Value(v),
        None if !listed.contains(&mp_id) => MpCell::NotBuilt(spec.krate),
        None => MpCell::Failed,
    };
    let mut limit: Option<(f64, &'static str, &'static str)> = None;
    for &(g, label) in spec.limit {
        let p = if limit_single(g) { "single" } else { placement };
        let unit = LIMITS.iter().find(|l| l.0 == g).map_or(spec.unit, |l| l.2);
        if let Some(v) = limit_value(crit, g, p, unit).map(|v| convert(v, unit, spec.unit)) {
            let better = match limit {
                None => true,
                Some((old, _, _)) if spec.unit.higher_is_better() => v > old,
                Some((old, _, _)) => v < old,
            };
            if better {
                limit = Some((v, g, label));
            }
        }
    }
    let peers = spec
        .peers
        .iter()
        .map(|&p| {
            (
                p,
                crit.value(&format!("{}/{p}/{placement}", spec.name), spec.unit),
            )
        })
        .collect();
    Row {
        spec,
        placement,
        mp,
        cpython: cpython
            .get(&(spec.name.to_string(), placement.to_string()))
            .cloned()
            .unwrap_or_else(|| Err("not run".into())),
        limit,
        peers,
    }
}

/// Converts a limit measured in `from` into the workload's unit (only time units differ).
fn convert(v: f64, from: Unit, to: Unit) -> f64 {
    match (from, to) {
        (Unit::Ns, Unit::Us) => v / 1e3,
        (Unit::Us, Unit::Ns) => v * 1e3,
        _ => v,
    }
}

// ---------------------------------------------------------------- formatting

fn sig3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = 3 - 1 - v.abs().log10().floor() as i32;
    if digits > 0 {
        format!("{:.*}", digits as usize, v)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Msgs | Unit::Items | Unit::Ops => {
            if v >= 1e9 {
                format!("{}G", sig3(v / 1e9))
            } else if v >= 1e6 {
                format!("{}M", sig3(v / 1e6))
            } else if v >= 1e3 {
                format!("{}k", sig3(v / 1e3))
            } else {
                sig3(v)
            }
        }
        Unit::Speedup => format!("{}×", sig3(v)),
        _ => sig3(v),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{}×", sig3(r)))
}

fn fmt_opt(v: Option<f64>, unit: Unit) -> String {
    v.map_or_else(|| "—".into(), |v| fmt_value(v, unit))
}

fn mp_text(r: &Row) -> String {
    match r.mp {
        MpCell::Value(v) => fmt_value(v, r.spec.unit),
        MpCell::NotBuilt(k) => format!("not built ({k})"),
        MpCell::Failed => "FAILED".into(),
    }
}

fn cpython_text(r: &Row) -> String {
    match &r.cpython {
        Ok(v) => fmt_value(*v, r.spec.unit),
        Err(_) => "FAILED".into(),
    }
}

fn limit_text(r: &Row) -> String {
    match r.limit {
        Some((v, _, label)) => format!("{} ({label})", fmt_value(v, r.spec.unit)),
        None if !r.spec.limit.is_empty() => "not measured".into(),
        None => "—".into(),
    }
}

fn peers_text(r: &Row) -> String {
    if r.peers.is_empty() {
        return "—".into();
    }
    r.peers
        .iter()
        .map(|(p, v)| format!("{p} {}", fmt_opt(*v, r.spec.unit)))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Env {
    host: String,
    cpu: String,
    cpus: usize,
    kernel: String,
    rustc: String,
    python: String,
    git_rev: String,
    date: String,
    quick: bool,
    filter: Option<String>,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run began and when it ended: other work on
    /// the machine during the run shows here.
    load_start: String,
    load_end: String,
}

fn cmd_line(prog: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn environment(root: &Path, python: Option<&str>, quick: bool, filter: Option<&str>) -> Env {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .ok()
    };
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string());
    let git_rev = match cmd_line("git", &["rev-parse", "--short=12", "HEAD"], root) {
        Some(rev) => {
            let dirty = cmd_line(
                "git",
                &["status", "--porcelain", "--untracked-files=no"],
                root,
            )
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}+dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    };
    Env {
        host: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        rustc: cmd_line("rustc", &["-V"], root).unwrap_or_else(|| "unknown".into()),
        python: python.unwrap_or("python3 not found").to_string(),
        git_rev,
        date: utc_now(),
        quick,
        filter: filter.map(str::to_string),
        load_start: String::new(),
        load_end: loadavg(),
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, H. Hinnant).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn markdown(env: &Env, rows: &[Row], limits: &[LimitRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mp benchmarks: {} ({} CPUs), Linux {}, {}, {}, git {}, {}{}; load average {} at the start, {} at the end\n",
        env.cpu,
        env.cpus,
        env.kernel,
        env.rustc,
        env.python,
        env.git_rev,
        env.date,
        if env.quick {
            ", --quick (smoke run: few samples, small batches)"
        } else {
            ""
        },
        env.load_start,
        env.load_end
    );
    let header = [
        "workload",
        "placement",
        "unit",
        "mp",
        "CPython",
        "mp/CPython",
        "limit",
        "mp/limit",
        "peers",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        table.push(vec![
            r.spec.name.to_string(),
            r.placement.to_string(),
            r.spec.unit.label().to_string(),
            mp_text(r),
            cpython_text(r),
            fmt_ratio(r.vs_cpython()),
            limit_text(r),
            fmt_ratio(r.vs_limit()),
            peers_text(r),
        ]);
    }
    s.push_str(&md_table(&table));
    s.push_str(
        "\nRatios are performance ratios: above 1× means mp is better (for times: the other's \
         time / mp's time; for rates: mp's rate / the other's rate). mp/limit is the fraction of \
         the machine's limit that mp reaches. spread: parent on CPU 0, children on CPU 1, 0, ...; \
         packed: everyone on CPU 0.\n",
    );
    if !limits.is_empty() {
        s.push_str("\nMachine limits (same run):\n\n");
        let mut t: Vec<Vec<String>> = vec![["limit", "what", "placement", "value", "unit"]
            .iter()
            .map(|h| h.to_string())
            .collect()];
        for l in limits {
            t.push(vec![
                l.group.to_string(),
                l.label.to_string(),
                l.placement.to_string(),
                fmt_opt(l.value, l.unit),
                l.unit.label().to_string(),
            ]);
        }
        s.push_str(&md_table(&t));
    }
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.cpython.as_ref().err().map(|e| {
                format!(
                    "- CPython {} {}: {}",
                    r.spec.name,
                    r.placement,
                    e.replace('\n', " / ")
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("\nCPython failures:\n\n");
        s.push_str(&failed.join("\n"));
        s.push('\n');
    }
    s
}

fn md_table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        s.push('|');
        for (c, cell) in r.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            let _ = write!(s, " {cell}{} |", " ".repeat(pad));
        }
        s.push('\n');
        if i == 0 {
            s.push('|');
            for w in &width {
                let _ = write!(s, "{}|", "-".repeat(w + 2));
            }
            s.push('\n');
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

fn json(env: &Env, rows: &[Row], limits: &[LimitRow]) -> String {
    let mut s = String::from("{\n");
    let fields = [
        ("host", &env.host),
        ("cpu", &env.cpu),
        ("kernel", &env.kernel),
        ("rustc", &env.rustc),
        ("python", &env.python),
        ("git_rev", &env.git_rev),
        ("date", &env.date),
        ("loadavg_start", &env.load_start),
        ("loadavg_end", &env.load_end),
    ];
    for (k, v) in fields {
        let _ = writeln!(s, "  {}: {},", json_str(k), json_str(v));
    }
    let _ = writeln!(s, "  \"cpus\": {},", env.cpus);
    let _ = writeln!(s, "  \"quick\": {},", env.quick);
    let _ = writeln!(
        s,
        "  \"filter\": {},",
        env.filter
            .as_deref()
            .map_or_else(|| "null".into(), json_str)
    );
    s.push_str("  \"rows\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let status = match r.mp {
            MpCell::Value(_) => "ok".to_string(),
            MpCell::NotBuilt(k) => format!("not built ({k})"),
            MpCell::Failed => "failed".into(),
        };
        let peers = r
            .peers
            .iter()
            .map(|(p, v)| format!("{}: {}", json_str(p), json_num(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            s,
            "    {{\"workload\": {}, \"placement\": {}, \"unit\": {}, \"mp\": {}, \"mp_status\": {}, \
             \"cpython\": {}, \"cpython_error\": {}, \"limit\": {}, \"limit_name\": {}, \
             \"mp_vs_cpython\": {}, \"mp_vs_limit\": {}, \"cpython_vs_limit\": {}, \"peers\": {{{peers}}}}}",
            json_str(r.spec.name),
            json_str(r.placement),
            json_str(r.spec.unit.label()),
            json_num(r.mp()),
            json_str(&status),
            json_num(r.cpython.as_ref().ok().copied()),
            r.cpython.as_ref().err().map_or_else(|| "null".into(), |e| json_str(e)),
            json_num(r.limit.map(|l| l.0)),
            r.limit.map_or_else(|| "null".into(), |(_, g, _)| json_str(g)),
            json_num(r.vs_cpython()),
            json_num(r.vs_limit()),
            json_num(r.cpython_vs_limit()),
        );
        s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ],\n  \"limits\": [\n");
    for (i, l) in limits.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"limit\": {}, \"what\": {}, \"placement\": {}, \"unit\": {}, \"value\": {}}}",
            json_str(l.group),
            json_str(l.label),
            json_str(l.placement),
            json_str(l.unit.label()),
            json_num(l.value)
        );
        s.push_str(if i + 1 < limits.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

/// A horizontal bar chart of the ratios on a log scale (1/10000 to 1000), one band per
/// workload and placement: mp/CPython, mp/limit and CPython/limit.
fn svg(env: &Env, rows: &[Row]) -> String {
    let (left, width, band, top) = (300.0, 600.0, 42.0, 70.0);
    let height = top + band * rows.len() as f64 + 60.0;
    let x = |r: f64| left + (r.log10().clamp(-4.0, 3.0) + 4.0) / 7.0 * width;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 40.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">mp performance ratios (log scale; right of 1× is better for the first named)</text>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="38">{}</text>"#,
        xml(&format!(
            "{} · {} · git {} · {}{}",
            env.cpu,
            env.rustc,
            env.git_rev,
            env.date,
            if env.quick { " · --quick" } else { "" }
        ))
    );
    let legend = [
        ("#1f77b4", "mp / CPython"),
        ("#ff7f0e", "mp / limit"),
        ("#999999", "CPython / limit"),
    ];
    for (i, (c, l)) in legend.iter().enumerate() {
        let lx = left + i as f64 * 160.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="48" width="12" height="10" fill="{c}"/><text x="{}" y="57">{l}</text>"#,
            lx + 16.0
        );
    }
    for d in -4..=3 {
        let gx = x(10f64.powi(d));
        let (stroke, w) = if d == 0 { ("#000", 1.5) } else { ("#ddd", 1.0) };
        let _ = writeln!(
            s,
            r#"<line x1="{gx}" y1="{top}" x2="{gx}" y2="{}" stroke="{stroke}" stroke-width="{w}"/><text x="{gx}" y="{}" text-anchor="middle">{}</text>"#,
            top + band * rows.len() as f64,
            top + band * rows.len() as f64 + 16.0,
            if d >= 0 {
                format!("{}×", 10f64.powi(d))
            } else {
                format!("1/{}", 10f64.powi(-d))
            }
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + band * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} · {}</text>"#,
            left - 8.0,
            y + band / 2.0 + 4.0,
            xml(r.spec.name),
            r.placement
        );
        let bars = [
            ("#1f77b4", r.vs_cpython()),
            ("#ff7f0e", r.vs_limit()),
            ("#999999", r.cpython_vs_limit()),
        ];
        for (j, (c, v)) in bars.iter().enumerate() {
            let by = y + 6.0 + j as f64 * 10.0;
            if let Some(v) = v {
                let (a, b) = (x(1.0), x(*v));
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{by}" width="{}" height="9" fill="{c}"><title>{}</title></rect>"#,
                    a.min(b),
                    (a - b).abs().max(1.0),
                    sig3(*v)
                );
                let (tx, anchor) = if *v >= 1.0 {
                    (b + 3.0, "start")
                } else {
                    (b - 3.0, "end")
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{tx}" y="{}" font-size="9" text-anchor="{anchor}">{}×</text>"#,
                    by + 8.0,
                    sig3(*v)
                );
            } else if j == 0 {
                let why = match r.mp {
                    MpCell::NotBuilt(k) => format!("mp not built ({k})"),
                    MpCell::Failed => "mp failed".into(),
                    MpCell::Value(_) => "no CPython number".into(),
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" fill="#c00">{}</text>"##,
                    x(1.0) + 6.0,
                    by + 9.0,
                    xml(&why)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_has_its_cpython_script() {
        let dir = root().join("benches").join("python");
        for s in SPECS {
            assert!(dir.join(format!("{}.py", s.name)).is_file(), "{}", s.name);
        }
    }

    #[test]
    fn numbers_and_dates_format() {
        assert_eq!(sig3(1234.4), "1234");
        assert_eq!(sig3(0.012345), "0.0123");
        assert_eq!(fmt_value(2_500_000.0, Unit::Msgs), "2.50M");
        assert_eq!(leading_number(" 12.5e3,"), Some(12500.0));
        assert_eq!(
            json_number_field(r#"{"a":1,"point_estimate":42.5}"#, "point_estimate"),
            Some(42.5)
        );
        assert_eq!(utc_now().len(), 20);
        assert_eq!(json_str("a\"b\n"), r#""a\"b\n""#);
    }
}
