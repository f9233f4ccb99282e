//! `cargo xtask bench [--quick] [--filter NAME] [--placement NAME]`: mp against CPython, the
//! Rust peers and the machine's limits, in one run, on this machine.
//!
//! 1. Builds the criterion bench `mp-benches/benches/suite.rs` and lists its benchmark ids
//!    (`<workload>/<implementation>/<placement>`); a workload without an `mp` id is reported as
//!    "not built".
//! 2. Runs it per criterion group (each run under a watchdog), with the results in
//!    `target/bench/criterion/`: one process for the placements spread, packed (or single),
//!    another for loaded, beside one busy loop pinned on each CPU ([`run::BusyLoops`]).
//! 3. Runs `benches/python/<workload>.py` with the machine's `python3`, in the same placements
//!    (loaded: beside the same busy loops).
//! 4. Prints the table, writes `target/bench/report.json`, `report.md` and `chart.svg`.
//!
//! Only the standard library is used here: the report's JSON and SVG are written by hand, and
//! criterion's `estimates.json` is read with a tiny field extractor.

mod chart;
mod criterion;
mod report;
mod run;
mod specs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use chart::svg;
use criterion::{limit_value, Criterion};
use report::{environment, fmt_value, json, markdown, row, LimitRow};
pub(crate) use run::busy_loop;
use run::{build, last_lines, list, python_version, run_group, run_python, BusyLoops, RunLock};
use specs::{limit_single, placements, Spec, Unit, LIMITS, LOADED, PLACEMENTS, SPECS};

use crate::{project_root, target_dir};

/// The command line of `cargo xtask bench`.
struct Options {
    quick: bool,
    filter: Option<String>,
    /// Only this placement (`--placement NAME`).
    placement: Option<String>,
}

impl Options {
    /// The placements a workload (or limit) measured in `placements(single)` runs in here.
    fn placements(&self, single: bool) -> Vec<&'static str> {
        placements(single)
            .iter()
            .copied()
            .filter(|p| self.placement.as_deref().is_none_or(|w| w == *p))
            .collect()
    }

    /// The placements a limit group runs in: those of `--placement`, and always `single` for a
    /// limit measured only there (the workloads of every placement compare with it). With
    /// `--quick` the limits run loaded only under `--placement loaded`: the heavy ones cost as
    /// much loaded as spread and packed together, and the smoke run should grow by about half.
    fn limit_placements(&self, group: &str) -> Vec<&'static str> {
        if limit_single(group) {
            return vec!["single"];
        }
        let mut ps = self.placements(false);
        if self.quick && self.placement.as_deref() != Some(LOADED) {
            ps.retain(|&p| p != LOADED);
        }
        ps
    }
}

/// `/proc/loadavg` as it reads now (empty where there is none).
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The usage text of `--help`.
fn usage() -> String {
    let names: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
    let limits: Vec<&str> = LIMITS.iter().map(|l| l.0).collect();
    format!(
        concat!(
            "usage: cargo xtask bench [--quick] [--filter NAME] [--placement NAME]\n\n",
            "  --quick           every workload briefly (smoke run)\n",
            "  --filter NAME     only the workloads (and limits) whose name contains NAME\n",
            "  --placement NAME  only that placement: {} (loaded: pinned as spread, beside\n",
            "                    one CPU-bound process pinned on each core)\n\n",
            "workloads: {}\nlimits: {}\n\nSee docs/benchmarks.md."
        ),
        PLACEMENTS.join(", "),
        names.join(", "),
        limits.join(", ")
    )
}

/// Parses the arguments; `None` when `--help` was asked for (and printed).
fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        quick: false,
        filter: None,
        placement: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--load" => {
                return Err(
                    "--load is gone: every run measures the loaded placement beside \
                            spread and packed (--placement loaded runs only it)"
                        .into(),
                )
            }
            "--filter" => {
                o.filter = Some(it.next().ok_or("--filter needs a workload name")?.clone());
            }
            s if s.starts_with("--filter=") => o.filter = Some(s["--filter=".len()..].into()),
            "--placement" => {
                o.placement = Some(it.next().ok_or("--placement needs a name")?.clone());
            }
            s if s.starts_with("--placement=") => {
                o.placement = Some(s["--placement=".len()..].into());
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(None);
            }
            other => return Err(format!("bench: unknown argument {other:?} (try --help)")),
        }
    }
    if let Some(p) = &o.placement {
        if !PLACEMENTS.contains(&p.as_str()) {
            return Err(format!(
                "--placement {p:?}: no such placement ({})",
                PLACEMENTS.join(", ")
            ));
        }
    }
    Ok(Some(o))
}

