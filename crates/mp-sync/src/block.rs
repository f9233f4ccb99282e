//! [`Block<H, E>`]: a header and a run of elements in one anonymous shared region, for the
//! primitives whose size is chosen at run time (a barrier's party table, an array).
//!
//! Layout: the header `H` at offset 0, the elements from the next multiple of
//! `align_of::<E>()`. The region's kind is `kind_of::<(H, E)>()`, so a handle decoded as
//! another block type is refused; the element count is derived from the region's checked
//! size, so a handle cannot claim more elements than the region holds.

use std::marker::PhantomData;

use mp_core::handle::ArchivedRegionHandle;
use mp_core::region::MAX_ALIGN;
use mp_core::shared::kind_of;
use mp_core::{Region, ShmSafe};

use rkyv::rancor::{Fallible, Source};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::error::{Error, Result};

/// Element types a [`Block`] may hold.
///
/// # Safety
/// All-zero bytes are a valid `Self`; every bit pattern another process can leave is a
/// valid `Self`; the type needs no `Drop`; and its layout is fixed (`#[repr(C)]` or a
/// primitive). Elements are only accessed through raw pointers by the owning primitive,
/// which documents its own protocol (atomics, or atomic byte copies).
pub(crate) unsafe trait Element: Sync + Send + 'static {}

/// Header types of a [`Block`].
pub(crate) trait Header: ShmSafe {
    /// The fewest elements a block with this header may hold; a handle to a region with
    /// fewer is refused.
    const MIN_LEN: usize = 0;
}

pub(crate) struct Block<H: Header, E: Element> {
    region: Region,
    len: usize,
    _t: PhantomData<fn() -> (H, E)>,
}

impl<H: Header, E: Element> Clone for Block<H, E> {
    fn clone(&self) -> Self {
        Block {
            region: self.region.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

const fn elems_offset<H, E>() -> usize {
    let h = std::mem::size_of::<H>();
    let a = std::mem::align_of::<E>();
    h.div_ceil(a) * a
}

impl<H: Header, E: Element> Block<H, E> {
    /// A new block of `len` zeroed elements after `header`.
    pub(crate) fn new(header: H, len: usize) -> Result<Self> {
        let esize = std::mem::size_of::<E>();
        if esize == 0 {
            return Err(Error::InvalidArgument(
                "zero-sized element types cannot live in shared memory",
            ));
        }
        let align = std::mem::align_of::<H>().max(std::mem::align_of::<E>());
        if align > MAX_ALIGN {
            return Err(Error::InvalidArgument("alignment above 64 bytes"));
        }
        let size = len
            .checked_mul(esize)
            .and_then(|b| b.checked_add(elems_offset::<H, E>()))
            .ok_or(Error::InvalidArgument("too many elements"))?
            .max(1);
        let region = Region::anonymous(kind_of::<(H, E)>(), size as u64, align as u64)?;
        // SAFETY: the payload is at least size_of::<H>() bytes, aligned to align_of::<H>()
        // (region payloads are aligned to their layout's alignment, and `align` covers H), and
        // no other process knows of the region yet: the write races with nothing. The
        // elements are left zeroed by `Region::anonymous`, a valid state (`Element` contract).
        unsafe { region.as_ptr().cast::<H>().write(header) };
        Ok(Block {
            region,
            len,
            _t: PhantomData,
        })
    }

    fn from_region(region: Region) -> Result<Self, mp_core::Error> {
        let want = kind_of::<(H, E)>();
        let refuse = |reason: String| mp_core::Error::BadHeader { reason };
        if region.layout().kind != want {
            return Err(refuse(format!(
                "the handle is for a region of kind {:#010x}, expected {} ({want:#010x})",
                region.layout().kind,
                std::any::type_name::<(H, E)>()
            )));
        }
        let align = std::mem::align_of::<H>().max(std::mem::align_of::<E>());
        let off = elems_offset::<H, E>();
        if (region.layout().align as usize) < align || region.len() < off {
            return Err(refuse(format!(
                "a region of {} bytes aligned to {} cannot hold a {}",
                region.len(),
                region.layout().align,
                std::any::type_name::<H>()
            )));
        }
        let len = (region.len() - off) / std::mem::size_of::<E>().max(1);
        if len < H::MIN_LEN {
            return Err(refuse(format!(
                "the region holds {len} elements, a {} needs at least {}",
                std::any::type_name::<H>(),
                H::MIN_LEN
            )));
        }
        Ok(Block {
            region,
            len,
            _t: PhantomData,
        })
    }

    /// The header.
    pub(crate) fn header(&self) -> &H {
        // SAFETY: offset 0 of the payload holds an initialised, aligned H (written by `new`,
        // checked by `from_region`), for as long as `self.region` lives; `H: Header` makes a
        // shared reference sound while other processes use it through its atomics.
        unsafe { &*self.region.as_ptr().cast::<H>() }
    }

    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A pointer to the first element; valid for `len()` elements while `self` lives.
    pub(crate) fn elems(&self) -> *mut E {
        // SAFETY: the elements start `elems_offset` bytes into the payload, inside the mapping
        // (checked in `new` and `from_region`).
        unsafe { self.region.as_ptr().add(elems_offset::<H, E>()).cast::<E>() }
    }
}

impl<H: Header, E: Element> Archive for Block<H, E> {
    type Archived = ArchivedRegionHandle;
    type Resolver = <Region as Archive>::Resolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        self.region.resolve(resolver, out);
    }
}

impl<H: Header, E: Element, S: Fallible + ?Sized> Serialize<S> for Block<H, E>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        self.region.serialize(serializer)
    }
}

impl<H: Header, E: Element, D: Fallible + ?Sized> Deserialize<Block<H, E>, D>
    for ArchivedRegionHandle
where
    D::Error: Source,
{
    fn deserialize(&self, d: &mut D) -> Result<Block<H, E>, D::Error> {
        let region: Region = Deserialize::<Region, D>::deserialize(self, d)?;
        Block::from_region(region).map_err(D::Error::new)
    }
}
