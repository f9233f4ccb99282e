//! [`Shared<T>`]: one value of a type made of atomics, in its own shared region.
//!
//! This is what every synchronisation primitive stands on: a `Lock` is a `Shared<RawLock>`
//! whose fields are atomics, so handing out `&RawLock` is sound even while other processes
//! change it (they can only do so through the atomics). The region's header records a hash of
//! the type's name, size and alignment, so a handle received from another build, or for
//! another type, is refused.

use std::marker::PhantomData;
use std::ops::Deref;

use rkyv::rancor::{Fallible, Source};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::error::{Error, Result};
use crate::handle::RegionHandle;
use crate::region::{Region, MAX_ALIGN};

/// Re-exported from [`crate::atomic_copy`], where they live (their old path).
pub use crate::atomic_copy::{copy_from_shared, copy_to_shared};

/// Types that may live in shared memory and be used from several processes at once through a
/// shared reference.
///
/// # Safety
/// Implementors guarantee that:
/// 1. every field is an atomic, or a plain integer/float/array of them that is never written
///    after construction, so that concurrent use from several processes through `&Self` is free
///    of data races;
/// 2. every bit pattern another process could leave in the value (including by dying half-way
///    through a method) is a valid `Self`: no references, pointers, `bool`s or enums with
///    invalid patterns, nothing that owns heap memory;
/// 3. the type needs no `Drop` (the region is unmapped without running destructors);
/// 4. the layout is fixed: `#[repr(C)]` with size and alignment pinned by `static_assertions`.
pub unsafe trait ShmSafe: Sync + Sized + 'static {}

// SAFETY: atomics satisfy every point: any bit pattern is valid, no Drop, fixed layout.
unsafe impl ShmSafe for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicU64 {}
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicI32 {}
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicI64 {}

/// The content kind recorded for a region holding a `T`: a hash of the type's name, size and
/// alignment. Equal in every process running the same build.
pub fn kind_of<T>() -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let name = std::any::type_name::<T>();
    for b in name
        .bytes()
        .chain((std::mem::size_of::<T>() as u64).to_le_bytes())
        .chain((std::mem::align_of::<T>() as u64).to_le_bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A `T` in shared memory, visible to every process that holds a handle to it. Cloning is
/// cheap and shares the same value. Dereferences to `&T`.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use mp_core::Shared;
/// let counter = Shared::new(AtomicU64::new(0))?;
/// counter.fetch_add(2, Ordering::Relaxed);
/// assert_eq!(counter.load(Ordering::Relaxed), 2);
/// # Ok::<(), mp_core::Error>(())
/// ```
pub struct Shared<T: ShmSafe> {
    region: Region,
    offset: usize,
    _t: PhantomData<T>,
}

impl<T: ShmSafe> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            region: self.region.clone(),
            offset: self.offset,
            _t: PhantomData,
        }
    }
}

impl<T: ShmSafe> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("type", &std::any::type_name::<T>())
            .field("region", &self.region)
            .field("offset", &self.offset)
            .finish()
    }
}

impl<T: ShmSafe> Shared<T> {
    /// Moves `value` into a new anonymous region.
    pub fn new(value: T) -> Result<Shared<T>> {
        let align = std::mem::align_of::<T>();
        if align > MAX_ALIGN {
            return Err(Error::BadHeader {
                reason: format!("alignment {align} is above the supported {MAX_ALIGN}"),
            });
        }
        let size = std::mem::size_of::<T>().max(1);
        let region = Region::anonymous(kind_of::<T>(), size as u64, align as u64)?;
        // SAFETY: the payload is `size >= size_of::<T>()` bytes, aligned to `align_of::<T>()`
        // (region payloads are aligned to their layout's alignment), and no other process can
        // know of this region yet, so the write races with nothing.
        unsafe { region.as_ptr().cast::<T>().write(value) };
        Ok(Shared {
            region,
            offset: 0,
            _t: PhantomData,
        })
    }

    /// The region holding the value.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// A handle to a field of this value (for example the lock inside a `Value`), sharing the
    /// same region.
    ///
    /// Fails when `f` returns a reference that is not inside the value.
    pub fn project<U: ShmSafe>(&self, f: impl FnOnce(&T) -> &U) -> Result<Shared<U>> {
        let base = (&**self) as *const T as usize;
        let field = f(self) as *const U as usize;
        let end = base + std::mem::size_of::<T>();
        if field < base || field + std::mem::size_of::<U>() > end {
            return Err(Error::Handle(
                "project: the reference is not inside the shared value".into(),
            ));
        }
        Ok(Shared {
            region: self.region.clone(),
            offset: self.offset + (field - base),
            _t: PhantomData,
        })
    }

    fn from_parts(region: Region, offset: usize) -> Result<Shared<T>> {
        let fits = offset
            .checked_add(std::mem::size_of::<T>())
            .is_some_and(|end| end <= region.len());
        // SAFETY: computing an address inside (or one past) the mapping for the alignment check.
        let addr = unsafe { region.as_ptr().add(offset.min(region.len())) } as usize;
        if !fits || addr % std::mem::align_of::<T>() != 0 {
            return Err(Error::BadHeader {
                reason: format!(
                    "a {} at offset {offset} does not fit the region of {} bytes",
                    std::any::type_name::<T>(),
                    region.len()
                ),
            });
        }
        Ok(Shared {
            region,
            offset,
            _t: PhantomData,
        })
    }
}

impl<T: ShmSafe> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `offset` was checked (in `new`, `project` or `from_parts`) to leave a whole,
        // aligned `T` inside the mapping, which lives as long as `self.region`. The value was
        // initialised by its creator before any handle to it existed. `T: ShmSafe` makes a
        // shared reference sound while other processes use it concurrently (only atomics are
        // mutated) and makes every bit pattern they can leave valid.
        unsafe { &*self.region.as_ptr().add(self.offset).cast::<T>() }
    }
}

/// What a [`Shared<T>`] is archived as.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SharedHandle {
    /// The region.
    pub region: RegionHandle,
    /// Offset of the value in the payload.
    pub offset: u64,
    /// `kind_of::<T>()` of the value (the region's own kind may be that of an outer value).
    pub kind: u32,
}

impl<T: ShmSafe> Archive for Shared<T> {
    type Archived = ArchivedSharedHandle;
    type Resolver = (SharedHandle, <SharedHandle as Archive>::Resolver);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        resolver.0.resolve(resolver.1, out);
    }
}

impl<T: ShmSafe, S: Fallible + ?Sized> Serialize<S> for Shared<T>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let h = SharedHandle {
            region: RegionHandle::export(&self.region).map_err(S::Error::new)?,
            offset: self.offset as u64,
            kind: kind_of::<T>(),
        };
        let r = h.serialize(serializer)?;
        Ok((h, r))
    }
}

impl<T: ShmSafe, D: Fallible + ?Sized> Deserialize<Shared<T>, D> for ArchivedSharedHandle
where
    D::Error: Source,
{
    fn deserialize(&self, d: &mut D) -> Result<Shared<T>, D::Error> {
        if self.kind.to_native() != kind_of::<T>() {
            return Err(D::Error::new(Error::BadHeader {
                reason: format!(
                    "the handle is for a value of kind {:#010x}, expected {} ({:#010x})",
                    self.kind.to_native(),
                    std::any::type_name::<T>(),
                    kind_of::<T>()
                ),
            }));
        }
        let region: Region = self.region.deserialize(d)?;
        let offset = usize::try_from(self.offset.to_native()).unwrap_or(usize::MAX);
        Shared::from_parts(region, offset).map_err(D::Error::new)
    }
}
