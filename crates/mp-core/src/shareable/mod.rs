//! [`ShareableList`]: Python's `multiprocessing.shared_memory.ShareableList`, a fixed-length
//! list of scalars and short strings in shared memory.
//!
//! # Layout
//!
//! The list lives in the payload of a region (anonymous, or a named block) whose header kind
//! is [`KIND_SHAREABLE_LIST`]. The payload is:
//!
//! | bytes | what |
//! |---|---|
//! | 0..64 | [`ListHeader`]: magic, item count, data length, a check over the offsets |
//! | then `8 * (n + 1)` | the slot offsets (relative to the data area), fixed at creation |
//! | then `8 * n` | one descriptor word per slot: the item's kind (low 8 bits) and length |
//! | then the data | the slots, each a multiple of 8 bytes |
//!
//! As in CPython, each slot's size is fixed at creation: 8 bytes for an int, float, bool or
//! `None`, and for a string or bytes value of `k` bytes, `8 * (k / 8 + 1)` (CPython's rule;
//! it counts UTF-8 bytes here, where CPython counts characters and then fails on a longer
//! encoding). A slot may later take a value of any kind that fits its size.
//!
//! # Concurrency and trust
//!
//! Every access to the shared bytes is an atomic copy (`copy_from_shared`/`copy_to_shared`,
//! whole 8-byte words): processes that race are no data race, only a mix of old and new
//! words. The offsets table is read once, checked, and copied into the handle when it is
//! made; it is never read again. Every `get` checks what it copied out (the kind tag, the
//! length against the slot, UTF-8 for strings, 0 or 1 for a bool) and gives
//! [`Error::Corrupt`] for garbage a peer wrote, never a panic or undefined behaviour. A read
//! that races a writer of the same slot is retried a few times before it reports garbage.
//! Two processes writing the same slot at once need a lock (mp-sync's `Lock`), as in Python.
//!
//! Values are copied out ([`Item`] owns its string), never borrowed from shared memory.

use std::sync::atomic::{AtomicU64, Ordering};

use rkyv::rancor::{Fallible, Source};
use rkyv::{Archive, Deserialize, Place, Serialize};
use static_assertions::{assert_eq_size, const_assert};

use crate::error::{Error, Result};
use crate::handle::ArchivedRegionHandle;
use crate::region::{Region, SharedMemory, MAX_ALIGN};
use crate::shared::{copy_from_shared, copy_to_shared};

mod item;
mod layout;
mod view;

pub use item::Item;
use item::*;
pub use layout::ListHeader;
use layout::*;
use view::*;

/// Content kind (region header) of a region that holds a [`ShareableList`].
pub const KIND_SHAREABLE_LIST: u32 = 0x736c_7374; // "slst"
/// The first word of a list's payload.
pub const LIST_MAGIC: u64 = u64::from_le_bytes(*b"mp-slist");
/// Every slot is a multiple of this many bytes (CPython's `_alignment`).
pub const SLOT_ALIGN: usize = 8;
/// The longest string or bytes value a slot may be made for (keeps lengths in 32 bits).
pub const MAX_ITEM_LEN: usize = u32::MAX as usize - SLOT_ALIGN;
/// How many times a read that finds garbage is retried before it reports [`Error::Corrupt`]
/// (a read racing a writer of the same slot sees a mix; garbage stays garbage).
const READ_RETRIES: usize = 4;

enum Backing {
    /// An anonymous list, or a clone of a named one (which does not own the name).
    Region(Region),
    Named(SharedMemory),
}

