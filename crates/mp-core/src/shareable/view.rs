//! [`ListView`]: the checked, atomic reads and writes of one mapped list's slots.

use super::*;

/// Raw access to the slots of a mapped list, with checked offsets.
pub(super) struct ListView<'a> {
    pub(super) base: *mut u8,
    pub(super) descs: usize,
    pub(super) data: usize,
    pub(super) offsets: &'a [usize],
}

impl ListView<'_> {
    pub(super) fn desc_atomic(&self, pos: usize) -> &AtomicU64 {
        // SAFETY: `descs + 8 * pos` is inside the descriptor table (pos < count, checked by
        // the callers' `position`; the areas were checked against the payload in `open`), is
        // 8-aligned (the payload is 64-aligned and every area offset a multiple of 8), and an
        // AtomicU64 is valid for any bytes and may be shared while other processes write it.
        unsafe { AtomicU64::from_ptr(self.base.add(self.descs + 8 * pos).cast()) }
    }

    /// Writes an item that fits its slot: data first, then the descriptor (Release, pairs
    /// with the Acquire load in `read`).
    pub(super) fn write(&self, pos: usize, item: &Item) {
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
    pub(super) fn read(&self, pos: usize) -> Result<Item> {
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
