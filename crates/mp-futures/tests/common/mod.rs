//! Shared by the executor's test files.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on its own thread and fails the test if it takes longer than `secs`.
pub(crate) fn watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: test still running after {secs} s")
        }
    }
}

/// Two files that let a test hold a task in its worker: the task writes its pid to
/// `started`, then waits (at most 60 s) for `gate` to exist.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) started: String,
    pub(crate) gate: String,
}

impl Gate {
    /// Paths unique to this process and `name`.
    pub(crate) fn new(name: &str) -> Gate {
        let base = std::env::temp_dir().join(format!("mp-futures-{}-{name}", std::process::id()));
        let g = Gate {
            started: format!("{}.started", base.display()),
            gate: format!("{}.gate", base.display()),
        };
        let _ = std::fs::remove_file(&g.started);
        let _ = std::fs::remove_file(&g.gate);
        g
    }

    /// The task's argument.
    pub(crate) fn arg(&self) -> (String, String) {
        (self.started.clone(), self.gate.clone())
    }

    /// Waits (at most 30 s) until the task runs in a worker; returns the worker's pid.
    pub(crate) fn wait_started(&self) -> u32 {
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&self.started) {
                if let Ok(pid) = s.trim().parse() {
                    return pid;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the gated task never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the task return.
    pub(crate) fn open(&self) {
        std::fs::write(&self.gate, b"go").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.started);
        let _ = std::fs::remove_file(&self.gate);
    }
}

/// The gated task (see [`Gate`]): returns its worker's pid.
pub(crate) fn gated((started, gate): (String, String)) -> u64 {
    let pid = std::process::id();
    let tmp = format!("{started}.{pid}.tmp");
    std::fs::write(&tmp, pid.to_string()).unwrap();
    std::fs::rename(&tmp, &started).unwrap();
    let t0 = std::time::Instant::now();
    while !std::path::Path::new(&gate).exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    pid.into()
}

/// A quick task.
pub(crate) fn square(x: u64) -> u64 {
    x * x
}

/// Writes `path` when it runs: proves whether a task ran.
pub(crate) fn touch(path: String) -> bool {
    std::fs::write(path, b"ran").is_ok()
}

/// A task that panics for 3.
pub(crate) fn checked(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}