/// A fixed-length list of [`Item`]s in shared memory, readable and writable from every
/// process that holds it (Python's `shared_memory.ShareableList`).
///
/// Make one anonymous ([`new`](Self::new): passed to children as an argument, a
/// [`clone`](Clone::clone) of it under every start method; freed with its last user) or named ([`create`](Self::create), [`attach`](Self::attach) from any process
/// of the same user). Indices are Python's: `-1` is the last item.
///
/// ```
/// use mp_core::shareable::{Item, ShareableList};
///
/// let list = ShareableList::new([Item::from("howdy"), b"HoWdY".as_slice().into(),
///     (-273.154).into(), 100.into(), Item::None, true.into(), 42.into()])?;
/// assert_eq!(list.len(), 7);
/// assert_eq!(list.get(2)?, Item::Float(-273.154));
/// list.set(2, "dry ice")?; // fits the 8 bytes of the float's slot
/// assert_eq!(list.get(2)?, Item::Str("dry ice".into()));
/// assert!(list.set(2, "more than 8 bytes").is_err()); // as in Python
/// assert_eq!(list.get(-1)?, Item::Int(42));
/// assert_eq!(list.format()?, "8s8s8sqxxxxxx?xxxxxxxx?q");
/// assert_eq!(list.index(&Item::None)?, 4);
/// # Ok::<(), mp_core::Error>(())
/// ```
pub struct ShareableList {
    backing: Backing,
    count: usize,
    /// The slot offsets (count + 1 of them, relative to the data area), copied out and checked
    /// when the handle was made: never read from shared memory again.
    offsets: Vec<usize>,
    descs: usize,
    data: usize,
    name: Option<String>,
}

impl std::fmt::Debug for ShareableList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ShareableList");
        d.field("len", &self.count).field("name", &self.name);
        match self.to_vec() {
            Ok(items) => d.field("items", &items),
            Err(e) => d.field("items", &e.to_string()),
        };
        d.finish()
    }
}

impl Clone for ShareableList {
    /// Another handle to the same list (for passing to a child). A clone of a named list does
    /// not own the name: only the original unlinks it on drop.
    fn clone(&self) -> Self {
        ShareableList {
            backing: Backing::Region(self.region().clone()),
            count: self.count,
            offsets: self.offsets.clone(),
            descs: self.descs,
            data: self.data,
            name: self.name.clone(),
        }
    }
}

impl ShareableList {
    /// Makes an anonymous list holding `items` (a sealed memfd: it is freed by the kernel
    /// when the last process holding it lets go). Pass it to children as an argument.
    pub fn new<I>(items: I) -> Result<ShareableList>
    where
        I: IntoIterator,
        I::Item: Into<Item>,
    {
        let items: Vec<Item> = items.into_iter().map(Into::into).collect();
        let (size, offsets) = Self::plan(&items)?;
        let region = Region::anonymous(KIND_SHAREABLE_LIST, size as u64, MAX_ALIGN as u64)?;
        Self::fill(&region, &items, &offsets);
        Self::open(Backing::Region(region), None)
    }

    /// Makes a named list holding `items` in `/dev/shm/mp-<name>` (mode 0600); this handle
    /// owns it and unlinks the name when dropped. Errors as for [`SharedMemory::create`].
    pub fn create<I>(name: &str, items: I) -> Result<ShareableList>
    where
        I: IntoIterator,
        I::Item: Into<Item>,
    {
        let items: Vec<Item> = items.into_iter().map(Into::into).collect();
        let (size, offsets) = Self::plan(&items)?;
        let shm = SharedMemory::create_with_kind(name, size as u64, KIND_SHAREABLE_LIST)?;
        Self::fill(shm.region(), &items, &offsets);
        Self::open(Backing::Named(shm), Some(name.to_owned()))
    }

    /// Attaches to the named list `name`. Errors: [`Error::NotFound`], and
    /// [`Error::BadHeader`] when the name holds anything but a valid list.
    pub fn attach(name: &str) -> Result<ShareableList> {
        let shm = SharedMemory::attach_with_kind(name, KIND_SHAREABLE_LIST)?;
        Self::open(Backing::Named(shm), Some(name.to_owned()))
    }

    /// A list over a region handed over by another process (its header kind must be
    /// [`KIND_SHAREABLE_LIST`]); the list's own header is checked as in [`attach`](Self::attach).
    pub fn from_region(region: Region) -> Result<ShareableList> {
        if region.layout().kind != KIND_SHAREABLE_LIST {
            return Err(Error::BadHeader {
                reason: format!(
                    "it holds content of kind {:#010x}, not a ShareableList",
                    region.layout().kind
                ),
            });
        }
        Self::open(Backing::Region(region), None)
    }

