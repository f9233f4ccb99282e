//! Who holds a lock: identity tokens that pid reuse cannot fool, and liveness checks.
//!
//! Every robust primitive (the lock of [`crate::lock`] under mp-sync's locks and mp-queue's
//! internal locks, mp-queue's zero-copy claims) records its holder as a token from here, and a
//! waiter that has waited a while asks [`is_alive`] before it takes over.
//!
//! A *token* is a `u64`: the pid (for process identity) or the tid (for thread identity) in
//! bits 32..62, and the low 32 bits of that task's start time (field 22 of
//! `/proc/<id>/stat`, in clock ticks since boot) in bits 0..32. Bit 63 is left free for the
//! lock words that embed a token (it is their "contended" flag). Linux ids stay below 2^22
//! (`pid_max` limit), so they fit.
//!
//! A token names one incarnation of a task: when the id is reused by a later process, its
//! start time differs (two tasks with the same id would have to start an exact multiple of
//! 2^32 ticks apart: 497 days at 100 Hz, to the tick). [`is_alive`] reads `/proc/<id>/stat`
//! and compares; a zombie (killed but not yet reaped) counts as dead.
//!
//! # When `/proc` does not show the task
//!
//! A missing `/proc/<id>` does not prove that the task is gone: a `/proc` mounted with
//! `hidepid=2` (`invisible`) hides other users' processes, and a process may run under a
//! `/proc` of another pid namespace, or with none mounted at all. So a missing entry is
//! confirmed with `kill(id, 0)`, which asks the kernel itself: `ESRCH` means no task has the
//! id (dead), success or `EPERM` means one does (alive: the caller keeps waiting). Without
//! `/proc`, the start time cannot be compared, so a reused id then looks alive: a waiter may
//! wait longer than needed, but never takes over from a live holder.
//!
//! Tokens are only comparable within one pid namespace: the same number names different tasks
//! in two namespaces. Regions record the pid namespace of their creator
//! ([`pid_namespace`]), and a process of another namespace is refused when it maps one.
//!
//! Everything here is async-signal-safe once the current task's token is cached, and stays
//! async-signal-safe when it is not: the `/proc` reads use `open`/`read`/`close` on stack
//! buffers, no allocation. So a child forked from a multi-threaded parent can use every
//! primitive of this crate before it calls `exec` (or instead of it).
//!
//! # The cache, and fork
//!
//! The calling process's token is cached in a private page marked `MADV_WIPEONFORK`: the
//! kernel hands every child created without `CLONE_VM` (by `fork`, or by a raw `clone` such as
//! a fork server's, which runs no `pthread_atfork` handlers) a zeroed copy, so a child never
//! acts under its parent's identity. A thread's token is cached in a thread-local together
//! with the process token it was computed under, and recomputed when that no longer matches.
//! On kernels without `MADV_WIPEONFORK` (before 4.14) the cache is a plain static, reset by a
//! `pthread_atfork` child handler (then children must come from libc's `fork`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// The top bit of a lock word that holds a token: set when some task sleeps on the lock.
pub const CONTENDED: u64 = 1 << 63;

/// The cached process token: word 0 of a `MADV_WIPEONFORK` page, or [`FALLBACK`].
static CACHE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static FALLBACK: AtomicU64 = AtomicU64::new(0);
/// Set by the thread that installed the cache, once it has registered the fork handler.
static REGISTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// (thread token, process token it was computed under).
    static THREAD_TOKEN: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

extern "C" fn after_fork_in_child() {
    // Only atomics and a const-initialised thread-local without destructor: async-signal-safe.
    // Acquire pairs with the Release store in `init`.
    let p = CACHE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: `p` points into the page mapped by `init` (or the static), never unmapped.
        unsafe { (*p).store(0, Ordering::Relaxed) };
    }
    THREAD_TOKEN.with(|t| t.set((0, 0)));
}

