//! [`Child`]: the parent's handle on a started process, and the registry of live children.
//!
//! A child is waited on and reaped by its own id (`waitid(P_PID, pid, ..)`, or
//! `P_PIDFD` once it has a pidfd), never with `waitpid(-1)`, so mp never steals the exit
//! status of a process that other code started. Until mp reaps it, a child's pid cannot be
//! given to another process, and every use of the pid happens under the child's status lock,
//! which reaping takes too: a recycled pid is never signalled or waited on by mistake. The
//! exception is a program that reaps mp's children behind its back (`waitpid(-1)`, or
//! `SIGCHLD` set to `SIG_IGN`); mp then reports the lost status (`ECHILD`) instead of
//! guessing.
//!
//! The pidfd ([`Child::sentinel`](ActiveChild::sentinel)) is opened on first need (a sentinel, a wait with a
//! timeout): a plain start and `join` do without it, because creating and freeing the
//! descriptor is a measurable share of a fork start. A child whose handle is dropped before
//! it was joined stays in the registry and is reaped by the next
//! [`start`](crate::Process::start) or [`active_children`](crate::active_children): a
//! long-running parent does not collect zombies.

use crate::forkcell::ForkCell;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mp_core::message::decode;
use mp_core::util::lock_unpoisoned;
use mp_core::Message;

use crate::error::ProcessError;
use crate::frame::{Inbox, Tag};
use crate::method::StartMethod;

/// How a process ended, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl Status {
    fn exitcode(self) -> i32 {
        match self {
            Status::Exited(c) => c,
            Status::Signaled { signal, .. } => -signal,
        }
    }
}

/// What the parent and the registry share about a child.
pub(crate) struct ChildState {
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// The sentinel, opened on first need; set only under the status lock.
    sentinel: OnceLock<Sentinel>,
    status: Mutex<Option<Status>>,
    /// The `Child` handle was dropped: reap as soon as it ends.
    detached: AtomicBool,
}

/// A child's sentinel descriptor.
enum Sentinel {
    /// A pidfd, opened while the child was not yet reaped.
    Pidfd(OwnedFd),
    /// The child had been reaped before anyone asked: an eventfd that is always readable.
    Ended(OwnedFd),
}

impl Sentinel {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Sentinel::Pidfd(fd) | Sentinel::Ended(fd) => fd.as_fd(),
        }
    }
}

/// `waitid`'s way to name one child: by pidfd when it has one, else by pid.
fn child_id(state: &ChildState) -> (libc::idtype_t, libc::id_t) {
    match state.sentinel.get() {
        Some(Sentinel::Pidfd(fd)) => (libc::P_PIDFD, fd.as_raw_fd() as libc::id_t),
        _ => (libc::P_PID, state.pid as libc::id_t),
    }
}

