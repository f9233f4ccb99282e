//! `cargo xtask fuzz [--seconds N] [--target NAME] [--cmin] [--list]`: runs the `cargo fuzz`
//! targets of `fuzz/` (libFuzzer, on the nightly toolchain), one after the other, each for N
//! seconds (default 60), over its corpus in `fuzz/corpus/<target>/` (which it grows with what it
//! finds), and prints a table: target | executions | seconds | corpus files | findings.
//!
//! Installs `cargo-fuzz` (`cargo install cargo-fuzz`) when it is missing. The full output of
//! each run goes to `target/fuzz/<target>.log`; a crash is saved by libFuzzer under
//! `fuzz/artifacts/<target>/`, named in the table, and makes the command fail. `--cmin`
//! minimizes each corpus afterwards (`cargo fuzz cmin` with a set cover over edges, which
//! keeps the corpus small enough for the repository), keeping the files people named
//! (`seed-NN`, `regression-...`). The corpus replay on stable is an
//! ordinary test (`tests/fuzz_corpus.rs` of mp-core, mp-pipe, mp-queue and mp-manager). See
//! `docs/reliability.md`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{project_root, target_dir};

/// The longest input libFuzzer makes (the corpus must stay small: see docs/reliability.md).
const MAX_LEN: u32 = 4096;

/// A `cargo +nightly` command that does not inherit the stable toolchain of `cargo xtask`.
fn nightly_cargo(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(root);
    for v in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
    ] {
        c.env_remove(v);
    }
    c
}

/// One target's run.
struct Outcome {
    target: String,
    executions: Option<u64>,
    seconds: f64,
    corpus: usize,
    finding: Option<String>,
}

/// Runs the fuzzers.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds: u64 = 60;
    let mut only: Vec<String> = Vec::new();
    let mut cmin = false;
    let mut list = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .ok_or("--seconds needs a number")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--target" => only.push(it.next().ok_or("--target needs a name")?.clone()),
            "--cmin" => cmin = true,
            "--list" => list = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask fuzz [--seconds N] [--target NAME]... [--cmin] [--list]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let root = project_root();
    let targets = targets(&root)?;
    if list {
        for t in &targets {
            println!("{t}");
        }
        return Ok(());
    }
    for t in &only {
        if !targets.contains(t) {
            return Err(format!(
                "no fuzz target {t:?} (targets: {})",
                targets.join(", ")
            ));
        }
    }
    let chosen: Vec<String> = if only.is_empty() { targets } else { only };
    ensure_cargo_fuzz(&root)?;
    let logs = target_dir(&root).join("fuzz");
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let mut outcomes = Vec::new();
    for t in &chosen {
        let o = run_one(&root, &logs, t, seconds)?;
        if cmin && o.finding.is_none() {
            eprintln!("fuzz: minimizing the corpus of {t}...");
            let dir = root.join("fuzz/corpus").join(t);
            let named = named_files(&dir);
            let status = nightly_cargo(&root)
                .args(["fuzz", "cmin", "--target-dir"])
                .arg(logs.join("build"))
                .arg(t)
                // A set cover over edges (not hit counts) keeps the corpus small.
                .args(["--", "-set_cover_merge=1", "-use_counters=0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("cargo fuzz cmin: {e}"))?;
            if !status.success() {
                return Err(format!("cargo fuzz cmin {t} failed: {status}"));
            }
            // The seeds and the regression inputs stay, whatever their coverage.
            for (name, bytes) in named {
                std::fs::write(dir.join(&name), bytes)
                    .map_err(|e| format!("restore {name}: {e}"))?;
            }
        }
        outcomes.push(o);
    }
    println!("| target | executions | seconds | corpus files | findings |");
    println!("|---|---:|---:|---:|---|");
    for o in &outcomes {
        let corpus = count_files(&root.join("fuzz/corpus").join(&o.target)).unwrap_or(o.corpus);
        println!(
            "| {} | {} | {:.0} | {} | {} |",
            o.target,
            o.executions.map_or("?".into(), |n| n.to_string()),
            o.seconds,
            corpus,
            o.finding.as_deref().unwrap_or("none")
        );
    }
    let found = outcomes.iter().filter(|o| o.finding.is_some()).count();
    if found > 0 {
        return Err(format!(
            "{found} target(s) crashed: fix the crate, add a regression test, and put the input in the corpus"
        ));
    }
    Ok(())
}

/// The targets: the files of `fuzz/fuzz_targets/`.
fn targets(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The files of a corpus that people named (`seed-NN`, `regression-...`), not libFuzzer (which
/// names them by the SHA-1 of their bytes), with their bytes.
fn named_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hashed = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if hashed {
                return None;
            }
            Some((name, std::fs::read(e.path()).ok()?))
        })
        .collect()
}

fn count_files(dir: &Path) -> Option<usize> {
    Some(std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).count())
}

/// Installs cargo-fuzz when `cargo +nightly fuzz` does not run.
fn ensure_cargo_fuzz(root: &Path) -> Result<(), String> {
    let ok = nightly_cargo(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)...");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map_err(|e| format!("cargo install cargo-fuzz: {e}"))?;
    if !status.success() {
        return Err("cargo install cargo-fuzz failed".into());
    }
    Ok(())
}

/// Runs one target for `seconds`, logging to `logs/<target>.log`.
fn run_one(root: &Path, logs: &Path, target: &str, seconds: u64) -> Result<Outcome, String> {
    let corpus_dir = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus_dir)
        .map_err(|e| format!("create {}: {e}", corpus_dir.display()))?;
    let before = count_files(&corpus_dir).unwrap_or(0);
    let log_path = logs.join(format!("{target}.log"));
    let mut log = std::fs::File::create(&log_path)
        .map_err(|e| format!("create {}: {e}", log_path.display()))?;
    eprintln!(
        "fuzz: {target} for {seconds} s (corpus: {before} files; log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let mut child = nightly_cargo(root)
        .args(["fuzz", "run", "--target-dir"])
        .arg(logs.join("build"))
        .arg(target)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo fuzz run: {e}"))?;
    // libFuzzer reports on stderr; cargo's build output is there too. Everything goes to the
    // log; the lines that matter are echoed.
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout {
            for line in BufReader::new(o).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
        }
        s
    });
    let mut executions = None;
    let mut artifact = None;
    let mut fuzzing_started = None;
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if fuzzing_started.is_none() && line.starts_with("INFO: Seed:") {
                fuzzing_started = Some(Instant::now());
            }
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse().ok();
            }
            if let Some(p) = line.split("Test unit written to ").nth(1) {
                artifact = Some(p.trim().to_owned());
            }
            let loud = [
                "ERROR",
                "panicked",
                "SUMMARY",
                "Test unit written",
                "DONE",
                "error: ",
            ];
            if loud.iter().any(|w| line.contains(w)) {
                eprintln!("  {line}");
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo fuzz run: {e}"))?;
    let _ = write!(log, "{}", out_thread.join().unwrap_or_default());
    let seconds_run = fuzzing_started.unwrap_or(started).elapsed().as_secs_f64();
    let finding = if status.success() {
        None
    } else {
        Some(match artifact {
            Some(a) => format!("crash: {a}"),
            None => format!("failed ({status}): see {}", log_path.display()),
        })
    };
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        seconds: seconds_run,
        corpus: count_files(&corpus_dir).unwrap_or(before),
        finding,
    })
}
