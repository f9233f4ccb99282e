//! The spawn start method: re-execute this program (`posix_spawn` of `/proc/self/exe`) and
//! send the new image its [`Boot`](crate::boot::Boot) frame. [`launch`] also starts the fork
//! server.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use super::Prepared;
use crate::child_side::test_harness;
use crate::consts::{ENV_CHAN, ENV_DAEMON_PARENT, ENV_ROLE, ENV_STDOUT, TEST_ENTRY};
use crate::error::Error;
use crate::frame::{self, Tag};
use crate::handle::{Child, ChildState};
use crate::method::StartMethod;

fn current_exe() -> &'static std::path::Path {
    static EXE: OnceLock<std::path::PathBuf> = OnceLock::new();
    EXE.get_or_init(|| std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()))
}

/// Re-executes this program (`/proc/self/exe`: the very file the parent runs, even if its
/// path was replaced since) in `role`, with `chan` and `fds` kept open across exec for that
/// child only, and returns the child's pid. In a test binary the arguments select the hidden
/// entry test of `test_support!`, and libtest's banner is kept off the child's stdout.
///
/// Children are made with `posix_spawn` (glibc's `clone(CLONE_VM | CLONE_VFORK)`: no copy
/// of the parent's page tables, so the cost does not grow with the parent's memory), on the
/// launcher thread for a daemon (see `crate::start::launcher`) or when `on_launcher`.
pub(crate) fn launch(
    role: &str,
    chan: RawFd,
    fds: &[OwnedFd],
    daemon: bool,
    on_launcher: bool,
) -> Result<u32, Error> {
    let mut keep: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    keep.push(chan);
    let mut env: Vec<(&'static str, String)> =
        vec![(ENV_ROLE, role.to_string()), (ENV_CHAN, chan.to_string())];
    if !fds.is_empty() {
        env.push((mp_core::handle::ENV_FDS, mp_core::handle::env_value(fds)));
    }
    let mut args: Vec<&'static str> = Vec::new();
    let mut parked = None;
    let mut devnull_fd = -1;
    if test_harness() {
        args.extend([
            "--exact",
            TEST_ENTRY,
            "--nocapture",
            "--test-threads=1",
            "-q",
        ]);
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on fd 1 has no memory-safety preconditions.
        let saved = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
        if saved >= 0 {
            // SAFETY: `saved` is a new descriptor nothing else owns.
            let saved = unsafe { OwnedFd::from_raw_fd(saved) };
            keep.push(saved.as_raw_fd());
            env.push((ENV_STDOUT, saved.as_raw_fd().to_string()));
            devnull_fd = devnull().map(|d| d.as_raw_fd()).unwrap_or(-1);
            parked = Some(saved);
        }
    }
    if daemon {
        // The child sets PR_SET_PDEATHSIG itself, first thing in `init`, and exits if its
        // parent is no longer this process by then (see `crate::consts::ENV_DAEMON_PARENT`).
        env.push((ENV_DAEMON_PARENT, std::process::id().to_string()));
    }
    let argv = spawn_argv(&args);
    let envp = spawn_envp(&env);
    let run = || -> std::io::Result<u32> {
        if on_launcher || daemon {
            super::launcher::run(move || posix_spawn_exe(argv, envp, keep, devnull_fd))?
        } else {
            posix_spawn_exe(argv, envp, keep, devnull_fd)
        }
    };
    let pid = run().map_err(|e| Error::io("starting the child", e));
    drop(parked);
    pid
}

fn spawn_argv(args: &[&str]) -> Vec<CString> {
    use std::os::unix::ffi::OsStrExt;
    let exe = CString::new(current_exe().as_os_str().as_bytes())
        .unwrap_or_else(|_| CString::from(c"/proc/self/exe"));
    std::iter::once(exe)
        .chain(args.iter().filter_map(|a| CString::new(*a).ok()))
        .collect()
}

/// This process's environment, with mp's variables replaced by `ours`.
fn spawn_envp(ours: &[(&str, String)]) -> Vec<CString> {
    use std::os::unix::ffi::OsStrExt;
    let mut v: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !ours.iter().any(|(o, _)| k.as_bytes() == o.as_bytes()))
        .filter_map(|(k, val)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(val.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    v.extend(
        ours.iter()
            .filter_map(|(k, val)| CString::new(format!("{k}={val}")).ok()),
    );
    v
}

/// `posix_spawn` of `/proc/self/exe`: stdin from /dev/null, `keep` open across exec (a
/// `dup2` onto itself clears close-on-exec, per POSIX and glibc), stdout onto `devnull_fd`
/// when it is a descriptor, the signal mask emptied and SIGPIPE back to its default (as std
/// does for its children).
fn posix_spawn_exe(
    argv: Vec<CString>,
    envp: Vec<CString>,
    keep: Vec<RawFd>,
    devnull_fd: RawFd,
) -> std::io::Result<u32> {
    let check = |r: libc::c_int| -> std::io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(r))
        }
    };
    let mut argp: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argp.push(std::ptr::null_mut());
    let mut envpp: Vec<*mut libc::c_char> = envp.iter().map(|a| a.as_ptr() as *mut _).collect();
    envpp.push(std::ptr::null_mut());
    // SAFETY: the file actions and attributes are initialised before use and destroyed once;
    // every pointer handed to posix_spawn (path, argv, envp and their strings) outlives the
    // call; the descriptors named are open in this process.
    unsafe {
        let mut fa = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        check(libc::posix_spawn_file_actions_init(fa.as_mut_ptr()))?;
        let mut fa = fa.assume_init();
        let mut at = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        if let Err(e) = check(libc::posix_spawnattr_init(at.as_mut_ptr())) {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(e);
        }
        let mut at = at.assume_init();
        let result = (|| -> std::io::Result<u32> {
            check(libc::posix_spawn_file_actions_addopen(
                &mut fa,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            for &fd in &keep {
                check(libc::posix_spawn_file_actions_adddup2(&mut fa, fd, fd))?;
            }
            if devnull_fd >= 0 {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut fa, devnull_fd, 1,
                ))?;
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut at, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(&mut at, &pipe))?;
            check(libc::posix_spawnattr_setflags(
                &mut at,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                c"/proc/self/exe".as_ptr(),
                &fa,
                &at,
                argp.as_ptr(),
                envpp.as_ptr(),
            ))?;
            Ok(pid as u32)
        })();
        libc::posix_spawnattr_destroy(&mut at);
        libc::posix_spawn_file_actions_destroy(&mut fa);
        result
    }
}

fn devnull() -> Option<&'static OwnedFd> {
    static NULL: OnceLock<Option<OwnedFd>> = OnceLock::new();
    NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()
            .map(OwnedFd::from)
    })
    .as_ref()
}

/// The spawn start method: re-execute this program and send it the boot frame.
pub(crate) fn start<R>(p: Prepared) -> Result<Child<R>, Error> {
    let (parent_end, child_end) = crate::chanpool::new_pair()?;
    let pid = launch("spawn", child_end.as_raw_fd(), &p.fds, p.daemon, false)?;
    drop((child_end, p.fds));
    let state = ChildState::new(pid, p.name, p.daemon);
    // A child that died before reading its boot frame is reported by `join` (EPIPE here).
    let _ = frame::send(parent_end.as_fd(), Tag::Boot, &p.bytes);
    Ok(Child::new(state, parent_end, None, StartMethod::Spawn))
}