impl ChildState {
    pub(crate) fn new(pid: u32, name: String, daemon: bool) -> Arc<ChildState> {
        Arc::new(ChildState {
            pid,
            name,
            daemon,
            sentinel: OnceLock::new(),
            status: Mutex::new(None),
            detached: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Status>> {
        lock_unpoisoned(&self.status)
    }

    fn status(&self) -> Option<Status> {
        *self.lock()
    }

    /// The sentinel: a pidfd, readable once the child has ended, opened on first call.
    fn sentinel(&self) -> Result<BorrowedFd<'_>, ProcessError> {
        if let Some(s) = self.sentinel.get() {
            return Ok(s.fd());
        }
        // Under the status lock the child cannot be reaped, so its pid still names it.
        let st = self.lock();
        if self.sentinel.get().is_none() {
            let made = if st.is_none() {
                // SAFETY: pidfd_open has no memory-safety preconditions.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::pid_t, 0) };
                if fd < 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(ProcessError::io("pidfd_open", e));
                }
                // SAFETY: pidfd_open returned a new descriptor that nothing else owns (opened
                // close-on-exec by the kernel).
                Sentinel::Pidfd(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
            } else {
                // SAFETY: eventfd has no memory-safety preconditions.
                let fd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC) };
                if fd < 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(ProcessError::io("eventfd", e));
                }
                // SAFETY: eventfd returned a new descriptor that nothing else owns.
                Sentinel::Ended(unsafe { OwnedFd::from_raw_fd(fd) })
            };
            // Cannot fail: the cell is only ever set under the lock we hold.
            let _ = self.sentinel.set(made);
        }
        drop(st);
        match self.sentinel.get() {
            Some(s) => Ok(s.fd()),
            None => Err(ProcessError::io("sentinel", "the sentinel was not set")),
        }
    }

    /// Reaps the child if it has ended. Returns its status.
    fn reap(&self) -> Result<Option<Status>, ProcessError> {
        let mut st = self.lock();
        if st.is_some() {
            return Ok(*st);
        }
        let (idtype, id) = child_id(self);
        loop {
            // SAFETY: an all-zero siginfo_t is a valid out-buffer for waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let flags = libc::WEXITED | libc::WNOHANG;
            // SAFETY: waitid writes into `info`, which is valid for writes; the id names our
            // unreaped child (we hold its status lock).
            let r = unsafe { libc::waitid(idtype, id, &mut info, flags) };
            if r == -1 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if e.raw_os_error() == Some(libc::ECHILD) {
                    return Err(ProcessError::io(
                        "waitid",
                        format!(
                            "child {} was reaped by other code (a waitpid(-1) or SIGCHLD set to \
                             SIG_IGN elsewhere in the program); its exit status is lost",
                            self.pid
                        ),
                    ));
                }
                return Err(ProcessError::io("waitid", e));
            }
            // SAFETY: waitid filled `info` for a child event (or left it zeroed with WNOHANG).
            let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
            if pid == 0 {
                return Ok(None);
            }
            let s = match code {
                libc::CLD_EXITED => Status::Exited(status),
                libc::CLD_DUMPED => Status::Signaled {
                    signal: status,
                    core_dumped: true,
                },
                _ => Status::Signaled {
                    signal: status,
                    core_dumped: false,
                },
            };
            *st = Some(s);
            drop(st);
            #[cfg(feature = "tracing")]
            tracing::info!(target: "mp::process", pid = self.pid, name = %self.name, status = ?s, "process ended");
            if self.detached.load(Ordering::Relaxed) {
                DETACHED.fetch_sub(1, Ordering::Relaxed);
            }
            unregister(self);
            return Ok(Some(s));
        }
    }

    /// Sleeps until the child has ended, without reaping it (so without the status lock).
    fn wait_ended(&self) -> Result<(), ProcessError> {
        let (idtype, id) = child_id(self);
        // SAFETY: an all-zero siginfo_t is a valid out-buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into `info`, which is valid for writes. WNOWAIT leaves the
        // child unreaped, so its pid stays ours while we sleep. Should another thread of ours
        // reap it between the caller's status check and this call, waitid fails with ECHILD
        // and the caller's `reap` reports the stored status (the pid could name another child
        // of ours only if the whole pid space wrapped around in between).
        let r = unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == -1 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted && e.raw_os_error() != Some(libc::ECHILD)
            {
                return Err(ProcessError::io("waitid", e));
            }
        }
        Ok(())
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), ProcessError> {
        // Held across the call: the child cannot be reaped (and its pid recycled) meanwhile.
        let st = self.lock();
        if st.is_some() {
            return Ok(());
        }
        let r = match self.sentinel.get() {
            // SAFETY: pidfd_send_signal with a null siginfo has no memory-safety
            // preconditions.
            Some(Sentinel::Pidfd(fd)) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            _ => libc::c_long::from(unsafe { libc::kill(self.pid as libc::pid_t, sig) }),
        };
        drop(st);
        if r == -1 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(ProcessError::io("kill", e));
        }
        Ok(())
    }
}

struct Registry {
    children: Vec<Arc<ChildState>>,
}

/// The live children of this process. A forked child replaces it with a fresh one without
/// touching the inherited lock (another thread of the parent may have held it at fork time).
static REGISTRY: ForkCell<Registry> = ForkCell::new();

fn registry() -> &'static Mutex<Registry> {
    REGISTRY.get(|| Registry {
        children: Vec::new(),
    })
}

