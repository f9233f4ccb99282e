//! The bytes of a list's payload: the header, the item tags, the offsets' check and the
//! areas' bounds.

use super::*;

pub(super) const TAG_INT: u8 = 1;
pub(super) const TAG_FLOAT: u8 = 2;
pub(super) const TAG_BOOL: u8 = 3;
pub(super) const TAG_STR: u8 = 4;
pub(super) const TAG_BYTES: u8 = 5;
pub(super) const TAG_NONE: u8 = 6;

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
pub(super) const HEADER_LEN: usize = std::mem::size_of::<ListHeader>();

pub(super) fn layout_check(count: u64, data_len: u64, offsets: &[u64]) -> u64 {
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
pub(super) fn areas(count: usize, data_len: usize) -> Option<(usize, usize, usize, usize)> {
    let offsets = HEADER_LEN;
    let descs = offsets.checked_add(count.checked_add(1)?.checked_mul(8)?)?;
    let data = descs.checked_add(count.checked_mul(8)?)?;
    let total = data.checked_add(data_len)?;
    Some((offsets, descs, data, total))
}
