//! [`Value<T>`], [`Array<T>`] and their lock-free [`RawValue<T>`], [`RawArray<T>`]: plain data in
//! shared memory.
//!
//! # Why `T: Pod`
//! Another process may write the memory at any time, or die half-way through a write: what
//! it leaves must be a valid `T` whatever the bytes are. [`Pod`] types (integers, floats,
//! byte arrays, `#[repr(C)]` structs of them without padding) have that property; `bool`,
//! `char`, enums, references and anything owning heap memory do not, and are refused at
//! compile time:
//!
//! ```compile_fail
//! let v = mp_sync::Value::new(String::from("not plain data"));
//! ```
//!
//! ```compile_fail
//! let v = mp_sync::RawValue::new(true); // bool: only 0 and 1 are valid bytes
//! ```
//!
//! The raw variants have no lock, and so no lock accessor:
//!
//! ```compile_fail
//! let raw = mp_sync::RawValue::new(1u8).unwrap();
//! let _ = raw.get_lock();
//! ```
//!
//! # How the memory is accessed
//! Never through a `&T` or `&mut T` into shared memory. Reads and writes copy the value in
//! and out with relaxed atomic loads and stores of the widest unit the type's alignment
//! allows (bytes, `u32`s or `u64`s), so that a concurrent write by another process is not a
//! data race in Rust's sense. With the lock held (`Value`, `Array`), the lock's
//! acquire/release orders the copies and no update is lost; without it (`RawValue`,
//! `RawArray`), a read concurrent with a write may see a mix of old and new units, which
//! is still a valid `T`.

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use rkyv::{Archive, Deserialize, Serialize};
use static_assertions::{assert_eq_align, assert_eq_size};

use crate::block::{Block, Element, Header};
use crate::error::{Error, LockResult, Result};
use crate::lock::{Lock, LockGuard};

/// Plain old data: a type that may live in shared memory and be read whatever bytes another
/// process left in it.
///
/// Implemented for the integer and float types and for arrays of them. For your own
/// `#[repr(C)]` struct, use [`impl_pod!`](crate::impl_pod), which checks the conditions at
/// compile time, or implement it by hand.
///
/// # Safety
/// Implementors guarantee that:
/// 1. every bit pattern of `size_of::<Self>()` bytes is a valid `Self` (so no `bool`, `char`,
///    enums, references, pointers meant to be dereferenced, `NonZero*`);
/// 2. the type has no padding bytes (every byte is part of a field);
/// 3. it has no interior mutability, no `Drop`, and owns nothing outside its own bytes;
/// 4. its size is not zero, and its layout is the same in every process running the same
///    program (`#[repr(C)]` or `#[repr(transparent)]` for structs).
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod_primitives {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive integer or float: any bits are valid, no padding, no interior
        // mutability, fixed non-zero size.
        unsafe impl Pod for $t {}
    )*};
}
pod_primitives!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

// SAFETY: an array of Pod elements has no padding between them (size is a multiple of
// alignment), so every point holds when it holds for `T`; `N > 0` keeps the size non-zero.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

// SAFETY: the Pod contract gives every point `Element` asks for (all-zero and every pattern
// valid, no Drop, fixed layout); elements are only accessed by atomic copies (module doc).
unsafe impl<T: Pod> Element for T {}