pub(crate) fn reset_registry() {
    REGISTRY.reset();
}

pub(crate) fn register(state: &Arc<ChildState>) {
    let mut r = lock_unpoisoned(registry());
    r.children.push(state.clone());
}

fn unregister(state: &ChildState) {
    let mut r = lock_unpoisoned(registry());
    r.children.retain(|c| !std::ptr::eq(&**c, state));
}

fn snapshot() -> Vec<Arc<ChildState>> {
    lock_unpoisoned(registry()).children.clone()
}

/// How many children in the registry have no `Child` handle any more (so that `start` skips
/// the scan when there are none).
static DETACHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Reaps children whose handles were dropped and who have ended since.
pub(crate) fn reap_detached() {
    if DETACHED.load(Ordering::Relaxed) == 0 {
        return;
    }
    for c in snapshot() {
        if c.detached.load(Ordering::Relaxed) {
            let _ = c.reap();
        }
    }
}

/// The children of this process that are still running (ended ones are reaped).
pub(crate) fn active() -> Vec<Arc<ChildState>> {
    snapshot()
        .into_iter()
        .filter(|c| matches!(c.reap(), Ok(None)))
        .collect()
}

/// A child process: the handle [`Process::start`](crate::Process::start) returns.
///
/// The verbs are Python's: [`join`](Child::join) (which also gives the target's return
/// value), [`join_timeout`](Child::join_timeout), [`is_alive`](ActiveChild::is_alive),
/// [`exitcode`](Child::exitcode), [`terminate`](ActiveChild::terminate),
/// [`kill`](ActiveChild::kill), [`close`](Child::close) and
/// [`sentinel`](ActiveChild::sentinel).
///
/// A `Child` dereferences to an [`ActiveChild`], which has the verbs the two share: `pid`,
/// `name`, `daemon`, `is_alive`, `terminate`, `kill` and `sentinel`.
///
/// Dropping a `Child` neither waits for nor kills the process (a non-daemon child keeps
/// running, as in Python); it is reaped in the background once it ends (see the module doc).
pub struct Child<R> {
    /// The verbs a `Child` shares with [`ActiveChild`] (through `Deref`).
    child: ActiveChild,
    chan: Option<OwnedFd>,
    /// Under fork: the child's end of the socket pair, kept so that the pair can be used
    /// again once the child has been joined (see [`crate::chanpool`]).
    spare: Option<OwnedFd>,
    inbox: Inbox,
    method: StartMethod,
    taken: bool,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Child<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.child.state.pid)
            .field("name", &self.child.state.name)
            .field("daemon", &self.child.state.daemon)
            .field("start_method", &self.method)
            .field("status", &self.child.state.status())
            .finish()
    }
}

impl<R> Child<R> {
    pub(crate) fn new(
        state: Arc<ChildState>,
        chan: OwnedFd,
        spare: Option<OwnedFd>,
        method: StartMethod,
    ) -> Child<R> {
        register(&state);
        #[cfg(feature = "tracing")]
        tracing::info!(
            target: "mp::process",
            pid = state.pid,
            name = %state.name,
            daemon = state.daemon,
            method = %method,
            "process started"
        );
        Child {
            child: ActiveChild::new(state),
            chan: Some(chan),
            spare,
            inbox: Inbox {
                // A forked child runs its target at once: there is no boot to acknowledge.
                started: method == StartMethod::Fork,
                ..Inbox::default()
            },
            method,
            taken: false,
            _r: PhantomData,
        }
    }

    /// The start method that made this child.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// Python's `exitcode`: `None` while the child runs, then its exit code, or minus the
    /// signal that killed it (`-15` after [`terminate`](ActiveChild::terminate)). A panicked target
    /// exits with code 1. Never blocks.
    pub fn exitcode(&self) -> Option<i32> {
        self.child.state.reap().ok().flatten().map(Status::exitcode)
    }

    /// Sends any signal. A no-op once the child has been reaped.
    pub fn send_signal(&self, signal: i32) -> Result<(), ProcessError> {
        self.child.state.signal(signal)
    }

