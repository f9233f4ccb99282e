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

const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_BOOL: u8 = 3;
const TAG_STR: u8 = 4;
const TAG_BYTES: u8 = 5;
const TAG_NONE: u8 = 6;

/// The first 64 bytes of a list's payload. Written once by the creator before anyone else can
/// see the region; read once (and checked) by each handle when it is made.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ListHeader {
    /// [`LIST_MAGIC`].
    pub magic: AtomicU64,
    /// Number of items.
    pub count: AtomicU64,
    /// Bytes of the data area (the sum of the slot sizes).
    pub data_len: AtomicU64,
    /// FNV-1a over `count`, `data_len` and the offsets table.
    pub check: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 4],
}
assert_eq_size!(ListHeader, [u8; 64]);
const_assert!(std::mem::align_of::<ListHeader>() == 64);
const HEADER_LEN: usize = std::mem::size_of::<ListHeader>();

/// One value of a [`ShareableList`]: the kinds CPython's `ShareableList` allows.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A 64-bit signed integer (Python `int`, format `q`).
    Int(i64),
    /// A 64-bit float (Python `float`, format `d`).
    Float(f64),
    /// A boolean (Python `bool`, format `xxxxxxx?`).
    Bool(bool),
    /// A UTF-8 string (Python `str`, format `<slot size>s`).
    Str(String),
    /// Bytes (Python `bytes`, format `<slot size>s`).
    Bytes(Vec<u8>),
    /// Python's `None` (format `xxxxxx?x`).
    None,
}

impl Item {
    /// The bytes of a string or bytes value, `None` for the 8-byte scalars.
    fn payload(&self) -> Option<&[u8]> {
        match self {
            Item::Str(s) => Some(s.as_bytes()),
            Item::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The Python name of the item's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Item::Int(_) => "int",
            Item::Float(_) => "float",
            Item::Bool(_) => "bool",
            Item::Str(_) => "str",
            Item::Bytes(_) => "bytes",
            Item::None => "NoneType",
        }
    }

    /// The integer, if this is an [`Item::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Item::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The float, if this is an [`Item::Float`].
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Item::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The boolean, if this is an [`Item::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The string, if this is an [`Item::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes, if this is an [`Item::Bytes`].
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Item::Bytes(v) => Some(v),
            _ => None,
        }
    }

    /// True for [`Item::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Item::None)
    }
}

impl From<i64> for Item {
    fn from(v: i64) -> Self {
        Item::Int(v)
    }
}
impl From<i32> for Item {
    fn from(v: i32) -> Self {
        Item::Int(v.into())
    }
}
impl From<u32> for Item {
    fn from(v: u32) -> Self {
        Item::Int(v.into())
    }
}
impl From<f64> for Item {
    fn from(v: f64) -> Self {
        Item::Float(v)
    }
}
impl From<bool> for Item {
    fn from(v: bool) -> Self {
        Item::Bool(v)
    }
}
impl From<&str> for Item {
    fn from(v: &str) -> Self {
        Item::Str(v.to_owned())
    }
}
impl From<String> for Item {
    fn from(v: String) -> Self {
        Item::Str(v)
    }
}
impl From<&[u8]> for Item {
    fn from(v: &[u8]) -> Self {
        Item::Bytes(v.to_vec())
    }
}
impl From<Vec<u8>> for Item {
    fn from(v: Vec<u8>) -> Self {
        Item::Bytes(v)
    }
}
impl From<()> for Item {
    fn from(_: ()) -> Self {
        Item::None
    }
}
impl<T: Into<Item>> From<Option<T>> for Item {
    fn from(v: Option<T>) -> Self {
        v.map_or(Item::None, Into::into)
    }
}

/// The slot size CPython gives an item at creation.
fn slot_size(item: &Item) -> Result<usize> {
    match item.payload() {
        None => Ok(SLOT_ALIGN),
        Some(b) if b.len() > MAX_ITEM_LEN => Err(Error::InvalidSize {
            size: b.len() as u64,
            max: MAX_ITEM_LEN as u64,
        }),
        Some(b) => Ok(SLOT_ALIGN * (b.len() / SLOT_ALIGN + 1)),
    }
}

