//! [`StartMethod`] and the process-wide default (Python's `get_start_method`,
//! `get_all_start_methods`; `set_start_method` is in [`crate::context`]).

use std::sync::atomic::{AtomicU8, Ordering};

/// How a child process is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// `fork()`: the child is a copy of the parent (of the calling thread). The fastest, and
    /// the only method that runs any closure ([`Process::fork`](crate::Process::fork)); unsafe to combine with
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

/// The start method [`Process::start`](crate::Process::start) uses when none is given (Python's
/// `get_start_method()`).
pub fn get_start_method() -> StartMethod {
    StartMethod::from_u8(START_METHOD.load(Ordering::Relaxed)).unwrap_or(DEFAULT_START_METHOD)
}

/// Sets the process-wide default start method; when one was set already and `force` is
/// false, leaves it and returns it ([`set_start_method`](crate::set_start_method) makes that
/// an error).
pub(crate) fn set_default(method: StartMethod, force: bool) -> Result<(), StartMethod> {
    let new = method.to_u8();
    if force {
        START_METHOD.store(new, Ordering::Relaxed);
        return Ok(());
    }
    START_METHOD
        .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|cur| StartMethod::from_u8(cur).unwrap_or(DEFAULT_START_METHOD))
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
