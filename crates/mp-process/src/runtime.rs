//! The child side: what a child process does around its target, under every start method.
//!
//! * [`run_target`] runs the target under `catch_unwind`, sends the value (or the panic message
//!   and location) to the parent over the child's socket and returns the exit code.
//! * The panic hook (installed once, in the parent, before the first child is forked, so that
//!   a forked child never takes the hook lock that another thread may hold) records the panic
//!   location of a target and writes the message straight to file descriptor 2, so that it is
//!   on the child's stderr even when the parent's test harness captures output.
//! * [`init`](crate::init) is the entry of a re-executed child (spawn) and of the fork server.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, Ordering};
use std::sync::Once;

use mp_core::message::{decode, encode, encode_into, Encoded};
use mp_core::util::panic_message;
use mp_core::Message;

use crate::frame::{self, Tag};

/// The environment variable that makes a re-executed program a child: its value is the role.
pub(crate) const ENV_ROLE: &str = "MP_PROCESS_ROLE";
/// The descriptor of the child's socket, for an exec'd child.
pub(crate) const ENV_CHAN: &str = "MP_PROCESS_CHAN";
/// The name of the hidden test that [`test_support!`](crate::test_support) defines.
pub(crate) const TEST_ENTRY: &str = "__mp_process_child";

/// Exit code of a child whose target panicked (Python uses 1 for an uncaught exception).
pub(crate) const PANIC_EXIT_CODE: i32 = 1;
/// Exit code of a child that could not start its target.
pub(crate) const START_FAILED_EXIT_CODE: i32 = 70;

/// Set by `init` (in any process) and by `test_support!`: this program can act as a spawn
/// child.
static ENTRY_READY: AtomicBool = AtomicBool::new(false);

pub(crate) fn entry_ready() -> bool {
    ENTRY_READY.load(Ordering::Relaxed)
}

/// Set by `test_support!`: this program is a libtest binary, whose children must be started
/// with arguments that select the hidden entry test.
static TEST_HARNESS: AtomicBool = AtomicBool::new(false);

pub(crate) fn test_harness() -> bool {
    TEST_HARNESS.load(Ordering::Relaxed)
}

/// Marks this program as a test binary able to act as a child (called by `test_support!`
/// before `main`).
#[doc(hidden)]
pub fn mark_test_harness() {
    ENTRY_READY.store(true, Ordering::Relaxed);
    TEST_HARNESS.store(true, Ordering::Relaxed);
}

/// Set for a daemon child: the pid of the parent it must die with. The child sets
/// `PR_SET_PDEATHSIG` first thing in `init` and exits if its parent already changed (the
/// parent died between the spawn and that call).
pub(crate) const ENV_DAEMON_PARENT: &str = "MP_PROCESS_DAEMON_PARENT";

/// In a test binary, the child's real stdout is parked on this descriptor while libtest
/// starts (its banner goes to /dev/null) and put back by `init`.
pub(crate) const ENV_STDOUT: &str = "MP_PROCESS_STDOUT";

/// Takes the parked stdout descriptor (see [`ENV_STDOUT`]) if there is one.
fn take_parked_stdout() -> Option<RawFd> {
    let v = std::env::var_os(ENV_STDOUT)?;
    std::env::remove_var(ENV_STDOUT);
    let raw = v.to_str()?.parse::<RawFd>().ok()?;
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    Some(raw)
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

/// Who this process is, in Python's terms.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) name: String,
    /// "" for the root, "1", "1:3", ... for children (Python's `_identity`).
    pub(crate) ident: String,
    pub(crate) daemon: bool,
    pub(crate) parent: Option<(u32, String)>,
}

/// This process's identity: null for the root process (`MainProcess`), set once by the child
/// bootstrap and never freed (so readers may keep the reference).
static CURRENT: AtomicPtr<Identity> = AtomicPtr::new(std::ptr::null_mut());

pub(crate) fn set_identity(id: Box<Identity>) {
    // Pairs with the Acquire load in `identity`.
    CURRENT.store(Box::into_raw(id), Ordering::Release);
}

pub(crate) fn identity() -> Option<&'static Identity> {
    // Pairs with the Release store in `set_identity`.
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: a non-null pointer came from `Box::into_raw` in `set_identity` and is never
    // freed, so it is valid for 'static.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Counter for default child names ("Process-N"), reset in a forked child.
static CHILD_COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_ident() -> String {
    let n = CHILD_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    match identity() {
        Some(me) if !me.ident.is_empty() => format!("{}:{n}", me.ident),
        _ => n.to_string(),
    }
}

/// Resets the per-process state a forked child must not share with its parent.
pub(crate) fn reset_after_fork(id: Box<Identity>) {
    set_identity(id);
    CHILD_COUNTER.store(0, Ordering::Relaxed);
    crate::child::reset_registry();
    crate::forkserver::reset_after_fork();
    crate::launcher::reset_after_fork();
}

