//! Real child processes for the mp-sync tests, under fork and under spawn, through
//! mp-process.
//!
//! * **Fork**: forking libtest's multi-threaded harness is only sound for async-signal-safe
//!   children, so every fork-mode test first re-runs itself alone in a fresh copy of the
//!   test binary (`mp_process::testing::isolated`), where its forked children may run
//!   ordinary code.
//! * **Spawn**: the child is the test binary re-executed by mp-process (each test file has
//!   `mp_process::test_support!()`); the primitives travel as handles in the arguments.
//!
//! Every child is killed and reaped if the test gives up on it ([`Kid`]'s `Drop`), and every
//! wait has a timeout, so a bug shows as a failed test, never as a hang or an orphan.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use mp_core::Message;
use mp_process::{Child, Process, ProcessError, StartMethod};

/// How a child is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `fork()`: the child inherits the primitives.
    Fork,
    /// Re-exec of the test binary: the primitives travel as handles.
    Spawn,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The target returned this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// A child process running a `fn(A) -> i32`; killed and reaped on drop unless joined.
pub struct Kid {
    child: Child<i32>,
    joined: bool,
}

impl Kid {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends SIGKILL (the child stays a zombie until joined).
    pub fn kill(&self) {
        let _ = self.child.kill();
    }

    /// Waits at most `timeout` for the child; on timeout kills it and panics.
    pub fn join(&mut self, timeout: Duration) -> Exit {
        let r = self.child.join_timeout(timeout);
        match r {
            Ok(Some(code)) => {
                self.joined = true;
                Exit::Code(code)
            }
            Ok(None) => {
                self.kill();
                let _ = self.child.join_timeout(Duration::from_secs(10));
                self.joined = true;
                panic!("child {} did not finish within {timeout:?}", self.pid());
            }
            Err(ProcessError::Signaled { signal, .. }) => {
                self.joined = true;
                Exit::Signal(signal)
            }
            Err(e) => {
                self.joined = true;
                panic!("child {} failed: {e}", self.pid());
            }
        }
    }

    /// Joins and asserts that the target returned 0.
    pub fn join_ok(&mut self) {
        let pid = self.pid();
        let e = self.join(Duration::from_secs(30));
        assert_eq!(e, Exit::Code(0), "child {pid} failed");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if !self.joined {
            self.kill();
            let _ = self.child.join_timeout(Duration::from_secs(10));
        }
    }
}

/// Starts a child running `f(args)` by fork or by spawn.
pub fn start<A: Message + Clone + Send + 'static>(mode: Mode, f: fn(A) -> i32, args: &A) -> Kid {
    let method = match mode {
        Mode::Fork => {
            assert!(
                std::env::var_os(mp_process::testing::ENV_ISOLATED).is_some(),
                "fork-mode children must be started from an isolated test (see `under`)"
            );
            StartMethod::Fork
        }
        Mode::Spawn => StartMethod::Spawn,
    };
    let child = Process::new(f, args.clone())
        .start_method(method)
        .start()
        .expect("start the child");
    Kid {
        child,
        joined: false,
    }
}

/// Runs the body of a test under `mode`: fork-mode tests are re-run alone in their own copy
/// of the test binary first (`name` is the test function's name; tests are at the top level
/// of their file).
pub fn under(mode: Mode, name: &str, body: impl FnOnce(Mode)) {
    match mode {
        Mode::Fork => {
            if mp_process::testing::isolated("top", name, Duration::from_secs(90)) {
                body(mode)
            }
        }
        Mode::Spawn => body(mode),
    }
}

/// Polls `cond` every millisecond for at most `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that a call that gives up after `t` took about `t`: at least `t`, less than
/// `t + 2 s` (robust on a loaded two-core machine).
pub fn assert_about(elapsed: Duration, t: Duration) {
    assert!(
        elapsed >= t,
        "returned after {elapsed:?}, before the timeout {t:?}"
    );
    assert!(
        elapsed < t + Duration::from_secs(2),
        "returned after {elapsed:?}, long after the timeout {t:?}"
    );
}
