//! [`Process`]: the builder, and how each start method makes a child.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use mp_core::message::encode;
use mp_core::Message;

use crate::child::{Child, ChildState};
use crate::error::Error;
use crate::frame::{self, Tag};
use crate::runtime::{self, Identity};
use crate::StartMethod;

/// What a spawn or forkserver child is told to run (the payload of the boot frame).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub(crate) struct Boot {
    /// The parent's [`crate::image::ImageId`].
    pub(crate) image_id: Vec<u8>,
    /// Offset of `trampoline::<A, R>` from the anchor.
    pub(crate) trampoline: i64,
    /// Offset of the target from the anchor.
    pub(crate) target: i64,
    pub(crate) name: String,
    pub(crate) ident: String,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: u32,
    pub(crate) parent_name: String,
    /// The arguments, encoded inside `mp_core::handle::collect`.
    pub(crate) args: Vec<u8>,
}

/// The type every trampoline is called through.
pub(crate) type Trampoline = unsafe fn(usize, &[u8], BorrowedFd<'_>) -> i32;

/// Decodes the arguments and runs the target of type `fn(A) -> R` at address `target`.
///
/// # Safety
/// `target` must be the address of a `fn(A) -> R` of this executable.
// Every instantiation goes into the section that holds only trampolines: a child calls only
// an address inside it (`image::resolve_trampoline`).
#[link_section = "mp_trampolines"]
unsafe fn trampoline<A: Message, R: Message>(
    target: usize,
    args: &[u8],
    chan: BorrowedFd<'_>,
) -> i32 {
    // SAFETY: by this function's contract `target` is a `fn(A) -> R`; fn pointers are
    // pointer-sized.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(target) };
    let a: A = match mp_core::message::decode(args) {
        Ok(a) => a,
        Err(e) => return runtime::fail_start(chan, format!("decoding the arguments: {e}")),
    };
    runtime::run_target(chan, move || f(a))
}

/// A process to start: Python's `Process(target=f, args=a, name=.., daemon=..)`.
///
/// The target is a plain `fn(A) -> R` (a closure that captures nothing coerces to one), so
/// that a re-executed child (spawn, forkserver) can find it again; `A` and `R` are
/// [messages](mp_core::Message). Under fork any closure works: see [`Process::fork`] and
/// [`ClosureProcess`].
///
/// ```
/// # mp_process::init();
/// use mp_process::{Process, StartMethod};
/// fn square(x: u64) -> u64 { x * x }
/// let mut child = Process::new(square, 12).name("squarer").start()?;
/// assert_eq!(child.join()?, 144);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Process<A, R> {
    target: fn(A) -> R,
    args: A,
    opts: Options,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    pub(crate) name: Option<String>,
    pub(crate) daemon: bool,
    pub(crate) method: Option<StartMethod>,
}

impl<A, R> std::fmt::Debug for Process<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.opts.name)
            .field("daemon", &self.opts.daemon)
            .field("start_method", &self.opts.method)
            .finish_non_exhaustive()
    }
}

impl<A: Message, R: Message> Process<A, R> {
    /// A process that will run `target(args)`.
    pub fn new(target: fn(A) -> R, args: A) -> Self {
        Process {
            target,
            args,
            opts: Options::default(),
        }
    }

    /// Sets the name (Python's default is `Process-N`, N counting this process's children,
    /// `Process-1:2` for the second child of the first child).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// A daemon child dies with its parent, even when the parent is killed with SIGKILL.
    pub fn daemon(mut self, yes: bool) -> Self {
        self.opts.daemon = yes;
        self
    }

    /// Chooses the start method for this process (the default is the one of
    /// [`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.opts.method = Some(m);
        self
    }

    /// Starts the child.
    pub fn start(self) -> Result<Child<R>, Error> {
        let method = self
            .opts
            .method
            .unwrap_or_else(crate::context::get_start_method);
        match method {
            StartMethod::Fork => {
                let (target, args) = (self.target, self.args);
                start_fork(self.opts, move || target(args))
            }
            StartMethod::Spawn | StartMethod::ForkServer => {
                let boot = prepare::<A, R>(self.target, &self.args, &self.opts, method)?;
                if method == StartMethod::Spawn {
                    start_spawn(boot)
                } else {
                    crate::forkserver::start(boot)
                }
            }
        }
    }
}