/// Sets the cache up (a wipe-on-fork page, else the static) and registers the fork handler.
/// Called by every constructor of a primitive and by the first token computation; one load
/// after the first call.
///
/// There is no `Once` here on purpose: a child forked while another thread of its parent was
/// inside a `Once` would wait forever for a thread that does not exist in it. Racing callers
/// each prepare a page; one wins the compare-exchange and the others unmap theirs.
pub fn init() {
    // Acquire pairs with the AcqRel compare-exchange below: the page is in place.
    if !CACHE.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: a fresh private anonymous mapping of one page; no existing memory is touched.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let fallback: *mut AtomicU64 = FALLBACK.as_ptr().cast();
    let mut cell = fallback;
    if page != libc::MAP_FAILED {
        // SAFETY: `page` is the mapping just created; madvise only changes its fork behaviour.
        if unsafe { libc::madvise(page, 4096, libc::MADV_WIPEONFORK) } == 0 {
            cell = page.cast();
        } else {
            // SAFETY: our own mapping, not used by anything.
            unsafe { libc::munmap(page, 4096) };
        }
    }
    match CACHE.compare_exchange(
        std::ptr::null_mut(),
        cell,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            if !REGISTERED.swap(true, Ordering::AcqRel) {
                // SAFETY: registering a handler has no memory-safety preconditions; the
                // handler only stores to atomics and to a const-initialised thread-local
                // (async-signal-safe).
                unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
            }
        }
        Err(_) => {
            if cell != fallback {
                // SAFETY: our page lost the race and was never published: nobody else has it.
                unsafe { libc::munmap(cell.cast(), 4096) };
            }
        }
    }
}

/// The token of the calling process (pid + process start time): two loads once cached.
#[inline]
pub fn process_token() -> u64 {
    // Acquire pairs with the Release store in `init`.
    let p = CACHE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: once set, CACHE points to a live AtomicU64 (the page is never unmapped, the
        // fallback is a static).
        let t = unsafe { (*p).load(Ordering::Relaxed) };
        if t != 0 {
            return t;
        }
    }
    process_token_slow()
}

#[cold]
fn process_token_slow() -> u64 {
    init();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let start = read_start(b"/proc/self/stat\0").unwrap_or(Start::Unknown);
    let t = make(pid, start);
    let p = CACHE.load(Ordering::Acquire);
    // SAFETY: `init` has run, so CACHE points to a live AtomicU64.
    unsafe { (*p).store(t, Ordering::Relaxed) };
    t
}

/// The token of the calling thread (tid + thread start time): the process token and a
/// thread-local once cached.
#[inline]
pub fn thread_token() -> u64 {
    let proc = process_token();
    let (t, under) = THREAD_TOKEN.with(|t| t.get());
    if t != 0 && under == proc {
        return t;
    }
    thread_token_slow(proc)
}

#[cold]
fn thread_token_slow(proc: u64) -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let start = read_start(b"/proc/thread-self/stat\0").unwrap_or(Start::Unknown);
    let t = make(tid, start);
    THREAD_TOKEN.with(|c| c.set((t, proc)));
    t
}

/// The pid (or tid) a token names.
#[inline]
pub fn id_of(token: u64) -> u32 {
    ((token & !CONTENDED) >> 32) as u32
}

fn make(id: u32, start: Start) -> u64 {
    let lo = match start {
        Start::Alive(s) => s as u32,
        // Without /proc we still hold a usable (if weaker) identity: the id alone.
        Start::Unknown | Start::Dead | Start::Missing => 0,
    };
    ((u64::from(id) & 0x7fff_ffff) << 32) | u64::from(lo)
}

enum Start {
    /// The task runs (or sleeps, or is stopped) and started at this tick.
    Alive(u64),
    /// The task is a zombie, or went away while we read its entry.
    Dead,
    /// `/proc` has no entry for the id: gone, or hidden from us (see the module docs).
    Missing,
    /// The entry could not be parsed.
    Unknown,
}

