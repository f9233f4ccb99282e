//! Messages: values that cross process boundaries as [rkyv] archives.
//!
//! A type is a [`Message`] when rkyv can serialize it, check an archive of it, and
//! deserialize it: `#[derive(Archive, Serialize, Deserialize)]` from `rkyv` is all it takes
//! (std types such as integers, `String`, `Vec<T>`, `Option<T>`, tuples are messages already).
//! A type that only implements serde's traits goes through [`Serde`].
//!
//! * [`encode_into`] serializes straight into a caller-provided buffer, typically a slot in a
//!   shared ring, with no intermediate `Vec`; when the value does not fit, the bytes written so
//!   far move to a heap buffer and serialization goes on there ([`Encoded::Spilled`]), so the
//!   caller can send it through a side channel without serializing twice.
//! * [`access`] checks received bytes and returns the archived value in place (zero-copy);
//!   [`decode`] checks and deserializes to an owned value. Random, truncated or hostile bytes
//!   give [`Error::Decode`], never a panic or undefined behaviour.
//!
//! Archives are aligned to [`ALIGN`] bytes: slots and frames must start at such an address.
//! `decode` copies misaligned input to an aligned buffer first, `access` refuses it.
//!
//! ```
//! use mp_core::message::{decode, encode};
//! let bytes = encode(&(7u32, String::from("seven")))?;
//! let back: (u32, String) = decode(&bytes)?;
//! assert_eq!(back, (7, "seven".to_string()));
//! assert!(decode::<(u32, String)>(&bytes[..3]).is_err());
//! # Ok::<(), mp_core::Error>(())
//! ```
//!
//! A type that is not an rkyv archive is not a message:
//!
//! ```compile_fail
//! struct NotArchived(u32);
//! let _ = mp_core::message::encode(&NotArchived(1));
//! ```

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::{Positional, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::error::{Error, Result};

/// The alignment of every archive mp writes (rkyv's largest primitive alignment).
pub const ALIGN: usize = 16;

/// The error type rkyv reports inside mp (converted to [`Error`] at the API edge).
pub type Failure = rancor::Error;
/// The serializer mp uses: rkyv's high-level serializer over a [`MsgWriter`].
pub type MpSerializer<'a> = HighSerializer<MsgWriter, ArenaHandle<'a>, Failure>;
/// The validator mp uses on received bytes.
pub type MpValidator<'a> = HighValidator<'a, Failure>;
/// The deserializer mp uses.
pub type MpDeserializer = HighDeserializer<Failure>;

/// A value that can be sent to another process: rkyv-serializable, with a checked archive that
/// deserializes back to `Self`. Implemented for every such type; derive rkyv's `Archive`,
/// `Serialize` and `Deserialize` to get it.
pub trait Message:
    Sized
    + Archive<Archived: for<'a> CheckBytes<MpValidator<'a>> + Deserialize<Self, MpDeserializer>>
    + for<'a> Serialize<MpSerializer<'a>>
{
}

impl<T> Message for T where
    T: Archive<Archived: for<'a> CheckBytes<MpValidator<'a>> + Deserialize<T, MpDeserializer>>
        + for<'a> Serialize<MpSerializer<'a>>
{
}

/// A value that can be serialized as a message: the sending half of [`Message`], which every
/// message has. A type that only sends (a borrowed view such as [`SliceAsVec`], which archives
/// as an owned type does) is `Encode` without being a `Message`.
pub trait Encode: Archive + for<'a> Serialize<MpSerializer<'a>> {}

impl<T> Encode for T where T: Archive + for<'a> Serialize<MpSerializer<'a>> {}

/// A borrowed slice that archives exactly as a `Vec<T>` of the same items (what rkyv does for
/// a `Vec`), so that a slice can be sent where a `Vec<T>` is received, without building the
/// `Vec`.
///
/// ```
/// use mp_core::message::{decode, encode, SliceAsVec};
/// let data = [1u64, 2, 3, 4, 5];
/// let bytes = encode(&SliceAsVec(&data[1..4]))?;
/// assert_eq!(decode::<Vec<u64>>(&bytes)?, [2, 3, 4]);
/// assert_eq!(bytes.as_slice(), encode(&vec![2u64, 3, 4])?.as_slice());
/// # Ok::<(), mp_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SliceAsVec<'s, T>(pub &'s [T]);

impl<T: Archive> Archive for SliceAsVec<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::<T::Archived>::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<T, S> Serialize<S> for SliceAsVec<'_, T>
where
    T: Serialize<S>,
    S: Fallible + rkyv::ser::Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_slice(self.0, serializer)
    }
}

