//! Shared-memory regions: anonymous (`memfd_create`) and named (`shm_open`).
//!
//! A region is one `MAP_SHARED` mapping that starts with a [`RegionHeader`] of 64 bytes
//! followed by the payload. The header says what the payload is (a content kind, its size and
//! its alignment), so that a process mapping a region it was handed refuses one that is
//! corrupted, not made by mp, made by another layout version, or holding another type, instead
//! of mis-reading it.
//!
//! The mapping is a [`memmap2::MmapRaw`]: this module only ever hands out raw pointers to the
//! payload. Turning them into references is the business of the caller that knows the protocol
//! that makes an access exclusive (see [`crate::shared::Shared`] for the common case of a
//! struct made of atomics).
//!
//! Anonymous regions are freed by the kernel when the last process that maps them or holds
//! their descriptor exits, crash or not: they cannot leak. Their size is sealed
//! (`F_SEAL_SHRINK | F_SEAL_GROW`, or `F_SEAL_SHRINK` alone for [growable](Region::anonymous_growable)
//! ones), so no peer can shrink the file under a mapping (which would turn reads into
//! `SIGBUS`), and the seals themselves are sealed (`F_SEAL_SEAL`): no holder of the descriptor
//! can add `F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE` to make everyone else's writes, or later
//! mappings, fail.
//!
//! Named regions live in `/dev/shm/mp-<name>` with mode 0600 until [`SharedMemory::unlink`]
//! (their owner unlinks them when dropped). Their pages are allocated when they are created
//! (`fallocate`), so a full `/dev/shm` is an error of `create` (`ENOSPC`), not a `SIGBUS` at
//! a later write, unlike Python, whose blocks are sparse files. A POSIX shared-memory file cannot be sealed, so any
//! process of the same user may `ftruncate` a named block under its readers, whose next access
//! past the new end is a `SIGBUS`, as in Python. mp checks a named block's header and size when
//! it attaches, but cannot stop a same-user process from shrinking it later: share named
//! blocks only with processes you trust as much as your own (anonymous regions, passed to
//! children as handles, do not have this exposure).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::stat::Mode;
use static_assertions::{assert_eq_size, const_assert};

use crate::error::{Error, Result};

/// The bytes every mp region starts with.
pub const MAGIC: u64 = u64::from_le_bytes(*b"mp-regn\0");
/// The layout version of [`RegionHeader`] and of the payloads mp puts in regions. Bumped on
/// any change of layout, so that two builds with different layouts refuse each other.
pub const LAYOUT_VERSION: u32 = 2;
/// Size of the header; the payload starts at this offset and may ask for up to this alignment.
pub const HEADER_SIZE: usize = 64;
/// The largest payload alignment a region supports.
pub const MAX_ALIGN: usize = HEADER_SIZE;
/// The largest payload size accepted (1 TiB): far beyond this machine, and keeps size
/// arithmetic far from overflow.
pub const MAX_SIZE: u64 = 1 << 40;

/// Content kind of a [`SharedMemory`] (raw bytes chosen by the user).
pub const KIND_BYTES: u32 = 0x6279_7465; // "byte"

