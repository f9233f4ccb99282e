//! Helpers for tests that start processes (used by every mp crate's tests).
//!
//! * [`test_support!`](crate::test_support) at the top level of an integration test file
//!   lets the test binary act as a spawn or forkserver child.
//! * [`isolate!`](crate::isolate) at the top of a test re-runs that test alone in a fresh,
//!   single-threaded copy of the test binary, where forking is as safe as in a plain program.

use std::process::Command;
use std::time::{Duration, Instant};

/// The variable that names the test an isolated copy of the test binary must run.
pub const ENV_ISOLATED: &str = "MP_PROCESS_ISOLATED";
const ENV_MARKER: &str = "MP_PROCESS_ISOLATED_MARKER";
static MARKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The body of [`isolate!`](crate::isolate): true when this process is the isolated copy
/// that must run the test body; otherwise runs that copy, waits for it (killing it after
/// `timeout`) and panics unless it passed, then returns false.
///
/// `module_path` is the caller's `module_path!()` and `name` the test function's name.
pub fn isolated(module_path: &str, name: &str, timeout: Duration) -> bool {
    let path = match module_path.split_once("::") {
        Some((_crate, rest)) => format!("{rest}::{name}"),
        None => name.to_string(),
    };
    if std::env::var(ENV_ISOLATED).is_ok_and(|v| v == path) {
        // Tell the parent the body did run (a mistyped filter would run nothing and pass).
        // The marker's directory is private to this uid (see `private_dir`), and the file
        // is created new: nothing planted can redirect the write.
        if let Some(marker) = std::env::var_os(ENV_MARKER) {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(marker)
                .and_then(|mut f| f.write_all(b"ran"));
        }
        return true;
    }
    let dir = private_dir();
    let marker = dir.join("ran");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", &path, "--nocapture", "--test-threads=1"])
        .env(ENV_ISOLATED, &path)
        .env(ENV_MARKER, &marker)
        .spawn()
        .unwrap_or_else(|e| panic!("could not re-run {path} in its own process: {e}"));
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("isolated test {path} did not finish within {timeout:?} (killed)");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for isolated test {path}: {e}"),
        }
    };
    let ran = std::fs::remove_file(&marker).is_ok();
    let _ = std::fs::remove_dir(&dir);
    assert!(status.success(), "isolated test {path} failed: {status}");
    assert!(
        ran,
        "isolated test {path} did not run: isolate!() must name the test function it is in"
    );
    false
}

/// A new directory of mode 0700 under the temporary directory, for one isolated run's marker.
/// `mkdir` never follows a symlink and fails on any name that exists, so a name another user
/// planted (a link, a directory of theirs) is skipped, not used.
fn private_dir() -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..1000 {
        let dir = std::env::temp_dir().join(format!(
            "mp-isolated-{}-{}-{nanos:08x}.d",
            std::process::id(),
            MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("could not make a directory for the isolation marker: {e}"),
        }
    }
    panic!("could not make a directory for the isolation marker: every name is taken");
}
