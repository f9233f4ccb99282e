//! Python's `multiprocessing.Process`, in Rust: start a child process that runs a function,
//! and get back its return value, or exactly how it ended.
//!
//! # Hello, child
//!
//! ```
//! use mp_process::Process;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mp_process::init(); // first thing in main: see "Spawn and forkserver"
//!     let mut child = Process::new(square, 7).name("squarer").start()?;
//!     assert_eq!(child.join()?, 49);
//!     assert_eq!(child.exitcode(), Some(0));
//!     Ok(())
//! }
//! ```
//!
//! The target is a plain `fn(A) -> R` (closures that capture nothing coerce to one); `A` and
//! `R` are [messages](mp_core::Message): any rkyv `Archive + Serialize + Deserialize` type,
//! including shared primitives (locks, queues, values) whose handles carry their file
//! descriptors into the child.
//!
//! # Start methods
//!
//! | method | how | closures | threads in the parent | needs `init()` |
//! |---|---|---|---|---|
//! | [`StartMethod::Fork`] (default) | `fork()` | yes ([`Process::fork`]) | see below | no |
//! | [`StartMethod::Spawn`] | re-executes the program | no | safe | yes |
//! | [`StartMethod::ForkServer`] | a server forks children on request | no | safe | yes |
//!
//! Choose per process with [`Process::start_method`], per group with
//! [`get_context`], or for the whole program with [`set_start_method`] (a second call without
//! `force` is an error, as in Python). The default is fork; [`DEFAULT_START_METHOD`] says why.
//!
//! # Spawn and forkserver
//!
//! Both re-run the program's executable, so the program must let a copy of itself become the
//! child: call [`init`] first thing in `main`. In the parent it returns at once; in a child
//! it runs the child's target and exits, never returning into `main`. The child finds the
//! target at the same offset from a known symbol as in the parent, after checking that it
//! runs the same build (the executable's GNU build id); a mismatch is an error, never a
//! guess. Without `init` (or [`test_support!`] in a test binary), starting a spawn or
//! forkserver child is refused with [`Error::NotInitialized`] rather than re-running `main`.
//!
//! ```
//! use mp_process::{Process, StartMethod};
//!
//! fn shout(s: String) -> String {
//!     s.to_uppercase()
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mp_process::init();
//!     for method in [StartMethod::Spawn, StartMethod::ForkServer] {
//!         let mut child = Process::new(shout, "hi".to_string())
//!             .start_method(method)
//!             .start()?;
//!         assert_eq!(child.join()?, "HI");
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Spawn starts the child with `posix_spawn` (a vfork-style clone), so its cost does not grow
//! with the parent's memory, and the parent's threads never matter: the child runs no code of
//! the parent before `exec`.
//!
//! The fork server is started on the first forkserver start (a re-executed copy of the
//! program that runs no thread and forks children on request) and exits with its parent.
//!
//! # Sharing a primitive with a child
//!
//! Anything built on [`mp_core::Shared`] or [`mp_core::Region`] (every mp lock, queue and
//! value) can be an argument, under every start method: a forked child inherits it, and
//! under spawn and forkserver its handle carries the file descriptor into the child.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use mp_core::Shared;
//! use mp_process::{Process, StartMethod};
//!
//! fn add(args: (Shared<AtomicU64>, u64)) {
//!     args.0.fetch_add(args.1, Ordering::SeqCst);
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mp_process::init();
//!     let total = Shared::new(AtomicU64::new(0))?;
//!     let mut children = Vec::new();
//!     for (i, m) in mp_process::get_all_start_methods().iter().enumerate() {
//!         children.push(Process::new(add, (total.clone(), i as u64 + 1)).start_method(*m).start()?);
//!     }
//!     for c in &mut children {
//!         c.join()?;
//!     }
//!     assert_eq!(total.load(Ordering::SeqCst), 6);
//!     Ok(())
//! }
//! ```
//!
//! A return value travels back as a message; shared handles cannot (a descriptor can only
//! be handed to a child when it starts): returning one is reported as
//! [`ProcessError::ResultLost`].
//!
//! # Waiting for several children
//!
//! [`Child::sentinel`](ActiveChild::sentinel) is a pidfd: it becomes readable when the child ends, so it can be
//! polled together with connections and other children (Python's `connection.wait`). It is
//! opened on first call, so a start that never needs it does not pay for it.
//! [`Child::join_timeout`] waits with a timeout; [`active_children`] lists (and reaps)
//! this process's children.
//!
//! ```
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//! use mp_process::Process;
//!
//! fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
//!
//! let mut slow = Process::new(nap, 10_000).start()?;
//! let mut fast = Process::new(nap, 10).start()?;
//! let mut fds = [slow.sentinel()?, fast.sentinel()?]
//!     .map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 });
//! // SAFETY (of the example): two valid pollfds.
//! assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 2, 5_000) }, 1);
//! assert!(fds[1].revents != 0, "the fast child ended first");
//! assert!(slow.join_timeout(Duration::ZERO)?.is_none());
//! slow.terminate()?;
//! assert_eq!(slow.join().unwrap_err().exitcode(), Some(-15));
//! fast.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How a child ends
//!
//! [`Child::join`] returns `Ok(value)` when the target returned, and otherwise a
//! [`ProcessError`] that tells apart [`Exited`](ProcessError::Exited) (the child called
//! `std::process::exit(n)`), [`Signaled`](ProcessError::Signaled) (Python's negative exit
//! code), [`Panicked`](ProcessError::Panicked) (with the message and location, also printed
//! on the child's stderr) and [`StartFailed`](ProcessError::StartFailed).
//!
//! ```
//! use mp_process::{Process, ProcessError};
//!
//! let mut child = Process::fork(|| -> u32 { panic!("no luck") })?;
//! match child.join() {
//!     Err(ProcessError::Panicked { message, .. }) => assert_eq!(message, "no luck"),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(child.exitcode(), Some(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Fork and threads
//!
//! A forked child is a copy of the calling thread only. If another thread of the parent held
//! a lock at that moment (stdout's, a `Mutex`, an allocator arena in an allocator that does
//! not reset itself at fork), the child must not take it. What is always fine in the child:
//! computing, allocating (glibc's malloc is fork-safe), mp primitives (they live in shared
//! memory, not behind the parent's locks), `println!` when no other thread prints, returning
//! a value, panicking. In a multi-threaded program, prefer spawn or forkserver; they are
//! safe whatever the parent's threads do.
//!
//! # Testing with processes
//!
//! An integration test file (`tests/<primitive>.rs`) puts [`test_support!`] at its top
//! level; then spawn and forkserver work in its tests: a child is the test binary re-run as
//! `<binary> --exact __mp_process_child --nocapture --test-threads=1 -q` plus mp's
//! environment markers, and the hidden entry test that the macro defines becomes the child.
//!
//! libtest runs tests on several threads at once, so a forked child shares the hazards of
//! "Fork and threads" above. Two ways to stay safe:
//!
//! * keep forked children to what is always fine (compute, allocate, use mp primitives,
//!   return a value, panic): most primitive tests need nothing more;
//! * or start the test with [`isolate!`]`(test_name)`: the test re-runs alone in a fresh
//!   copy of the binary (one test thread, the harness's main thread asleep), where a forked
//!   child may do anything a child of a plain program may; the original test only reports
//!   that copy's result (and kills it after a watchdog, 60 s by default).
//!
//! ```ignore
//! // tests/lock.rs
//! use mp_process::{Process, StartMethod};
//! mp_process::test_support!();
//!
//! fn hold(lock: mp_sync::Lock) -> bool { lock.try_acquire() }
//!
//! #[test]
//! fn lock_crosses_every_start_method() {
//!     for m in mp_process::get_all_start_methods() {
//!         let lock = mp_sync::Lock::new().unwrap();
//!         let mut child = Process::new(hold, lock.clone()).start_method(*m).start().unwrap();
//!         assert_eq!(child.join_timeout(std::time::Duration::from_secs(30)).unwrap(), Some(true));
//!     }
//! }
//!
//! #[test]
//! fn forked_children_that_print_and_start_threads() {
//!     mp_process::isolate!(forked_children_that_print_and_start_threads);
//!     let mut child = Process::fork(|| { println!("hi"); 1 }).unwrap();
//!     assert_eq!(child.join().unwrap(), 1);
//! }
//! ```
//!
//! A test binary without `test_support!` gets [`Error::NotInitialized`] from spawn and
//! forkserver starts (never a silent re-run of its tests).
//!
//! # Daemons and zombies
//!
//! A child started with [`Process::daemon`]`(true)` dies when its parent dies, even by
//! SIGKILL (`PR_SET_PDEATHSIG`, plus a check that the parent did not die before the call;
//! Python leaves such a child orphaned). The kernel ties that signal to the *thread* that
//! created the child, so mp creates daemon children (and the fork server) from one
//! long-lived launcher thread: a daemon started from a short-lived thread lives as long as
//! the parent process, not as long as that thread.
//!
//! Non-daemon children outlive their parent: mp does not join them at exit (Python does,
//! in an `atexit` handler; Rust has no reliable equivalent, so join the children you care
//! about). A [`Child`] handle that is dropped without `join` neither waits for nor kills the
//! child, and leaves no zombie: the child is reaped by the next [`Process::start`] or
//! [`active_children`] after it ends. mp waits only on its own children, each by its pid
//! (or its pidfd once opened), never with `waitpid(-1)`, so it does not steal other code's
//! exit statuses. Every use of a pid happens while mp has not reaped that child, so the pid
//! cannot have been recycled; code that reaps mp's children behind its back (`waitpid(-1)`,
//! `SIGCHLD` ignored) makes `join` report the lost status.
//!
//! Under spawn, a child's stdin is `/dev/null` (as in Python); under fork it is inherited.
//!
//! # Python names
//!
//! | Python | mp |
//! |---|---|
//! | `Process(target=f, args=a, name=n, daemon=d).start()` | `Process::new(f, a).name(n).daemon(d).start()?` |
//! | `p.join()`, `p.join(t)` | [`Child::join`] (returns the value), [`Child::join_timeout`] |
//! | `p.exitcode`, `p.is_alive()`, `p.pid`, `p.name`, `p.daemon` | same names, methods |
//! | `p.terminate()`, `p.kill()`, `p.close()`, `p.sentinel` | same names |
//! | `get_context`, `set_start_method`, `get_start_method`, `get_all_start_methods` | same names |
//! | `current_process`, `parent_process`, `active_children`, `cpu_count` | same names |