/// An rkyv writer that fills a raw buffer (a slot in shared memory) and spills to an aligned
/// heap buffer when the value does not fit.
pub struct MsgWriter {
    buf: *mut u8,
    cap: usize,
    pos: usize,
    spill: Option<AlignedVec<ALIGN>>,
}

impl MsgWriter {
    /// A writer with no slot: everything goes to the heap buffer.
    pub fn heap() -> MsgWriter {
        MsgWriter {
            buf: std::ptr::null_mut(),
            cap: 0,
            pos: 0,
            spill: Some(AlignedVec::new()),
        }
    }

    /// A writer over `cap` bytes at `buf`.
    ///
    /// # Safety
    /// - `buf` is valid for reads and writes of `cap` bytes for as long as the writer lives, and
    ///   aligned to [`ALIGN`];
    /// - no one else reads or writes those bytes while the writer lives (the caller's protocol
    ///   gives it the slot exclusively, e.g. a claimed ring slot).
    pub unsafe fn new(buf: *mut u8, cap: usize) -> MsgWriter {
        MsgWriter {
            buf,
            cap,
            pos: 0,
            spill: None,
        }
    }
}

impl Positional for MsgWriter {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for MsgWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let n = bytes.len();
        if self.spill.is_none() && self.cap - self.pos >= n {
            // SAFETY: `pos + n <= cap` (checked), and `new`'s contract makes `buf..buf+cap`
            // ours to write for the writer's lifetime.
            unsafe { copy_small(bytes, self.buf.add(self.pos)) };
            self.pos += n;
            return Ok(());
        }
        self.write_slow(bytes);
        Ok(())
    }
}

impl MsgWriter {
    /// Past the end of the slot, or already spilled: the heap buffer.
    #[cold]
    fn write_slow(&mut self, bytes: &[u8]) {
        match &mut self.spill {
            Some(v) => v.extend_from_slice(bytes),
            None => {
                let mut v = AlignedVec::<ALIGN>::with_capacity((self.pos + bytes.len()) * 2);
                // SAFETY: the first `pos` bytes of the slot were written by this writer and,
                // by `new`'s contract, nobody else touches the slot, so reading them back as a
                // slice for the length of this copy is sound.
                let written = unsafe { std::slice::from_raw_parts(self.buf, self.pos) };
                v.extend_from_slice(written);
                v.extend_from_slice(bytes);
                self.spill = Some(v);
            }
        }
        self.pos += bytes.len();
    }
}

/// Copies `src` to `dst`. rkyv writes an archive in many small pieces (a field, a struct, a
/// few bytes of padding): up to 16 bytes are copied with two overlapping unaligned moves
/// instead of a call to `memcpy`.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes and does not overlap `src`.
#[inline]
unsafe fn copy_small(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let s = src.as_ptr();
    // SAFETY: the reads stay in `src` (offsets `0..n`), the writes in `dst..dst + n` (valid
    // by this function's contract); unaligned accesses are allowed.
    unsafe {
        if (8..=16).contains(&n) {
            let a = s.cast::<u64>().read_unaligned();
            let b = s.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(a);
            dst.add(n - 8).cast::<u64>().write_unaligned(b);
        } else if (4..8).contains(&n) {
            let a = s.cast::<u32>().read_unaligned();
            let b = s.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(a);
            dst.add(n - 4).cast::<u32>().write_unaligned(b);
        } else if n < 4 {
            for i in 0..n {
                dst.add(i).write(*s.add(i));
            }
        } else {
            std::ptr::copy_nonoverlapping(s, dst, n);
        }
    }
}

/// Where [`encode_into`] put the archive.
#[derive(Debug)]
pub enum Encoded {
    /// The archive fills the first `n` bytes of the caller's buffer.
    InPlace(usize),
    /// The archive did not fit; here it is, whole, on the heap.
    Spilled(AlignedVec<ALIGN>),
}

