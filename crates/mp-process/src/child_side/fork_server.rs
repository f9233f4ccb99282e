//! The fork server process: what the `forkserver` role of [`crate::init`] runs. The parent's
//! side of the protocol is [`crate::start::forkserver`].

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags};

use super::run::run_boot;
use crate::boot::die_with_parent;
use crate::consts::{ENV_CHAN, ENV_TEST_DIE_AFTER_CLONE, MAX_FDS, START_FAILED_EXIT_CODE};
use crate::sys::{exit_now, restore_stdout, write_stderr};

/// The server's main loop (the `forkserver` role of [`crate::init`]).
pub(crate) fn server_main(parked_stdout: Option<RawFd>) -> ! {
    if let Some(fd) = parked_stdout {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let ctrl = take_ctrl();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    if sendmsg::<()>(
        ctrl.as_raw_fd(),
        &[IoSlice::new(b"mpfs")],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_err()
    {
        std::process::exit(0);
    }
    let die_after_clone = test_hook_die_after_clone();
    // The server serves until the parent goes away; every step below allocates nothing per
    // request except the descriptor vector.
    loop {
        let mut pfd = libc::pollfd {
            fd: ctrl.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            std::process::exit(0);
        }
        if r <= 0 {
            continue;
        }
        let mut req = [0u8; 8];
        let (n, fds) = match recv_request(&ctrl, &mut req) {
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(0),
        };
        if n == 0 {
            // The parent closed its end: done.
            std::process::exit(0);
        }
        if n != 8 || fds.is_empty() {
            let _ = reply(&ctrl, libc::EINVAL, 0);
            continue;
        }
        let daemon = req[0] != 0;
        let client = i32::from_le_bytes([req[4], req[5], req[6], req[7]]);
        // SAFETY: a raw clone(CLONE_PARENT) with no new stack behaves like fork: the child
        // continues on a copy of this (the only serving) thread's stack. The server runs no
        // other thread of its own (in a test binary, the harness's main thread sleeps waiting
        // for this test and holds no lock), so no lock can be held in the child. glibc's fork
        // handlers do not run; the child only uses raw syscalls and Rust code that does not
        // depend on them (glibc 2.34+ `raise` asks the kernel for the thread id rather than
        // its cache).
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_PARENT as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            run_cloned_child(ctrl, fds, daemon, client, parked_stdout);
        }
        drop(fds);
        if pid > 0 && die_after_clone {
            // The test hook: the server dies between its clone and its reply, once the child
            // has had time to wait for its boot frame.
            std::thread::sleep(std::time::Duration::from_millis(200));
            exit_now(0);
        }
        if pid < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            let _ = reply(&ctrl, e, 0);
        } else {
            let _ = reply(&ctrl, 0, pid as u32);
        }
    }
}

/// Takes the control socket the parent kept open across exec (exits when there is none).
fn take_ctrl() -> OwnedFd {
    let ctrl = match std::env::var(ENV_CHAN)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    {
        Some(raw) if nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).is_ok() => {
            // SAFETY: the parent kept `raw` open across exec for the server only; nothing else
            // here owns it.
            unsafe { OwnedFd::from_raw_fd(raw) }
        }
        _ => {
            write_stderr(b"mp fork server: no control socket\n");
            std::process::exit(START_FAILED_EXIT_CODE)
        }
    };
    std::env::remove_var(ENV_CHAN);
    let _ = nix::fcntl::fcntl(
        ctrl.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    ctrl
}

/// Reads one request (8 bytes into `req`) and the descriptors that came with it; the byte
/// count is 0 when the parent closed its end.
fn recv_request(ctrl: &OwnedFd, req: &mut [u8; 8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(req)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let m = recvmsg::<()>(
        ctrl.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = m.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us;
                // nothing else owns them.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok((m.bytes, fds))
}

/// In a child the server just cloned: the first descriptor is its channel to the parent, the
/// others the shared objects of its arguments; boot from the channel and exit.
fn run_cloned_child(
    ctrl: OwnedFd,
    fds: Vec<OwnedFd>,
    daemon: bool,
    client: libc::pid_t,
    parked_stdout: Option<RawFd>,
) -> ! {
    drop(ctrl);
    restore_stdout(parked_stdout);
    let mut fds = fds.into_iter();
    let chan = match fds.next() {
        Some(c) => c,
        None => exit_now(START_FAILED_EXIT_CODE),
    };
    if daemon && !die_with_parent(client) {
        exit_now(START_FAILED_EXIT_CODE)
    }
    mp_core::handle::install(fds.collect());
    let code = run_boot(chan.as_fd());
    drop(chan);
    std::process::exit(code);
}

fn test_hook_die_after_clone() -> bool {
    let Some(path) = std::env::var_os(ENV_TEST_DIE_AFTER_CLONE) else {
        return false;
    };
    std::env::remove_var(ENV_TEST_DIE_AFTER_CLONE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .is_ok()
}

/// Answers one request: an errno (0: none) and the new child's pid.
fn reply(ctrl: &OwnedFd, status: i32, pid: u32) -> nix::Result<usize> {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&status.to_le_bytes());
    b[4..8].copy_from_slice(&pid.to_le_bytes());
    sendmsg::<()>(
        ctrl.as_raw_fd(),
        &[IoSlice::new(&b)],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
}