    /// Waits until the child ends or `deadline` passes; true when it ended. A child never
    /// blocks on its socket (large values travel in a memfd), so waiting sleeps once, on the
    /// child's exit, and the frames are read after the child has ended. The status lock is
    /// never held while sleeping (`active_children` may look at this child meanwhile).
    fn wait(&mut self, deadline: Option<Instant>) -> Result<bool, ProcessError> {
        let Some(deadline) = deadline else {
            // No timeout: sleep in waitid(WNOWAIT), then reap.
            loop {
                if self.child.state.status().is_none() {
                    self.child.state.wait_ended()?;
                }
                if self.child.state.reap()?.is_some() {
                    self.drain()?;
                    return Ok(true);
                }
            }
        };
        loop {
            if self.child.state.reap()?.is_some() {
                self.drain()?;
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            let mut fd = libc::pollfd {
                fd: self.child.state.sentinel()?.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut fd, 1, ms) };
            if r == -1 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(ProcessError::io("poll", e));
                }
            }
        }
    }

    fn drain(&mut self) -> Result<(), ProcessError> {
        if let Some(c) = &self.chan {
            if !self.inbox.eof {
                self.inbox
                    .pump(c.as_fd())
                    .map_err(|e| ProcessError::io("recv", e))?;
            }
        }
        Ok(())
    }

    /// Closes (and releases) the handle. Python's `close`: an error if the child is still
    /// running, in which case the handle is given back untouched.
    pub fn close(self) -> Result<(), Child<R>> {
        if self.is_alive() {
            return Err(self);
        }
        Ok(())
    }
}

impl<R: Message> Child<R> {
    /// Waits for the child to end and returns its target's return value, or how it ended
    /// otherwise (exit code, signal, panic, start failure). The value can be taken once;
    /// later calls return [`ProcessError::AlreadyJoined`], while
    /// [`exitcode`](Child::exitcode) and [`is_alive`](ActiveChild::is_alive) keep working.
    pub fn join(&mut self) -> Result<R, ProcessError> {
        self.wait(None)?;
        self.take()
    }

    /// Like [`join`](Child::join), but gives up after `timeout`: `Ok(None)` means the child
    /// is still running (Python's `join(timeout)` followed by `is_alive()`). A zero timeout
    /// polls.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>, ProcessError> {
        let deadline = Instant::now().checked_add(timeout);
        if !self.wait(deadline)? {
            return Ok(None);
        }
        self.take().map(Some)
    }

    /// [`join`](Child::join) as a future, on any runtime (cargo feature `async`): it sleeps
    /// on the child's pidfd ([`sentinel`](ActiveChild::sentinel)) in mp-core's descriptor
    /// reactor, with no thread parked and no spin, and resolves with what `join` returns.
    /// Dropping it changes nothing: the child runs on, and a later join gets its value.
    #[cfg(feature = "async")]
    pub async fn join_async(&mut self) -> Result<R, ProcessError> {
        use std::os::fd::AsRawFd;
        loop {
            if !self.is_alive() {
                return self.join();
            }
            let fd = self.sentinel()?.as_raw_fd();
            mp_core::readable::readable(fd)
                .await
                .map_err(|e| ProcessError::io("register with the async reactor", e))?;
        }
    }

    fn take(&mut self) -> Result<R, ProcessError> {
        if self.taken {
            return Err(ProcessError::AlreadyJoined);
        }
        self.taken = true;
        let status = self
            .state
            .status()
            .ok_or_else(|| ProcessError::io("join", "the child was not reaped"))?;
        // The channel is of no further use. The child is dead and its frames were read up to
        // `EAGAIN`: a pair whose every byte parsed as whole frames is empty and goes back to
        // the pool; any other is closed.
        let (chan, spare) = (self.chan.take(), self.spare.take());
        if let (Some(chan), Some(spare)) = (chan, spare) {
            let i = &self.inbox;
            if i.buf.is_empty() && i.fds.is_empty() && !i.malformed && !i.eof {
                crate::chanpool::give_back(chan, spare);
            }
        }
        let inbox = std::mem::take(&mut self.inbox);
        match (inbox.last, status) {
            (Some((Tag::Returned, bytes)), Status::Exited(0)) => decode::<R>(&bytes)
                .map_err(|e| ProcessError::ResultLost(format!("malformed result: {e}"))),
            (Some((Tag::Panicked, bytes)), _) => match decode::<(String, String)>(&bytes) {
                Ok((message, location)) => Err(ProcessError::Panicked { message, location }),
                Err(e) => Err(ProcessError::ResultLost(format!(
                    "malformed panic report: {e}"
                ))),
            },
            (Some((Tag::StartFailed, bytes)), _) => Err(ProcessError::StartFailed(
                decode::<String>(&bytes).unwrap_or_else(|e| format!("(malformed report: {e})")),
            )),
            (Some((Tag::ResultLost, bytes)), _) => Err(ProcessError::ResultLost(
                decode::<String>(&bytes).unwrap_or_else(|e| format!("(malformed report: {e})")),
            )),
            (
                _,
                Status::Signaled {
                    signal,
                    core_dumped,
                },
            ) => Err(ProcessError::Signaled {
                signal,
                core_dumped,
            }),
            (_, Status::Exited(code)) if !inbox.started => Err(ProcessError::StartFailed(format!(
                "the child exited with code {code} before it ran its target; in a program, \
                     call mp_process::init() (mp::init()) first thing in main; in a test \
                     binary, put mp_process::test_support!() at the top level of the test file"
            ))),
            (_, Status::Exited(code)) if inbox.malformed => Err(ProcessError::ResultLost(format!(
                "the child (exit code {code}) sent malformed frames"
            ))),
            (_, Status::Exited(code)) => Err(ProcessError::Exited { code }),
        }
    }
}