/// The workloads and limit groups that `--filter` and `--placement` select.
fn select(opts: &Options) -> Result<(Vec<&'static Spec>, Vec<&'static LimitSpec>), String> {
    let specs: Vec<&Spec> = SPECS
        .iter()
        .filter(|s| {
            opts.filter
                .as_ref()
                .is_none_or(|f| s.name.contains(f.as_str()))
        })
        .filter(|s| !opts.placements(s.single).is_empty())
        .collect();
    let limits: Vec<&LimitSpec> = LIMITS
        .iter()
        .filter(|l| match &opts.filter {
            None => true,
            Some(f) => {
                l.0.contains(f.as_str()) || specs.iter().any(|s| s.limit.iter().any(|x| x.0 == l.0))
            }
        })
        .filter(|l| opts.placement.is_none() || !opts.limit_placements(l.0).is_empty())
        .collect();
    if specs.is_empty() && limits.is_empty() {
        return Err(format!(
            "--filter {:?} --placement {:?} matches no workload (try --help for the names)",
            opts.filter.as_deref().unwrap_or_default(),
            opts.placement.as_deref().unwrap_or("any")
        ));
    }
    Ok((specs, limits))
}

/// A machine limit: (criterion group, label, unit).
type LimitSpec = (&'static str, &'static str, Unit);