impl Process<(), ()> {
    /// Forks a child that runs the closure `f` and returns its value to [`Child::join`]:
    /// the shortcut for `ClosureProcess::new(f).start()`. Always the fork start method (a
    /// closure cannot cross an `exec`).
    ///
    /// The child is a copy of the calling thread only; see the crate doc, "Fork and threads",
    /// for what it may do when the parent runs other threads.
    pub fn fork<R: Message, F: FnOnce() -> R + Send + 'static>(f: F) -> Result<Child<R>, Error> {
        ClosureProcess::new(f).start()
    }
}

/// A process that runs a closure, under the fork start method: the builder behind
/// [`Process::fork`], for when the child needs a name or the daemon flag.
///
/// ```
/// use mp_process::ClosureProcess;
/// let greeting = String::from("hello");
/// let mut child = ClosureProcess::new(move || format!("{greeting} from a child"))
///     .name("greeter")
///     .start()?;
/// assert_eq!(child.join()?, "hello from a child");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ClosureProcess<F> {
    f: F,
    opts: Options,
}

impl<F> std::fmt::Debug for ClosureProcess<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosureProcess")
            .field("name", &self.opts.name)
            .field("daemon", &self.opts.daemon)
            .finish_non_exhaustive()
    }
}

impl<R: Message, F: FnOnce() -> R + Send + 'static> ClosureProcess<F> {
    /// A process that will run `f` in a forked child.
    pub fn new(f: F) -> Self {
        ClosureProcess {
            f,
            opts: Options::default(),
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// A daemon child dies with its parent.
    pub fn daemon(mut self, yes: bool) -> Self {
        self.opts.daemon = yes;
        self
    }

    /// Forks the child.
    pub fn start(self) -> Result<Child<R>, Error> {
        start_fork(self.opts, self.f)
    }
}

fn parent_identity() -> (u32, String) {
    let name = runtime::identity()
        .map(|i| i.name.clone())
        .unwrap_or_else(|| "MainProcess".into());
    (std::process::id(), name)
}

fn child_identity(opts: &Options) -> Identity {
    let ident = runtime::next_ident();
    Identity {
        name: opts
            .name
            .clone()
            .unwrap_or_else(|| format!("Process-{ident}")),
        ident,
        daemon: opts.daemon,
        parent: Some(parent_identity()),
    }
}

/// In a new daemon child: die with the parent. `parent` is the parent's pid, read before the
/// fork; if it already died the child has been re-parented and exits at once.
/// Async-signal-safe.
pub(crate) fn die_with_parent(parent: libc::pid_t) -> bool {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid have no memory-safety preconditions.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) == 0
            && libc::getppid() == parent
    }
}

/// The fork start method.
pub(crate) fn start_fork<R: Message, F: FnOnce() -> R>(
    opts: Options,
    f: F,
) -> Result<Child<R>, Error> {
    if runtime::child_without_init() {
        return Err(Error::ChildWithoutInit);
    }
    runtime::install_panic_hook();
    crate::child::reap_detached();
    // Touch rkyv's thread-local serialization arena on this thread before forking: the first
    // touch registers a TLS destructor, which in every child would also make the dynamic
    // linker resolve `_dl_find_dso_for_object` afresh (a measurable share of a fork start).
    let _ = encode(&());
    let (parent_end, child_end) = crate::chanpool::take()?;
    let identity = Box::new(child_identity(&opts));
    let name = identity.name.clone();
    let parent_pid = std::process::id() as libc::pid_t;
    let mut f = Some(f);
    let mut identity = Some(identity);
    let child_raw = child_end.as_raw_fd();
    let mut child_main = || -> i32 {
        // In the child, which keeps its copy of the parent's end like any other descriptor
        // inherited under fork (closing it would cost a system call for nothing).
        if opts.daemon && !die_with_parent(parent_pid) {
            return runtime::START_FAILED_EXIT_CODE;
        }
        let (Some(f), Some(identity)) = (f.take(), identity.take()) else {
            return runtime::START_FAILED_EXIT_CODE;
        };
        runtime::reset_after_fork(identity);
        // SAFETY: the child's end stays open in this process (the parent's copy of the
        // `OwnedFd` was duplicated by fork and is never dropped here: the child `_exit`s).
        let chan = unsafe { BorrowedFd::borrow_raw(child_raw) };
        runtime::run_target(chan, f)
    };
    let pid = if opts.daemon {
        // SAFETY: `child_main` only does what a forked child may (module doc of
        // `crate::launcher`, crate doc "Fork and threads") and returns an exit code.
        unsafe { crate::launcher::fork(&mut child_main) }
            .map_err(|e| Error::io("fork (on the launcher thread)", e))?
    } else {
        // SAFETY: the child runs the target in a copy of this thread only. What it may do
        // when the parent runs other threads is the caller's contract, documented on
        // `Process::fork` and in the crate doc ("Fork and threads"); everything mp itself does
        // in the child is fork-safe: it replaces (never locks) per-process state it
        // inherited, allocates (glibc's malloc is reset by fork), writes to its socket and
        // leaves with `_exit`.
        match unsafe { libc::fork() } {
            -1 => return Err(Error::last_os("fork")),
            0 => {
                let code = child_main();
                crate::runtime::exit_now(code)
            }
            pid => pid,
        }
    };
    drop((f, identity));
    let state = ChildState::new(pid as u32, name, opts.daemon);
    Ok(Child::new(
        state,
        parent_end,
        Some(child_end),
        StartMethod::Fork,
    ))
}

