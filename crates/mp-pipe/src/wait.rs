//! [`wait`]: block until one of many connections, process sentinels or descriptors is ready
//! (Python's `multiprocessing.connection.wait`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use mp_core::Deadline;

use crate::connection::{Connection, Direction, Transport};
use crate::error::{Error, Result};
use crate::listener::Listener;
use crate::sys;

/// Something [`wait`] can wait on: a descriptor that becomes readable, with optional hooks for
/// objects whose readiness is not (only) on the descriptor.
///
/// A pipe end is one of those: while its receiver is busy, messages arrive through shared memory
/// without touching the socket. To wait on one in an event loop of your own, call
/// [`prepare_wait`](Self::prepare_wait) (ready now? if not, the descriptor will become readable
/// when a message arrives), poll [`wait_fd`](Self::wait_fd) for reading, then call
/// [`confirm_wait`](Self::confirm_wait) when it is readable and
/// [`finish_wait`](Self::finish_wait) in every case before receiving.
///
/// Implemented for [`Connection`] (ready: a message or end-of-file is waiting), [`Listener`]
/// (ready: a client is waiting to be accepted), and any descriptor: `BorrowedFd`, `OwnedFd`,
/// `File`, `UnixStream`, `TcpStream`, `ChildStdout`... (ready: readable or hung up). A process
/// sentinel is a pidfd, which is readable once the process has exited.
pub trait Waitable {
    /// The descriptor to poll for reading.
    fn wait_fd(&self) -> BorrowedFd<'_>;

    /// Ready already? If not, make sure [`wait_fd`](Self::wait_fd) becomes readable when the
    /// object becomes ready. The default: not known, poll the descriptor.
    fn prepare_wait(&self) -> Result<bool> {
        Ok(false)
    }

    /// The descriptor was reported readable (or hung up): is the object really ready? The
    /// default: yes.
    fn confirm_wait(&self) -> Result<bool> {
        Ok(true)
    }

    /// Undoes [`prepare_wait`](Self::prepare_wait). The default does nothing.
    fn finish_wait(&self) {}
}

impl<T, D: Direction> Waitable for Connection<T, D> {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }

    fn prepare_wait(&self) -> Result<bool> {
        Ok(match &self.t {
            Transport::Local(l) => l.prepare_wait(),
            Transport::Stream(s) => s.has_buffered(),
        })
    }

    fn confirm_wait(&self) -> Result<bool> {
        Ok(match &self.t {
            Transport::Local(l) => l.confirm_wait(),
            Transport::Stream(_) => true,
        })
    }

    fn finish_wait(&self) {
        if let Transport::Local(l) = &self.t {
            l.finish_wait();
        }
    }
}

impl Waitable for Listener {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

macro_rules! waitable_fd {
    ($($t:ty),* $(,)?) => {$(
        impl Waitable for $t {
            fn wait_fd(&self) -> BorrowedFd<'_> {
                self.as_fd()
            }
        }
    )*};
}

waitable_fd!(
    OwnedFd,
    std::fs::File,
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixListener,
    std::os::unix::net::UnixDatagram,
    std::net::TcpStream,
    std::net::TcpListener,
    std::net::UdpSocket,
    std::process::ChildStdout,
    std::process::ChildStderr,
);

impl Waitable for BorrowedFd<'_> {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        *self
    }
}

impl<W: Waitable + ?Sized> Waitable for &W {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        (**self).wait_fd()
    }
    fn prepare_wait(&self) -> Result<bool> {
        (**self).prepare_wait()
    }
    fn confirm_wait(&self) -> Result<bool> {
        (**self).confirm_wait()
    }
    fn finish_wait(&self) {
        (**self).finish_wait()
    }
}

/// Waits until at least one of `objects` is ready or `timeout` passes (`None`: no limit) and
/// returns the indices of the ready ones, in order; an empty list means the time ran out.
/// Python's `multiprocessing.connection.wait(object_list, timeout)`.
///
/// A connection is ready when [`recv`](Connection::recv) would not block: a message is waiting
/// or the peer is gone (`recv` then reports end-of-file). A process sentinel is ready when the
/// process has ended; any other descriptor when it is readable or hung up.
///
/// ```
/// use std::time::Duration;
/// use mp_pipe::{wait, Duplex, Pipe};
///
/// let (a, b) = Pipe::<u32>::new(Duplex)?;
/// let (c, d) = Pipe::<u32>::new(Duplex)?;
/// assert!(wait(&[&a, &c], Some(Duration::from_millis(10)))?.is_empty());
/// d.send(&7)?;
/// assert_eq!(wait(&[&a, &c], None)?, vec![1]);
/// assert_eq!(c.recv()?, 7);
/// # drop(b);
/// # Ok::<(), mp_pipe::Error>(())
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let deadline = Deadline::after(timeout);
    loop {
        let mut ready = Vec::new();
        let mut armed: Vec<usize> = Vec::with_capacity(objects.len());
        let finish = |armed: &[usize]| {
            for &i in armed {
                objects[i].finish_wait();
            }
        };
        for (i, o) in objects.iter().enumerate() {
            match o.prepare_wait() {
                Ok(true) => ready.push(i),
                Ok(false) => armed.push(i),
                Err(e) => {
                    finish(&armed);
                    return Err(e);
                }
            }
        }
        let mut fds: Vec<libc::pollfd> = armed
            .iter()
            .map(|&i| libc::pollfd {
                fd: objects[i].wait_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // With something ready already, only look (without blocking) for the others.
        let poll_deadline = if ready.is_empty() {
            deadline
        } else {
            Deadline::after(Some(Duration::ZERO))
        };
        // With nothing to poll this just sleeps until the deadline, as Python's does.
        let n = match sys::poll(&mut fds, poll_deadline) {
            Ok(n) => n,
            Err(e) => {
                finish(&armed);
                return Err(e);
            }
        };
        let mut result = Ok(());
        if n > 0 {
            for (k, &i) in armed.iter().enumerate() {
                let rev = fds[k].revents;
                if rev & libc::POLLNVAL != 0 {
                    result = Err(Error::InvalidArgument(
                        "wait: an object's descriptor is not open",
                    ));
                    break;
                }
                if rev != 0 {
                    match objects[i].confirm_wait() {
                        Ok(true) => ready.push(i),
                        Ok(false) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
        }
        finish(&armed);
        result?;
        if !ready.is_empty() {
            ready.sort_unstable();
            return Ok(ready);
        }
        if n == 0 || deadline.expired() {
            return Ok(ready);
        }
    }
}