impl<R> std::ops::Deref for Child<R> {
    type Target = ActiveChild;

    fn deref(&self) -> &ActiveChild {
        &self.child
    }
}

impl<R> Drop for Child<R> {
    fn drop(&mut self) {
        // The status lock orders this with a concurrent reap, so DETACHED counts each
        // detached, unreaped child exactly once.
        let st = lock_unpoisoned(&self.child.state.status);
        if st.is_none() {
            self.child.state.detached.store(true, Ordering::Relaxed);
            DETACHED.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        let _ = self.child.state.reap();
    }
}

/// A live child of this process, as listed by [`active_children`](crate::active_children),
/// and the verbs every handle on a child has (a [`Child`] dereferences to one).
#[derive(Clone)]
pub struct ActiveChild {
    state: Arc<ChildState>,
}

impl std::fmt::Debug for ActiveChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveChild")
            .field("pid", &self.state.pid)
            .field("name", &self.state.name)
            .finish()
    }
}

impl ActiveChild {
    pub(crate) fn new(state: Arc<ChildState>) -> ActiveChild {
        ActiveChild { state }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// The child's name (given with [`Process::name`](crate::Process::name), or Python's
    /// default `Process-N`).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Whether the child was started as a daemon (it dies with its parent).
    pub fn daemon(&self) -> bool {
        self.state.daemon
    }

    /// Whether the child is still running. Never blocks; reaps the child if it has ended.
    pub fn is_alive(&self) -> bool {
        matches!(self.state.reap(), Ok(None))
    }

    /// Sends SIGTERM (Python's `terminate`). A no-op once the child has ended.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        self.state.signal(libc::SIGTERM)
    }

    /// Sends SIGKILL (Python's `kill`). A no-op once the child has ended.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.state.signal(libc::SIGKILL)
    }

    /// A descriptor that becomes readable when the child ends: a pidfd, usable with
    /// `poll`/`epoll` and in a multi-object wait together with connections (Python's
    /// `sentinel`). It is opened on the first call (a start does without it) and then stays
    /// the same descriptor for the life of the handle; the call fails only if a descriptor
    /// cannot be created (`EMFILE`). Asked for after the child was reaped, it is an
    /// already-readable descriptor.
    pub fn sentinel(&self) -> Result<BorrowedFd<'_>, ProcessError> {
        self.state.sentinel()
    }
}
