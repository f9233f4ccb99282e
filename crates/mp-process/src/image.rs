//! Finding a function again in a re-executed copy of this program.
//!
//! Under spawn and forkserver the child is a new image of the same executable, loaded at
//! another address (ASLR). A function is therefore named by its *offset* from a known symbol
//! ([`anchor`]) of the object (executable or shared library) that holds mp-process; the child
//! adds the offset to its own address of the anchor. This is only sound when the child runs
//! exactly the same code, so the parent also sends the object's identity ([`ImageId`]: the
//! GNU build id written by the linker, or, for an object without one, the device, inode, size
//! and modification time of the file): a child whose identity differs refuses to start with
//! a clear error instead of calling into the wrong code. The child is always started from
//! `/proc/self/exe` (the very file the parent runs, even if a rebuild replaced the path
//! meanwhile), so a mismatch only happens across a fork server started from another build.

use std::ffi::c_void;
use std::sync::OnceLock;

use crate::error::Error;
use crate::method::StartMethod;

/// The landmark offsets are measured from. Never inlined, so that it has one address.
#[inline(never)]
pub(crate) extern "C" fn anchor() {}

fn anchor_addr() -> usize {
    anchor as *const () as usize
}

/// The identity of the object that holds mp-process (and so, the anchor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageId(pub(crate) Vec<u8>);

struct Image {
    base: usize,
    id: ImageId,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let base = object_base(anchor_addr()).unwrap_or(0);
        let id = build_id(anchor_addr()).unwrap_or_else(file_identity);
        Image {
            base,
            id: ImageId(id),
        }
    })
}

/// This object's identity.
pub(crate) fn image_id() -> &'static ImageId {
    &image().id
}

/// The load base of the object that contains `addr`, per `dladdr`.
fn object_base(addr: usize) -> Option<usize> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `info`, which is valid for writes.
    let ok = unsafe { libc::dladdr(addr as *const c_void, info.as_mut_ptr()) };
    if ok == 0 {
        return None;
    }
    // SAFETY: dladdr returned non-zero, so it filled `info`.
    let info = unsafe { info.assume_init() };
    Some(info.dli_fbase as usize)
}

/// The offset of `addr` (a function of this program) from the anchor, checked to lie in the
/// same object as the anchor.
pub(crate) fn offset_of(addr: usize, method: StartMethod) -> Result<isize, Error> {
    let here = image().base;
    match object_base(addr) {
        Some(b) if b == here => Ok(addr.wrapping_sub(anchor_addr()) as isize),
        Some(_) => Err(Error::TargetNotInExecutable {
            method,
            reason: "it lives in another shared object than mp-process; a re-executed child \
                     could not find it at a checked address (use the fork start method)"
                .into(),
        }),
        None => Err(Error::TargetNotInExecutable {
            method,
            reason: "the dynamic loader does not know the object that holds it".into(),
        }),
    }
}

/// The address of the function at `offset` from the anchor in this process, after checking
/// that the parent that computed the offset runs the same object.
pub(crate) fn resolve(offset: isize, parent_id: &[u8]) -> Result<usize, String> {
    let mine = image_id();
    if mine.0 != parent_id {
        return Err(format!(
            "the executable differs from the parent's (build id {} here, {} in the parent): \
             was the program rebuilt or replaced while it ran?",
            hex(&mine.0),
            hex(parent_id)
        ));
    }
    let addr = anchor_addr().wrapping_add(offset as usize);
    if object_base(addr) != Some(image().base) {
        return Err(format!(
            "offset {offset} from the anchor is outside this executable"
        ));
    }
    Ok(addr)
}

// The bounds of the `mp_trampolines` section, which the linker defines for a section whose
// name is a C identifier. It holds every instantiation of `child_side::run::trampoline` and
// `no_trampoline` (which keeps the section, and so the symbols, present in a program that
// starts no process).
extern "C" {
    static __start_mp_trampolines: u8;
    static __stop_mp_trampolines: u8;
}

/// Lives in the trampoline section so that it always exists; called as a trampoline (which
/// nothing does), it refuses.
#[link_section = "mp_trampolines"]
#[inline(never)]
fn no_trampoline(_target: usize, _args: &[u8], chan: std::os::fd::BorrowedFd<'_>) -> i32 {
    crate::boot::fail_start(chan, "not a trampoline".into())
}

