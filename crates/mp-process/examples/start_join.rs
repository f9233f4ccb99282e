//! Times start + join of a no-op child under each start method (a quick check; the
//! project's numbers come from `cargo xtask bench`).
//!
//! `cargo run --release -p mp-process --example start_join [iterations]`

use std::time::Instant;

use mp_process::{get_all_start_methods, Process};

fn noop(_: ()) {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    mp_process::init();
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    if std::env::var_os("MP_BASELINE").is_some() {
        raw_fork_baseline(n);
    }
    // A large parent (MP_BALLAST_MB of touched memory) shows how start costs scale with it.
    let mb: usize = std::env::var("MP_BALLAST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ballast = vec![1u8; mb << 20];
    let only = std::env::var("MP_ONLY").ok();
    for &m in get_all_start_methods() {
        if only.as_deref().is_some_and(|o| o != m.as_str()) {
            continue;
        }
        // Warm up (starts the fork server).
        Process::new(noop, ()).start_method(m).start()?.join()?;
        let t0 = Instant::now();
        let daemon = std::env::var_os("MP_DAEMON").is_some();
        for _ in 0..n {
            Process::new(noop, ())
                .daemon(daemon)
                .start_method(m)
                .start()?
                .join()?;
        }
        let per = t0.elapsed() / n;
        println!("{m:>10}: {per:?} per start+join ({n} children)");
    }
    drop(ballast);
    Ok(())
}

#[allow(dead_code)]
fn raw_fork_baseline(n: u32) {
    let t0 = Instant::now();
    for _ in 0..n {
        // SAFETY: the child exits at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) }
        }
        let mut st = 0;
        // SAFETY: valid out-pointer.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    println!("  raw fork+waitpid: {:?}", t0.elapsed() / n);
}
