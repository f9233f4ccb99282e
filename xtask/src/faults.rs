//! `cargo xtask faults [--rounds N] [--long] [--seed S] [--filter NAME] [--round R]`: the fault
//! campaign (the `mp-faults` crate), in the release profile.
//!
//! Writes `target/faults/report.json` and `report.md`, and the table of the run into
//! `docs/reliability.md` (between its `faults:begin` and `faults:end` markers). Fails when any
//! scenario had a finding; each finding printed names the command line that replays it.

use std::path::Path;
use std::process::Command;

use crate::{project_root, target_dir};

/// The rounds per scenario of `--long`.
const LONG_ROUNDS: u64 = 2_000;
/// The rounds per scenario by default (the short campaign of CI).
const SHORT_ROUNDS: u64 = 100;

/// Runs the campaign.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut rounds = SHORT_ROUNDS;
    let mut pass: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--long" => rounds = LONG_ROUNDS,
            "--rounds" => {
                rounds = it
                    .next()
                    .ok_or("--rounds needs a number")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?
            }
            "--seed" | "--filter" | "--round" => {
                pass.push(a.clone());
                pass.push(it.next().ok_or(format!("{a} needs a value"))?.clone());
            }
            "--list" => pass.push(a.clone()),
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask faults [--rounds N | --long] [--seed S] [--filter NAME] \
                     [--round R] [--list]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let root = project_root();
    let out = target_dir(&root).join("faults");
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    eprintln!("faults: building mp-faults (release profile)...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "mp-faults"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("building mp-faults failed".into());
    }
    let exe = target_dir(&root).join("release").join("mp-faults");
    let json = out.join("report.json");
    let started = std::time::Instant::now();
    let output = Command::new(&exe)
        .arg("--rounds")
        .arg(rounds.to_string())
        .arg("--json")
        .arg(&json)
        .args(&pass)
        .current_dir(&root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("run {}: {e}", exe.display()))?;
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{table}");
    if pass.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let secs = started.elapsed().as_secs_f64();
    std::fs::write(out.join("report.md"), &table).map_err(|e| format!("write report.md: {e}"))?;
    if pass.is_empty() {
        write_docs(&root, &table, rounds, secs)?;
    }
    match output.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err("the campaign had findings (see above)".into()),
        Some(3) => Err("a round hung and the watchdog ended the campaign (see above)".into()),
        _ => Err(format!("mp-faults ended with {}", output.status)),
    }
}

/// Puts the table of a whole campaign (no filter, no seed of its own) into
/// docs/reliability.md, between the markers.
fn write_docs(root: &Path, table: &str, rounds: u64, secs: f64) -> Result<(), String> {
    let path = root.join("docs").join("reliability.md");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let (begin, end) = ("<!-- faults:begin -->", "<!-- faults:end -->");
    let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else {
        return Ok(());
    };
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let body = format!(
        "{begin}\nLast whole campaign: {rounds} rounds per scenario, seed 1, {secs:.0} s, {when}, \
         git {rev}.\n\n{table}{end}"
    );
    let new = format!("{}{}{}", &doc[..b], body, &doc[e + end.len()..]);
    std::fs::write(&path, new).map_err(|e| format!("write {}: {e}", path.display()))
}