/// The address range of the trampoline section.
fn trampolines() -> std::ops::Range<usize> {
    // Taking the address keeps `no_trampoline`, and so the section, in the program.
    std::hint::black_box(no_trampoline as fn(usize, &[u8], std::os::fd::BorrowedFd<'_>) -> i32);
    // Only the addresses of the linker-defined symbols are taken (`&raw const`, which needs
    // no unsafe); nothing is read through them.
    (&raw const __start_mp_trampolines as usize)..(&raw const __stop_mp_trampolines as usize)
}

/// Like [`resolve`], for the trampoline of a boot frame: the address must also lie in the
/// section that holds only trampolines, so that a boot frame cannot make the child jump to
/// any other code of the executable.
pub(crate) fn resolve_trampoline(offset: isize, parent_id: &[u8]) -> Result<usize, String> {
    let addr = resolve(offset, parent_id)?;
    if !trampolines().contains(&addr) {
        return Err(format!(
            "offset {offset} from the anchor is not a trampoline: the boot message was not made by mp"
        ));
    }
    Ok(addr)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Search {
    addr: usize,
    found: Option<Vec<u8>>,
}

/// The GNU build id of the loaded object that contains `addr`.
fn build_id(addr: usize) -> Option<Vec<u8>> {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Search` passed to dl_iterate_phdr below, alive for the
        // whole iteration, and the loader passes a valid `info` for the duration of the call.
        let (search, info) = unsafe { (&mut *(data as *mut Search), &*info) };
        let bias = info.dlpi_addr as usize;
        // SAFETY: the loader guarantees `dlpi_phdr` points at `dlpi_phnum` program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let contains = phdrs.iter().any(|p| {
            p.p_type == libc::PT_LOAD && {
                let start = bias + p.p_vaddr as usize;
                (start..start + p.p_memsz as usize).contains(&search.addr)
            }
        });
        if !contains {
            return 0;
        }
        for p in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
            let start = bias + p.p_vaddr as usize;
            // SAFETY: a PT_NOTE segment of a loaded object is mapped readable for `p_memsz`
            // bytes (it lies inside a PT_LOAD segment) for as long as the object is loaded;
            // the object holds this very code, so it stays loaded.
            let notes =
                unsafe { std::slice::from_raw_parts(start as *const u8, p.p_memsz as usize) };
            if let Some(id) = find_build_id(notes, p.p_align as usize) {
                search.found = Some(id);
                return 1;
            }
        }
        1
    }
    let mut search = Search { addr, found: None };
    // SAFETY: `visit` matches the callback type and only reads what the loader hands it;
    // `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search as *mut c_void) };
    search.found
}

/// Parses ELF notes and returns the descriptor of the NT_GNU_BUILD_ID note.
fn find_build_id(mut notes: &[u8], align: usize) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align = align.max(4);
    let up = |n: usize| n.div_ceil(align) * align;
    while notes.len() >= 12 {
        let word =
            |i: usize| u32::from_ne_bytes([notes[i], notes[i + 1], notes[i + 2], notes[i + 3]]);
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12 + up(namesz);
        let desc_end = name_end + up(descsz);
        if desc_end > notes.len() && name_end + descsz > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && namesz == 4 && &notes[12..16] == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        if desc_end > notes.len() {
            return None;
        }
        notes = &notes[desc_end..];
    }
    None
}

/// For an object without a build id: device, inode, size and mtime of the executable.
fn file_identity() -> Vec<u8> {
    let mut v = b"file:".to_vec();
    if let Ok(m) = std::fs::metadata("/proc/self/exe") {
        use std::os::unix::fs::MetadataExt;
        for x in [
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_found_and_offsets_round_trip() {
        let id = image_id();
        assert!(!id.0.is_empty());
        fn f(x: u32) -> u32 {
            x + 1
        }
        let addr = f as fn(u32) -> u32 as usize;
        let off = offset_of(addr, StartMethod::Spawn).unwrap();
        assert_eq!(resolve(off, &id.0).unwrap(), addr);
        assert!(resolve(off, b"another build")
            .unwrap_err()
            .contains("differs"));
        assert!(resolve(isize::MAX / 2, &id.0).is_err());
        // A function of libc lives in another object.
        let foreign = libc::getpid as *const () as usize;
        assert!(offset_of(foreign, StartMethod::Spawn).is_err());
    }
}
