//! The boot protocol between a parent and a re-executed child (spawn, or a fork server's
//! child): the [`Boot`] frame that names what to run, the [`Trampoline`] type every target is
//! called through, how a child reports that it could not start ([`fail_start`]), and how a
//! daemon child ties its life to its parent's ([`die_with_parent`]).

use std::os::fd::BorrowedFd;

use mp_core::message::encode;

use crate::consts::START_FAILED_EXIT_CODE;
use crate::frame::{self, Tag};
use crate::sys::write_stderr;

/// What a spawn or forkserver child is told to run (the payload of the boot frame).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub(crate) struct Boot {
    /// The parent's [`crate::image::ImageId`].
    pub(crate) image_id: Vec<u8>,
    /// Offset of `trampoline::<A, R>` from the anchor.
    pub(crate) trampoline: i64,
    /// Offset of the target from the anchor.
    pub(crate) target: i64,
    pub(crate) name: String,
    pub(crate) ident: String,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: u32,
    pub(crate) parent_name: String,
    /// The arguments, encoded inside `mp_core::handle::collect`.
    pub(crate) args: Vec<u8>,
}

/// The type every trampoline is called through.
pub(crate) type Trampoline = unsafe fn(usize, &[u8], BorrowedFd<'_>) -> i32;

/// In a new daemon child: die with the parent. `parent` is the parent's pid, read before the
/// fork; if it already died the child has been re-parented and exits at once.
/// Async-signal-safe.
pub(crate) fn die_with_parent(parent: libc::pid_t) -> bool {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid have no memory-safety preconditions.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) == 0
            && libc::getppid() == parent
    }
}

/// Sends `msg` as the last frame, tagged `tag`, to the parent.
pub(crate) fn send_string(chan: BorrowedFd<'_>, tag: Tag, msg: String) {
    if let Ok(bytes) = encode(&msg) {
        let _ = frame::send_final(chan, tag, &bytes);
    }
}

/// Reports a failed start: on stderr, and to the parent as a `StartFailed` frame; returns the
/// exit code of a failed start.
pub(crate) fn fail_start(chan: BorrowedFd<'_>, msg: String) -> i32 {
    write_stderr(format!("mp child (pid {}): {msg}\n", std::process::id()).as_bytes());
    send_string(chan, Tag::StartFailed, msg);
    START_FAILED_EXIT_CODE
}
