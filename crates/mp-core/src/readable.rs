//! Async waits on descriptors (cargo feature `async`): one thread per process that sleeps in
//! `epoll_wait` on every descriptor an awaiting task waits to read, so that no task spins and
//! no thread is parked per waiting future. It is the descriptor side of [`crate::reactor`] (which
//! waits on futex words), and belongs to no runtime: any executor polls [`readable`].
//!
//! Each future registers a duplicate of its descriptor (`F_DUPFD_CLOEXEC`), one-shot, so that
//! several futures may wait on the same descriptor and a registration never outlives its
//! future: dropping the future removes it and closes the duplicate. Level-triggered: a
//! descriptor already readable when it is registered resolves its future at once, so a wake-up
//! token written before the registration is not missed.
//!
//! A forked child does not inherit the thread: the reactor belongs to the pid that made it,
//! and a child makes its own (with an epoll instance of its own).

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::util::lock_unpoisoned;

/// What a future and the reactor share.
struct Shared {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

struct Reactor {
    epoll: OwnedFd,
    regs: Mutex<HashMap<u64, Arc<Shared>>>,
    next: AtomicU64,
}

/// The reactor of this process (and the pid it belongs to).
static REACTOR: Mutex<Option<(u32, Arc<Reactor>)>> = Mutex::new(None);

fn reactor() -> std::io::Result<Arc<Reactor>> {
    let mut r = lock_unpoisoned(&REACTOR);
    let pid = std::process::id();
    if let Some((p, reactor)) = r.as_ref() {
        if *p == pid {
            return Ok(reactor.clone());
        }
        // A forked child: the parent's thread is not here, and its epoll instance is the
        // parent's (registrations of an epoll instance are shared by every copy of it).
    }
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let reactor = Arc::new(Reactor {
        // SAFETY: a descriptor just made, owned by nothing else.
        epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        regs: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    });
    let run = reactor.clone();
    std::thread::Builder::new()
        .name("mp-async-fd".into())
        .spawn(move || run.run())?;
    if let Some((_, old)) = r.replace((pid, reactor.clone())) {
        // The parent's: never dropped here (its Arc would close our copy of its epoll
        // descriptor, harmless, but its registrations' wakers are the parent's tasks').
        std::mem::forget(old);
    }
    Ok(reactor)
}

impl Reactor {
    fn run(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` is a live array of 64 entries.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // Not expected with a valid epoll descriptor; do not spin.
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            let regs = lock_unpoisoned(&self.regs);
            for e in &events[..n as usize] {
                let key = e.u64;
                if let Some(shared) = regs.get(&key) {
                    shared.fired.store(true, Ordering::Release);
                    if let Some(w) = lock_unpoisoned(&shared.waker).take() {
                        w.wake();
                    }
                }
            }
        }
    }
}

/// A future that resolves when `fd` is readable (or at end of file, or in error): the
/// caller then reads without blocking, or finds what it waits for not there yet and makes a
/// new one. `fd` must stay open while the future lives.
pub fn readable(fd: RawFd) -> FdReady {
    FdReady {
        fd,
        events: libc::EPOLLIN | libc::EPOLLRDHUP,
        reg: None,
    }
}

/// A future that resolves when `fd` can be written to (or is in error or hung up); as
/// [`readable`].
pub fn writable(fd: RawFd) -> FdReady {
    FdReady {
        fd,
        events: libc::EPOLLOUT,
        reg: None,
    }
}

/// The future of [`readable`] and [`writable`].
pub struct FdReady {
    fd: RawFd,
    events: libc::c_int,
    reg: Option<Registration>,
}

struct Registration {
    reactor: Arc<Reactor>,
    key: u64,
    dup: OwnedFd,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FdReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdReady")
            .field("fd", &self.fd)
            .field("registered", &self.reg.is_some())
            .finish()
    }
}

impl Future for FdReady {
    type Output = std::io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(reg) = &self.reg {
            if reg.shared.fired.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
            *lock_unpoisoned(&reg.shared.waker) = Some(cx.waker().clone());
            // Fired between the check and the store of the waker: do not miss it.
            if reg.shared.fired.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
        let reactor = reactor()?;
        // SAFETY: fcntl on a descriptor the caller keeps open; the duplicate is ours.
        let dup = unsafe { libc::fcntl(self.fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Poll::Ready(Err(std::io::Error::last_os_error()));
        }
        // SAFETY: a descriptor just made, owned by nothing else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let key = reactor.next.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            fired: AtomicBool::new(false),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        lock_unpoisoned(&reactor.regs).insert(key, shared.clone());
        let mut ev = libc::epoll_event {
            events: (self.events | libc::EPOLLONESHOT) as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open; `ev` is a live event.
        let rc = unsafe {
            libc::epoll_ctl(
                reactor.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                dup.as_raw_fd(),
                &mut ev,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            lock_unpoisoned(&reactor.regs).remove(&key);
            return Poll::Ready(Err(e));
        }
        self.reg = Some(Registration {
            reactor,
            key,
            dup,
            shared,
        });
        Poll::Pending
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: both descriptors are open; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.reactor.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                self.dup.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
        lock_unpoisoned(&self.reactor.regs).remove(&self.key);
        // `dup` closes after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(c: &Count, n: usize) {
        for _ in 0..10_000 {
            if c.0.load(Ordering::SeqCst) >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no wake-up");
    }

    #[test]
    fn a_write_wakes_the_reader_and_a_dropped_future_leaves_nothing_registered() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = readable(b.as_raw_fd());
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        // A second future on the same descriptor.
        let mut g = readable(b.as_raw_fd());
        assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
        a.write_all(b"x").unwrap();
        wait_for(&count, 2);
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut g).poll(&mut cx).is_ready());
        let r = reactor().unwrap();
        drop((f, g));
        assert!(lock_unpoisoned(&r.regs).is_empty());
        // Already readable: resolves as soon as registered (level-triggered).
        let mut h = readable(b.as_raw_fd());
        assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
        wait_for(&count, 3);
        assert!(Pin::new(&mut h).poll(&mut cx).is_ready());
        // End of file also resolves.
        drop(a);
        let mut eof = readable(b.as_raw_fd());
        let _ = Pin::new(&mut eof).poll(&mut cx);
        wait_for(&count, 4);
        assert!(Pin::new(&mut eof).poll(&mut cx).is_ready());
        // A socket with room in its buffer is writable.
        let mut w = writable(b.as_raw_fd());
        let _ = Pin::new(&mut w).poll(&mut cx);
        wait_for(&count, 5);
        assert!(Pin::new(&mut w).poll(&mut cx).is_ready());
    }
}
