//! A full `/dev/shm`: named blocks are refused with a typed error when they are created, never
//! a `SIGBUS` at a later write (the `tmpfs_exhaustion` scenario of the fault campaign found the
//! `SIGBUS`: a block's file was sparse, and the first write of a page the tmpfs could not give
//! killed the writer).

use mp_core::{Error, SharedMemory};

/// Runs `check` in a forked child that sees a tmpfs of 256 KiB over `/dev/shm`, in a mount
/// namespace of its own (the host's `/dev/shm` is not touched, and what the child leaves there
/// goes with the namespace), and returns how it ended: `Ok(code)` for an exit, `Err(signal)`.
/// `None` when the test does not run as root. Codes 10-12: the setup failed.
fn in_small_tmpfs(check: impl FnOnce() -> i32) -> Option<Result<i32, i32>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    }
    // SAFETY: the child makes system calls and runs `check`, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls with NUL-terminated literals.
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
                c"tmpfs".as_ptr(),
                c"/dev/shm".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=256k,mode=1777".as_ptr().cast(),
            ) != 0
            {
                12
            } else {
                check()
            }
        };
        // SAFETY: ends the child without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        Some(Ok(libc::WEXITSTATUS(status)))
    } else {
        Some(Err(libc::WTERMSIG(status)))
    }
}

fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::Io { op: "fallocate", source } if source.raw_os_error() == Some(libc::ENOSPC))
}

#[test]
fn a_block_larger_than_the_free_space_is_refused_with_enospc() {
    let r = in_small_tmpfs(|| match SharedMemory::create("shm-full-big", 1 << 20) {
        Err(e) if is_enospc(&e) => 0,
        Err(_) => 1,
        Ok(_) => 2,
    });
    assert!(matches!(r, None | Some(Ok(0))), "{r:?}");
}

#[test]
fn blocks_made_and_filled_until_the_tmpfs_is_full_end_with_enospc_not_sigbus() {
    let r = in_small_tmpfs(|| {
        let mut held = Vec::new();
        for i in 0..100 {
            match SharedMemory::create(&format!("shm-full-{i}"), 20_000) {
                // Every page written: a page the tmpfs cannot give was a SIGBUS here.
                Ok(b) => {
                    if b.write_at(0, &[0xa5; 20_000]).is_err() {
                        return 3;
                    }
                    held.push(b);
                }
                Err(e) if is_enospc(&e) => break,
                Err(_) => return 1,
            }
        }
        if held.is_empty() || held.len() == 100 {
            return 2;
        }
        // Dropping them unlinks them: the space is back.
        held.clear();
        match SharedMemory::create("shm-full-after", 20_000) {
            Ok(b) if b.write_at(0, &[1; 20_000]).is_ok() => 0,
            _ => 4,
        }
    });
    assert!(matches!(r, None | Some(Ok(0))), "{r:?}");
}