fn layout_check(count: u64, data_len: u64, offsets: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in [count, data_len].iter().chain(offsets) {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Payload offsets of the tables, for `count` items and `data_len` data bytes: (offsets
/// table, descriptors, data, total).
fn areas(count: usize, data_len: usize) -> Option<(usize, usize, usize, usize)> {
    let offsets = HEADER_LEN;
    let descs = offsets.checked_add(count.checked_add(1)?.checked_mul(8)?)?;
    let data = descs.checked_add(count.checked_mul(8)?)?;
    let total = data.checked_add(data_len)?;
    Some((offsets, descs, data, total))
}

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

/// Raw access to the slots of a mapped list, with checked offsets.
struct ListView<'a> {
    base: *mut u8,
    descs: usize,
    data: usize,
    offsets: &'a [usize],
}

impl ListView<'_> {
    fn desc_atomic(&self, pos: usize) -> &AtomicU64 {
        // SAFETY: `descs + 8 * pos` is inside the descriptor table (pos < count, checked by
        // the callers' `position`; the areas were checked against the payload in `open`), is
        // 8-aligned (the payload is 64-aligned and every area offset a multiple of 8), and an
        // AtomicU64 is valid for any bytes and may be shared while other processes write it.
        unsafe { AtomicU64::from_ptr(self.base.add(self.descs + 8 * pos).cast()) }
    }

    /// Writes an item that fits its slot: data first, then the descriptor (Release, pairs
    /// with the Acquire load in `read`).
    fn write(&self, pos: usize, item: &Item) {
        let start = self.offsets[pos];
        let capacity = self.offsets[pos + 1] - start;
        let mut word = [0u8; 8];
        let (tag, bytes): (u8, &[u8]) = match item {
            Item::Int(v) => {
                word = v.to_le_bytes();
                (TAG_INT, &word)
            }
            Item::Float(v) => {
                word = v.to_bits().to_le_bytes();
                (TAG_FLOAT, &word)
            }
            Item::Bool(v) => {
                word[0] = u8::from(*v);
                (TAG_BOOL, &word)
            }
            Item::None => (TAG_NONE, &word),
            Item::Str(s) => (TAG_STR, s.as_bytes()),
            Item::Bytes(b) => (TAG_BYTES, b.as_slice()),
        };
        let bytes = &bytes[..bytes.len().min(capacity)];
        // SAFETY: `data + start .. + bytes.len()` is inside slot `pos` (bytes.len() <=
        // capacity), inside the payload (checked in `open` or planned in `fill`). Peers access
        // these bytes only through atomic copies, so this store is no data race.
        unsafe { copy_to_shared(bytes, self.base.add(self.data + start)) };
        let desc = u64::from(tag) | ((bytes.len() as u64) << 8);
        self.desc_atomic(pos).store(desc, Ordering::Release);
    }

    /// Copies item `pos` out and checks it.
    fn read(&self, pos: usize) -> Result<Item> {
        let start = self.offsets[pos];
        let capacity = self.offsets[pos + 1] - start;
        // Acquire pairs with the Release store in `write`.
        let desc = self.desc_atomic(pos).load(Ordering::Acquire);
        let tag = (desc & 0xff) as u8;
        let len = usize::try_from((desc >> 8) & 0xffff_ffff).unwrap_or(usize::MAX);
        let corrupt = |what: String| Error::Corrupt {
            what: format!("slot {pos}: {what}"),
        };
        if desc >> 40 != 0 {
            return Err(corrupt(format!(
                "descriptor {desc:#018x} has stray high bits"
            )));
        }
        let n = match tag {
            TAG_STR | TAG_BYTES => {
                if len > capacity {
                    return Err(corrupt(format!(
                        "length {len} is past the slot's {capacity} bytes"
                    )));
                }
                len
            }
            TAG_INT | TAG_FLOAT | TAG_BOOL | TAG_NONE => 8,
            t => return Err(corrupt(format!("unknown kind tag {t}"))),
        };
        let mut buf = vec![0u8; n];
        // SAFETY: `n <= capacity` (checked above; scalars are 8 and every slot is at least 8),
        // so the range is inside slot `pos`, inside the payload. The copy is atomic.
        unsafe { copy_from_shared(self.base.add(self.data + start), &mut buf) };
        let word = || {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[..8]);
            w
        };
        Ok(match tag {
            TAG_INT => Item::Int(i64::from_le_bytes(word())),
            TAG_FLOAT => Item::Float(f64::from_bits(u64::from_le_bytes(word()))),
            TAG_BOOL => match buf[0] {
                0 => Item::Bool(false),
                1 => Item::Bool(true),
                b => return Err(corrupt(format!("bool byte {b:#04x} is neither 0 nor 1"))),
            },
            TAG_NONE => Item::None,
            TAG_STR => Item::Str(
                String::from_utf8(buf).map_err(|e| corrupt(format!("string is not UTF-8: {e}")))?,
            ),
            _ => Item::Bytes(buf),
        })
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
