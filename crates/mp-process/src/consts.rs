//! What the parent and the child agree on: the environment variables a re-executed child
//! reads, its exit codes, and the limit of one fork server request. The parent's side
//! ([`crate::start`]) and the child's side ([`crate::child_side`]) both name these, and
//! nothing else.

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

/// Set for a daemon child: the pid of the parent it must die with. The child sets
/// `PR_SET_PDEATHSIG` first thing in `init` and exits if its parent already changed (the
/// parent died between the spawn and that call).
pub(crate) const ENV_DAEMON_PARENT: &str = "MP_PROCESS_DAEMON_PARENT";

/// In a test binary, the child's real stdout is parked on this descriptor while libtest
/// starts (its banner goes to /dev/null) and put back by `init`.
pub(crate) const ENV_STDOUT: &str = "MP_PROCESS_STDOUT";

/// The environment variable of a test hook: when it names a file that does not exist yet, the
/// fork server creates it and then dies after its first `clone`, before replying (as if killed
/// at that instruction). Later servers find the file and serve normally. The variable is
/// removed from the server's environment, so its children never see it.
#[doc(hidden)]
pub const ENV_TEST_DIE_AFTER_CLONE: &str = "MP_TEST_FORKSERVER_DIE_AFTER_CLONE";

/// The most descriptors one request carries (the kernel's SCM_RIGHTS limit is 253).
pub(crate) const MAX_FDS: usize = 250;