mod afterfork;
mod boot;
mod chanpool;
mod child_side;
mod consts;
mod context;
mod error;
mod forkcell;
mod frame;
mod handle;
mod identity;
mod image;
mod method;
mod process;
mod start;
pub mod symbol;
mod sys;
pub mod testing;

pub use afterfork::register_after_fork;
pub use context::{
    active_children, cpu_count, current_process, get_context, parent_process, set_start_method,
    Context, CurrentProcess, ParentProcess,
};
pub use error::{Error, ProcessError};
pub use handle::{ActiveChild, Child};
pub use method::{get_all_start_methods, get_start_method, StartMethod, DEFAULT_START_METHOD};
pub use process::{ClosureProcess, ClosureTarget, FnTarget, Process, ProcessBuilder};
pub use start::forkserver::server_pid as forkserver_pid;

/// Call first thing in `main`. In the root process it returns at once. In a process that mp
/// started with the spawn or forkserver method (a re-executed copy of the program) it plays
/// the child's role (or the fork server's) and exits: it never returns.
pub fn init() {
    child_side::init()
}

/// Installs mp's panic hook now, in this process (otherwise it is installed when the first
/// child starts). The hook wraps the one in place: outside a child's target it calls it;
/// inside, it records the panic for [`ProcessError::Panicked`] and prints it on stderr. A
/// crate that installs a hook of its own around mp's (to handle panics of its own code in
/// children differently) calls this first, so that its hook is the outer one. Idempotent.
pub fn install_panic_hook() {
    child_side::install_panic_hook()
}

