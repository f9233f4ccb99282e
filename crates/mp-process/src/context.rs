//! Contexts and the process-wide queries: Python's `get_context`, `set_start_method`,
//! `current_process`, `parent_process`, `active_children`, `cpu_count`.

use mp_core::Message;

use crate::error::Error;
use crate::handle::ActiveChild;
use crate::method::{get_start_method, StartMethod};
use crate::process::Process;

/// Sets the process-wide default start method (Python's `set_start_method`). A second call
/// is an error ([`Error::StartMethodAlreadySet`]) unless `force` is true.
pub fn set_start_method(method: StartMethod, force: bool) -> Result<(), Error> {
    crate::method::set_default(method, force)
        .map_err(|current| Error::StartMethodAlreadySet { current })
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
    match crate::identity::identity() {
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
    let id = crate::identity::identity()?;
    let (pid, name) = id.parent.clone()?;
    Some(ParentProcess { name, pid })
}

/// The children of this process that are still running; finished ones are reaped as a side
/// effect (Python's `active_children()`).
pub fn active_children() -> Vec<ActiveChild> {
    crate::handle::active()
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