/// Asks the kernel whether any task has the id `id`, without `/proc`: `kill(id, 0)` sends no
/// signal but checks existence. `EPERM` (the task belongs to another user) is alive too.
#[cfg(not(loom))]
fn kernel_knows(id: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(id) else {
        return false;
    };
    // SAFETY: signal 0 delivers nothing; kill only looks the id up. `pid` is positive (ids are
    // at most 2^31 - 1 by the conversion and non-zero by the caller's check), so it never
    // names a process group or every process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The pid namespace of the calling process: the inode number of `/proc/self/ns/pid`, or 0
/// when `/proc` cannot tell (not mounted). Not cached: a child forked after
/// `unshare(CLONE_NEWPID)` lives in another namespace than the parent it was copied from.
pub fn pid_namespace() -> u64 {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `st` is ours to fill.
    let r = unsafe { libc::stat(c"/proc/self/ns/pid".as_ptr(), &mut st) };
    if r == 0 {
        st.st_ino
    } else {
        0
    }
}

/// True unless the task a token names is known to be gone: no such task, a zombie, or a
/// task with another start time (the id was reused). When `/proc` cannot tell (unreadable,
/// or hiding the task: `hidepid`, another namespace's `/proc`), it says alive unless the
/// kernel itself knows no task of that id (the caller then keeps waiting, as it would for a
/// live holder).
pub fn is_alive(token: u64) -> bool {
    #[cfg(loom)]
    return !loom_dead::is_dead(token & !CONTENDED);
    #[cfg(not(loom))]
    is_alive_now(token)
}

/// The loom models' hook for [`is_alive`]: a model decides which of its tokens are dead (a
/// holder "dies" by marking its token and ending its thread without releasing).
#[cfg(loom)]
pub mod loom_dead {
    // A loom mutex, not std's: a task's death orders its writes before whatever sees it dead
    // (the kernel reaps it before /proc says so), and loom must know that ordering.
    use loom::sync::Mutex;

    loom::lazy_static! {
        /// The tokens marked dead in this execution (one set per execution).
        static ref DEAD: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    }

    /// Marks `token` dead: from now on [`is_alive`](super::is_alive) says false for it.
    /// Its sleepers' slices then end (see `mp_core::sync::futex`).
    pub fn mark_dead(token: u64) {
        DEAD.lock().unwrap().push(token & !super::CONTENDED);
        crate::sync::futex::expire_timed_waits();
    }

    /// True when a model marked `token` (without its contention flag) dead.
    pub fn is_dead(token: u64) -> bool {
        DEAD.lock().unwrap().contains(&token)
    }
}

#[cfg(not(loom))]
fn is_alive_now(token: u64) -> bool {
    let token = token & !CONTENDED;
    let id = id_of(token);
    if id == 0 {
        return true;
    }
    // "/proc/" + up to 10 digits + "/stat\0"
    let mut path = [0u8; 32];
    let mut n = 0;
    for &b in b"/proc/" {
        path[n] = b;
        n += 1;
    }
    let mut digits = [0u8; 10];
    let mut d = 0;
    let mut v = id;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        path[n] = digits[d];
        n += 1;
    }
    for &b in b"/stat\0" {
        path[n] = b;
        n += 1;
    }
    match read_start(&path[..n]) {
        None => true,
        Some(Start::Unknown) => true,
        Some(Start::Dead) => false,
        Some(Start::Missing) => kernel_knows(id),
        Some(Start::Alive(start)) => token as u32 == 0 || start as u32 == token as u32,
    }
}

/// Reads the state and start time from a NUL-terminated `/proc/.../stat` path. `None` when
/// the file cannot be read for a reason other than the task's absence.
fn read_start(path: &[u8]) -> Option<Start> {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated (all callers build it so); open only reads it.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return match e {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Some(Start::Missing),
            _ => None,
        };
    }
    let mut buf = [0u8; 1024];
    let mut len = 0usize;
    loop {
        // SAFETY: reading into the unused tail of our stack buffer.
        let r = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if r > 0 {
            len += r as usize;
            if len == buf.len() {
                break;
            }
        } else if r == 0 {
            break;
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            // A task that exits while we read gives ESRCH.
            let dead = std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            // SAFETY: `fd` is ours and open.
            unsafe { libc::close(fd) };
            return if dead { Some(Start::Dead) } else { None };
        }
    }
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    Some(parse_stat(&buf[..len]))
}