    /// Gives up ownership of a named list (dropping it no longer unlinks the name), for a
    /// manager that unlinks it itself. No effect on an anonymous list.
    pub fn into_unowned(self) -> ShareableList {
        let ShareableList {
            backing,
            count,
            offsets,
            descs,
            data,
            name,
        } = self;
        let backing = match backing {
            Backing::Named(shm) => Backing::Named(shm.into_unowned()),
            b => b,
        };
        ShareableList {
            backing,
            count,
            offsets,
            descs,
            data,
            name,
        }
    }

    /// The payload size and slot offsets for `items`.
    fn plan(items: &[Item]) -> Result<(usize, Vec<usize>)> {
        let too_big = || Error::InvalidSize {
            size: u64::MAX,
            max: crate::region::MAX_SIZE,
        };
        let mut offsets = Vec::with_capacity(items.len() + 1);
        let mut at = 0usize;
        offsets.push(0);
        for item in items {
            at = at.checked_add(slot_size(item)?).ok_or_else(too_big)?;
            offsets.push(at);
        }
        let (_, _, _, total) = areas(items.len(), at).ok_or_else(too_big)?;
        Ok((total, offsets))
    }

    /// Writes the header, tables and items into a region no other process knows yet.
    fn fill(region: &Region, items: &[Item], offsets: &[usize]) {
        let count = items.len();
        let data_len = offsets.last().copied().unwrap_or(0);
        let Some((off_tab, descs, data, _)) = areas(count, data_len) else {
            return; // `plan` computed the same areas without overflow
        };
        let base = region.as_ptr();
        let words: Vec<u64> = offsets.iter().map(|&o| o as u64).collect();
        let mut table = Vec::with_capacity(words.len() * 8);
        for w in &words {
            table.extend_from_slice(&w.to_le_bytes());
        }
        // SAFETY: `plan` sized the payload as `areas(count, data_len).total`, so the offsets
        // table lies inside it; the region was just made and no other process knows it yet.
        unsafe { copy_to_shared(&table, base.add(off_tab)) };
        let list = ListView {
            base,
            descs,
            data,
            offsets,
        };
        for (i, item) in items.iter().enumerate() {
            list.write(i, item);
        }
        // SAFETY: the payload starts with a ListHeader (64 bytes, 64-aligned: region payloads
        // are aligned to MAX_ALIGN); its fields are atomics, valid for any bytes and sound to
        // share while other processes write. Release on `magic` publishes the header, tables
        // and items (pairs with the Acquire load in `open`).
        let hdr = unsafe { &*base.cast::<ListHeader>() };
        hdr.count.store(count as u64, Ordering::Relaxed);
        hdr.data_len.store(data_len as u64, Ordering::Relaxed);
        hdr.check.store(
            layout_check(count as u64, data_len as u64, &words),
            Ordering::Relaxed,
        );
        hdr.magic.store(LIST_MAGIC, Ordering::Release);
    }

