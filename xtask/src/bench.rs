//! `cargo xtask bench`: being written (issue 8); this file is replaced by the suite.

/// Runs the benchmark suite.
pub(crate) fn run(_args: &[String]) -> Result<(), String> {
    Err("the benchmark suite is not built yet (issue 8)".into())
}