/// Parses `pid (comm) S ppid ... starttime ...`: the command may hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_stat(stat: &[u8]) -> Start {
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return Start::Unknown;
    };
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    // Field 3 is the state, field 22 the start time.
    let Some(state) = fields.next() else {
        return Start::Unknown;
    };
    if matches!(state.first(), Some(b'Z') | Some(b'X') | Some(b'x')) {
        return Start::Dead;
    }
    let Some(start) = fields.nth(18) else {
        return Start::Unknown;
    };
    let mut v: u64 = 0;
    for &b in start {
        if !b.is_ascii_digit() {
            return Start::Unknown;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
    }
    Start::Alive(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tokens_are_alive_and_consistent() {
        let p = process_token();
        assert_eq!(id_of(p), std::process::id());
        assert!(is_alive(p));
        assert!(is_alive(thread_token()));
        let other = std::thread::spawn(thread_token).join().unwrap();
        assert_ne!(other, thread_token());
        // The thread has exited: its token is dead.
        assert!(!is_alive(other));
    }

    /// A child made by a raw `clone` (no `pthread_atfork` handlers, as in a fork server)
    /// still computes its own identity: the cache page is wiped by the kernel.
    #[test]
    fn raw_clone_child_does_not_inherit_the_identity() {
        let parent = process_token();
        let parent_thread = thread_token();
        // SAFETY: clone without CLONE_VM and without a new stack behaves like fork; the child
        // only runs async-signal-safe code (atomics, getpid/gettid, /proc reads on the stack)
        // and `_exit`s.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::SIGCHLD as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        assert!(pid >= 0, "clone failed");
        if pid == 0 {
            // SAFETY: getpid/gettid have no preconditions.
            let (me, tid) = unsafe { (libc::getpid() as u32, libc::gettid() as u32) };
            let t = process_token();
            let th = thread_token();
            let ok = t != parent && id_of(t) == me && th != parent_thread && id_of(th) == tid;
            // SAFETY: ends the child without unwinding into the harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert_eq!(r, pid as libc::pid_t);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        assert_eq!(process_token(), parent, "the parent's cache is untouched");
    }

    /// Under `hidepid=2` another user's live process has no `/proc` entry: it must still count
    /// as alive (it used to read as dead, so a waiter took over a live holder's lock).
    #[test]
    fn live_holder_hidden_by_hidepid_is_alive() {
        let parent = process_token();
        let parent_thread = thread_token();
        // A task that is really gone: a reaped child's pid (nothing reuses it this fast).
        // SAFETY: the child exits at once.
        let gone = unsafe { libc::fork() };
        if gone == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(gone, &mut status, 0) };
        let gone = make(gone as u32, Start::Alive(1));
        let got = crate::testing::in_hidden_proc_child(move || {
            is_alive(parent) && is_alive(parent_thread) && !is_alive(gone)
        });
        if let Some(code) = got {
            assert_eq!(
                code, 0,
                "1: wrong liveness; 10-14: the hidepid setup failed"
            );
        }
    }

    #[test]
    fn pid_namespace_is_known() {
        assert_ne!(pid_namespace(), 0);
        assert_eq!(pid_namespace(), pid_namespace());
    }

    #[test]
    fn reused_id_with_another_start_time_is_dead() {
        let p = process_token();
        let forged = (p & !0xffff_ffff) | u64::from((p as u32).wrapping_add(1));
        assert!(!is_alive(forged));
        assert!(!is_alive(make(0x3fff_fff0, Start::Alive(5))));
    }

    #[test]
    fn parses_odd_command_names() {
        let s = b"42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 10";
        assert!(matches!(parse_stat(s), Start::Alive(777)));
        let z = b"42 (x) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 10";
        assert!(matches!(parse_stat(z), Start::Dead));
        assert!(matches!(parse_stat(b"garbage"), Start::Unknown));
    }
}