/// Serializes `value` into the `cap` bytes at `buf`, or into a heap buffer if it does not fit.
///
/// # Safety
/// Same contract as [`MsgWriter::new`]: `buf` valid and exclusively ours for `cap` bytes,
/// aligned to [`ALIGN`].
pub unsafe fn encode_into<T: Encode>(value: &T, buf: *mut u8, cap: usize) -> Result<Encoded> {
    let n = std::mem::size_of::<T>();
    if T::COPY_OPTIMIZATION.is_enabled() && n <= cap {
        // Trivially copyable types (integers, floats, arrays and tuples of them): their archive
        // is their own bytes (that is what rkyv's `COPY_OPTIMIZATION` attests, and why rkyv
        // itself copies them as bytes), so a copy is the whole serialization, with the root at
        // offset 0 of an archive of `n` bytes.
        // SAFETY: `buf` is valid and ours for `cap >= n` bytes (this function's contract);
        // `value` is a live `T` of `n` bytes without uninitialised bytes (COPY_OPTIMIZATION's
        // contract).
        unsafe { std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), buf, n) };
        return Ok(Encoded::InPlace(n));
    }
    // SAFETY: forwarded from this function's contract.
    let writer = unsafe { MsgWriter::new(buf, cap) };
    let w = rkyv::api::high::to_bytes_in::<_, Failure>(value, writer)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(match w.spill {
        Some(v) => Encoded::Spilled(v),
        None => Encoded::InPlace(w.pos),
    })
}

/// Serializes `value` to an aligned heap buffer.
pub fn encode<T: Encode>(value: &T) -> Result<AlignedVec<ALIGN>> {
    encode_with_capacity(value, 0)
}

/// [`encode`] into a heap buffer made with room for `capacity` bytes. For a large value whose
/// size the caller can estimate (a slice of plain items, say) this saves the buffer's growing
/// by doubling, a copy of everything written so far each time; a wrong estimate costs only
/// that growing again.
///
/// ```
/// use mp_core::message::{decode, encode_with_capacity, SliceAsVec};
/// let xs = [1u64, 2, 3];
/// let bytes = encode_with_capacity(&SliceAsVec(&xs), 3 * 8 + 16)?;
/// assert_eq!(decode::<Vec<u64>>(&bytes)?, xs);
/// # Ok::<(), mp_core::Error>(())
/// ```
pub fn encode_with_capacity<T: Encode>(value: &T, capacity: usize) -> Result<AlignedVec<ALIGN>> {
    let writer = MsgWriter {
        spill: Some(AlignedVec::with_capacity(capacity)),
        ..MsgWriter::heap()
    };
    let w = rkyv::api::high::to_bytes_in::<_, Failure>(value, writer)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(w.spill.unwrap_or_default())
}

/// Checks `bytes` and returns the archived value inside them, without copying.
/// `bytes` must start at an address aligned to [`ALIGN`] (every mp slot and frame does).
pub fn access<T: Message>(bytes: &[u8]) -> Result<&T::Archived> {
    // An empty archive (of a zero-sized value) reads no bytes, so its address does not matter.
    if !bytes.is_empty() && (bytes.as_ptr() as usize) % ALIGN != 0 {
        return Err(Error::Decode(format!(
            "the archive is not aligned to {ALIGN} bytes"
        )));
    }
    rkyv::access::<T::Archived, Failure>(bytes).map_err(|e| Error::Decode(e.to_string()))
}

/// Deserializes an archived value (checked already by [`access`]) to an owned value.
pub fn deserialize<T: Message>(archived: &T::Archived) -> Result<T> {
    rkyv::deserialize::<T, Failure>(archived).map_err(|e| Error::Decode(e.to_string()))
}

/// Deserializes checked archived items (the elements of an [`access`]ed `Vec<T>`, say) one
/// at a time, with one deserializer for all of them (rkyv's deserializer owns a table that
/// costs more to make and drop than a small item costs to deserialize).
///
/// ```
/// use mp_core::message::{access, deserialize_each, encode};
/// let bytes = encode(&vec![1u32, 2, 3])?;
/// let archived = access::<Vec<u32>>(&bytes)?;
/// let sum: u32 = deserialize_each::<u32>(archived.as_slice()).map(|x| x.unwrap()).sum();
/// assert_eq!(sum, 6);
/// # Ok::<(), mp_core::Error>(())
/// ```
pub fn deserialize_each<T: Message>(
    archived: &[T::Archived],
) -> impl Iterator<Item = Result<T>> + '_ {
    let mut pool = rkyv::de::Pool::new();
    archived.iter().map(move |a| {
        a.deserialize(rkyv::rancor::Strategy::<_, Failure>::wrap(&mut pool))
            .map_err(|e| Error::Decode(e.to_string()))
    })
}

