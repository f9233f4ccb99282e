//! The ring's layout in shared memory: the [`Meta`] lines, record headers and their states
//! and kinds, and the sizes everything is counted in.

use super::*;

/// Size of [`Meta`], where the ring starts in the payload.
pub(crate) const META_SIZE: usize = 320;
pub(super) const REC_HDR: usize = 16;
pub(super) const PAGE: u64 = 4096;

pub(super) const READY: u32 = 1;
pub(super) const READING: u32 = 2;
pub(super) const DONE: u32 = 3;

pub(super) const KIND_INLINE: u32 = 0;
pub(super) const KIND_BIG: u32 = 1;
pub(super) const KIND_PAD: u32 = 2;
/// A damaged span `[pos, pos + extra)` that `corrupt` marked (state `DONE`): `reclaim` jumps
/// it without reading what is inside.
pub(super) const KIND_SKIP: u32 = 3;

/// The shared state of one queue. Every field is an atomic or a constant written before the
/// region is shared.
#[repr(C, align(64))]
pub(crate) struct Meta {
    // Constants (line 0).
    pub(super) capacity: AtomicU64,
    pub(super) maxsize: AtomicU64,
    pub(super) big_base: AtomicU64,
    /// The side channel's budget (`max_spill_bytes`): at most this many bytes of the file past
    /// the region hold oversized messages at once (`big_tail - big_head`, in whole pages).
    pub(super) max_spill: AtomicU64,
    _c: [u64; 4],
    // Producer line: written by producers on every put.
    /// The producer lock's futex word (a wake sequence, see `lock`).
    pub(super) p_wake: AtomicU32,
    /// Producer journal: how many records the commit in progress publishes.
    pub(super) pending_count: AtomicU32,
    /// The producer lock: its holder's token (0: free).
    pub(super) p_lock: AtomicU64,
    pub(super) tail: AtomicU64,
    pub(super) enqueued: AtomicU64,
    pub(super) p_cached_reclaim: AtomicU64,
    pub(super) big_tail: AtomicU64,
    /// Producer journal: the `tail` a producer is committing (0: none) and the `enqueued` it
    /// started from, so that a producer taking the lock over from a dead one knows whether the
    /// commit happened and sets `enqueued` right (idempotent).
    pub(super) pending_tail: AtomicU64,
    pub(super) pending_enq: AtomicU64,
    // Consumer line: written by consumers on every get.
    /// The consumer lock's futex word.
    pub(super) c_wake: AtomicU32,
    _c0: u32,
    /// The consumer lock: its holder's token (0: free).
    pub(super) c_lock: AtomicU64,
    pub(super) head: AtomicU64,
    pub(super) reclaim: AtomicU64,
    pub(super) dequeued: AtomicU64,
    pub(super) c_cached_tail: AtomicU64,
    /// Consumer journal: the `head` and `dequeued` a consumer is moving to (`j_head` 0: none),
    /// rolled forward by a consumer that takes the lock over from a dead one.
    pub(super) j_head: AtomicU64,
    pub(super) j_deq: AtomicU64,
    // Sleep line: written only when someone goes to sleep or is woken, read on every put and
    // get (so it stays shared in both caches while nobody sleeps).
    pub(super) data_seq: AtomicU32,
    pub(super) space_seq: AtomicU32,
    pub(super) c_waiters: AtomicU32,
    pub(super) p_waiters: AtomicU32,
    /// Diagnostics: how many sleeping consumers producers have woken, in all.
    pub(super) woken: AtomicU32,
    _w: [u32; 11],
    // Rarely written line.
    /// JoinableQueue: puts not yet matched by `task_done`.
    pub(crate) unfinished: AtomicU32,
    pub(crate) join_waiters: AtomicU32,
    /// The end of the oversized area freed so far (written by consumers under the consumer
    /// lock, only when `reclaim` passes an oversized record): every page of the file below it
    /// has been punched out, so `big_tail - big_head` is the side channel in use, the figure
    /// the budget `max_spill` bounds. A position, not a counter: a consumer killed before
    /// storing it leaves the record it was freeing behind `reclaim`, and the next one frees
    /// it again (idempotent); the producer side's `big_tail` is put right by its journal.
    pub(super) big_head: AtomicU64,
    /// Unused (was a single pending span of corrupted records; those are now marked in the
    /// ring itself, by a `KIND_SKIP` record each, so that any number of them keep their order
    /// with the live records between them).
    _d: u64,
    /// Producer journal for an oversized message: `big_tail` before it was allocated (0: none).
    pub(super) pending_big: AtomicU64,
    _j: [u64; 3],
}
const_assert_eq!(std::mem::size_of::<Meta>(), META_SIZE);
const_assert_eq!(std::mem::align_of::<Meta>(), 64);

/// A record header in the ring.
#[repr(C)]
pub(super) struct RecHdr {
    /// The state (low 16 bits) and the kind (high 16 bits), in one word so that the header
    /// has room for a whole token.
    pub(super) word: AtomicU32,
    pub(super) len: AtomicU32,
    /// The token (`mp_core::ident`, pid + start time) of the process whose zero-copy guard
    /// claimed the record (`READING`); for a `KIND_SKIP` record, the length of the damaged
    /// span it covers; 0 otherwise.
    pub(super) extra: AtomicU64,
}
const_assert_eq!(std::mem::size_of::<RecHdr>(), REC_HDR);
const_assert_eq!(std::mem::align_of::<RecHdr>(), 8);

pub(super) const KIND_SHIFT: u32 = 16;
pub(super) const STATE_MASK: u32 = (1 << KIND_SHIFT) - 1;

impl RecHdr {
    /// The record's state and kind, from one load of its word.
    pub(super) fn state_kind(&self, order: Ordering) -> (u32, u32) {
        let w = self.word.load(order);
        (w & STATE_MASK, w >> KIND_SHIFT)
    }

    /// Sets the state, keeping the kind. Only for the record's owner of the moment (the
    /// consumer-lock holder, or the process whose guard claimed it), so the load and the
    /// store cannot race with another writer.
    pub(super) fn set_state(&self, state: u32, order: Ordering) {
        let w = self.word.load(Ordering::Relaxed);
        self.word.store((w & !STATE_MASK) | state, order);
    }

    pub(super) fn init(&self, state: u32, kind: u32, len: u32) {
        self.len.store(len, Ordering::Relaxed);
        self.extra.store(0, Ordering::Relaxed);
        self.word
            .store((kind << KIND_SHIFT) | state, Ordering::Relaxed);
    }
}

pub(super) fn round16(n: u64) -> u64 {
    (n + 15) & !15
}

/// The side-channel bytes an oversized message of `len` bytes takes: whole pages, at least
/// one (what the file's pages cost, and what the budget counts).
pub(crate) fn spill_span(len: u64) -> u64 {
    len.max(1).div_ceil(PAGE).saturating_mul(PAGE)
}
