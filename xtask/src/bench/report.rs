//! The report: one row per workload and placement (mp, CPython, the Rust peers and the
//! machine's limit side by side), the environment it was measured in, and the Markdown and JSON
//! renderings of both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::criterion::{limit_value, Criterion};
use super::loadavg;
use super::specs::{limit_single, Spec, Unit, LIMITS};

/// mp's cell: a number, or why there is none.
pub(super) enum MpCell {
    Value(f64),
    NotBuilt(&'static str),
    Failed,
}

/// One line of the table: a workload in one placement.
pub(super) struct Row {
    pub(super) spec: &'static Spec,
    pub(super) placement: &'static str,
    pub(super) mp: MpCell,
    pub(super) cpython: Result<f64, String>,
    /// The best of the workload's limits in this placement: value, criterion group, label.
    pub(super) limit: Option<(f64, &'static str, &'static str)>,
    pub(super) peers: Vec<(&'static str, Option<f64>)>,
}

impl Row {
    /// mp's number, when there is one.
    pub(super) fn mp(&self) -> Option<f64> {
        match self.mp {
            MpCell::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Performance ratio of `a` over `b`: above 1 means `a` is better (faster or more per second).
    pub(super) fn perf(&self, a: Option<f64>, b: Option<f64>) -> Option<f64> {
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

    /// mp against CPython (above 1: mp is better).
    pub(super) fn vs_cpython(&self) -> Option<f64> {
        self.perf(self.mp(), self.cpython.as_ref().ok().copied())
    }

    /// mp against the machine's limit (1 would be the limit itself).
    pub(super) fn vs_limit(&self) -> Option<f64> {
        self.perf(self.mp(), self.limit.map(|l| l.0))
    }

    /// CPython against the machine's limit.
    pub(super) fn cpython_vs_limit(&self) -> Option<f64> {
        self.perf(self.cpython.as_ref().ok().copied(), self.limit.map(|l| l.0))
    }
}

/// One machine limit in one placement, for the limits table.
pub(super) struct LimitRow {
    pub(super) group: &'static str,
    pub(super) label: &'static str,
    pub(super) unit: Unit,
    pub(super) placement: &'static str,
    pub(super) value: Option<f64>,
}

/// Assembles a workload's row from criterion's results and CPython's number.
pub(super) fn row(
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
pub(super) fn convert(v: f64, from: Unit, to: Unit) -> f64 {
    match (from, to) {
        (Unit::Ns, Unit::Us) => v / 1e3,
        (Unit::Us, Unit::Ns) => v * 1e3,
        _ => v,
    }
}

// ---------------------------------------------------------------- formatting

/// Three significant digits (whole numbers from 100 up).
pub(super) fn sig3(v: f64) -> String {
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

/// A value with its unit, as the table prints it (`2.50M`, `31.2 µs`).
pub(super) fn fmt_value(v: f64, unit: Unit) -> String {
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

/// A ratio as `12.3×`, or a dash.
pub(super) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{}×", sig3(r)))
}

/// A value that may be missing: the value with its unit, or a dash.
pub(super) fn fmt_opt(v: Option<f64>, unit: Unit) -> String {
    v.map_or_else(|| "—".into(), |v| fmt_value(v, unit))
}

/// The mp cell: its number, or why there is none.
pub(super) fn mp_text(r: &Row) -> String {
    match r.mp {
        MpCell::Value(v) => fmt_value(v, r.spec.unit),
        MpCell::NotBuilt(k) => format!("not built ({k})"),
        MpCell::Failed => "FAILED".into(),
    }
}

/// The CPython cell: its number, or why there is none.
pub(super) fn cpython_text(r: &Row) -> String {
    match &r.cpython {
        Ok(v) => fmt_value(*v, r.spec.unit),
        Err(_) => "FAILED".into(),
    }
}

/// The limit cell: the best limit's value and label.
pub(super) fn limit_text(r: &Row) -> String {
    match r.limit {
        Some((v, _, label)) => format!("{} ({label})", fmt_value(v, r.spec.unit)),
        None if !r.spec.limit.is_empty() => "not measured".into(),
        None => "—".into(),
    }
}

/// The Rust peers cell: each peer with its number.
pub(super) fn peers_text(r: &Row) -> String {
    if r.peers.is_empty() {
        return "—".into();
    }
    r.peers
        .iter()
        .map(|(p, v)| format!("{p} {}", fmt_opt(*v, r.spec.unit)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The machine and the run, printed above the table and stored in the JSON.
pub(super) struct Env {
    pub(super) host: String,
    pub(super) cpu: String,
    pub(super) cpus: usize,
    pub(super) kernel: String,
    pub(super) rustc: String,
    pub(super) python: String,
    pub(super) git_rev: String,
    pub(super) date: String,
    pub(super) quick: bool,
    pub(super) filter: Option<String>,
    /// Only this placement was run (`--placement NAME`).
    pub(super) placement: Option<String>,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run began and when it ended: other work on
    /// the machine during the run shows here.
    pub(super) load_start: String,
    pub(super) load_end: String,
}

/// The first line a command prints, or `None` when it fails.
pub(super) fn cmd_line(prog: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads the machine's facts for the report's header.
pub(super) fn environment(
    root: &Path,
    python: Option<&str>,
    quick: bool,
    filter: Option<&str>,
) -> Env {
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
        placement: None,
        load_start: String::new(),
        load_end: loadavg(),
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, H. Hinnant).
pub(super) fn utc_now() -> String {
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

/// The report as Markdown: the header, the table, the limits and the notes.
pub(super) fn markdown(env: &Env, rows: &[Row], limits: &[LimitRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mp benchmarks: {} ({} CPUs), Linux {}, {}, {}, git {}, {}{}{}; load average {} at the start, {} at the end\n",
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
        env.placement
            .as_deref()
            .map_or_else(String::new, |p| format!(", --placement {p}")),
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
         packed: everyone on CPU 0; loaded: pinned as spread, beside one CPU-bound process \
         pinned on each CPU (started before the bench process or CPython script, killed after \
         it): every process of the workload shares its core with a hog.\n",
    );
    if rows.iter().any(|r| r.spec.krate == "mp-redis") {
        s.push_str(
            "\nredis_pool_map: mp is mp-redis's cluster Pool on a redis-server of this run \
             (loopback, persistence off, 2 worker processes); CPython is RQ (2 `rq worker`s, \
             SimpleWorker) on the same server, so mp/CPython is mp/RQ; the `local` peer is mp's \
             local Pool on the same items. \"not built\" there means no redis-server on PATH.\n",
        );
    }
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

/// A Markdown table with columns padded to their widest cell.
pub(super) fn md_table(rows: &[Vec<String>]) -> String {
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

/// A JSON string literal.
pub(super) fn json_str(s: &str) -> String {
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

/// A JSON number, or `null`.
pub(super) fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

/// The report as JSON (`target/bench/report.json`).
pub(super) fn json(env: &Env, rows: &[Row], limits: &[LimitRow]) -> String {
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
        "  \"placement\": {},",
        env.placement
            .as_deref()
            .map_or_else(|| "null".into(), json_str)
    );
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