/// Deserializes checked archived items (the elements of an [`access`]ed `Vec<T>`, say) into
/// `out`, which must be as long, with one deserializer for all of them: on success every
/// element of `out` is initialized; on an error none is (the ones already written are
/// dropped again). Lets a receiver place items where they go, without a `Vec` of their own.
///
/// ```
/// use std::mem::MaybeUninit;
/// use mp_core::message::{access, deserialize_into, encode};
/// let bytes = encode(&vec![String::from("a"), String::from("b")])?;
/// let archived = access::<Vec<String>>(&bytes)?;
/// let mut out = [const { MaybeUninit::<String>::uninit() }; 2];
/// deserialize_into::<String>(archived.as_slice(), &mut out)?;
/// // SAFETY: `deserialize_into` returned Ok, so both elements are initialized.
/// let out = out.map(|s| unsafe { s.assume_init() });
/// assert_eq!(out, ["a", "b"]);
/// # Ok::<(), mp_core::Error>(())
/// ```
pub fn deserialize_into<T: Message>(
    archived: &[T::Archived],
    out: &mut [std::mem::MaybeUninit<T>],
) -> Result<()> {
    if archived.len() != out.len() {
        return Err(Error::Decode(format!(
            "{} archived items for {} places",
            archived.len(),
            out.len()
        )));
    }
    let mut pool = rkyv::de::Pool::new();
    let d = rkyv::rancor::Strategy::<_, Failure>::wrap(&mut pool);
    for (i, a) in archived.iter().enumerate() {
        match a.deserialize(d) {
            Ok(v) => {
                out[i].write(v);
            }
            Err(e) => {
                for o in &mut out[..i] {
                    // SAFETY: the elements before `i` were written by this loop and are
                    // dropped once, here; the caller is told that none is initialized.
                    unsafe { o.assume_init_drop() };
                }
                return Err(Error::Decode(e.to_string()));
            }
        }
    }
    Ok(())
}

/// Checks `bytes` and deserializes them to an owned `T`. Misaligned input is copied to an
/// aligned buffer first.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T> {
    if !bytes.is_empty() && (bytes.as_ptr() as usize) % ALIGN != 0 {
        let mut v = AlignedVec::<ALIGN>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        return deserialize::<T>(access::<T>(&v)?);
    }
    deserialize::<T>(access::<T>(bytes)?)
}

/// Sends a type that implements serde's `Serialize`/`Deserialize` (and not rkyv's) as a
/// message, encoded with `postcard` inside the archive. Receiving it always deserializes
/// (no zero-copy access to the inner value).
///
/// ```
/// use mp_core::message::{decode, encode, Serde};
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Point { x: i32, y: i32 }
/// let bytes = encode(&Serde(Point { x: 1, y: -2 }))?;
/// let Serde(p) = decode::<Serde<Point>>(&bytes)?;
/// assert_eq!(p, Point { x: 1, y: -2 });
/// # Ok::<(), mp_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Serde<T>(pub T);

impl<T> Archive for Serde<T> {
    type Archived = ArchivedVec<u8>;
    type Resolver = (VecResolver, usize);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::<u8>::resolve_from_len(resolver.1, resolver.0, out);
    }
}

impl<T, S> Serialize<S> for Serde<T>
where
    T: serde::Serialize,
    S: Fallible + rkyv::ser::Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let bytes = postcard::to_allocvec(&self.0).map_err(S::Error::new)?;
        let r = ArchivedVec::<u8>::serialize_from_slice(&bytes, serializer)?;
        Ok((r, bytes.len()))
    }
}

