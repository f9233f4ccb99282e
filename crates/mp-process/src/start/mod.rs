//! The parent's side of starting a child, one file per start method, side by side:
//!
//! * [`fork`]: `fork()` (or the launcher thread's, for a daemon) and the target runs in the copy;
//! * [`spawn`]: re-execute this program with `posix_spawn` and send it the [`Boot`] frame;
//! * [`forkserver`]: ask the fork server (started once with [`spawn::launch`]) for a child, then
//!   send it the boot frame.
//!
//! What the child does with it is [`crate::child_side`]; what both sides agree on is
//! [`crate::boot`] and [`crate::consts`]. [`launcher`] is the long-lived thread that creates
//! daemon children and the fork server.

pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod launcher;
pub(crate) mod spawn;

use std::os::fd::OwnedFd;

use mp_core::message::encode;
use mp_core::Message;

use crate::boot::{Boot, Trampoline};
use crate::child_side::{child_without_init, entry_ready, trampoline};
use crate::error::Error;
use crate::identity::{self, Identity};
use crate::method::StartMethod;

/// The options a [`Process`](crate::Process) or [`ClosureProcess`](crate::ClosureProcess) is
/// built with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// The child's name (`None`: Python's `Process-N`).
    pub(crate) name: Option<String>,
    /// Whether the child dies with its parent.
    pub(crate) daemon: bool,
    /// The start method (`None`: the process-wide default).
    pub(crate) method: Option<StartMethod>,
}

impl Options {
    /// The `Debug` of a builder named `builder` (with the start method when it has one).
    pub(crate) fn debug(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        builder: &str,
        with_method: bool,
    ) -> std::fmt::Result {
        let mut d = f.debug_struct(builder);
        d.field("name", &self.name).field("daemon", &self.daemon);
        if with_method {
            d.field("start_method", &self.method);
        }
        d.finish_non_exhaustive()
    }
}

fn parent_identity() -> (u32, String) {
    let name = identity::identity()
        .map(|i| i.name.clone())
        .unwrap_or_else(|| "MainProcess".into());
    (std::process::id(), name)
}

fn child_identity(opts: &Options) -> Identity {
    let ident = identity::next_ident();
    Identity {
        name: opts
            .name
            .clone()
            .unwrap_or_else(|| format!("Process-{ident}")),
        ident,
        daemon: opts.daemon,
        parent: Some(parent_identity()),
    }
}

/// Encodes what a re-executed child needs to run `target(args)`.
pub(crate) fn prepare<A: Message, R: Message>(
    target: fn(A) -> R,
    args: &A,
    opts: &Options,
    method: StartMethod,
) -> Result<Prepared, Error> {
    if child_without_init() {
        return Err(Error::ChildWithoutInit);
    }
    if !entry_ready() {
        return Err(Error::NotInitialized { method });
    }
    crate::handle::reap_detached();
    let trampoline_addr = trampoline::<A, R> as Trampoline as usize;
    let (encoded, fds) = mp_core::handle::collect(|| encode(args));
    let encoded = encoded?;
    let identity = child_identity(opts);
    let (parent_pid, parent_name) = parent_identity();
    let boot = Boot {
        image_id: crate::image::image_id().0.clone(),
        trampoline: crate::image::offset_of(trampoline_addr, method)? as i64,
        target: crate::image::offset_of(target as usize, method)? as i64,
        name: identity.name,
        ident: identity.ident,
        daemon: opts.daemon,
        parent_pid,
        parent_name,
        args: encoded.to_vec(),
    };
    Ok(Prepared {
        bytes: encode(&boot)?.to_vec(),
        fds,
        name: boot.name,
        daemon: opts.daemon,
    })
}

/// A boot frame ready to send, with the descriptors of the shared objects in the arguments.
pub(crate) struct Prepared {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) name: String,
    pub(crate) daemon: bool,
}