/// What the exported macros (`test_support!`, `isolate!`) expand to call: public because
/// macro expansions in other crates name it, hidden because it is no API of its own.
#[doc(hidden)]
pub mod __private {
    pub use crate::child_side::mark_test_harness;
    pub use crate::consts::ENV_TEST_DIE_AFTER_CLONE;
}

/// Makes an integration test binary able to act as a spawn or forkserver child. Put
/// `mp_process::test_support!();` at the top level of the test file (not inside a module).
///
/// It defines a hidden `#[test]` named `__mp_process_child` that calls [`init`]: children
/// are started as `<test binary> --exact __mp_process_child --nocapture --test-threads=1`
/// with mp's environment markers, so libtest runs only that entry, which becomes the child.
/// In a normal test run the entry returns at once and passes.
#[macro_export]
macro_rules! test_support {
    () => {
        #[test]
        #[doc(hidden)]
        fn __mp_process_child() {
            $crate::init();
        }

        #[used]
        #[doc(hidden)]
        #[link_section = ".init_array"]
        static __MP_PROCESS_TEST_SUPPORT: extern "C" fn() = {
            extern "C" fn __mp_process_mark() {
                $crate::__private::mark_test_harness();
            }
            __mp_process_mark
        };
    };
}

/// Re-runs the enclosing test alone in a fresh, single-threaded copy of the test binary, and
/// returns from the test in the original process (which then only reports the copy's
/// result). Put it first in the test body, naming the test function:
///
/// ```ignore
/// #[test]
/// fn forked_child_prints() {
///     mp_process::isolate!(forked_child_prints);
///     // runs in its own process: forking here is as safe as in a plain program
/// }
/// ```
///
/// An optional second argument is a watchdog in seconds (default 60): a copy that runs longer
/// is killed and the test fails.
#[macro_export]
macro_rules! isolate {
    ($name:ident) => {
        $crate::isolate!($name, 60)
    };
    ($name:ident, $secs:expr) => {
        if !$crate::testing::isolated(
            ::core::module_path!(),
            ::core::stringify!($name),
            ::std::time::Duration::from_secs($secs),
        ) {
            return;
        }
    };
}