impl<T, D> Deserialize<Serde<T>, D> for ArchivedVec<u8>
where
    T: serde::de::DeserializeOwned,
    D: Fallible + ?Sized,
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Serde<T>, D::Error> {
        postcard::from_bytes(self.as_slice())
            .map(Serde)
            .map_err(D::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_keeps_prefix() {
        let value: Vec<u64> = (0..1000).collect();
        let mut slot = AlignedVec::<ALIGN>::with_capacity(64);
        slot.resize(64, 0);
        // SAFETY: `slot` is our own aligned buffer of 64 bytes.
        let enc = unsafe { encode_into(&value, slot.as_mut_ptr(), 64) }.unwrap();
        let Encoded::Spilled(v) = enc else {
            panic!("a 8000-byte value cannot fit in 64 bytes")
        };
        assert_eq!(decode::<Vec<u64>>(&v).unwrap(), value);
        let small = 42u64;
        // SAFETY: as above.
        let enc = unsafe { encode_into(&small, slot.as_mut_ptr(), 64) }.unwrap();
        let Encoded::InPlace(n) = enc else {
            panic!("a u64 fits in 64 bytes")
        };
        assert_eq!(decode::<u64>(&slot[..n]).unwrap(), 42);
    }

    #[test]
    fn copy_optimized_types_encode_as_rkyv_does() {
        fn same<T: Message + PartialEq + std::fmt::Debug>(v: T) {
            let mut slot = AlignedVec::<ALIGN>::with_capacity(64);
            slot.resize(64, 0);
            // SAFETY: our own aligned buffer of 64 bytes.
            let Encoded::InPlace(n) = (unsafe { encode_into(&v, slot.as_mut_ptr(), 64) }).unwrap()
            else {
                panic!("fits")
            };
            let reference = encode(&v).unwrap();
            assert_eq!(&slot[..n], &reference[..], "{v:?}");
            assert_eq!(decode::<T>(&slot[..n]).unwrap(), v);
        }
        same(0x0102_0304_0506_0708u64);
        same(-5i32);
        same(1.5f64);
        same([1u16, 2, 3]);
        same(7u8);
        same(String::from("not copy-optimized"));
    }

    /// Counts its live values, and refuses to deserialize 13.
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Picky(u32);

    static LIVE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

    impl Drop for Picky {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl<D: Fallible + ?Sized> Deserialize<Picky, D> for ArchivedPicky
    where
        D::Error: Source,
    {
        fn deserialize(&self, _: &mut D) -> Result<Picky, D::Error> {
            if self.0 == 13 {
                return Err(D::Error::new(std::io::Error::other("13")));
            }
            LIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Picky(self.0.to_native()))
        }
    }

    #[test]
    fn deserialize_into_all_or_nothing() {
        use std::mem::MaybeUninit;
        use std::sync::atomic::Ordering::SeqCst;
        let bytes = encode(&vec![Picky(1), Picky(2), Picky(13), Picky(4)]).unwrap();
        // The values encoded above were dropped without having been counted.
        LIVE.store(0, SeqCst);
        let a = access::<Vec<Picky>>(&bytes).unwrap();
        let mut out: Vec<MaybeUninit<Picky>> = (0..4).map(|_| MaybeUninit::uninit()).collect();
        assert!(matches!(
            deserialize_into::<Picky>(a.as_slice(), &mut out),
            Err(Error::Decode(_))
        ));
        assert_eq!(
            LIVE.load(SeqCst),
            0,
            "the two written before 13 were dropped"
        );
        assert!(deserialize_into::<Picky>(&a.as_slice()[..2], &mut out).is_err());
        assert!(deserialize_into::<Picky>(&a.as_slice()[..2], &mut out[..2]).is_ok());
        assert_eq!(LIVE.load(SeqCst), 2);
        for o in &mut out[..2] {
            // SAFETY: initialized by the successful call above.
            unsafe { o.assume_init_drop() };
        }
        assert_eq!(LIVE.load(SeqCst), 0);
    }

    #[test]
    fn small_copies_of_every_length() {
        let src: Vec<u8> = (1..=40).collect();
        for n in 0..=40 {
            let mut dst = [0u8; 48];
            // SAFETY: `dst` has room for 40 bytes and does not overlap `src`.
            unsafe { copy_small(&src[..n], dst.as_mut_ptr().add(3)) };
            assert_eq!(&dst[3..3 + n], &src[..n], "{n}");
            assert!(dst[..3].iter().chain(&dst[3 + n..]).all(|&b| b == 0), "{n}");
        }
    }

    #[test]
    fn misaligned_access_refused_decode_copies() {
        let bytes = encode(&0xdead_beef_u32).unwrap();
        let mut shifted = AlignedVec::<ALIGN>::new();
        shifted.push(0);
        shifted.extend_from_slice(&bytes);
        assert!(matches!(
            access::<u32>(&shifted[1..]),
            Err(Error::Decode(_))
        ));
        assert_eq!(decode::<u32>(&shifted[1..]).unwrap(), 0xdead_beef);
    }
}
