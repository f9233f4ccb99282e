//! Helpers for the tests of mp's crates (cargo feature `testing`, off by default; always on in
//! mp-core's own tests). Not for programs: they fork and `_exit`, and assume a test harness.

/// Runs `check` in a forked child that sees a `/proc` mounted `hidepid=2` in a mount
/// namespace of its own, as an unprivileged user (uid 65534), and returns its exit status.
/// Codes: 0 the check held, 1 it did not, 10-14 the setup failed (unshare, making `/` private,
/// mounting `/proc`, dropping to uid 65534, `/proc` still showing pid 1). `None` when the tests
/// do not run as root (they cannot build that child then).
pub fn in_hidden_proc_child(check: impl FnOnce() -> bool) -> Option<i32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: building a hidepid child needs root");
        return None;
    }
    // SAFETY: the child only makes system calls and runs `check` (async-signal-safe code:
    // /proc reads on the stack, kill), then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls with NUL-terminated literals; failures end the child
        // with a distinct code.
        let code = unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                10
            } else if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                11
            } else if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                0,
                c"hidepid=2".as_ptr().cast(),
            ) != 0
            {
                12
            } else if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                13
            } else if libc::access(c"/proc/1/stat".as_ptr(), libc::F_OK) == 0 {
                14 // /proc does not hide pid 1: the setup did not take
            } else if check() {
                0
            } else {
                1
            }
        };
        // SAFETY: ends the child without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    Some(libc::WEXITSTATUS(status))
}
