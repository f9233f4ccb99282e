//! [`SharedMemoryManager`]: named blocks that never outlive the process that started it.
//!
//! See the crate docs, "How the manager cleans up", for the design.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mp_core::{Item, ShareableList, Shared, SharedMemory};
use mp_process::{Child, Process, StartMethod};

use crate::error::{Error, Result};

/// Where POSIX shared memory names live on Linux.
const SHM_DIR: &str = "/dev/shm";
/// How long `shutdown` waits for the cleaner to end after SIGTERM before it sends SIGKILL.
const CLEANER_STOP: Duration = Duration::from_secs(5);
/// How long `start` waits for the cleaner to arm its wait on the starter.
const CLEANER_READY: Duration = Duration::from_secs(30);

/// Python's `multiprocessing.managers.SharedMemoryManager`: makes named [`SharedMemory`]
/// blocks and [`ShareableList`]s, and unlinks every one of them at
/// [`shutdown`](Self::shutdown), on drop, and when the process that started it dies (even by
/// SIGKILL), through a small cleaner process (see the [crate docs](crate#how-the-manager-cleans-up)).
///
/// The handles it returns do not unlink on drop (the manager does); other processes attach
/// to them by [`SharedMemory::name`] / [`ShareableList::name`].
pub struct SharedMemoryManager {
    prefix: String,
    starter: u32,
    next: AtomicU64,
    cleaner_pid: u32,
    cleaner: Mutex<Option<Child<()>>>,
    shut: AtomicBool,
}

impl std::fmt::Debug for SharedMemoryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemoryManager")
            .field("prefix", &self.prefix)
            .field("cleaner_pid", &self.cleaner_pid)
            .field("shut_down", &self.shut.load(Ordering::Relaxed))
            .finish()
    }
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: the pointer and length name the unfilled tail of `b`.
        let r = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::Io {
                op: "getrandom",
                source: e,
            });
        }
        got += r as usize;
    }
    Ok(u64::from_ne_bytes(b))
}

/// Unlinks every `/dev/shm/mp-<prefix>*`; returns how many it removed. Names that vanish
/// meanwhile are no error.
fn sweep(prefix: &str) -> std::io::Result<usize> {
    let full = format!("{}{prefix}", mp_core::region::NAME_PREFIX);
    let mut n = 0;
    for entry in std::fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&full) {
            continue;
        }
        let Ok(path) = std::ffi::CString::new(format!("/{name}")) else {
            continue;
        };
        // SAFETY: `path` is a NUL-terminated string that lives across the call.
        if unsafe { libc::shm_unlink(path.as_ptr()) } == 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// The names (without the `mp-` prefix) of the blocks of `prefix` that exist now.
