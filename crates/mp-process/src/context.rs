//! Start methods and contexts (Python's `get_context`, `set_start_method`,
//! `get_start_method`, `get_all_start_methods`), and the process-wide queries
//! (`current_process`, `parent_process`, `active_children`, `cpu_count`).

use std::sync::atomic::{AtomicU8, Ordering};

use mp_core::Message;

use crate::child::ActiveChild;
use crate::error::Error;
use crate::process::Process;

/// How a child process is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// `fork()`: the child is a copy of the parent (of the calling thread). The fastest, and
    /// the only method that runs any closure ([`Process::fork`]); unsafe to combine with
    /// threads that hold locks (see the crate doc, "Fork and threads").
    Fork,
    /// Re-execute this program (`/proc/self/exe`); the child finds its target by a checked
    /// offset and decodes its arguments. Safe in a multi-threaded parent; needs
    /// [`init`](crate::init) first thing in `main`.
    Spawn,
    /// A single-threaded server, started once (by re-executing this program) and kept
    /// alive, forks each child on request. Safe in a multi-threaded parent and much faster
    /// than spawn; needs [`init`](crate::init) first thing in `main`.
    ForkServer,
}

impl StartMethod {
    /// Python's name of the method: `"fork"`, `"spawn"` or `"forkserver"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            StartMethod::Fork => 1,
            StartMethod::Spawn => 2,
            StartMethod::ForkServer => 3,
        }
    }

    fn from_u8(v: u8) -> Option<StartMethod> {
        match v {
            1 => Some(StartMethod::Fork),
            2 => Some(StartMethod::Spawn),
            3 => Some(StartMethod::ForkServer),
            _ => None,
        }
    }
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StartMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            _ => Err(format!(
                "unknown start method {s:?}: expected fork, spawn or forkserver"
            )),
        }
    }
}

/// The default start method: [`StartMethod::Fork`].
///
/// Why fork: it is the only method that works in every program with no setup (spawn and
/// forkserver re-run the program, which must cooperate by calling [`init`](crate::init)
/// first thing in `main`; a default that silently needed it would fail, or worse, re-run
/// `main`, in every program that has not opted in), it is the fastest, it runs closures, and
/// it is what Python used on Linux until 3.14. Its one hazard, a multi-threaded parent, is
/// explicit in Rust programs: a program that runs threads (a thread pool, an async runtime)
/// should call `set_start_method(StartMethod::ForkServer, false)` after `init()`.
pub const DEFAULT_START_METHOD: StartMethod = StartMethod::Fork;

/// 0 = never set (the default applies).
static START_METHOD: AtomicU8 = AtomicU8::new(0);

/// The start method [`Process::start`] uses when none is given (Python's
/// `get_start_method()`).
pub fn get_start_method() -> StartMethod {
    StartMethod::from_u8(START_METHOD.load(Ordering::Relaxed)).unwrap_or(DEFAULT_START_METHOD)
}

/// Sets the process-wide default start method (Python's `set_start_method`). A second call
/// is an error ([`Error::StartMethodAlreadySet`]) unless `force` is true.
pub fn set_start_method(method: StartMethod, force: bool) -> Result<(), Error> {
    let new = method.to_u8();
    if force {
        START_METHOD.store(new, Ordering::Relaxed);
        return Ok(());
    }
    START_METHOD
        .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|cur| Error::StartMethodAlreadySet {
            current: StartMethod::from_u8(cur).unwrap_or(DEFAULT_START_METHOD),
        })
}

/// Every start method this platform supports, the default first (Python's
/// `get_all_start_methods()`).
pub fn get_all_start_methods() -> &'static [StartMethod] {
    &[
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ]
}

/// A start method bound to a value (Python's `get_context(method)`): builds processes that
/// use it without changing the process-wide default.
///
/// ```
/// use mp_process::{get_context, StartMethod};
/// fn double(x: i32) -> i32 { x * 2 }
/// let ctx = get_context(Some(StartMethod::Fork));
/// let mut child = ctx.process(double, 21).start()?;
/// assert_eq!(child.join()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// The context of `method`, or of the current default when `None`.
pub fn get_context(method: Option<StartMethod>) -> Context {
    Context {
        method: method.unwrap_or_else(get_start_method),
    }
}

impl Context {
    /// This context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A [`Process`] that starts with this context's method.
    pub fn process<A: Message, R: Message>(&self, target: fn(A) -> R, args: A) -> Process<A, R> {
        Process::new(target, args).start_method(self.method)
    }
}

/// This process, as Python's `current_process()` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    name: String,
    pid: u32,
    daemon: bool,
}

impl CurrentProcess {
    /// `MainProcess` in the root, the name given at start in a child.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether this process was started as a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

/// This process: its name, pid and daemon flag.
pub fn current_process() -> CurrentProcess {
    match crate::runtime::identity() {
        Some(id) => CurrentProcess {
            name: id.name.clone(),
            pid: std::process::id(),
            daemon: id.daemon,
        },
        None => CurrentProcess {
            name: "MainProcess".into(),
            pid: std::process::id(),
            daemon: false,
        },
    }
}

/// The process that started this one, as Python's `parent_process()` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentProcess {
    name: String,
    pid: u32,
}

impl ParentProcess {
    /// The parent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the parent is still running (it is our parent as long as `getppid` says so;
    /// a dead parent's children are re-parented).
    pub fn is_alive(&self) -> bool {
        // SAFETY: getppid has no preconditions.
        (unsafe { libc::getppid() }) as u32 == self.pid
    }
}

/// The parent of this process when it was started by mp, `None` in the root process.
pub fn parent_process() -> Option<ParentProcess> {
    let id = crate::runtime::identity()?;
    let (pid, name) = id.parent.clone()?;
    Some(ParentProcess { name, pid })
}

/// The children of this process that are still running; finished ones are reaped as a side
/// effect (Python's `active_children()`).
pub fn active_children() -> Vec<ActiveChild> {
    crate::child::active()
        .into_iter()
        .map(ActiveChild::new)
        .collect()
}

/// The number of CPUs this process may actually use: the CPUs of its affinity mask, further
/// limited by a cgroup CPU quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` in v1), rounded
/// up, and at least 1. Python's `cpu_count()` reports every CPU of the machine, which
/// oversubscribes a pinned or containerised program.
///
/// This is what [`std::thread::available_parallelism`] computes on Linux (it reads the
/// affinity mask and walks the cgroup hierarchy for the tightest quota); mp uses it rather
/// than keeping a second copy of that logic.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
