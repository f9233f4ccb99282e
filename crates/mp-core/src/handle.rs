//! Handles: how a shared object (a region, and so a lock, a queue, a value...) reaches a child.
//!
//! * Under **fork** nothing needs doing: the child inherits the mapping and the descriptor.
//! * Under **exec** (the spawn start method) and through a **fork server**, the child is a new
//!   program image; the object travels as a message. Serializing a [`Region`] inside
//!   [`collect`] `dup`s its descriptor into the collector and archives only the *slot* (its
//!   index in the collector), so the archive holds no raw descriptor numbers. The process that
//!   starts the child hands the collected descriptors over (kept open across `exec` for that
//!   child only, or sent with `SCM_RIGHTS` to a fork server), in the same order, and the child
//!   calls [`install`] before it decodes its arguments. Deserializing the handle then maps the
//!   descriptor of that slot and checks the region's header.
//!
//! Serializing a handle outside [`collect`] is an [`Error::Handle`]: a descriptor cannot be
//! sent through a queue or a pipe after a process has started (the same rule as Python's "Queue
//! objects should only be shared between processes through inheritance").
//!
//! The [`ENV_FDS`] variable carries the slot table across `exec`: a comma-separated list of
//! descriptor numbers, which [`install_from_env`] reads in the child.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rkyv::rancor::{Fallible, Source};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::error::{Error, Result};
use crate::region::{Layout, Region};
use crate::util::lock_unpoisoned;

/// The environment variable that lists, in slot order, the descriptors an exec'd child was
/// given.
pub const ENV_FDS: &str = "MP_FDS";

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
}

static INCOMING: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Runs `f` (which serializes the arguments of a child) and returns what it returned with the
/// descriptors that the handles serialized inside it exported, in slot order. When `f`
/// panics, the thread's state is restored on the way out (the descriptors exported so far are
/// closed), so later exports are not caught by a collect that ended.
pub fn collect<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    /// Puts back the collect this one interrupted (or none), also when unwinding.
    struct Restore(Option<Vec<OwnedFd>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let saved = self.0.take();
            // `try_with`: during thread teardown the slot may be gone already; nothing to
            // restore then.
            let _ = OUTGOING.try_with(|o| *o.borrow_mut() = saved);
        }
    }
    let saved = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let restore = Restore(saved);
    let r = f();
    let fds = OUTGOING.with(|o| o.borrow_mut().take().unwrap_or_default());
    drop(restore);
    (r, fds)
}

/// Exports `fd` into the current [`collect`] and returns its slot.
pub fn export_fd(fd: BorrowedFd<'_>) -> Result<u32> {
    let dup = fd
        .try_clone_to_owned()
        .map_err(|source| Error::Io { op: "dup", source })?;
    OUTGOING.with(|o| match o.borrow_mut().as_mut() {
        Some(v) => {
            v.push(dup);
            Ok((v.len() - 1) as u32)
        }
        None => Err(Error::Handle(
            "shared objects (regions, locks, queues, values, connections) can only be sent to a \
             child as an argument when it starts, not through a queue or a pipe"
                .into(),
        )),
    })
}

/// Makes `fds` the descriptors this process was given, slot by slot. Called by the child side
/// of a start method before it decodes its arguments.
pub fn install(fds: Vec<OwnedFd>) {
    let mut table = lock_unpoisoned(&INCOMING);
    *table = fds;
}

