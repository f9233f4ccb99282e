//! [`init`]: the entry of a re-executed child (spawn) and of the fork server, and the checks
//! that a process which claims to be an mp child really was started by its parent.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::fork_server::server_main;
use super::run::run_boot;
use crate::boot::{die_with_parent, fail_start};
use crate::consts::{ENV_CHAN, ENV_DAEMON_PARENT, ENV_ROLE, ENV_STDOUT, START_FAILED_EXIT_CODE};
use crate::sys::{restore_stdout, write_stderr};

/// Set by `init` (in any process) and by `test_support!`: this program can act as a spawn
/// child.
static ENTRY_READY: AtomicBool = AtomicBool::new(false);

/// True when this program can act as a spawn or forkserver child.
pub(crate) fn entry_ready() -> bool {
    ENTRY_READY.load(Ordering::Relaxed)
}

/// Set by `test_support!`: this program is a libtest binary, whose children must be started
/// with arguments that select the hidden entry test.
static TEST_HARNESS: AtomicBool = AtomicBool::new(false);

/// True in a libtest binary that holds `test_support!`.
pub(crate) fn test_harness() -> bool {
    TEST_HARNESS.load(Ordering::Relaxed)
}

/// Marks this program as a test binary able to act as a child (called by `test_support!`
/// before `main`, through the macro's support module `__private`).
pub fn mark_test_harness() {
    ENTRY_READY.store(true, Ordering::Relaxed);
    TEST_HARNESS.store(true, Ordering::Relaxed);
}

/// Takes the parked stdout descriptor (see [`ENV_STDOUT`]) if there is one.
fn take_parked_stdout() -> Option<RawFd> {
    let v = std::env::var_os(ENV_STDOUT)?;
    std::env::remove_var(ENV_STDOUT);
    let raw = v.to_str()?.parse::<RawFd>().ok()?;
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    Some(raw)
}

/// The body of [`crate::init`].
pub(crate) fn init() {
    ENTRY_READY.store(true, Ordering::Relaxed);
    let Some(role) = std::env::var_os(ENV_ROLE) else {
        return;
    };
    if secure_exec() {
        // A setuid or setcap program, or one whose privileges changed at exec: whoever ran it
        // chose its environment, and a child role would make it trust its standard input to
        // say what to run. mp never starts such children itself (a parent re-executes
        // /proc/self/exe with its own privileges), so the role is ignored and the program
        // runs as itself. The variables go, so that its own children do not see them.
        for var in [
            ENV_ROLE,
            ENV_CHAN,
            ENV_DAEMON_PARENT,
            ENV_STDOUT,
            mp_core::handle::ENV_FDS,
        ] {
            std::env::remove_var(var);
        }
        return;
    }
    // Only the bootstrap runs at this point (init is the first thing in main; in a test
    // binary, the child runs a single test with one test thread), so changing the
    // environment cannot race with a reader.
    std::env::remove_var(ENV_ROLE);
    if let Some(parent) = std::env::var_os(ENV_DAEMON_PARENT) {
        std::env::remove_var(ENV_DAEMON_PARENT);
        let parent = parent.to_str().and_then(|p| p.parse::<libc::pid_t>().ok());
        if !parent.is_some_and(die_with_parent) {
            write_stderr(b"mp daemon child: the parent died before the child started\n");
            std::process::exit(START_FAILED_EXIT_CODE)
        }
    }
    let parked = take_parked_stdout();
    match role.to_str() {
        Some("spawn") => {
            restore_stdout(parked);
            spawn_child_main()
        }
        // The server itself keeps /dev/null on stdout (in a test binary, libtest's main
        // thread may print a "running for over 60 seconds" notice); its children get the
        // parked stdout back.
        Some("forkserver") => server_main(parked),
        _ => {
            write_stderr(format!("mp: unknown {ENV_ROLE} {role:?}\n").as_bytes());
            std::process::exit(START_FAILED_EXIT_CODE)
        }
    }
}