fn existing(prefix: &str) -> std::io::Result<Vec<String>> {
    let full = format!("{}{prefix}", mp_core::region::NAME_PREFIX);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            if let Some(rest) = name.strip_prefix(mp_core::region::NAME_PREFIX) {
                if name.starts_with(&full) {
                    names.push(rest.to_owned());
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Opens a pidfd of the process named by `token`: `Some(fd)` when the starter still lives and
/// the fd is its own, `None` when it is already gone, `Err(())` when pidfds are not available.
fn open_starter(token: u64) -> Result<Option<OwnedFd>, ()> {
    let pid = mp_core::ident::id_of(token);
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(()),
        };
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd names whatever process had the pid when it was opened: when the token (pid
    // and start time) still names a live process now, that process is the starter.
    Ok(mp_core::ident::is_alive(token).then_some(fd))
}

/// Points stdin, stdout and stderr at /dev/null and closes every other descriptor but
/// `keep`: a forked cleaner must not hold the starter's pipes and sockets open (a peer
/// waiting for end-of-file on one would wait for the cleaner too).
fn drop_inherited_fds(keep: Option<i32>) {
    // SAFETY: open of a NUL-terminated path; dup2 and close of descriptor numbers, which
    // cannot violate memory safety. The cleaner owns every descriptor of its process (the
    // code that opened them in the parent does not run here).
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for std_fd in 0..3 {
                libc::dup2(null, std_fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        let close = |from: u32, to: u32| {
            if from > to {
                return;
            }
            if libc::syscall(libc::SYS_close_range, from, to, 0) != 0 {
                // No close_range (before Linux 5.9): one by one, up to a bound.
                for fd in from..=to.min(65_535) {
                    libc::close(fd as i32);
                }
            }
        };
        match keep.and_then(|k| u32::try_from(k).ok()).filter(|&k| k >= 3) {
            Some(k) => {
                close(3, k - 1);
                close(k + 1, u32::MAX);
            }
            None => close(3, u32::MAX),
        }
    }
}

/// Waits until `fd` (a pidfd of the starter) is readable, or, without one, until `token` is
/// no longer alive (asking every 100 ms).
fn wait_for_end(fd: Option<&OwnedFd>, token: u64) {
    if let Some(fd) = fd {
        loop {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r > 0 {
                return;
            }
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
    while mp_core::ident::is_alive(token) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cleaner's body: arm a wait on the starter, tell `start` it is ready, let go of
/// everything inherited, wait for the starter to end, unlink its blocks, exit. It never
/// returns into mp-process (nobody is left to receive a result).
fn cleaner((starter, prefix, ready): (u64, String, Shared<AtomicU32>)) {
    // SAFETY: setsid and setting signal dispositions to SIG_IGN have no preconditions.
    // A session of its own keeps signals sent to the starter's process group (`kill --
    // -pgid`, a terminal's SIGINT and SIGHUP) from killing the cleaner before it cleans up.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let pidfd = open_starter(starter);
    // Release pairs with the Acquire load in `start_with`: from here on, no end of the
    // starter can be missed.
    ready.store(1, Ordering::Release);
    mp_core::futex::wake_all(&ready);
    drop(ready); // the mapping goes; its descriptor is closed below anyway
    match pidfd {
        Ok(Some(fd)) => {
            drop_inherited_fds(Some(fd.as_raw_fd()));
            wait_for_end(Some(&fd), starter);
        }
        Ok(None) => drop_inherited_fds(None),
        Err(()) => {
            drop_inherited_fds(None);
            wait_for_end(None, starter);
        }
    }
    let _ = sweep(&prefix);
    // SAFETY: _exit ends the process at once; nothing of this process needs to run after it.
    unsafe { libc::_exit(0) }
}

impl SharedMemoryManager {
    /// Starts a manager: its cleaner is started with the program's start method
    /// ([`mp_process::get_start_method`]; spawn and forkserver need `mp::init()` in `main`).
    pub fn start() -> Result<SharedMemoryManager> {
        Self::start_with(mp_process::get_start_method())
    }

    /// Starts a manager whose cleaner is started with `method`.
    pub fn start_with(method: StartMethod) -> Result<SharedMemoryManager> {
        let starter = std::process::id();
        let prefix = format!("smm-{starter}-{:016x}-", random_u64()?);
        let token = mp_core::ident::process_token();
        let ready = Shared::new(AtomicU32::new(0))?;
        let mut child = Process::new(cleaner, (token, prefix.clone(), ready.clone()))
            .name("mp-shared-memory-cleaner")
            .daemon(false)
            .start_method(method)
            .start()?;
        // No block may exist before the cleaner watches the starter: a spawned child whose
        // parent dies before it boots refuses to run, and would clean nothing.
        let deadline = Instant::now() + CLEANER_READY;
        // Acquire pairs with the Release store in `wait_for_end`.
        while ready.load(Ordering::Acquire) == 0 {
            let now = Instant::now();
            if now >= deadline || !child.is_alive() {
                let _ = child.kill();
                let how = match child.join_timeout(CLEANER_STOP) {
                    Ok(Some(())) => "it ended before it was ready".to_string(),
                    Ok(None) => format!("it was not ready within {CLEANER_READY:?}"),
                    Err(e) => e.to_string(),
                };
                return Err(Error::CleanerFailed(how));
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            mp_core::futex::wait(&ready, 0, Some(slice));
        }
        Ok(SharedMemoryManager {
            prefix,
            starter,
            next: AtomicU64::new(0),
            cleaner_pid: child.pid(),
            cleaner: Mutex::new(Some(child)),
            shut: AtomicBool::new(false),
        })
    }

    fn next_name(&self) -> Result<String> {
        if self.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(format!("{}{}-{n}", self.prefix, std::process::id()))
    }

    /// A new named block of `size` zeroed bytes (Python's `smm.SharedMemory(size)`). Other
    /// processes attach to it by its [`name`](SharedMemory::name). Errors:
    /// [`Error::ShutDown`], and those of [`SharedMemory::create`].
    pub fn shared_memory(&self, size: u64) -> Result<SharedMemory> {
        let name = self.next_name()?;
        Ok(SharedMemory::create(&name, size)?.into_unowned())
    }

    /// A new named [`ShareableList`] holding `items` (Python's `smm.ShareableList(seq)`).
    pub fn shareable_list<I>(&self, items: I) -> Result<ShareableList>
    where
        I: IntoIterator,
        I::Item: Into<Item>,
    {
        let name = self.next_name()?;
        Ok(ShareableList::create(&name, items)?.into_unowned())
    }

    /// The start of every block name this manager makes (without the `mp-` of `/dev/shm`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The names of this manager's blocks that exist now.
    pub fn block_names(&self) -> Result<Vec<String>> {
        existing(&self.prefix).map_err(|source| Error::Io {
            op: "reading /dev/shm",
            source,
        })
    }

    /// The pid of the cleaner process.
    pub fn cleaner_pid(&self) -> u32 {
        self.cleaner_pid
    }

    /// True once [`shutdown`](Self::shutdown) ran.
    pub fn is_shut_down(&self) -> bool {
        self.shut.load(Ordering::Acquire)
    }

    /// Unlinks every block the manager made (their mappings stay valid where they are mapped)
    /// and stops the cleaner. A second call does nothing. Only the process that started the
    /// manager may shut it down ([`Error::NotStarter`] elsewhere, for example in a forked
    /// child holding a copy).
    pub fn shutdown(&self) -> Result<()> {
        if std::process::id() != self.starter {
            return Err(Error::NotStarter {
                starter: self.starter,
            });
        }
        if self.shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let swept = sweep(&self.prefix).map_err(|source| Error::Io {
            op: "unlinking the manager's blocks in /dev/shm",
            source,
        });
        let child = self
            .cleaner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut child) = child {
            let _ = child.terminate();
            match child.join_timeout(CLEANER_STOP) {
                Ok(Some(())) | Err(_) => {}
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.join_timeout(CLEANER_STOP);
                }
            }
        }
        swept.map(|_| ())
    }
}

impl Drop for SharedMemoryManager {
    fn drop(&mut self) {
        if std::process::id() == self.starter {
            let _ = self.shutdown();
        } else if let Some(child) = self
            .cleaner
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // A copy in another process (a forked child): the cleaner is not its child, so its
            // handle must neither wait for it nor signal it.
            std::mem::forget(child);
        }
    }
}
