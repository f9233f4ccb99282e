//! Raw process-level calls that both sides make, all async-signal-safe: leaving at once,
//! writing to stderr without std's locks, putting a parked stdout back.

use std::os::fd::RawFd;

/// Ends this process at once, like `_exit`, without running atexit handlers or destructors.
/// Through `syscall`, which the parent has already bound, so that a forked child does not
/// pay for the dynamic linker's lazy binding of `_exit` every time.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: exit_group has no memory-safety preconditions and does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, code as libc::c_long) };
    // SAFETY: not reached; _exit is the fallback should the syscall ever return.
    unsafe { libc::_exit(code) }
}

/// Writes all of `b` to descriptor 2 with `write(2)` (no std lock, no buffer), retrying on
/// `EINTR`; gives up silently on any other error.
pub(crate) fn write_stderr(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: write(2) reads `b.len()` bytes from a live slice.
        let n = unsafe { libc::write(2, b.as_ptr() as *const libc::c_void, b.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

/// Puts a parked stdout back on descriptor 1.
pub(crate) fn restore_stdout(parked: Option<RawFd>) {
    if let Some(raw) = parked {
        // SAFETY: dup2 and close on descriptor numbers have no memory-safety preconditions;
        // `raw` was kept open by the parent for exactly this purpose and nothing else in this
        // process uses it.
        unsafe {
            if libc::dup2(raw, 1) == 1 {
                libc::close(raw);
            }
        }
    }
}