/// Implements [`Pod`] for a struct after checking, at compile time, that the listed fields are
/// exactly the struct's fields (each once), that every one is `Pod`, and that they cover the
/// whole struct (no padding). List every field with its type:
///
/// ```
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// #[repr(C)]
/// struct Point { x: f64, y: f64, id: u64 }
/// mp_sync::impl_pod!(Point { x: f64, y: f64, id: u64 });
///
/// let p = mp_sync::Value::new(Point { x: 1.0, y: 2.0, id: 3 })?;
/// assert_eq!(p.get().id, 3);
/// # Ok::<(), mp_sync::Error>(())
/// ```
///
/// A struct with padding is refused:
///
/// ```compile_fail
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Padded { a: u8, b: u64 }
/// mp_sync::impl_pod!(Padded { a: u8, b: u64 });
/// ```
///
/// So is a field listed twice, even when the sizes add up (here the second `a` would hide a
/// reference, and a zeroed `S` would hold a null one):
///
/// ```compile_fail,E0025
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct S { a: u64, r: &'static u64 }
/// mp_sync::impl_pod!(S { a: u64, a: u64 });
/// ```
///
/// and a field left out, even a zero-sized one:
///
/// ```compile_fail,E0027
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct S { a: u64, r: [&'static u64; 0] }
/// mp_sync::impl_pod!(S { a: u64 });
/// ```
#[macro_export]
macro_rules! impl_pod {
    ($t:ident { $($f:ident : $ft:ty),+ $(,)? }) => {
        const _: () = {
            fn _fields_are_pod() {
                fn is_pod<P: $crate::Pod>() {}
                $( is_pod::<$ft>(); )+
            }
            fn _fields_exist(v: &$t) {
                $( let _: &$ft = &v.$f; )+
            }
            // An exhaustive destructure: refuses a field listed twice (E0025) and a field
            // left out (E0027), so the listed fields are exactly the struct's fields.
            fn _fields_are_exactly_these(v: &$t) {
                let $t { $( $f: _ ),+ } = v;
            }
            assert!(
                ::core::mem::size_of::<$t>() == 0 $( + ::core::mem::size_of::<$ft>() )+,
                "impl_pod!: the struct has padding or fields that were not listed"
            );
        };
        // SAFETY: checked above: every field is Pod (so any bits are valid and there is no
        // interior mutability or Drop), the listed fields are exactly the struct's fields
        // (the exhaustive destructure), each once and with these types, and their sizes add
        // up to the struct's size, so there is no padding.
        unsafe impl $crate::Pod for $t {}
    };
}

/// The unit of the atomic copies for a type of alignment `align` and size `size`.
fn unit(align: usize, size: usize) -> usize {
    if align >= 8 && size % 8 == 0 {
        8
    } else if align >= 4 && size % 4 == 0 {
        4
    } else {
        1
    }
}

/// Copies `n` values from shared memory at `src` to `dst`.
///
/// # Safety
/// `src` is valid for reads of `n` `T`s in a live shared mapping (other processes may write
/// it concurrently: the copy uses atomics), `dst` for writes of `n` `T`s, both aligned.
unsafe fn load_into<T: Pod>(src: *const T, dst: *mut T, n: usize) {
    // Cannot overflow: the caller's `n` values lie in one mapping (at most `isize::MAX`
    // bytes); every public caller bounds `n` with checked arithmetic first.
    let bytes = n * std::mem::size_of::<T>();
    let (s, d) = (src.cast::<u8>(), dst.cast::<u8>());
    match unit(std::mem::align_of::<T>(), std::mem::size_of::<T>()) {
        8 => {
            for i in (0..bytes).step_by(8) {
                // SAFETY: in bounds and 8-aligned (T's alignment is at least 8 and its size a
                // multiple of 8); an atomic load cannot race.
                let v = unsafe { AtomicU64::from_ptr(s.add(i).cast_mut().cast()) }
                    .load(Ordering::Relaxed);
                // SAFETY: in bounds of `dst`, aligned as above, and `dst` is ours.
                unsafe { d.add(i).cast::<u64>().write(v) };
            }
        }
        4 => {
            for i in (0..bytes).step_by(4) {
                // SAFETY: as above with 4-byte units.
                let v = unsafe { AtomicU32::from_ptr(s.add(i).cast_mut().cast()) }
                    .load(Ordering::Relaxed);
                // SAFETY: as above.
                unsafe { d.add(i).cast::<u32>().write(v) };
            }
        }
        _ => {
            for i in 0..bytes {
                // SAFETY: in bounds; bytes need no alignment.
                let v = unsafe { AtomicU8::from_ptr(s.add(i).cast_mut()) }.load(Ordering::Relaxed);
                // SAFETY: in bounds of `dst`.
                unsafe { d.add(i).write(v) };
            }
        }
    }
}

/// Copies `n` values from `src` to shared memory at `dst`.
///
/// # Safety
/// `dst` is valid for writes of `n` `T`s in a live shared mapping, `src` for reads of `n`
/// `T`s, both aligned.
unsafe fn store_from<T: Pod>(src: *const T, dst: *mut T, n: usize) {
    // Cannot overflow: as in `load_into`.
    let bytes = n * std::mem::size_of::<T>();
    let (s, d) = (src.cast::<u8>(), dst.cast::<u8>());
    match unit(std::mem::align_of::<T>(), std::mem::size_of::<T>()) {
        8 => {
            for i in (0..bytes).step_by(8) {
                // SAFETY: in bounds and 8-aligned; `src` holds initialised Pod bytes (no padding).
                let v = unsafe { s.add(i).cast::<u64>().read() };
                // SAFETY: in bounds and 8-aligned; an atomic store cannot race.
                unsafe { AtomicU64::from_ptr(d.add(i).cast()) }.store(v, Ordering::Relaxed);
            }
        }
        4 => {
            for i in (0..bytes).step_by(4) {
                // SAFETY: as above with 4-byte units.
                let v = unsafe { s.add(i).cast::<u32>().read() };
                // SAFETY: as above.
                unsafe { AtomicU32::from_ptr(d.add(i).cast()) }.store(v, Ordering::Relaxed);
            }
        }
        _ => {
            for i in 0..bytes {
                // SAFETY: in bounds; Pod has no uninitialised padding bytes.
                let v = unsafe { s.add(i).read() };
                // SAFETY: in bounds.
                unsafe { AtomicU8::from_ptr(d.add(i)) }.store(v, Ordering::Relaxed);
            }
        }
    }
}

/// The (unused) header of an array block.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ArrayHeader {
    _reserved: AtomicU64,
}
assert_eq_size!(ArrayHeader, u64);
assert_eq_align!(ArrayHeader, u64);

// SAFETY: one atomic (1, 2), no Drop (3), `#[repr(C)]` with its size pinned (4).
unsafe impl mp_core::ShmSafe for ArrayHeader {}

impl Header for ArrayHeader {}

/// The (unused) header of a value block: a type of its own, so that an array's handle is
/// not accepted as a value's, and a value's region must hold its one element.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ValueHeader {
    _reserved: AtomicU64,
}
assert_eq_size!(ValueHeader, u64);
assert_eq_align!(ValueHeader, u64);

// SAFETY: one atomic (1, 2), no Drop (3), `#[repr(C)]` with its size pinned (4).
unsafe impl mp_core::ShmSafe for ValueHeader {}

impl Header for ValueHeader {
    const MIN_LEN: usize = 1;
}

/// An array of `T` in shared memory, without a lock (Python's `RawArray`). Cloning shares it.
///
/// ```
/// use mp_sync::RawArray;
/// let a = RawArray::<i32>::from_slice(&[1, 2, 3])?;
/// a.set(0, 10)?;
/// assert_eq!(a.to_vec(), [10, 2, 3]);
/// assert!(a.get(3).is_err());
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Archive, Serialize, Deserialize)]
pub struct RawArray<T: Pod> {
    block: Block<ArrayHeader, T>,
}