/// The header at offset 0 of every region.
///
/// `magic` is written last, with Release ordering, by the creator; a reader loads it with
/// Acquire before reading the other fields, so a half-initialised named region reads as
/// "not initialised" and never as garbage. Every field is an atomic: the header lives in memory
/// that any process holding the file may write, so even a hostile writer racing a reader makes
/// it read wrong numbers (which the check refuses), never a data race.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RegionHeader {
    /// [`MAGIC`] once the header is complete.
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`] of the creator.
    pub version: AtomicU32,
    /// What the payload holds: a tag chosen by the primitive that made the region
    /// (for typed regions, a hash of the type's name, size and alignment).
    pub kind: AtomicU32,
    /// Payload size in bytes.
    pub size: AtomicU64,
    /// Payload alignment in bytes.
    pub align: AtomicU64,
    /// A check over `version`, `kind`, `size`, `align` and `pid_ns`, so that a flipped bit is
    /// caught.
    pub check: AtomicU64,
    /// The creator's pid namespace ([`crate::ident::pid_namespace`]), or 0 when it could not
    /// tell. Holder tokens in the payload are pids of that namespace.
    pub pid_ns: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 2],
}
assert_eq_size!(RegionHeader, [u8; HEADER_SIZE]);
const_assert!(std::mem::align_of::<RegionHeader>() == 64);

pub(crate) fn header_check(version: u32, kind: u32, size: u64, align: u64, pid_ns: u64) -> u64 {
    // FNV-1a over the fields: cheap, and enough to catch corruption (this is not security;
    // received message bytes are validated separately).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in version
        .to_le_bytes()
        .iter()
        .chain(kind.to_le_bytes().iter())
        .chain(size.to_le_bytes().iter())
        .chain(align.to_le_bytes().iter())
        .chain(pid_ns.to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a region's header must say for a caller to accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The content kind.
    pub kind: u32,
    /// The payload size in bytes.
    pub size: u64,
    /// The payload alignment in bytes.
    pub align: u64,
}

struct Inner {
    map: MmapRaw,
    fd: OwnedFd,
    layout: Layout,
}

/// A mapped shared-memory region: a header and a payload, shared with every process that maps
/// the same file. Cloning is cheap (the mapping is reference-counted); the mapping goes away
/// with the last clone.
#[derive(Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("fd", &self.inner.fd.as_raw_fd())
            .field("layout", &self.inner.layout)
            .finish()
    }
}

fn check_size(size: u64) -> Result<usize> {
    if size == 0 || size > MAX_SIZE {
        return Err(Error::InvalidSize {
            size,
            max: MAX_SIZE,
        });
    }
    usize::try_from(size).map_err(|_| Error::InvalidSize {
        size,
        max: MAX_SIZE,
    })
}

impl Region {
    /// Creates an anonymous region (a sealed memfd) with a zeroed payload of `size` bytes.
    ///
    /// `kind` tags the content; `align` (a power of two up to [`MAX_ALIGN`]) is the payload's
    /// alignment.
    pub fn anonymous(kind: u32, size: u64, align: u64) -> Result<Region> {
        Self::anonymous_sealed(
            kind,
            size,
            align,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        )
    }

    /// Like [`anonymous`](Self::anonymous), but the file may grow past the region (it still
    /// cannot shrink). A primitive that needs room beyond its fixed payload, known to every
    /// holder without passing new descriptors, grows the file with [`grow_file`](Self::grow_file)
    /// and maps the extra range itself (mp-queue does this for messages larger than its ring).
    pub fn anonymous_growable(kind: u32, size: u64, align: u64) -> Result<Region> {
        Self::anonymous_sealed(
            kind,
            size,
            align,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
        )
    }

    /// Makes the file behind the region at least `len` bytes long (from its start, header
    /// included). Fails on a region whose size is sealed.
    pub fn grow_file(&self, len: u64) -> Result<()> {
        let st =
            nix::sys::stat::fstat(self.inner.fd.as_raw_fd()).map_err(|e| Error::nix("fstat", e))?;
        if u64::try_from(st.st_size).unwrap_or(0) >= len {
            return Ok(());
        }
        let len = i64::try_from(len).map_err(|_| Error::InvalidSize {
            size: len,
            max: i64::MAX as u64,
        })?;
        nix::unistd::ftruncate(&self.inner.fd, len).map_err(|e| Error::nix("ftruncate", e))
    }

    fn anonymous_sealed(kind: u32, size: u64, align: u64, seals: SealFlag) -> Result<Region> {
        let len = check_size(size)?;
        check_align(align)?;
        let name = c"mp-region";
        let fd = memfd_create(
            name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Error::nix("memfd_create", e))?;
        let total = (HEADER_SIZE + len) as i64;
        nix::unistd::ftruncate(&fd, total).map_err(|e| Error::nix("ftruncate", e))?;
        nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Error::nix("fcntl(F_ADD_SEALS)", e))?;
        let layout = Layout { kind, size, align };
        Self::init(fd, layout)
    }

    fn init(fd: OwnedFd, layout: Layout) -> Result<Region> {
        let map = map_fd(&fd, HEADER_SIZE + layout.size as usize)?;
        let hdr = map.as_mut_ptr().cast::<RegionHeader>();
        // SAFETY: the mapping is at least HEADER_SIZE bytes and page-aligned, so `hdr` is valid
        // and aligned for a RegionHeader, whose fields are all atomics (valid for any bytes,
        // and shared references to them are fine while other processes write). The file was
        // just created (memfd) or created with O_EXCL (named) and its magic is still zero, so
        // no other process treats the header as initialised yet. The Release store of `magic`
        // publishes the other fields (pairs with the Acquire load in `validate`).
        let hdr = unsafe { &*hdr };
        let pid_ns = crate::ident::pid_namespace();
        hdr.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        hdr.kind.store(layout.kind, Ordering::Relaxed);
        hdr.size.store(layout.size, Ordering::Relaxed);
        hdr.align.store(layout.align, Ordering::Relaxed);
        hdr.pid_ns.store(pid_ns, Ordering::Relaxed);
        hdr.check.store(
            header_check(
                LAYOUT_VERSION,
                layout.kind,
                layout.size,
                layout.align,
                pid_ns,
            ),
            Ordering::Relaxed,
        );
        hdr.magic.store(MAGIC, Ordering::Release);
        Ok(Region {
            inner: Arc::new(Inner { map, fd, layout }),
        })
    }

    /// Maps a region from a descriptor (one handed over by another process) and checks its
    /// header. When `expect` is given, the header's kind must match, and its size and
    /// alignment must be at least the expected ones.
    pub fn from_fd(fd: OwnedFd, expect: Option<Layout>) -> Result<Region> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| Error::nix("fstat", e))?;
        let file_len = u64::try_from(st.st_size).unwrap_or(0);
        if file_len < HEADER_SIZE as u64 {
            return Err(Error::BadHeader {
                reason: format!(
                    "the file is {file_len} bytes, smaller than a region header ({HEADER_SIZE})"
                ),
            });
        }
        let header_map = map_fd(&fd, HEADER_SIZE)?;
        let layout = validate(&header_map, file_len)?;
        drop(header_map);
        if let Some(want) = expect {
            if want.kind != layout.kind {
                return Err(Error::BadHeader {
                    reason: format!(
                        "it holds content of kind {:#010x}, expected {:#010x} (another type, or another build)",
                        layout.kind, want.kind
                    ),
                });
            }
            if layout.size < want.size || layout.align < want.align {
                return Err(Error::BadHeader {
                    reason: format!(
                        "its payload is {} bytes aligned to {}, expected at least {} aligned to {}",
                        layout.size, layout.align, want.size, want.align
                    ),
                });
            }
        }
        let map = map_fd(&fd, HEADER_SIZE + layout.size as usize)?;
        Ok(Region {
            inner: Arc::new(Inner { map, fd, layout }),
        })
    }

    /// The payload's first byte. Valid for [`len`](Self::len) bytes for as long as this
    /// region (or a clone) lives, aligned to the region's alignment. Other processes may
    /// write it at any time: turn it into references only under a protocol that makes the
    /// access exclusive, or for types made of atomics.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: the mapping is HEADER_SIZE + size bytes long, so the offset stays inside it.
        unsafe { self.inner.map.as_mut_ptr().add(HEADER_SIZE) }
    }

    /// Payload size in bytes.
    pub fn len(&self) -> usize {
        self.inner.layout.size as usize
    }

    /// Always false: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// What the header says of the payload.
    pub fn layout(&self) -> Layout {
        self.inner.layout
    }

    /// The descriptor of the file behind the region.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    /// Opens a new descriptor of the file behind the region (for handing it to a child).
    pub fn dup_fd(&self) -> Result<OwnedFd> {
        self.inner
            .fd
            .try_clone()
            .map_err(|source| Error::Io { op: "dup", source })
    }

    /// True when both values map the same region in this process.
    pub fn same_as(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl AsRawFd for Region {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}

fn check_align(align: u64) -> Result<()> {
    if align == 0 || !align.is_power_of_two() || align > MAX_ALIGN as u64 {
        return Err(Error::BadHeader {
            reason: format!("alignment {align} is not a power of two up to {MAX_ALIGN}"),
        });
    }
    Ok(())
}

fn map_fd(fd: &OwnedFd, len: usize) -> Result<MmapRaw> {
    MmapOptions::new()
        .len(len)
        .map_raw(fd)
        .map_err(|source| Error::Io { op: "mmap", source })
}

/// Reads and checks the header at the start of `map`, for a file of `file_len` bytes.
fn validate(map: &MmapRaw, file_len: u64) -> Result<Layout> {
    let hdr = map.as_ptr().cast::<RegionHeader>();
    // SAFETY: the mapping is at least HEADER_SIZE bytes and page-aligned, and every field of
    // the header is an atomic, valid for every bit pattern: a shared reference is sound even
    // while another process writes the bytes.
    let hdr = unsafe { &*hdr };
    // Acquire pairs with the Release store in `init`: once it reads MAGIC, the other fields
    // are complete, and no mp code writes them again. Each field is read once, here; the
    // checks below look only at these copies.
    let magic = hdr.magic.load(Ordering::Acquire);
    let version = hdr.version.load(Ordering::Relaxed);
    let kind = hdr.kind.load(Ordering::Relaxed);
    let size = hdr.size.load(Ordering::Relaxed);
    let align = hdr.align.load(Ordering::Relaxed);
    let check = hdr.check.load(Ordering::Relaxed);
    let pid_ns = hdr.pid_ns.load(Ordering::Relaxed);
    if magic == 0 {
        return Err(Error::BadHeader {
            reason: "the header is not initialised (its creator has not finished, or it is not an mp region)".into(),
        });
    }
    if magic != MAGIC {
        return Err(Error::BadHeader {
            reason: format!("bad magic {magic:#018x}: this is not an mp region"),
        });
    }
    if version != LAYOUT_VERSION {
        return Err(Error::BadHeader {
            reason: format!(
                "layout version {version}, this build of mp reads version {LAYOUT_VERSION}"
            ),
        });
    }
    if check != header_check(version, kind, size, align, pid_ns) {
        return Err(Error::BadHeader {
            reason: "the header check does not match: the header is corrupted".into(),
        });
    }
    let ours = crate::ident::pid_namespace();
    if pid_ns != 0 && ours != 0 && pid_ns != ours {
        return Err(Error::ForeignPidNamespace {
            region: pid_ns,
            ours,
        });
    }
    check_size(size).map_err(|_| Error::BadHeader {
        reason: format!("payload size {size} is out of range"),
    })?;
    check_align(align)?;
    if HEADER_SIZE as u64 + size > file_len {
        return Err(Error::BadHeader {
            reason: format!(
                "the header says {size} payload bytes but the file holds only {}",
                file_len - HEADER_SIZE as u64
            ),
        });
    }
    Ok(Layout { kind, size, align })
}

/// Allocates every page of a new named block's file (`len` bytes), so that a full
/// `/dev/shm` is an error now (`Error::Io` with `ENOSPC`, op `fallocate`) and not a `SIGBUS`
/// at the first write of a page the file system cannot give. A file system without
/// `fallocate` leaves the file sparse, as before.
fn reserve(fd: &OwnedFd, len: i64) -> Result<()> {
    // SAFETY: fallocate on our own new descriptor, which nothing maps yet: it changes the
    // file, not our memory.
    if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::EOPNOTSUPP => Ok(()),
        e => Err(Error::nix("fallocate", e)),
    }
}

/// The prefix of every named region mp makes in `/dev/shm`.
pub const NAME_PREFIX: &str = "mp-";

/// A named shared-memory block, like Python's `multiprocessing.shared_memory.SharedMemory`.
///
/// `create(name, size)` makes `/dev/shm/mp-<name>` (mode 0600) and `attach(name)` maps it from
/// any process of the same user. The creator is the owner: dropping the owner's handle, or
/// calling [`unlink`](Self::unlink), removes the name (mappings stay valid until dropped).
///
/// The payload is raw bytes that any attached process may write at any time, so access goes
/// through copies ([`read_at`](Self::read_at), [`write_at`](Self::write_at)) or through the raw
/// pointer of [`as_ptr`](Self::as_ptr) under a protocol of the caller's.
///
/// ```
/// use mp_core::SharedMemory;
/// let name = format!("doc-{}", std::process::id());
/// let owner = SharedMemory::create(&name, 512)?;
/// owner.write_at(0, b"hello")?;
/// let other = SharedMemory::attach(&name)?;
/// let mut buf = [0u8; 5];
/// other.read_at(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// owner.unlink()?;
/// assert!(SharedMemory::attach(&name).is_err());
/// # Ok::<(), mp_core::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    region: Region,
    name: String,
    /// The pid of the creator, or 0 for an attached block: only the creator's own process
    /// unlinks on drop (a forked child holding a copy must not).
    owner_pid: u32,
    unlinked: std::sync::atomic::AtomicBool,
}