/// Reads [`ENV_FDS`] (set by the parent for an exec'd child), installs those descriptors and
/// removes the variable, so that grandchildren do not see it. Returns how many there were.
pub fn install_from_env() -> Result<usize> {
    let Some(list) = std::env::var_os(ENV_FDS) else {
        return Ok(0);
    };
    // Changing the environment is only sound while no other thread reads it: this runs in the
    // child bootstrap, before the child's code starts threads.
    std::env::remove_var(ENV_FDS);
    let list = list
        .into_string()
        .map_err(|_| Error::Handle(format!("{ENV_FDS} is not UTF-8")))?;
    // Every number is checked before any descriptor is owned: a number listed twice would
    // make two owners of one descriptor (closed twice, the second time maybe someone else's).
    let mut raws: Vec<RawFd> = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let raw: RawFd = part
            .parse()
            .map_err(|_| Error::Handle(format!("{ENV_FDS} holds {part:?}, not a descriptor")))?;
        if raw < 0 {
            return Err(Error::Handle(format!(
                "{ENV_FDS} holds {raw}, not a descriptor"
            )));
        }
        if raws.contains(&raw) {
            return Err(Error::Handle(format!(
                "{ENV_FDS} names descriptor {raw} twice: a parent never does; refusing the list"
            )));
        }
        if nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            return Err(Error::Handle(format!(
                "{ENV_FDS} names descriptor {raw}, which is not open in this process"
            )));
        }
        raws.push(raw);
    }
    let mut fds = Vec::with_capacity(raws.len());
    for raw in raws {
        // SAFETY: the parent kept `raw` open across exec for this process only and nothing in
        // this process owns it yet (it was checked to be open above, it appears once in the
        // list, and the variable is read once, then removed); we take ownership and mark it
        // close-on-exec again.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = nix::fcntl::fcntl(
            raw,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        fds.push(fd);
    }
    let n = fds.len();
    install(fds);
    Ok(n)
}

/// The value of [`ENV_FDS`] for a child given `fds`.
pub fn env_value(fds: &[OwnedFd]) -> String {
    fds.iter()
        .map(|f| f.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Clears close-on-exec on `fds`, for use between `fork` and `exec` (in
/// `std::os::unix::process::CommandExt::pre_exec`): only that child keeps them.
/// Async-signal-safe (only `fcntl`).
pub fn keep_across_exec(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl(F_SETFD) on a descriptor number has no memory-safety preconditions.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A new descriptor for slot `slot` of the installed table.
pub fn import_fd(slot: u32) -> Result<OwnedFd> {
    let table = lock_unpoisoned(&INCOMING);
    let fd = table.get(slot as usize).ok_or_else(|| {
        Error::Handle(format!(
            "the message names descriptor slot {slot}, but this process was given {} \
             (shared objects can only be received as arguments at process start)",
            table.len()
        ))
    })?;
    fd.try_clone()
        .map_err(|source| Error::Io { op: "dup", source })
}

/// What a [`Region`] is archived as: the slot of its descriptor and its expected layout.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RegionHandle {
    /// Slot of the descriptor in the receiver's table.
    pub slot: u32,
    /// Content kind.
    pub kind: u32,
    /// Payload size.
    pub size: u64,
    /// Payload alignment.
    pub align: u64,
}

impl RegionHandle {
    /// Exports `region` into the current [`collect`].
    pub fn export(region: &Region) -> Result<RegionHandle> {
        let slot = export_fd(region.fd())?;
        let l = region.layout();
        Ok(RegionHandle {
            slot,
            kind: l.kind,
            size: l.size,
            align: l.align,
        })
    }

    /// Maps the region this handle names and checks that its header matches.
    pub fn open(&self) -> Result<Region> {
        let fd = import_fd(self.slot)?;
        let region = Region::from_fd(
            fd,
            Some(Layout {
                kind: self.kind,
                size: self.size,
                align: self.align,
            }),
        )?;
        if region.layout().size != self.size {
            return Err(Error::BadHeader {
                reason: format!(
                    "the handle says {} payload bytes, the region holds {}",
                    self.size,
                    region.layout().size
                ),
            });
        }
        Ok(region)
    }
}

impl Archive for Region {
    type Archived = ArchivedRegionHandle;
    type Resolver = (RegionHandle, <RegionHandle as Archive>::Resolver);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        resolver.0.resolve(resolver.1, out);
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for Region
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let h = RegionHandle::export(self).map_err(S::Error::new)?;
        let r = h.serialize(serializer)?;
        Ok((h, r))
    }
}

impl<D: Fallible + ?Sized> Deserialize<Region, D> for ArchivedRegionHandle
where
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Region, D::Error> {
        let h = RegionHandle {
            slot: self.slot.to_native(),
            kind: self.kind.to_native(),
            size: self.size.to_native(),
            align: self.align.to_native(),
        };
        h.open().map_err(D::Error::new)
    }
}
