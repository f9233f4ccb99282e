//! `cargo xtask`: the project's own commands, as an ordinary binary (no tools to install).
//!
//! * `cargo xtask ci`: exactly what CI runs (`.ci/run`): rustfmt check, clippy with warnings
//!   denied, and the README's test command.
//! * `cargo xtask bench [--quick] [--filter NAME] [--placement NAME]`: the benchmark suite
//!   against CPython and the machine's limits (see `docs/benchmarks.md`); `xtask busy-loop PID`
//!   is the busy loop of its loaded placement.
//! * `cargo xtask faults [--rounds N | --long] [--seed S] [--filter NAME] [--round R]`: the
//!   fault campaign (see `docs/reliability.md`).
//! * `cargo xtask fuzz [--seconds N] [--target NAME] [--cmin]`: the `cargo fuzz` targets of
//!   `fuzz/`, on nightly (see `docs/reliability.md`, "Fuzzing").

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        // The busy loop of the bench's loaded placement (started by `bench` itself).
        Some("busy-loop") => bench::busy_loop(&args[1..]),
        Some("faults") => faults::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | bench [--quick] [--filter NAME] [--placement NAME] | faults [--rounds N | --long] [--seed S] [--filter NAME] [--round R] | fuzz [--seconds N] [--target NAME] [--cmin]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root, found from this crate's manifest directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` of the workspace.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

/// Runs `.ci/run`, so that `cargo xtask ci` and CI can never drift apart.
fn ci() -> Result<(), String> {
    let status = Command::new("bash")
        .arg(".ci/run")
        .current_dir(project_root())
        .status()
        .map_err(|e| format!("could not run .ci/run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(".ci/run failed: {status}"))
    }
}

/// The benchmark suite lives in `bench/`.
fn bench(args: &[String]) -> Result<(), String> {
    bench::run(args)
}

mod bench;
mod faults;
mod fuzz;