fn shm_path(name: &str) -> Result<CString> {
    if name.is_empty() {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "the name is empty",
        });
    }
    if name.len() > 200 {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "the name is longer than 200 bytes",
        });
    }
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "the name may not contain '/' or NUL, nor be '.' or '..'",
        });
    }
    CString::new(format!("/{NAME_PREFIX}{name}")).map_err(|_| Error::InvalidName {
        name: name.into(),
        reason: "the name contains NUL",
    })
}

impl SharedMemory {
    /// Creates a new named block of `size` zeroed bytes. Errors: [`Error::InvalidSize`] for 0,
    /// [`Error::Exists`] when the name is taken, [`Error::InvalidName`], [`Error::Io`] with
    /// `ENOSPC` (op `fallocate`) when `/dev/shm` has no room for the whole block.
    pub fn create(name: &str, size: u64) -> Result<SharedMemory> {
        Self::create_with_kind(name, size, KIND_BYTES)
    }

    /// Like [`create`](Self::create), with a content kind of the caller's in the header
    /// (for a named block that holds a structure, such as a
    /// [`ShareableList`](crate::shareable::ShareableList)): [`attach`](Self::attach) refuses
    /// it, [`attach_with_kind`](Self::attach_with_kind) with the same kind accepts it.
    pub fn create_with_kind(name: &str, size: u64, kind: u32) -> Result<SharedMemory> {
        check_size(size)?;
        let path = shm_path(name)?;
        let fd = nix::sys::mman::shm_open(
            path.as_c_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| match e {
            Errno::EEXIST => Error::Exists { name: name.into() },
            e => Error::nix("shm_open", e),
        })?;
        let made = (|| {
            let len = (HEADER_SIZE as u64 + size) as i64;
            nix::unistd::ftruncate(&fd, len).map_err(|e| Error::nix("ftruncate", e))?;
            reserve(&fd, len)?;
            Region::init(
                fd,
                Layout {
                    kind,
                    size,
                    align: MAX_ALIGN as u64,
                },
            )
        })();
        match made {
            Ok(region) => Ok(SharedMemory {
                region,
                name: name.into(),
                owner_pid: std::process::id(),
                unlinked: false.into(),
            }),
            Err(e) => {
                let _ = nix::sys::mman::shm_unlink(path.as_c_str());
                Err(e)
            }
        }
    }