/// Runs the suite.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    let root = project_root();
    let out_dir = target_dir(&root).join("bench");
    let crit_home = out_dir.join("criterion");
    let (specs, limit_filter) = select(&opts)?;
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
    // One redis-server for mp-redis and RQ alike, before the listing (which registers the
    // workload only when a server is at hand).
    let _redis = start_redis(&specs)?;
    let listed = list(&exe, &root)?;
    let measuring = Instant::now();

    // Criterion, one group at a time, each in the placements selected.
    let mut groups: Vec<(&str, Vec<&str>)> = limit_filter
        .iter()
        .map(|l| (l.0, opts.limit_placements(l.0)))
        .collect();
    groups.extend(specs.iter().map(|s| (s.name, opts.placements(s.single))));
    let failures = run_criterion(&exe, &root, &out_dir, &groups, &listed, opts.quick)?;

    // CPython, same workloads and placements.
    let python = python_version();
    let cpython = run_cpython(&root, &specs, &opts, python.is_some())?;

    // Assemble.
    let crit = Criterion { home: &crit_home };
    let mut rows = Vec::new();
    for s in &specs {
        for p in opts.placements(s.single) {
            rows.push(row(s, p, &crit, &listed, &cpython));
        }
    }
    let limits = limit_rows(&limit_filter, &opts, &crit);
    let mut env = environment(&root, python.as_deref(), opts.quick, opts.filter.as_deref());
    env.load_start = load_start;
    env.placement = opts.placement.clone();
    let md = markdown(&env, &rows, &limits);
    println!("\n{md}");
    std::fs::write(out_dir.join("report.md"), &md).map_err(|e| format!("write report.md: {e}"))?;
    std::fs::write(out_dir.join("report.json"), json(&env, &rows, &limits))
        .map_err(|e| format!("write report.json: {e}"))?;
    std::fs::write(out_dir.join("chart.svg"), svg(&env, &rows))
        .map_err(|e| format!("write chart.svg: {e}"))?;
    eprintln!(
        "bench: done in {:.0} s ({:.0} s measuring); wrote {}/report.md, report.json, chart.svg",
        started.elapsed().as_secs_f64(),
        measuring.elapsed().as_secs_f64(),
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

/// One redis-server for mp-redis and RQ alike when a redis workload is selected, before the
/// listing (which registers the workload only when a server is at hand); `None` without one.
fn start_redis(specs: &[&Spec]) -> Result<Option<run::RedisServer>, String> {
    if !specs.iter().any(|s| s.krate == "mp-redis") {
        return Ok(None);
    }
    let server = run::RedisServer::start()?;
    match &server {
        Some(s) => {
            eprintln!(
                "bench: {} on {} for the redis workloads",
                run::RedisServer::version().unwrap_or_else(|| "redis-server".into()),
                s.url
            );
            std::env::set_var("MP_BENCH_REDIS_URL", &s.url);
        }
        None => eprintln!("bench: no redis-server on PATH: the redis workloads are skipped"),
    }
    Ok(server)
}

/// The machine-limit rows of the selected limit groups, one per placement run.
fn limit_rows(limit_filter: &[&LimitSpec], opts: &Options, crit: &Criterion<'_>) -> Vec<LimitRow> {
    let mut limits = Vec::new();
    for &&(g, label, unit) in limit_filter {
        for p in opts.limit_placements(g) {
            let v = limit_value(crit, g, p, unit);
            limits.push(LimitRow {
                group: g,
                label,
                unit,
                placement: p,
                value: v,
            });
        }
    }
    limits
}

/// Runs each criterion group in turn, logging to `criterion.log`; returns the failed groups
/// with the last lines of their output. A group runs in one bench process for its quiet
/// placements, then in another for `loaded`, beside the busy loops (started just before that
/// process and killed just after it).
fn run_criterion(
    exe: &Path,
    root: &Path,
    out_dir: &Path,
    groups: &[(&str, Vec<&str>)],
    listed: &BTreeSet<String>,
    quick: bool,
) -> Result<BTreeMap<String, String>, String> {
    let crit_home = out_dir.join("criterion");
    let mut failures = BTreeMap::new();
    let log_path = out_dir.join("criterion.log");
    let mut log = String::new();
    for (i, (g, ps)) in groups.iter().enumerate() {
        let built = |p: &str| {
            listed
                .iter()
                .any(|id| id.starts_with(&format!("{g}/")) && id.ends_with(&format!("/{p}")))
        };
        let quiet: Vec<&str> = ps
            .iter()
            .copied()
            .filter(|&p| p != LOADED && built(p))
            .collect();
        let mut runs = Vec::new();
        if !quiet.is_empty() {
            runs.push((quiet, false));
        }
        if ps.contains(&LOADED) && built(LOADED) {
            runs.push((vec![LOADED], true));
        }
        if runs.is_empty() {
            eprintln!(
                "bench: [{}/{}] {g}: nothing built to measure",
                i + 1,
                groups.len()
            );
            continue;
        }
        for (placements, loaded) in runs {
            let t = Instant::now();
            let name = if loaded {
                format!("{g} loaded")
            } else {
                g.to_string()
            };
            eprint!("bench: [{}/{}] {name} ... ", i + 1, groups.len());
            let hogs = if loaded {
                Some(BusyLoops::start()?)
            } else {
                None
            };
            let r = run_group(
                exe,
                root,
                &crit_home,
                (g, &placements),
                hogs.as_ref().map(BusyLoops::len),
                quick,
            );
            drop(hogs);
            let (ok, out) = r?;
            let _ = writeln!(log, "===== {name}\n{out}");
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
                failures.insert(name, last_lines(&out, 8));
            }
        }
    }
    Ok(failures)
}

/// CPython's number for each workload and placement (or why there is none).
type CpythonResults = BTreeMap<(String, String), Result<f64, String>>;

/// Runs the CPython script of each workload in each of its placements (`loaded`: beside the
/// busy loops, started just before the script and killed just after it, as around mp's).
fn run_cpython(
    root: &Path,
    specs: &[&Spec],
    opts: &Options,
    have_python: bool,
) -> Result<CpythonResults, String> {
    let mut cpython = BTreeMap::new();
    for (i, s) in specs.iter().enumerate() {
        for p in opts.placements(s.single) {
            eprint!(
                "bench: CPython [{}/{}] {} {p} ... ",
                i + 1,
                specs.len(),
                s.name
            );
            let t = Instant::now();
            let r = if have_python {
                let hogs = if p == LOADED {
                    Some(BusyLoops::start()?)
                } else {
                    None
                };
                let r = run_python(root, s.name, p, opts.quick);
                drop(hogs);
                r
            } else {
                Err("python3 not found".into())
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
    Ok(cpython)
}

#[cfg(test)]
mod tests {
    use super::criterion::{json_number_field, leading_number};
    use super::report::{json_str, sig3, utc_now};
    use super::*;

    #[test]
    fn every_workload_has_its_cpython_script() {
        let dir = project_root().join("benches").join("python");
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