thread_local! {
    /// True on the thread that runs a target inside a child.
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The last panic of the target: (message, location).
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// What the panic hook does about backtraces, decided in the parent before each fork (a forked
/// child must not read the environment or take std's backtrace lock: another thread of the
/// parent may have held either at the fork, and nothing would ever release it in the child).
static BACKTRACE: AtomicU8 = AtomicU8::new(BACKTRACE_OFF);
/// `RUST_BACKTRACE` is unset or 0.
const BACKTRACE_OFF: u8 = 0;
/// Backtraces are wanted, and the process had one thread when this was decided.
const BACKTRACE_ON: u8 = 1;
/// Backtraces are wanted, but the process ran other threads: a child forked now could block
/// forever in std's backtrace lock, so it prints a note instead.
const BACKTRACE_UNSAFE: u8 = 2;

/// Reads `RUST_BACKTRACE` (and, only when it asks for backtraces, this process's thread count)
/// for the panic hook of the children started next. Called by the parent before every start.
fn decide_backtrace() {
    let wanted = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    let mode = if !wanted {
        BACKTRACE_OFF
    } else if std::fs::read_dir("/proc/self/task").map_or(2, |d| d.count()) <= 1 {
        BACKTRACE_ON
    } else {
        BACKTRACE_UNSAFE
    };
    BACKTRACE.store(mode, Ordering::Relaxed);
}

/// Installs the panic hook once per process (see the module doc), and reads what it needs from
/// the environment now, in the caller (before a fork), never in the panicking child.
pub(crate) fn install_panic_hook() {
    decide_backtrace();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(|t| t.get()) {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "<unknown>".into());
            let who = identity()
                .map(|i| i.name.clone())
                .unwrap_or_else(|| "MainProcess".into());
            let mut text = format!(
                "process '{who}' (pid {}) panicked at {location}:\n{message}\n",
                std::process::id()
            );
            match BACKTRACE.load(Ordering::Relaxed) {
                BACKTRACE_ON => {
                    text.push_str(&format!("{}\n", std::backtrace::Backtrace::force_capture()))
                }
                BACKTRACE_UNSAFE => text.push_str(
                    "(no backtrace: this child was forked from a multi-threaded parent, where \
                     capturing one could block forever; the spawn and forkserver start methods \
                     give backtraces)\n",
                ),
                _ => {}
            }
            // Straight to fd 2: a forked child of a test harness may have inherited a capture
            // of the thread's output, which would swallow the message.
            write_stderr(text.as_bytes());
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
        }));
    });
}

/// Ends this process at once, like `_exit`, without running atexit handlers or destructors.
/// Through `syscall`, which the parent has already bound, so that a forked child does not
/// pay for the dynamic linker's lazy binding of `_exit` every time.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: exit_group has no memory-safety preconditions and does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, code as libc::c_long) };
    // SAFETY: not reached; _exit is the fallback should the syscall ever return.
    unsafe { libc::_exit(code) }
}

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

/// Size of the stack buffer a child encodes its result into (see [`run_target`]).
const SMALL_ARCHIVE: usize = 256;

/// A stack buffer aligned for an archive ([`mp_core::message::ALIGN`]).
#[repr(C, align(16))]
struct SmallArchive([u8; SMALL_ARCHIVE]);
const _: () = assert!(std::mem::align_of::<SmallArchive>() == mp_core::message::ALIGN);

/// Runs the target in a child, reports its end to the parent over `chan` and returns the
/// exit code the child must exit with.
pub(crate) fn run_target<R: Message>(chan: BorrowedFd<'_>, f: impl FnOnce() -> R) -> i32 {
    IN_TARGET.with(|t| t.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_TARGET.with(|t| t.set(false));
    match result {
        Ok(value) => {
            // A small result is encoded on the stack: a heap buffer would cost the child
            // copy-on-write faults on the allocator's pages (a measurable share of a fork
            // start); a large one spills to the heap.
            let mut small = SmallArchive([0; SMALL_ARCHIVE]);
            // SAFETY: `small` is ours, SMALL_ARCHIVE bytes long and aligned to 16 (ALIGN).
            let encoded = unsafe { encode_into(&value, small.0.as_mut_ptr(), SMALL_ARCHIVE) };
            let code = match encoded {
                Ok(e) => {
                    let bytes = match &e {
                        Encoded::InPlace(n) => &small.0[..*n],
                        Encoded::Spilled(v) => v.as_slice(),
                    };
                    let _ = frame::send_final(chan, Tag::Returned, bytes);
                    0
                }
                Err(e) => {
                    let msg = format!("the return value could not be serialized: {e}");
                    write_stderr(
                        format!("mp child (pid {}): {msg}\n", std::process::id()).as_bytes(),
                    );
                    send_string(chan, Tag::ResultLost, msg);
                    PANIC_EXIT_CODE
                }
            };
            // Dropping the value may run destructors that panic; that is the target's
            // business, but it must not unwind out of the child's entry.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
            code
        }
        Err(payload) => {
            let (message, location) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| (panic_message(&*payload), "<unknown>".into()));
            std::mem::forget(payload);
            if let Ok(bytes) = encode(&(message, location)) {
                let _ = frame::send_final(chan, Tag::Panicked, &bytes);
            }
            PANIC_EXIT_CODE
        }
    }
}

