//! Small chores that every mp crate does the same way: taking a `std` lock whose holder
//! panicked, turning a panic payload into the text that is reported, asking the kernel who is
//! at the other end of a Unix socket.
//!
//! They live here, in the one crate that every other depends on, so that each chore is written
//! once.

use std::any::Any;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{LockResult, Mutex, MutexGuard};

/// Locks `m`, going on when a thread panicked while holding it.
///
/// mp's `std` mutexes guard tables and queues whose every update is complete before anything
/// can panic, so a poisoned one holds consistent data and the poison is ignored.
pub fn lock_unpoisoned<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    unpoisoned(m.lock())
}

/// The guard of a lock or condition-variable result, poisoned or not (see [`lock_unpoisoned`]):
/// for `Condvar::wait` and `Condvar::wait_timeout`.
pub fn unpoisoned<G>(r: LockResult<G>) -> G {
    r.unwrap_or_else(|p| p.into_inner())
}

/// The text of a panic payload: the `&str` or `String` that `panic!` was given, or a fixed
/// sentence for any other payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".into()
    }
}

/// The credentials (pid, uid, gid) the kernel recorded for the process at the other end of
/// the Unix socket `fd` (`SO_PEERCRED`: the peer when it connected, or the creator of a
/// `socketpair`).
pub fn peer_cred(fd: BorrowedFd<'_>) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `cred`, and `len` back; `fd`
    // is an open descriptor (borrowed for the call).
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_taken() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock_unpoisoned(&m) += 1;
        assert_eq!(*lock_unpoisoned(&m), 2);
    }

    #[test]
    fn payloads_become_text() {
        let s: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(&*s), "static");
        let s: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&*s), "owned");
        let s: Box<dyn Any + Send> = Box::new(7u8);
        assert!(panic_message(&*s).contains("not a string"));
    }

    #[test]
    fn the_creator_of_a_socket_pair_is_its_peer() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = peer_cred(a.as_fd()).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
    }
}