impl<T: Pod> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            block: self.block.clone(),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_vec()).finish()
    }
}

fn out_of_range() -> Error {
    Error::InvalidArgument("index or range out of bounds")
}

impl<T: Pod> RawArray<T> {
    /// An array of `len` zeroed elements.
    pub fn zeroed(len: usize) -> Result<RawArray<T>> {
        mp_core::ident::init();
        Ok(RawArray {
            block: Block::new(
                ArrayHeader {
                    _reserved: AtomicU64::new(0),
                },
                len,
            )?,
        })
    }

    /// An array holding a copy of `values`.
    pub fn from_slice(values: &[T]) -> Result<RawArray<T>> {
        let a = RawArray::zeroed(values.len())?;
        a.write(0, values)?;
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.block.len()
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`.
    pub fn get(&self, i: usize) -> Result<T> {
        if i >= self.len() {
            return Err(out_of_range());
        }
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: `i < len`, so element `i` is inside the block; `v` is ours and aligned.
        unsafe { load_into(self.block.elems().add(i), v.as_mut_ptr(), 1) };
        // SAFETY: every byte of `v` was written, and any bytes are a valid Pod value.
        Ok(unsafe { v.assume_init() })
    }

    /// Sets element `i`.
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        if i >= self.len() {
            return Err(out_of_range());
        }
        // SAFETY: `i < len`, so element `i` is inside the block; `value` is on our stack.
        unsafe { store_from(&value, self.block.elems().add(i), 1) };
        Ok(())
    }

    /// Copies `out.len()` elements starting at `start` into `out` (a slice read).
    pub fn read(&self, start: usize, out: &mut [T]) -> Result<()> {
        let end = start.checked_add(out.len()).ok_or_else(out_of_range)?;
        if end > self.len() {
            return Err(out_of_range());
        }
        // SAFETY: `start..end` is inside the block; `out` is ours, of that length.
        unsafe { load_into(self.block.elems().add(start), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `values` into the array from `start` on (a slice write).
    pub fn write(&self, start: usize, values: &[T]) -> Result<()> {
        let end = start.checked_add(values.len()).ok_or_else(out_of_range)?;
        if end > self.len() {
            return Err(out_of_range());
        }
        // SAFETY: `start..end` is inside the block; `values` is ours, of that length.
        unsafe { store_from(values.as_ptr(), self.block.elems().add(start), values.len()) };
        Ok(())
    }

    /// A copy of the whole array (Python's `arr[:]`).
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = Vec::<T>::with_capacity(self.len());
        // SAFETY: the block holds `len` elements and `v` has room for as many; every byte is
        // written before `set_len`, and any bytes are valid Pod values.
        unsafe {
            load_into(self.block.elems(), v.as_mut_ptr(), self.len());
            v.set_len(self.len());
        }
        v
    }
}

/// An array of `T` in shared memory with a lock (Python's `multiprocessing.Array`).
///
/// Each single access ([`get`](Array::get), [`set`](Array::set), [`read`](Array::read),
/// [`write`](Array::write), [`to_vec`](Array::to_vec)) takes the lock; hold the lock across
/// several with [`lock`](Array::lock).
///
/// ```
/// use mp_sync::Array;
/// let a = Array::<u64>::zeroed(4)?;
/// {
///     let g = a.lock().unwrap();
///     for i in 1..g.len() {
///         g.set(i, g.get(i - 1)? + i as u64)?;
///     }
/// }
/// assert_eq!(a.to_vec(), [0, 1, 3, 6]);
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Archive, Serialize, Deserialize)]
pub struct Array<T: Pod> {
    raw: RawArray<T>,
    lock: Lock,
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            raw: self.raw.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("values", &self.to_vec())
            .field("lock", &self.lock)
            .finish()
    }
}