    /// Maps an existing named block. Errors: [`Error::NotFound`], [`Error::BadHeader`] when
    /// the name holds something that is not an mp block, or a block that another uid owns or
    /// that group or others may open (its reason says which: anyone can make a name in
    /// `/dev/shm` first, to read or change what would be shared).
    pub fn attach(name: &str) -> Result<SharedMemory> {
        Self::attach_with_kind(name, KIND_BYTES)
    }

    /// Like [`attach`](Self::attach), for a block made by
    /// [`create_with_kind`](Self::create_with_kind) with this `kind` (any other kind is
    /// [`Error::BadHeader`]).
    pub fn attach_with_kind(name: &str, kind: u32) -> Result<SharedMemory> {
        let path = shm_path(name)?;
        let fd = nix::sys::mman::shm_open(
            path.as_c_str(),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT => Error::NotFound { name: name.into() },
            e => Error::nix("shm_open", e),
        })?;
        // A name is in a directory every user may write to: anyone could have made it first,
        // to read, change or truncate (SIGBUS) what we share. Only a block of our own uid
        // that nobody else may open is ours (`create` makes them so: mode 0600).
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| Error::nix("fstat", e))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != me {
            return Err(Error::BadHeader {
                reason: format!(
                    "/dev/shm/mp-{name} belongs to uid {}, not to this process's uid {me}: another user made it, and could read or change what is shared through it; remove it (as its owner or root) and create it again",
                    st.st_uid
                ),
            });
        }
        let mode = st.st_mode & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::BadHeader {
                reason: format!(
                    "/dev/shm/mp-{name} has mode {mode:04o}: other users may open it (mp makes blocks with 0600); remove it and create it again, or chmod 600 it if you trust it"
                ),
            });
        }
        let region = Region::from_fd(
            fd,
            Some(Layout {
                kind,
                size: 1,
                align: 1,
            }),
        )?;
        Ok(SharedMemory {
            region,
            name: name.into(),
            owner_pid: 0,
            unlinked: false.into(),
        })
    }

    /// Removes the name (the blocks stay mapped where they are mapped). A second unlink, or
    /// one of a name that does not exist, is [`Error::NotFound`].
    pub fn unlink(&self) -> Result<()> {
        let path = shm_path(&self.name)?;
        self.unlinked.store(true, Ordering::Relaxed);
        nix::sys::mman::shm_unlink(path.as_c_str()).map_err(|e| match e {
            Errno::ENOENT => Error::NotFound {
                name: self.name.clone(),
            },
            e => Error::nix("shm_unlink", e),
        })
    }

    /// Gives up ownership: dropping the returned handle no longer unlinks the name (whoever
    /// manages the block, such as a `SharedMemoryManager`, unlinks it).
    pub fn into_unowned(mut self) -> SharedMemory {
        self.owner_pid = 0;
        self
    }

    /// True when dropping this handle unlinks the name (it created the block, in this process,
    /// and has not given ownership up).
    pub fn is_owner(&self) -> bool {
        self.owner_pid == std::process::id()
    }

    /// The name given at creation (without the `mp-` prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.region.len()
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`. An out-of-range request is
    /// [`Error::OutOfRange`].
    ///
    /// Other processes may write the block at the same time: the copy then holds some mix of
    /// old and new bytes (each aligned 8-byte word is read whole), as with Python's
    /// `SharedMemory.buf`. Use a lock of mp-sync around both sides for a consistent copy.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        // SAFETY: the range is inside the payload (checked above), which stays mapped while
        // `self` lives. Other processes may write it concurrently: `copy_from_shared` reads it
        // only through atomic loads, so that is no data race.
        unsafe { crate::atomic_copy::copy_from_shared(self.region.as_ptr().add(offset), buf) };
        Ok(())
    }

    /// Copies `data` into the block at `offset`. An out-of-range request is
    /// [`Error::OutOfRange`]. Concurrent readers and writers see the bytes change word by
    /// word, as documented for [`read_at`](Self::read_at).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        // SAFETY: the range is inside the payload (checked above); `copy_to_shared` writes it
        // only through atomic stores, so concurrent readers and writers are no data race.
        unsafe { crate::atomic_copy::copy_to_shared(data, self.region.as_ptr().add(offset)) };
        Ok(())
    }

    /// The first byte of the block, for callers with a protocol of their own. See
    /// [`Region::as_ptr`].
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The region behind the block.
    pub fn region(&self) -> &Region {
        &self.region
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::OutOfRange {
                offset: offset as u64,
                len: len as u64,
                size: self.size() as u64,
            }),
        }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.owner_pid == std::process::id() && !self.unlinked.load(Ordering::Relaxed) {
            if let Ok(path) = shm_path(&self.name) {
                let _ = nix::sys::mman::shm_unlink(path.as_c_str());
            }
        }
    }
}
