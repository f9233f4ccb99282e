//! The forkserver start method.
//!
//! The first forkserver start of a process re-executes the program (like spawn) in the
//! *forkserver* role: a server that does nothing but wait on its control socket (an
//! `AF_UNIX` `SOCK_SEQPACKET` pair) and never starts a thread. For each child the parent
//! sends one request: the daemon flag and, with `SCM_RIGHTS`, the child's end of a fresh
//! socket pair followed by the descriptors of the shared objects in the arguments. The server
//! makes the child with `clone(CLONE_PARENT)`, so the child is a child of the *parent*, not of
//! the server: the parent waits on it, signals it and reads its exit status exactly as under
//! fork and spawn (`waitid` on its pid), and the server never has zombies to reap. The server
//! answers with the child's pid; the parent then sends the boot frame over the child's own
//! socket, and the child runs it as a spawn child does ([`crate::child_side::run_boot`]),
//! after [`mp_core::handle::install`] of the received descriptors.
//!
//! The server exits when its parent closes the control socket or dies (it checks `getppid`
//! every second, in case a forked child of the parent keeps the socket open).

use crate::forkcell::ForkCell;
use mp_core::util::lock_unpoisoned;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

use super::spawn::launch;
use super::Prepared;
use crate::consts::MAX_FDS;
use crate::error::Error;
use crate::handle::{Child, ChildState};
use crate::method::StartMethod;

struct Server {
    ctrl: OwnedFd,
    pid: u32,
}

/// This process's connection to its fork server. Replaced (never locked) in a forked child.
static SERVER: ForkCell<Option<Server>> = ForkCell::new();

fn server_cell() -> &'static Mutex<Option<Server>> {
    SERVER.get(|| None)
}

/// A forked child must not talk to its parent's server (requests would interleave): it gets
/// a fresh cell and starts its own server if it needs one. The inherited socket stays open
/// (leaked) in the child; it is close-on-exec.
pub(crate) fn reset_after_fork() {
    SERVER.reset();
}

/// The pid of this process's fork server, if one is running.
pub fn server_pid() -> Option<u32> {
    lock_unpoisoned(server_cell()).as_ref().map(|s| s.pid)
}

fn start_server() -> Result<Server, Error> {
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair", e.into()))?;
    // From the launcher thread: the server's children (made with CLONE_PARENT) share its
    // creating thread, which PR_SET_PDEATHSIG of daemon children refers to.
    let pid = launch("forkserver", theirs.as_raw_fd(), &[], false, true)
        .map_err(|e| Error::ForkServer(format!("could not start the server: {e}")))?;
    drop(theirs);
    // The server says hello once it runs, so that a program that never calls init() is
    // reported here rather than as a hang.
    let mut hello = [0u8; 4];
    let mut iov = [IoSliceMut::new(&mut hello)];
    let n = recvmsg::<()>(mine.as_raw_fd(), &mut iov, None, MsgFlags::empty())
        .map_err(|e| Error::ForkServer(format!("waiting for the server: {e}")))?
        .bytes;
    if n != 4 || &hello != b"mpfs" {
        // The server is gone (it exited without serving): reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        return Err(Error::ForkServer(
            "the server exited before serving: the program must call mp_process::init() \
             first thing in main (in a test binary: mp_process::test_support!())"
                .into(),
        ));
    }
    Ok(Server { ctrl: mine, pid })
}

/// Starts a child through the fork server (starting the server first if needed).
pub(crate) fn start<R>(p: Prepared) -> Result<Child<R>, Error> {
    if p.fds.len() + 1 > MAX_FDS {
        return Err(Error::ForkServer(format!(
            "the arguments hold {} shared objects; at most {} can be sent to a fork server \
             child",
            p.fds.len(),
            MAX_FDS - 1
        )));
    }
    let mut req = [0u8; 8];
    req[0..4].copy_from_slice(&u32::from(p.daemon).to_le_bytes());
    req[4..8].copy_from_slice(&std::process::id().to_le_bytes());

    let cell = server_cell();
    let mut guard = lock_unpoisoned(cell);
    let mut attempts = 0;
    let (pid, parent_end) = loop {
        attempts += 1;
        // A fresh channel for every attempt: a server that died after its `clone` but before
        // its reply leaves a child holding this attempt's end. Reusing the pair would let that
        // child and the retry's child read one boot frame between them (the one the parent
        // waits on could block forever). With its own pair, the stray child reads end-of-file
        // as soon as this attempt's end is dropped, and exits.
        let (parent_end, child_end) = crate::chanpool::new_pair()?;
        let mut fds: Vec<RawFd> = vec![child_end.as_raw_fd()];
        fds.extend(p.fds.iter().map(|f| f.as_raw_fd()));
        if guard.is_none() {
            *guard = Some(start_server()?);
        }
        let server = guard
            .as_ref()
            .ok_or_else(|| Error::ForkServer("no server".into()))?;
        match request(server, &req, &fds) {
            Ok(pid) => break (pid, parent_end),
            Err(e) if attempts < 2 => {
                // The server died (killed, or it exited): start a new one, once.
                // The old server is our child and not yet reaped, so its pid cannot have
                // been reused: make sure it is gone, and reap it (no zombie).
                if let Some(old) = guard.take() {
                    let pid = nix::unistd::Pid::from_raw(old.pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                drop(e);
            }
            Err(e) => return Err(e),
        }
    };
    drop(guard);
    drop(p.fds);
    let state = ChildState::new(pid, p.name, p.daemon);
    let _ = crate::frame::send(parent_end.as_fd(), crate::frame::Tag::Boot, &p.bytes);
    Ok(Child::new(state, parent_end, None, StartMethod::ForkServer))
}

fn request(server: &Server, req: &[u8], fds: &[RawFd]) -> Result<u32, Error> {
    let iov = [IoSlice::new(req)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(
        server.ctrl.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| Error::ForkServer(format!("sending the request: {e}")))?;
    let mut reply = [0u8; 8];
    let mut iov = [IoSliceMut::new(&mut reply)];
    let n = loop {
        match recvmsg::<()>(server.ctrl.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
            Ok(m) => break m.bytes,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::ForkServer(format!("reading the reply: {e}"))),
        }
    };
    if n != 8 {
        return Err(Error::ForkServer("the server closed the connection".into()));
    }
    let status = i32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
    let pid = u32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
    if status != 0 {
        return Err(Error::io(
            "clone (in the fork server)",
            std::io::Error::from_raw_os_error(status),
        ));
    }
    Ok(pid)
}