impl<T: Pod> Array<T> {
    /// An array of `len` zeroed elements with a new lock.
    pub fn zeroed(len: usize) -> Result<Array<T>> {
        Array::with_lock(RawArray::zeroed(len)?, Lock::new()?)
    }

    /// An array holding a copy of `values`, with a new lock.
    pub fn from_slice(values: &[T]) -> Result<Array<T>> {
        Array::with_lock(RawArray::from_slice(values)?, Lock::new()?)
    }

    /// An array over `raw` guarded by `lock` (Python's `Array(..., lock=lock)`).
    pub fn with_lock(raw: RawArray<T>, lock: Lock) -> Result<Array<T>> {
        Ok(Array { raw, lock })
    }

    /// The lock this array was built with.
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// The array without its lock (Python's `get_obj()`).
    pub fn get_obj(&self) -> &RawArray<T> {
        &self.raw
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    fn with<R>(&self, f: impl FnOnce(&RawArray<T>) -> R) -> R {
        // A dead previous holder cannot leave an invalid `T` (Pod), only a half-done update
        // of several elements: a single access goes on, as Python's would.
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        f(&self.raw)
    }

    /// Element `i`, under the lock.
    pub fn get(&self, i: usize) -> Result<T> {
        self.with(|r| r.get(i))
    }

    /// Sets element `i`, under the lock.
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        self.with(|r| r.set(i, value))
    }

    /// A slice read, under the lock.
    pub fn read(&self, start: usize, out: &mut [T]) -> Result<()> {
        self.with(|r| r.read(start, out))
    }

    /// A slice write, under the lock.
    pub fn write(&self, start: usize, values: &[T]) -> Result<()> {
        self.with(|r| r.write(start, values))
    }

    /// A copy of the whole array, under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        self.with(|r| r.to_vec())
    }

    /// Holds the lock; the guard gives the raw array's methods.
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let wrap = |guard| ArrayGuard {
            _guard: guard,
            raw: &self.raw,
        };
        self.lock.lock().map(wrap).map_err(|e| e.map(wrap))
    }
}

