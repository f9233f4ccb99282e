//! Real child processes for the mp-sync tests, under fork and under spawn.
//!
//! * **Fork**: forking libtest's multi-threaded harness is only sound for async-signal-safe
//!   children, so every fork-mode test first re-runs itself alone in a fresh test process
//!   ([`isolate`]: `current_exe --exact <test> --test-threads=1`), where the test thread is
//!   the only running thread; its forked children may then allocate, panic and so on.
//! * **Spawn**: the child is the test binary re-executed with `--exact child_entry`, a role
//!   name and the encoded arguments, handed the arguments' descriptors the way a spawn start
//!   method does (`mp_core::handle`); each test file's `child_entry` test dispatches the role.
//!
//! Every child is killed and reaped if the test gives up on it ([`Kid`]'s `Drop`), and every
//! wait has a timeout, so a bug shows as a failed test, never as a hang or an orphan.
#![allow(dead_code, unreachable_pub)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mp_core::handle::{self, ENV_FDS};
use mp_core::message::{decode, encode};
use mp_core::Message;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

const ROLE: &str = "MP_SYNC_TEST_ROLE";
const ARG: &str = "MP_SYNC_TEST_ARG";
const ISOLATED: &str = "MP_SYNC_TEST_ISOLATED";

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
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// A child process; killed and reaped on drop unless joined.
pub struct Kid {
    pid: Pid,
    reaped: bool,
}

impl Kid {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Sends SIGKILL (the child stays a zombie until joined).
    pub fn kill(&self) {
        let _ = kill(self.pid, Signal::SIGKILL);
    }

    /// Waits at most `timeout` for the child; on timeout kills it and panics.
    pub fn join(&mut self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                WaitStatus::Exited(_, code) => {
                    self.reaped = true;
                    return Exit::Code(code);
                }
                WaitStatus::Signaled(_, sig, _) => {
                    self.reaped = true;
                    return Exit::Signal(sig as i32);
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                self.kill();
                let _ = waitpid(self.pid, None);
                self.reaped = true;
                panic!("child {} did not finish within {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Joins and asserts a zero exit code.
    pub fn join_ok(&mut self) {
        let e = self.join(Duration::from_secs(30));
        assert_eq!(e, Exit::Code(0), "child {} failed", self.pid);
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Starts a child running `f(args)`, by fork or by spawn. Under spawn, the test file's
/// `child_entry` must map `role` to `f` (with [`run`]).
pub fn start<A: Message + Clone>(mode: Mode, role: &str, f: fn(A) -> i32, args: &A) -> Kid {
    match mode {
        Mode::Fork => {
            assert_eq!(
                std::env::var(ISOLATED).ok().as_deref().map(|_| ()),
                Some(()),
                "fork-mode children must be started from an isolated test (see `isolate`)"
            );
            let a = args.clone();
            // SAFETY: this test runs isolated in its own test process, where the test thread
            // is the only running thread (libtest's main thread waits on a channel), so the
            // child may run ordinary code. It never returns into the harness: it `_exit`s.
            match unsafe { fork() }.expect("fork") {
                ForkResult::Child => {
                    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a)))
                        .unwrap_or(101);
                    // SAFETY: ends the child at once, without running the harness's code.
                    unsafe { libc::_exit(code) }
                }
                ForkResult::Parent { child } => Kid {
                    pid: child,
                    reaped: false,
                },
            }
        }
        Mode::Spawn => {
            let (bytes, fds) = handle::collect(|| encode(args));
            let bytes = bytes.expect("encode the child's arguments");
            let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
            cmd.args(["--exact", "child_entry", "--test-threads=1", "--nocapture"])
                .env(ROLE, role)
                .env(ARG, hex(&bytes))
                .env(ENV_FDS, handle::env_value(&fds))
                .env_remove(ISOLATED)
                .stdout(Stdio::null());
            // SAFETY: the closure only calls fcntl, which is async-signal-safe.
            unsafe { cmd.pre_exec(move || handle::keep_across_exec(&raw)) };
            // Reaped with waitpid by `Kid` (join or drop), not by `std::process::Child`.
            #[allow(clippy::zombie_processes)]
            let child = cmd.spawn().expect("spawn the test binary");
            drop(fds);
            Kid {
                pid: Pid::from_raw(child.id() as i32),
                reaped: false,
            }
        }
    }
}

/// The child side: call from a `#[test] fn child_entry()` in each test file. Does nothing in
/// a normal test run.
pub fn child_main(dispatch: fn(&str, &[u8]) -> i32) {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    handle::install_from_env().expect("install the descriptors");
    let arg = unhex(&std::env::var(ARG).expect("arguments"));
    let code = std::panic::catch_unwind(|| dispatch(&role, &arg)).unwrap_or(101);
    std::process::exit(code);
}

/// Decodes the arguments and runs `f` (for `child_entry` dispatch tables).
pub fn run<A: Message>(f: fn(A) -> i32, bytes: &[u8]) -> i32 {
    f(decode::<A>(bytes).expect("decode the child's arguments"))
}

/// Runs the calling test alone in a fresh test process. Returns true in that process (run
/// the body), false in the outer one (which has checked that the inner run passed).
pub fn isolate(name: &str) -> bool {
    if std::env::var(ISOLATED).ok().as_deref() == Some(name) {
        return true;
    }
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(ISOLATED, name)
        .env_remove(ROLE)
        .stdout(Stdio::null())
        .spawn()
        .expect("re-run the test binary");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "isolated test {name} failed: {status:?}");
            return false;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("isolated test {name} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the body of a test under `mode`: fork-mode tests are isolated first.
pub fn under(mode: Mode, name: &str, body: impl FnOnce(Mode)) {
    match mode {
        Mode::Fork => {
            if isolate(name) {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
