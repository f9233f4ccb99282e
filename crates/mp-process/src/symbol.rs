//! Naming a function of this program so that a re-executed copy of it (a spawn or
//! forkserver child) can call it: the mechanism [`Process`](crate::Process) uses for its
//! target, public for crates that send functions to long-lived children (a pool sends each
//! task's function with the task).
//!
//! A function is named by its offset from a known symbol of the object that holds
//! mp-process ([`offset_of`]); a process turns an offset back into an address with
//! [`resolve`], which first checks that it runs the same build as the process that computed
//! the offset ([`image_id`], the GNU build id) and that the address lies inside that object.
//!
//! ```
//! fn triple(x: u32) -> u32 { x * 3 }
//!
//! let f = triple as fn(u32) -> u32;
//! let offset = mp_process::symbol::offset_of(f as usize)?;
//! // ... the offset and image_id() travel to a child, which calls:
//! let addr = mp_process::symbol::resolve(offset, mp_process::symbol::image_id())?;
//! // SAFETY (of the example): `addr` is the address of a `fn(u32) -> u32`: the offset was
//! // computed from one, and `resolve` checked the build and the object.
//! let g = unsafe { std::mem::transmute::<usize, fn(u32) -> u32>(addr) };
//! assert_eq!(g(5), 15);
//! # Ok::<(), mp_process::Error>(())
//! ```

use crate::error::Error;
use crate::method::StartMethod;

/// The identity of the object (normally the executable) that holds mp-process: its GNU build
/// id, or for an object without one, the executable file's device, inode, size and mtime.
pub fn image_id() -> &'static [u8] {
    &crate::image::image_id().0
}

/// The offset of the function at `addr` from mp-process's anchor symbol. An error when the
/// function lives in another object (a shared library) than mp-process, where a re-executed
/// child could not find it at a checked address.
pub fn offset_of(addr: usize) -> Result<i64, Error> {
    crate::image::offset_of(addr, StartMethod::Spawn).map(|o| o as i64)
}

/// The address, in this process, of the function at `offset` from the anchor, after checking
/// that `image_id` (the identity of the process that computed the offset) is this process's
/// own [`image_id`] and that the address lies inside this object. Turning the address into a
/// function pointer of the right type is the caller's (unsafe) business.
pub fn resolve(offset: i64, image_id: &[u8]) -> Result<usize, Error> {
    crate::image::resolve(offset as isize, image_id).map_err(|reason| {
        Error::TargetNotInExecutable {
            method: StartMethod::Spawn,
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plus_one(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn round_trip_and_refusals() {
        let addr = plus_one as fn(u64) -> u64 as usize;
        let off = offset_of(addr).unwrap();
        assert_eq!(resolve(off, image_id()).unwrap(), addr);
        assert!(matches!(
            resolve(off, b"another build"),
            Err(Error::TargetNotInExecutable { .. })
        ));
        assert!(resolve(i64::MAX / 2, image_id()).is_err());
        assert!(offset_of(libc::getpid as *const () as usize).is_err());
    }
}