pub(crate) fn send_string(chan: BorrowedFd<'_>, tag: Tag, msg: String) {
    if let Ok(bytes) = encode(&msg) {
        let _ = frame::send_final(chan, tag, &bytes);
    }
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
        if !parent.is_some_and(crate::process::die_with_parent) {
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
        Some("forkserver") => crate::forkserver::server_main(parked),
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
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `cred`, and `len` back;
    // `raw` was checked to be an open socket.
    let r = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!(
            "getsockopt({ENV_CHAN}, SO_PEERCRED): {}",
            std::io::Error::last_os_error()
        ));
    }
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

pub(crate) fn fail_start(chan: BorrowedFd<'_>, msg: String) -> i32 {
    write_stderr(format!("mp child (pid {}): {msg}\n", std::process::id()).as_bytes());
    send_string(chan, Tag::StartFailed, msg);
    START_FAILED_EXIT_CODE
}

/// Reads the boot frame from `chan` and runs what it names. Used by spawn children and by
/// children of the fork server.
pub(crate) fn run_boot(chan: BorrowedFd<'_>) -> i32 {
    let boot = match frame::recv_blocking(chan) {
        Ok(Some((Tag::Boot, bytes))) => match decode::<crate::process::Boot>(&bytes) {
            Ok(b) => b,
            Err(e) => return fail_start(chan, format!("malformed boot message: {e}")),
        },
        Ok(Some((tag, _))) => return fail_start(chan, format!("unexpected frame {tag:?}")),
        Ok(None) => return fail_start(chan, "the parent closed the channel before booting".into()),
        Err(e) => return fail_start(chan, format!("reading the boot message: {e}")),
    };
    let tramp = match crate::image::resolve_trampoline(boot.trampoline as isize, &boot.image_id) {
        Ok(a) => a,
        Err(e) => return fail_start(chan, e),
    };
    let target = match crate::image::resolve(boot.target as isize, &boot.image_id) {
        Ok(a) => a,
        Err(e) => return fail_start(chan, e),
    };
    set_identity(Box::new(Identity {
        name: boot.name,
        ident: boot.ident,
        daemon: boot.daemon,
        parent: Some((boot.parent_pid, boot.parent_name)),
    }));
    install_panic_hook();
    if frame::send(chan, Tag::Started, &[]).is_err() {
        // The parent is gone or dropped the child: nobody wants the result.
        return START_FAILED_EXIT_CODE;
    }
    // SAFETY: `tramp` is the address of `crate::process::trampoline::<A, R>` in this very
    // executable: the parent computed its offset from the anchor in an image with the same
    // build id, and `resolve_trampoline` checked that identity and that the address lies in
    // the section that holds only trampolines (and `no_trampoline`, which refuses). The
    // channel is the parent's own socket (`check_chan`, or the fork server's).
    let tramp: crate::process::Trampoline = unsafe { std::mem::transmute(tramp) };
    // SAFETY: `target` is the target's address computed the same way, and the trampoline was
    // instantiated for the target's exact type by the parent (`Process::<A, R>::start`).
    unsafe { tramp(target, &boot.args, chan) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Has the signature of a trampoline, and is not one.
    unsafe fn not_a_trampoline(_target: usize, _args: &[u8], _chan: BorrowedFd<'_>) -> i32 {
        42
    }

    /// A boot frame whose trampoline is a function of this executable that is not a
    /// trampoline is refused (before: any address inside the executable was called).
    #[test]
    fn a_boot_frame_names_only_real_trampolines() {
        let (parent, child) = std::os::unix::net::UnixStream::pair().unwrap();
        let off = |addr: usize| crate::image::offset_of(addr, crate::StartMethod::Spawn).unwrap();
        let boot = crate::process::Boot {
            image_id: crate::image::image_id().0.clone(),
            trampoline: off(not_a_trampoline as crate::process::Trampoline as usize) as i64,
            target: off(not_a_trampoline as crate::process::Trampoline as usize) as i64,
            name: "evil".into(),
            ident: "1".into(),
            daemon: false,
            parent_pid: 1,
            parent_name: "MainProcess".into(),
            args: Vec::new(),
        };
        frame::send(parent.as_fd(), Tag::Boot, &encode(&boot).unwrap()).unwrap();
        let code = run_boot(child.as_fd());
        assert_eq!(
            code, START_FAILED_EXIT_CODE,
            "the boot jumped to a non-trampoline"
        );
        match frame::recv_blocking(parent.as_fd()).unwrap() {
            Some((Tag::StartFailed, msg)) => {
                let msg: String = decode(&msg).unwrap();
                assert!(msg.contains("not a trampoline"), "{msg}");
            }
            other => panic!("{:?}", other.map(|(t, _)| t)),
        }
    }
}