/// The lock of an [`Array`], held; dereferences to the [`RawArray`].
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    _guard: LockGuard<'a>,
    raw: &'a RawArray<T>,
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = RawArray<T>;
    fn deref(&self) -> &RawArray<T> {
        self.raw
    }
}

impl<T: Pod> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayGuard").finish_non_exhaustive()
    }
}

/// One `T` in shared memory, without a lock (Python's `RawValue`).
///
/// ```
/// let v = mp_sync::RawValue::new(3.625f64)?;
/// v.set(-4.25);
/// assert_eq!(v.get(), -4.25);
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Archive, Serialize, Deserialize)]
pub struct RawValue<T: Pod> {
    block: Block<ValueHeader, T>,
}

impl<T: Pod> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            block: self.block.clone(),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawValue").field(&self.get()).finish()
    }
}

impl<T: Pod> RawValue<T> {
    /// A new shared value.
    pub fn new(value: T) -> Result<RawValue<T>> {
        mp_core::ident::init();
        let v = RawValue {
            block: Block::new(
                ValueHeader {
                    _reserved: AtomicU64::new(0),
                },
                1,
            )?,
        };
        v.set(value);
        Ok(v)
    }

    fn ptr(&self) -> *mut T {
        self.block.elems()
    }

    /// The value now.
    pub fn get(&self) -> T {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: a value block holds at least one element (`ValueHeader::MIN_LEN`, checked
        // when a handle is decoded; `new` makes exactly one); `v` is ours and aligned.
        unsafe { load_into(self.ptr(), v.as_mut_ptr(), 1) };
        // SAFETY: fully written; any bytes are a valid Pod value.
        unsafe { v.assume_init() }
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        // SAFETY: as in `get`.
        unsafe { store_from(&value, self.ptr(), 1) };
    }
}

/// One `T` in shared memory with a lock (Python's `multiprocessing.Value`).
///
/// [`get`](Value::get) and [`set`](Value::set) each take the lock; a read-modify-write must
/// hold it across: `*v.lock().unwrap() += 1` (the guard copies the value in, and writes it
/// back when dropped, before releasing the lock).
///
/// ```
/// use mp_sync::Value;
/// let v = Value::new(4343i32)?;
/// *v.lock().unwrap() += 1;
/// assert_eq!(v.get(), 4344);
/// v.set(24234);
/// assert_eq!(v.get(), 24234);
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[derive(Archive, Serialize, Deserialize)]
pub struct Value<T: Pod> {
    raw: RawValue<T>,
    lock: Lock,
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            raw: self.raw.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("value", &self.get())
            .field("lock", &self.lock)
            .finish()
    }
}

impl<T: Pod> Value<T> {
    /// A new shared value with a new lock.
    pub fn new(value: T) -> Result<Value<T>> {
        Value::with_lock(value, Lock::new()?)
    }

    /// A new shared value guarded by `lock` (Python's `Value(..., lock=lock)`).
    pub fn with_lock(value: T, lock: Lock) -> Result<Value<T>> {
        Ok(Value {
            raw: RawValue::new(value)?,
            lock,
        })
    }

    /// The lock this value was built with.
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// The value without its lock (Python's `get_obj()`).
    pub fn get_obj(&self) -> &RawValue<T> {
        &self.raw
    }

    /// The value, read under the lock.
    pub fn get(&self) -> T {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.raw.get()
    }

    /// Replaces the value under the lock.
    pub fn set(&self, value: T) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.raw.set(value)
    }

    /// Holds the lock; the guard dereferences to a copy of the value, written back when the
    /// guard drops (before the lock is released).
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let wrap = |guard| ValueGuard {
            value: self.raw.get(),
            raw: &self.raw,
            _guard: guard,
        };
        match self.lock.lock() {
            Ok(g) => Ok(wrap(g)),
            Err(e) => Err(e.map(wrap)),
        }
    }
}

/// The lock of a [`Value`], held, with a working copy of the value.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    value: T,
    raw: &'a RawValue<T>,
    // Dropped after `Drop::drop` wrote the value back.
    _guard: LockGuard<'a>,
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        self.raw.set(self.value);
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.value).finish()
    }
}