/// True when the kernel marked this exec as secure (`AT_SECURE`: set-user-ID or set-group-ID,
/// file capabilities, or an LSM transition), where the environment comes from a less
/// privileged caller.
fn secure_exec() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// True when this process was started as an mp child whose program never called `init`
/// (the role variable is still there).
pub(crate) fn child_without_init() -> bool {
    // The variable is set at exec time and only `init` removes it; once `init` ran (or the
    // first check found no variable) the answer cannot change, so it is cached.
    static NO: AtomicBool = AtomicBool::new(false);
    if NO.load(Ordering::Relaxed) {
        return false;
    }
    let yes = std::env::var_os(ENV_ROLE).is_some();
    if !yes {
        NO.store(true, Ordering::Relaxed);
    }
    yes
}

fn take_chan() -> Result<OwnedFd, String> {
    let v = std::env::var(ENV_CHAN).map_err(|_| format!("{ENV_CHAN} is missing"))?;
    std::env::remove_var(ENV_CHAN);
    let raw: RawFd = v
        .parse()
        .map_err(|_| format!("{ENV_CHAN}={v:?} is not a descriptor"))?;
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|_| format!("{ENV_CHAN} names descriptor {raw}, which is not open"))?;
    check_chan(raw)?;
    // The shared objects' descriptors are another list; one of them being the channel would
    // make two owners of one descriptor.
    let listed = std::env::var(mp_core::handle::ENV_FDS).unwrap_or_default();
    if listed.split(',').any(|p| p.parse::<RawFd>() == Ok(raw)) {
        return Err(format!(
            "{ENV_CHAN} names descriptor {raw}, which {} lists too: this process was not started by mp",
            mp_core::handle::ENV_FDS
        ));
    }
    // SAFETY: the parent kept `raw` open across exec for this process only; nothing else in
    // this process owns it (the variable is read once and removed; `check_chan` made sure it
    // is the parent's socket, so not, say, stdin).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let _ = nix::fcntl::fcntl(
        raw,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(fd)
}

/// Checks that `raw` is what a parent gives its spawn child: a Unix socket made by the parent
/// itself (`socketpair` records the creator, which `SO_PEERCRED` reports). Anything else
/// (stdin, a file, a socket of another process) means that this process was not started by
/// mp, and the boot frame it would read could name any code.
fn check_chan(raw: RawFd) -> Result<(), String> {
    let st = nix::sys::stat::fstat(raw).map_err(|e| format!("fstat({ENV_CHAN}): {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!(
            "{ENV_CHAN} names descriptor {raw}, which is not a socket: this process was not started by mp"
        ));
    }
    // SAFETY: `raw` was checked to be an open socket, which this process owns and does not
    // close during the call.
    let chan = unsafe { BorrowedFd::borrow_raw(raw) };
    let cred = mp_core::util::peer_cred(chan)
        .map_err(|e| format!("getsockopt({ENV_CHAN}, SO_PEERCRED): {e}"))?;
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    if cred.pid != parent {
        return Err(format!(
            "the socket of {ENV_CHAN} was made by pid {}, not by this process's parent (pid {parent}): this process was not started by mp",
            cred.pid
        ));
    }
    Ok(())
}

/// A spawn child: read the boot frame, find the target, run it, exit.
fn spawn_child_main() -> ! {
    let chan = match take_chan() {
        Ok(c) => c,
        Err(e) => {
            write_stderr(format!("mp spawn child: {e}\n").as_bytes());
            std::process::exit(START_FAILED_EXIT_CODE)
        }
    };
    let fds_result = mp_core::handle::install_from_env();
    let code = match fds_result {
        Err(e) => fail_start(chan.as_fd(), format!("receiving the shared objects: {e}")),
        Ok(_) => run_boot(chan.as_fd()),
    };
    drop(chan);
    std::process::exit(code)
}