/// Encodes what a re-executed child needs to run `target(args)`.
pub(crate) fn prepare<A: Message, R: Message>(
    target: fn(A) -> R,
    args: &A,
    opts: &Options,
    method: StartMethod,
) -> Result<Prepared, Error> {
    if runtime::child_without_init() {
        return Err(Error::ChildWithoutInit);
    }
    if !runtime::entry_ready() {
        return Err(Error::NotInitialized { method });
    }
    crate::child::reap_detached();
    let tramp = trampoline::<A, R> as Trampoline as usize;
    let (encoded, fds) = mp_core::handle::collect(|| encode(args));
    let encoded = encoded?;
    let identity = child_identity(opts);
    let (parent_pid, parent_name) = parent_identity();
    let boot = Boot {
        image_id: crate::image::image_id().0.clone(),
        trampoline: crate::image::offset_of(tramp, method)? as i64,
        target: crate::image::offset_of(target as usize, method)? as i64,
        name: identity.name,
        ident: identity.ident,
        daemon: opts.daemon,
        parent_pid,
        parent_name,
        args: encoded.to_vec(),
    };
    Ok(Prepared {
        bytes: encode(&boot)?.to_vec(),
        fds,
        name: boot.name,
        daemon: opts.daemon,
    })
}

/// A boot frame ready to send, with the descriptors of the shared objects in the arguments.
pub(crate) struct Prepared {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) name: String,
    pub(crate) daemon: bool,
}

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
/// launcher thread for a daemon (see `crate::launcher`) or when `on_launcher`.
pub(crate) fn launch(
    role: &str,
    chan: RawFd,
    fds: &[OwnedFd],
    daemon: bool,
    on_launcher: bool,
) -> Result<u32, Error> {
    let mut keep: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    keep.push(chan);
    let mut env: Vec<(&'static str, String)> = vec![
        (runtime::ENV_ROLE, role.to_string()),
        (runtime::ENV_CHAN, chan.to_string()),
    ];
    if !fds.is_empty() {
        env.push((mp_core::handle::ENV_FDS, mp_core::handle::env_value(fds)));
    }
    let mut args: Vec<&'static str> = Vec::new();
    let mut parked = None;
    let mut devnull_fd = -1;
    if runtime::test_harness() {
        args.extend([
            "--exact",
            runtime::TEST_ENTRY,
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
            env.push((runtime::ENV_STDOUT, saved.as_raw_fd().to_string()));
            devnull_fd = devnull().map(|d| d.as_raw_fd()).unwrap_or(-1);
            parked = Some(saved);
        }
    }
    if daemon {
        // The child sets PR_SET_PDEATHSIG itself, first thing in `init`, and exits if its
        // parent is no longer this process by then (see `runtime::ENV_DAEMON_PARENT`).
        env.push((runtime::ENV_DAEMON_PARENT, std::process::id().to_string()));
    }
    let argv = spawn_argv(&args);
    let envp = spawn_envp(&env);
    let run = || -> std::io::Result<u32> {
        if on_launcher || daemon {
            crate::launcher::run(move || posix_spawn_exe(argv, envp, keep, devnull_fd))?
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
fn start_spawn<R>(p: Prepared) -> Result<Child<R>, Error> {
    let (parent_end, child_end) = crate::chanpool::new_pair()?;
    let pid = launch("spawn", child_end.as_raw_fd(), &p.fds, p.daemon, false)?;
    drop((child_end, p.fds));
    let state = ChildState::new(pid, p.name, p.daemon);
    // A child that died before reading its boot frame is reported by `join` (EPIPE here).
    let _ = frame::send(parent_end.as_fd(), Tag::Boot, &p.bytes);
    Ok(Child::new(state, parent_end, None, StartMethod::Spawn))
}