    /// Reads and checks the list header and offsets table, once, into the handle.
    fn open(backing: Backing, name: Option<String>) -> Result<ShareableList> {
        let region = match &backing {
            Backing::Region(r) => r,
            Backing::Named(s) => s.region(),
        };
        let len = region.len();
        let bad = |why: String| Error::BadHeader {
            reason: format!("not a valid ShareableList: {why}"),
        };
        if len < HEADER_LEN {
            return Err(bad(format!("the payload is only {len} bytes")));
        }
        // SAFETY: the payload is at least 64 bytes and 64-aligned; every field of ListHeader
        // is an atomic (see `fill`).
        let hdr = unsafe { &*region.as_ptr().cast::<ListHeader>() };
        // Acquire pairs with the Release store of `magic` in `fill`.
        let magic = hdr.magic.load(Ordering::Acquire);
        let count = hdr.count.load(Ordering::Relaxed);
        let data_len = hdr.data_len.load(Ordering::Relaxed);
        let check = hdr.check.load(Ordering::Relaxed);
        if magic != LIST_MAGIC {
            return Err(bad(format!("bad magic {magic:#018x}")));
        }
        let max_items = (len - HEADER_LEN) / 16;
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c <= max_items)
            .ok_or_else(|| bad(format!("{count} items cannot fit {len} bytes")))?;
        let data_len = usize::try_from(data_len).unwrap_or(usize::MAX);
        let (off_tab, descs, data, total) = areas(count, data_len)
            .filter(|a| a.3 <= len)
            .ok_or_else(|| {
                bad(format!(
                    "{count} items of {data_len} data bytes exceed the {len}-byte payload"
                ))
            })?;
        let _ = total;
        let mut table = vec![0u8; (count + 1) * 8];
        // SAFETY: `off_tab + 8 * (count + 1) <= descs <= total <= len`: inside the payload.
        // Peers may write these bytes at any time: the copy is atomic, and only the copy is
        // checked and used.
        unsafe { copy_from_shared(region.as_ptr().add(off_tab), &mut table) };
        let words: Vec<u64> = table
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if check != layout_check(count as u64, data_len as u64, &words) {
            return Err(bad(
                "the layout check does not match: the header or offsets are corrupted".into(),
            ));
        }
        let mut offsets = Vec::with_capacity(count + 1);
        for (i, &w) in words.iter().enumerate() {
            let o = usize::try_from(w).unwrap_or(usize::MAX);
            let prev = offsets.last().copied().unwrap_or(0);
            let ok = o <= data_len
                && o % SLOT_ALIGN == 0
                && (i == 0 && o == 0
                    || i > 0 && o >= prev + SLOT_ALIGN && o - prev <= MAX_ITEM_LEN + SLOT_ALIGN)
                && (i < count || o == data_len);
            if !ok {
                return Err(bad(format!("slot offset {i} ({w}) is out of order")));
            }
            offsets.push(o);
        }
        Ok(ShareableList {
            backing,
            count,
            offsets,
            descs,
            data,
            name,
        })
    }

    /// The region behind the list.
    pub fn region(&self) -> &Region {
        match &self.backing {
            Backing::Region(r) => r,
            Backing::Named(s) => s.region(),
        }
    }

    /// The named block behind the list (Python's `ShareableList.shm`), `None` when anonymous.
    pub fn shm(&self) -> Option<&SharedMemory> {
        match &self.backing {
            Backing::Named(s) => Some(s),
            Backing::Region(_) => None,
        }
    }

    /// The name (without the `mp-` prefix) of a named list.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Removes the name of a named list (mappings stay valid). An anonymous list has no
    /// name to remove: [`Error::NotFound`], as for a second unlink.
    pub fn unlink(&self) -> Result<()> {
        match (&self.backing, &self.name) {
            (Backing::Named(s), _) => s.unlink(),
            (Backing::Region(_), Some(name)) => {
                SharedMemory::attach_with_kind(name, KIND_SHAREABLE_LIST)?.unlink()
            }
            (Backing::Region(_), None) => Err(Error::NotFound {
                name: "(anonymous ShareableList)".into(),
            }),
        }
    }

    /// The number of items (fixed at creation).
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a list of no items.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Resolves a Python index (negative from the end).
    fn position(&self, index: isize) -> Result<usize> {
        let len = self.count;
        let err = || Error::IndexOutOfRange {
            index: index as i64,
            len,
        };
        let pos = if index < 0 {
            len.checked_sub(index.unsigned_abs()).ok_or_else(err)?
        } else {
            index.unsigned_abs()
        };
        if pos >= len {
            return Err(err());
        }
        Ok(pos)
    }

    fn view(&self) -> ListView<'_> {
        ListView {
            base: self.region().as_ptr(),
            descs: self.descs,
            data: self.data,
            offsets: &self.offsets,
        }
    }

    /// The size in bytes of slot `index` (fixed at creation).
    pub fn slot_size(&self, index: isize) -> Result<usize> {
        let pos = self.position(index)?;
        Ok(self.offsets[pos + 1] - self.offsets[pos])
    }

    /// A copy of item `index` (negative from the end). Errors: [`Error::IndexOutOfRange`];
    /// [`Error::Corrupt`] when the slot holds bytes that are no valid item.
    pub fn get(&self, index: isize) -> Result<Item> {
        let pos = self.position(index)?;
        let view = self.view();
        let mut last = None;
        for _ in 0..READ_RETRIES {
            match view.read(pos) {
                Ok(item) => return Ok(item),
                Err(e) => last = Some(e),
            }
            std::hint::spin_loop();
        }
        Err(last.unwrap_or(Error::Corrupt {
            what: format!("slot {pos}"),
        }))
    }

    /// Stores `value` at `index` (negative from the end). Any kind may go into any slot it
    /// fits: an int, float, bool or `None` fits every slot; a string or bytes value of more
    /// bytes than the slot is [`Error::ValueTooLong`] (the slot keeps its value).
    pub fn set(&self, index: isize, value: impl Into<Item>) -> Result<()> {
        let pos = self.position(index)?;
        let value = value.into();
        let capacity = self.offsets[pos + 1] - self.offsets[pos];
        if let Some(b) = value.payload() {
            if b.len() > capacity {
                return Err(Error::ValueTooLong {
                    index: pos,
                    len: b.len(),
                    capacity,
                });
            }
        }
        self.view().write(pos, &value);
        Ok(())
    }

    /// Copies of every item, in order.
    pub fn to_vec(&self) -> Result<Vec<Item>> {
        (0..self.count as isize).map(|i| self.get(i)).collect()
    }

    /// How many items equal `value` (Python's `count`; `==` of [`Item`]: an `Int(1)` is not
    /// a `Bool(true)` nor a `Float(1.0)`, unlike Python).
    pub fn count(&self, value: &Item) -> Result<usize> {
        let mut n = 0;
        for i in 0..self.count as isize {
            if self.get(i)? == *value {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The position of the first item equal to `value` (Python's `index`);
    /// [`Error::ValueNotInList`] when there is none.
    pub fn index(&self, value: &Item) -> Result<usize> {
        for i in 0..self.count {
            if self.get(i as isize)? == *value {
                return Ok(i);
            }
        }
        Err(Error::ValueNotInList)
    }

    /// The `struct` format of the items now stored, as CPython's `ShareableList.format`
    /// spells it: `q` int, `d` float, `xxxxxxx?` bool, `xxxxxx?x` None, `<slot size>s`
    /// str and bytes.
    pub fn format(&self) -> Result<String> {
        let mut f = String::new();
        for i in 0..self.count {
            let size = self.offsets[i + 1] - self.offsets[i];
            match self.get(i as isize)? {
                Item::Int(_) => f.push('q'),
                Item::Float(_) => f.push('d'),
                Item::Bool(_) => f.push_str("xxxxxxx?"),
                Item::None => f.push_str("xxxxxx?x"),
                Item::Str(_) | Item::Bytes(_) => {
                    f.push_str(&size.to_string());
                    f.push('s');
                }
            }
        }
        Ok(f)
    }
}

impl Archive for ShareableList {
    type Archived = ArchivedRegionHandle;
    type Resolver = <Region as Archive>::Resolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        self.region().resolve(resolver, out);
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for ShareableList
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        self.region().serialize(serializer)
    }
}

impl<D: Fallible + ?Sized> Deserialize<ShareableList, D> for ArchivedRegionHandle
where
    D::Error: Source,
{
    fn deserialize(&self, d: &mut D) -> Result<ShareableList, D::Error> {
        let region: Region = Deserialize::<Region, D>::deserialize(self, d)?;
        ShareableList::from_region(region).map_err(D::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_slot_rules() {
        let l = ShareableList::new([
            Item::from(""),
            "1234567".into(),
            "12345678".into(),
            1.into(),
        ])
        .unwrap();
        assert_eq!(l.slot_size(0).unwrap(), 8);
        assert_eq!(l.slot_size(1).unwrap(), 8);
        assert_eq!(l.slot_size(2).unwrap(), 16);
        assert_eq!(l.slot_size(3).unwrap(), 8);
        assert_eq!(l.format().unwrap(), "8s8s16sq");
    }

    #[test]
    fn empty_list() {
        let l = ShareableList::new(Vec::<Item>::new()).unwrap();
        assert!(l.is_empty());
        assert!(matches!(l.get(0), Err(Error::IndexOutOfRange { .. })));
        assert!(matches!(l.get(-1), Err(Error::IndexOutOfRange { .. })));
        assert_eq!(l.format().unwrap(), "");
    }
}
