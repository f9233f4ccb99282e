//! The shared ring behind every queue: a byte ring of variable-size records in one region,
//! with a producer lock and a consumer lock (the two-lock queue of Michael and Scott, 1996,
//! over a byte ring instead of a linked list).
//!
//! ```text
//! region payload: [ Meta (320 bytes: constants, producer, consumer, sleep, join lines) ]
//!                 [ ring: capacity bytes of records                                          ]
//! file beyond the region: oversized messages, one page-aligned range each (sparse), handed
//!                         out at `big_tail`, freed up to `big_head`; at most `max_spill` bytes
//!                         (the budget) between the two
//! record: [ state | kind << 16 (u32) | len u32 | holder token u64 ][ payload, padded to 16 ]
//! ```
//!
//! Positions `tail`, `head` and `reclaim` are byte counts that only grow; a record's offset is
//! `pos % capacity` (a mask: the capacity is a power of two). `reclaim <= head <= tail`: `[reclaim, head)` holds records handed to a
//! consumer and not yet released (zero-copy guards), `[head, tail)` holds ready messages.
//!
//! **Producers** hold the producer lock while they serialize straight into the free space at
//! `tail` (no intermediate buffer), write the record header, and only then publish the record by
//! storing `tail` with Release. A producer killed at any point before that store leaves nothing
//! visible: a half-written message is discarded by construction. A message that does not fit in
//! the contiguous space is placed after a padding record at the start of the ring, or waits for
//! space; one larger than the whole ring goes to its own page-aligned range of the same file past
//! the region (grown with `ftruncate`, so no new descriptor has to reach anyone), and the ring
//! record only names that range. The consumer punches the range out of the file when done.
//! Those ranges have a budget: a producer whose range would take `big_tail - big_head` past
//! `max_spill` waits as for a full ring (the consumer that frees a range wakes it); the pages
//! are allocated with `fallocate` before they are written, so shared memory that is full is
//! an `ENOSPC` error for the put, not a `SIGBUS` on a write.
//!
//! **Consumers** hold the consumer lock while they check and decode the record at `head`, and
//! advance `head` only after: a consumer killed while decoding leaves the message where it was
//! for the next consumer, so every completed message is delivered exactly once. A zero-copy
//! guard instead claims the record (`READING` + its process's identity token, pid and start
//! time), advances `head`, and marks the record `DONE` when dropped; `reclaim` then moves over
//! `DONE` records in order. A guard whose process died is treated as `DONE` when producers run
//! short of space; the token's start time keeps a process that was given the dead one's pid
//! from passing for it.
//!
//! **Damage** found at `head` (a record no mp producer writes) is skipped so that the queue
//! stays usable: `head` moves to `tail`, and a `KIND_SKIP` record written over the damaged
//! header tells `reclaim` to jump the span without reading it. Each span has its own marker,
//! so the records between two damaged spans (zero-copy guards still reading them, say) are
//! still visited in order.
//!
//! Each side keeps a cached copy of the other side's position on its own cache line and reloads
//! the real one only when the cache says "full" or "empty", so a 1->1 pair shares a cache line
//! only when it must. Waiting uses futex words with a waiter count, so that the other side makes
//! a system call only when someone sleeps.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use mp_core::futex::{self, Deadline};
use mp_core::message::{self, Encoded, ALIGN};
use mp_core::region::HEADER_SIZE;
use mp_core::rkyv::util::AlignedVec;
use mp_core::{ident, Encode, Message, Region};
use static_assertions::const_assert_eq;

use crate::error::{Error, SpillError};
use crate::lock::{self, Locked};

/// Size of [`Meta`], where the ring starts in the payload.
pub(crate) const META_SIZE: usize = 320;
const REC_HDR: usize = 16;
const PAGE: u64 = 4096;
/// How long a sleeper waits before it re-checks the world (dead peers, deadlines).
const NAP: Duration = Duration::from_millis(50);
/// Spins before sleeping when waiting for data or space.
const SPINS: u32 = 4000;

const READY: u32 = 1;
const READING: u32 = 2;
const DONE: u32 = 3;

const KIND_INLINE: u32 = 0;
const KIND_BIG: u32 = 1;
const KIND_PAD: u32 = 2;
/// A damaged span `[pos, pos + extra)` that `corrupt` marked (state `DONE`): `reclaim` jumps
/// it without reading what is inside.
const KIND_SKIP: u32 = 3;

/// The largest private receive buffer a thread keeps between messages (see
/// [`Ring::private_copy`]); a larger message gets a buffer of its own, freed after it.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    /// The calling thread's private receive buffer: every owned-value receive of a message
    /// larger than [`SMALL_COPY`] copies it here (one `memcpy`) and checks and decodes this
    /// copy, never the shared bytes.
    static SCRATCH: Cell<AlignedVec<ALIGN>> = Cell::new(AlignedVec::new());
}

/// The shared state of one queue. Every field is an atomic or a constant written before the
/// region is shared.
#[repr(C, align(64))]
pub(crate) struct Meta {
    // Constants (line 0).
    capacity: AtomicU64,
    maxsize: AtomicU64,
    big_base: AtomicU64,
    /// The side channel's budget (`max_spill_bytes`): at most this many bytes of the file past
    /// the region hold oversized messages at once (`big_tail - big_head`, in whole pages).
    max_spill: AtomicU64,
    _c: [u64; 4],
    // Producer line: written by producers on every put.
    /// The producer lock's futex word (a wake sequence, see `lock`).
    p_wake: AtomicU32,
    /// Producer journal: how many records the commit in progress publishes.
    pending_count: AtomicU32,
    /// The producer lock: its holder's token (0: free).
    p_lock: AtomicU64,
    tail: AtomicU64,
    enqueued: AtomicU64,
    p_cached_reclaim: AtomicU64,
    big_tail: AtomicU64,
    /// Producer journal: the `tail` a producer is committing (0: none) and the `enqueued` it
    /// started from, so that a producer taking the lock over from a dead one knows whether the
    /// commit happened and sets `enqueued` right (idempotent).
    pending_tail: AtomicU64,
    pending_enq: AtomicU64,
    // Consumer line: written by consumers on every get.
    /// The consumer lock's futex word.
    c_wake: AtomicU32,
    _c0: u32,
    /// The consumer lock: its holder's token (0: free).
    c_lock: AtomicU64,
    head: AtomicU64,
    reclaim: AtomicU64,
    dequeued: AtomicU64,
    c_cached_tail: AtomicU64,
    /// Consumer journal: the `head` and `dequeued` a consumer is moving to (`j_head` 0: none),
    /// rolled forward by a consumer that takes the lock over from a dead one.
    j_head: AtomicU64,
    j_deq: AtomicU64,
    // Sleep line: written only when someone goes to sleep or is woken, read on every put and
    // get (so it stays shared in both caches while nobody sleeps).
    data_seq: AtomicU32,
    space_seq: AtomicU32,
    c_waiters: AtomicU32,
    p_waiters: AtomicU32,
    /// Diagnostics: how many sleeping consumers producers have woken, in all.
    woken: AtomicU32,
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
    big_head: AtomicU64,
    /// Unused (was a single pending span of corrupted records; those are now marked in the
    /// ring itself, by a `KIND_SKIP` record each, so that any number of them keep their order
    /// with the live records between them).
    _d: u64,
    /// Producer journal for an oversized message: `big_tail` before it was allocated (0: none).
    pending_big: AtomicU64,
    _j: [u64; 3],
}
const_assert_eq!(std::mem::size_of::<Meta>(), META_SIZE);
const_assert_eq!(std::mem::align_of::<Meta>(), 64);

/// A record header in the ring.
#[repr(C)]
struct RecHdr {
    /// The state (low 16 bits) and the kind (high 16 bits), in one word so that the header
    /// has room for a whole token.
    word: AtomicU32,
    len: AtomicU32,
    /// The token (`mp_core::ident`, pid + start time) of the process whose zero-copy guard
    /// claimed the record (`READING`); for a `KIND_SKIP` record, the length of the damaged
    /// span it covers; 0 otherwise.
    extra: AtomicU64,
}
const_assert_eq!(std::mem::size_of::<RecHdr>(), REC_HDR);
const_assert_eq!(std::mem::align_of::<RecHdr>(), 8);

const KIND_SHIFT: u32 = 16;
const STATE_MASK: u32 = (1 << KIND_SHIFT) - 1;

impl RecHdr {
    /// The record's state and kind, from one load of its word.
    fn state_kind(&self, order: Ordering) -> (u32, u32) {
        let w = self.word.load(order);
        (w & STATE_MASK, w >> KIND_SHIFT)
    }

    /// Sets the state, keeping the kind. Only for the record's owner of the moment (the
    /// consumer-lock holder, or the process whose guard claimed it), so the load and the
    /// store cannot race with another writer.
    fn set_state(&self, state: u32, order: Ordering) {
        let w = self.word.load(Ordering::Relaxed);
        self.word.store((w & !STATE_MASK) | state, order);
    }

    fn init(&self, state: u32, kind: u32, len: u32) {
        self.len.store(len, Ordering::Relaxed);
        self.extra.store(0, Ordering::Relaxed);
        self.word
            .store((kind << KIND_SHIFT) | state, Ordering::Relaxed);
    }
}

fn round16(n: u64) -> u64 {
    (n + 15) & !15
}

/// The side-channel bytes an oversized message of `len` bytes takes: whole pages, at least
/// one (what the file's pages cost, and what the budget counts).
pub(crate) fn spill_span(len: u64) -> u64 {
    len.max(1).div_ceil(PAGE).saturating_mul(PAGE)
}

/// The ring, mapped in this process.
#[derive(Clone)]
pub(crate) struct Ring {
    region: Region,
    capacity: u64,
}

/// Where a claimed record's payload is.
pub(crate) enum Payload {
    /// Inside the ring: pointer and length.
    Inline(*const u8, usize),
    /// In its own range of the file, mapped here for as long as it is read. The range is
    /// punched out of the file when `reclaim` passes its record, not before: a consumer killed
    /// in between leaves the message intact for the next one.
    Big(MmapRaw, usize),
}

/// Messages up to this size are copied into a buffer on the receiver's stack, larger ones
/// into the thread's receive buffer.
const SMALL_COPY: usize = 256;

/// Where a receive copies its message (see [`Ring::private_copy`]): a 16-aligned buffer on
/// the stack for small messages, else the calling thread's receive buffer, taken out of its
/// thread-local on first use (once for a whole batch) and put back when this is dropped,
/// unless it grew past [`SCRATCH_KEEP`]. Taken out rather than borrowed, so that a
/// deserializer that itself receives from a queue finds an empty buffer and uses its own.
#[repr(C, align(16))]
pub(crate) struct Scratch {
    small: [std::mem::MaybeUninit<u8>; SMALL_COPY],
    big: Option<AlignedVec<ALIGN>>,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            small: [std::mem::MaybeUninit::uninit(); SMALL_COPY],
            big: None,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(buf) = self.big.take() {
            if buf.capacity() <= SCRATCH_KEEP {
                let _ = SCRATCH.try_with(|cell| cell.set(buf));
            }
        }
    }
}

impl Payload {
    /// Where the payload's bytes are, and how many.
    fn raw(&self) -> (*const u8, usize) {
        match self {
            Payload::Inline(ptr, len) => (*ptr, *len),
            Payload::Big(map, len) => (map.as_ptr(), *len),
        }
    }
}

/// What `put` could not do.
pub(crate) enum PutFail {
    Full,
    Encode(mp_core::Error),
    Io(mp_core::Error),
}

fn corrupted(what: &str) -> PutFail {
    PutFail::Io(mp_core::Error::BadHeader {
        reason: format!("the queue's shared ring is corrupted: {what}"),
    })
}

/// What `get` could not do.
pub(crate) enum GetFail {
    Empty,
    Bad(Error),
}

/// The ring's free space for a record at `tail`: contiguous at `tail`, or after a padding
/// record at the ring's start. One placement rule for a single put and for a batch.
#[derive(Clone, Copy)]
struct Space {
    /// `tail`'s offset in the ring.
    off: u64,
    /// Bytes from `off` to the ring's end (a padding record there takes this much).
    contig: u64,
    /// Free bytes usable at `off`.
    at_tail: u64,
    /// Free bytes usable at the ring's start, after the padding record.
    at_start: u64,
}

impl Space {
    /// The space of a ring of `cap` bytes whose records between `reclaim` and `tail` are in
    /// use (a span already checked with `span_ok`).
    fn new(cap: u64, tail: u64, reclaim: u64) -> Space {
        let free = cap - (tail - reclaim);
        let off = tail & (cap - 1);
        let contig = cap - off;
        Space {
            off,
            contig,
            at_tail: free.min(contig),
            at_start: free.saturating_sub(contig),
        }
    }

    /// Where a record of `need` bytes goes: `(offset, padding before it)`.
    fn place(&self, need: u64) -> Option<(u64, u64)> {
        if need <= self.at_tail {
            Some((self.off, 0))
        } else if need <= self.at_start {
            Some((0, self.contig))
        } else {
            None
        }
    }

    /// Where a record of a size not known yet goes: the larger of the two places that holds
    /// a header and 16 bytes, as `(offset, padding before it, room)`.
    fn place_any(&self) -> Option<(u64, u64, u64)> {
        let min = 2 * REC_HDR as u64;
        if self.at_tail >= min && self.at_tail >= self.at_start {
            Some((self.off, 0, self.at_tail))
        } else if self.at_start >= min {
            Some((0, self.contig, self.at_start))
        } else {
            None
        }
    }
}

impl Ring {
    /// A new ring of `capacity` bytes (rounded up to a power of two) holding at most `maxsize` items
    /// (0: no limit), with at most `max_spill` bytes of oversized messages beside it, in a region
    /// of content kind `kind`.
    pub(crate) fn new(
        kind: u32,
        capacity: u64,
        maxsize: u64,
        max_spill: u64,
    ) -> Result<Ring, Error> {
        // A power of two, so that a position's offset is a mask rather than a division.
        let capacity = capacity.max(64).next_power_of_two();
        let size = META_SIZE as u64 + capacity;
        let region = Region::anonymous_growable(kind, size, 64)?;
        let big_base = (HEADER_SIZE as u64 + size).div_ceil(PAGE) * PAGE;
        let ring = Ring { region, capacity };
        let m = ring.meta();
        m.capacity.store(capacity, Ordering::Relaxed);
        m.maxsize.store(maxsize, Ordering::Relaxed);
        m.big_base.store(big_base, Ordering::Relaxed);
        m.big_tail.store(big_base, Ordering::Relaxed);
        m.big_head.store(big_base, Ordering::Relaxed);
        m.max_spill.store(max_spill, Ordering::Relaxed);
        Ok(ring)
    }

    /// Wraps a region received from another process, checking that its constants are sane.
    pub(crate) fn from_region(region: Region, kind: u32) -> Result<Ring, Error> {
        let layout = region.layout();
        if layout.kind != kind {
            return Err(Error::Corrupted(format!(
                "the region holds kind {:#010x}, a queue of this message type is {kind:#010x}",
                layout.kind
            )));
        }
        if region.len() < META_SIZE + 64 {
            return Err(Error::Corrupted(
                "the region is too small for a queue".into(),
            ));
        }
        let capacity = (region.len() - META_SIZE) as u64;
        if !capacity.is_power_of_two() {
            return Err(Error::Corrupted(
                "the queue's capacity is not a power of two".into(),
            ));
        }
        let ring = Ring { region, capacity };
        let m = ring.meta();
        if m.capacity.load(Ordering::Relaxed) != capacity {
            return Err(Error::Corrupted(
                "the queue's capacity does not match its region".into(),
            ));
        }
        Ok(ring)
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn meta(&self) -> &Meta {
        // SAFETY: the payload starts with a Meta (64-aligned: region payloads are aligned to
        // their layout's alignment, 64 here), written by the creator before the region was
        // shared. Meta is made of atomics and constants that are never written after creation,
        // so a shared reference is sound while other processes use it.
        unsafe { &*self.region.as_ptr().cast::<Meta>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the ring starts META_SIZE bytes into the payload, which is META_SIZE +
        // capacity bytes long.
        unsafe { self.region.as_ptr().add(META_SIZE) }
    }

    fn rec(&self, off: u64) -> &RecHdr {
        debug_assert!(off % 16 == 0 && off + REC_HDR as u64 <= self.capacity);
        // SAFETY: `off` is a multiple of 16 below capacity (positions are multiples of 16 and
        // taken modulo capacity, itself a multiple of 16), so a 16-byte header fits, 8-aligned
        // (the ring starts at META_SIZE, a multiple of 64, in a 64-aligned payload).
        // RecHdr is made of atomics: sound to share.
        unsafe { &*self.data().add(off as usize).cast::<RecHdr>() }
    }

    pub(crate) fn maxsize(&self) -> u64 {
        self.meta().maxsize.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The side channel's budget in bytes.
    pub(crate) fn max_spill(&self) -> u64 {
        self.meta().max_spill.load(Ordering::Relaxed)
    }

    /// The bytes of the side channel that oversized messages hold now (whole pages), including
    /// those of messages taken by zero-copy guards not yet dropped. A lock-free snapshot:
    /// `big_head` first, then `big_tail` (`big_head <= big_tail` at every instant, and both
    /// only grow, except that a producer taking over from a dead one moves `big_tail` back
    /// over a range never published).
    pub(crate) fn spill_in_use(&self) -> u64 {
        let m = self.meta();
        // Acquire pairs with the Release store of `big_head` in `free_big`.
        let head = m.big_head.load(Ordering::Acquire);
        m.big_tail.load(Ordering::Acquire).saturating_sub(head)
    }

    /// True when `lo..hi` can be a span of the ring: ordered, at most the capacity apart, and
    /// on record boundaries (multiples of 16). Every position read back from shared memory is
    /// checked with this before it is used to form a pointer: another process may have written
    /// anything there.
    fn span_ok(&self, lo: u64, hi: u64) -> bool {
        lo <= hi && hi - lo <= self.capacity && lo % 16 == 0 && hi % 16 == 0
    }

    /// Takes the producer lock (waiting until `deadline`: then `None`), repairing what a
    /// producer killed while holding it left.
    fn lock_producer(&self, deadline: Deadline) -> Option<Locked<'_>> {
        let m = self.meta();
        let guard = lock::lock_until(&m.p_lock, &m.p_wake, deadline)?;
        if guard.recovered {
            self.repair_producer();
        }
        Some(guard)
    }

    /// Takes the consumer lock (waiting until `deadline`: then `None`), repairing what a
    /// consumer killed while holding it left.
    fn lock_consumer(&self, deadline: Deadline) -> Option<Locked<'_>> {
        let m = self.meta();
        let guard = lock::lock_until(&m.c_lock, &m.c_wake, deadline)?;
        if guard.recovered {
            self.repair_consumer();
        }
        Some(guard)
    }

    /// Items put and not yet taken.
    pub(crate) fn len(&self) -> u64 {
        let m = self.meta();
        // Acquire pairs with the Release increments in put/get (only for a coherent snapshot).
        let d = m.dequeued.load(Ordering::Acquire);
        let e = m.enqueued.load(Ordering::Acquire);
        e.saturating_sub(d)
    }

    // ---------------------------------------------------------------- producer side

    /// Puts `value`, waiting for room until `deadline`.
    pub(crate) fn put<T: Encode>(&self, value: &T, deadline: Deadline) -> Result<(), PutFail> {
        let m = self.meta();
        let mut spilled: Option<AlignedVec<ALIGN>> = None;
        let mut spins = 0u32;
        loop {
            {
                let Some(guard) = self.lock_producer(deadline) else {
                    return Err(PutFail::Full);
                };
                if self.try_put_locked(value, &mut spilled, &guard)? {
                    drop(guard);
                    self.wake_consumers(1);
                    return Ok(());
                }
            }
            // No room: records released by zero-copy guards may be waiting to be reclaimed.
            self.help_reclaim();
            if deadline.expired() {
                return Err(PutFail::Full);
            }
            if spins < SPINS {
                spins += 64;
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                // Let a consumer on the same core run.
                std::thread::yield_now();
                continue;
            }
            // Announce that we wait, then try once more before sleeping: a consumer that freed
            // space before it could see us waiting is seen by this attempt. The fence pairs with
            // the one in `wake_producers` (each side stores, fences, then loads what the other
            // stored), so one of the two always sees the other.
            let space_seq = m.space_seq.load(Ordering::SeqCst);
            m.p_waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let put = match self.lock_producer(deadline) {
                Some(guard) => self.try_put_locked(value, &mut spilled, &guard),
                None => Err(PutFail::Full),
            };
            if !matches!(put, Ok(false)) {
                m.p_waiters.fetch_sub(1, Ordering::SeqCst);
                put?;
                self.wake_consumers(1);
                return Ok(());
            }
            let nap = deadline.remaining().map_or(NAP, |r| r.min(NAP));
            futex::wait(&m.space_seq, space_seq, Some(nap));
            m.p_waiters.fetch_sub(1, Ordering::SeqCst);
            // A guard whose process died may be what holds the space: check on every nap.
            self.reclaim_dead(deadline);
        }
    }

    /// One attempt under the producer lock. `Ok(true)`: published; `Ok(false)`: no room (the
    /// encoded bytes are kept in `spilled` for the next attempt).
    ///
    /// `reclaim` is first read from the producers' cached copy; a placement that fails on the
    /// cached value is tried once more with the consumers' real one, because the cache may say
    /// "no room" for a ring that consumers have emptied.
    fn try_put_locked<T: Encode>(
        &self,
        value: &T,
        spilled: &mut Option<AlignedVec<ALIGN>>,
        _guard: &Locked<'_>,
    ) -> Result<bool, PutFail> {
        let m = self.meta();
        let maxsize = m.maxsize.load(Ordering::Relaxed);
        let enq = m.enqueued.load(Ordering::Relaxed);
        if maxsize > 0 {
            // Acquire pairs with the Release increment of `dequeued` in the consumers.
            let deq = m.dequeued.load(Ordering::Acquire);
            if enq.saturating_sub(deq) >= maxsize {
                return Ok(false);
            }
        }
        let cap = self.capacity;
        let hdr = REC_HDR as u64;
        let tail = m.tail.load(Ordering::Relaxed);
        let mut reclaim = m.p_cached_reclaim.load(Ordering::Relaxed);
        let want = spilled
            .as_ref()
            .map_or(2 * hdr, |v| (hdr + round16(v.len() as u64)).min(cap));
        let mut fresh = false;
        if !self.span_ok(reclaim, tail) || cap - (tail - reclaim) < want {
            reclaim = self.fresh_reclaim();
            fresh = true;
        }
        loop {
            if !self.span_ok(reclaim, tail) {
                return Err(corrupted("its positions are out of order or misaligned"));
            }
            let space = Space::new(cap, tail, reclaim);
            if self.place_one(value, spilled, space, tail, enq)? {
                return Ok(true);
            }
            if fresh {
                return Ok(false);
            }
            reclaim = self.fresh_reclaim();
            fresh = true;
        }
    }

    /// Reads `reclaim` from the consumers' line and refreshes the producers' cached copy.
    fn fresh_reclaim(&self) -> u64 {
        let m = self.meta();
        // Acquire pairs with the Release stores of `reclaim` by consumers: the records before
        // it are no longer read.
        let reclaim = m.reclaim.load(Ordering::Acquire);
        m.p_cached_reclaim.store(reclaim, Ordering::Relaxed);
        reclaim
    }

    /// Writes and publishes one record in `space` (the ring's free space at `tail`, `enq`
    /// items queued): in place, as a copy of the already encoded `spilled` bytes, or as a
    /// record naming an oversized message's own range. `Ok(false)` when it does not fit now.
    fn place_one<T: Encode>(
        &self,
        value: &T,
        spilled: &mut Option<AlignedVec<ALIGN>>,
        space: Space,
        tail: u64,
        enq: u64,
    ) -> Result<bool, PutFail> {
        let m = self.meta();
        let cap = self.capacity;
        let hdr = REC_HDR as u64;
        if spilled.is_none() {
            let Some((rec_off, pad, room)) = space.place_any() else {
                return Ok(false);
            };
            // SAFETY: `[rec_off + 16, rec_off + room)` is free ring space: it lies in
            // `[tail, reclaim + cap)` (after the padding when `pad > 0`), which no consumer reads
            // (they stop at `tail`, not yet moved) and no other producer writes (we hold the
            // producer lock). `rec_off` is a multiple of 16, so the slot is 16-aligned.
            let enc = unsafe {
                message::encode_into(
                    value,
                    self.data().add(rec_off as usize + REC_HDR),
                    (room - hdr) as usize,
                )
            }
            .map_err(PutFail::Encode)?;
            match enc {
                Encoded::InPlace(n) => {
                    self.write_rec(rec_off, n as u32, KIND_INLINE);
                    self.commit(tail, enq, space.off, pad, hdr + round16(n as u64));
                    return Ok(true);
                }
                Encoded::Spilled(v) => *spilled = Some(v),
            }
        }
        let Some(v) = spilled.take() else {
            return Ok(false);
        };
        let need = hdr + round16(v.len() as u64);
        if need <= cap / 2 {
            // Any message up to half the ring fits once the ring drains, wherever `tail` is.
            let Some((rec_off, pad)) = space.place(need) else {
                *spilled = Some(v);
                return Ok(false);
            };
            self.copy_in(rec_off, &v);
            self.commit(tail, enq, space.off, pad, need);
            return Ok(true);
        }
        // Larger: its own range past the region; the ring holds a 32-byte record naming it.
        // The range counts against the side channel's budget, in whole pages.
        let size = v.len() as u64;
        let needed = spill_span(size);
        let budget = m.max_spill.load(Ordering::Relaxed);
        if needed > budget {
            return Err(PutFail::Io(
                SpillError::TooLarge {
                    size,
                    needed,
                    budget,
                }
                .into_core(),
            ));
        }
        // Acquire pairs with the Release store of `big_head` in `free_big`: the pages below
        // it have been punched out. Only producers grow `big_tail`, and we hold their lock,
        // so the budget cannot be overrun between this check and the put.
        let in_use = m
            .big_tail
            .load(Ordering::Relaxed)
            .saturating_sub(m.big_head.load(Ordering::Acquire));
        let fits = in_use
            .checked_add(needed)
            .is_some_and(|total| total <= budget);
        let Some((rec_off, pad)) = space.place(2 * hdr).filter(|_| fits) else {
            *spilled = Some(v);
            return Ok(false);
        };
        self.put_big(rec_off, &v).map_err(PutFail::Io)?;
        self.commit(tail, enq, space.off, pad, 2 * hdr);
        Ok(true)
    }

    /// Puts the first items of `values`, in order, under one hold of the producer lock, and
    /// publishes them together: one store of `tail` (and one wake-up check) for the batch.
    /// Stops at the first item that does not fit in the ring now, would exceed `maxsize`, or
    /// is too large to be written in place (those go through [`put`](Self::put)). Returns how
    /// many were put.
    pub(crate) fn put_batch<T: Encode>(
        &self,
        values: &[T],
        deadline: Deadline,
    ) -> Result<usize, PutFail> {
        let m = self.meta();
        let Some(guard) = self.lock_producer(deadline) else {
            return Ok(0);
        };
        let cap = self.capacity;
        let hdr = REC_HDR as u64;
        let maxsize = m.maxsize.load(Ordering::Relaxed);
        let enq = m.enqueued.load(Ordering::Relaxed);
        let room_in_items = if maxsize > 0 {
            // Acquire pairs with the Release increment of `dequeued` in the consumers.
            let deq = m.dequeued.load(Ordering::Acquire);
            maxsize.saturating_sub(enq.saturating_sub(deq))
        } else {
            u64::MAX
        };
        let tail0 = m.tail.load(Ordering::Relaxed);
        let mut reclaim = m.p_cached_reclaim.load(Ordering::Relaxed);
        let mut fresh = false;
        if !self.span_ok(reclaim, tail0) {
            reclaim = self.fresh_reclaim();
            fresh = true;
        }
        if !self.span_ok(reclaim, tail0) {
            return Err(corrupted("its positions are out of order or misaligned"));
        }
        let mut tail = tail0;
        let mut count = 0u32;
        for value in values {
            if u64::from(count) >= room_in_items || count == u32::MAX {
                break;
            }
            // The same placement as a single put's, for a value of unknown size.
            let place = loop {
                if let Some(p) = Space::new(cap, tail, reclaim).place_any() {
                    break Some(p);
                }
                if fresh {
                    break None;
                }
                reclaim = self.fresh_reclaim();
                fresh = true;
                if !self.span_ok(reclaim, tail) {
                    return Err(corrupted("its positions are out of order or misaligned"));
                }
            };
            let Some((rec_off, pad, room)) = place else {
                break;
            };
            // SAFETY: `[rec_off + 16, rec_off + room)` is free ring space: it lies in
            // `[tail, reclaim + cap)` (after the padding when `pad > 0`), past the published
            // `tail`, so no consumer reads it, and no other producer writes it (we hold the
            // producer lock). `rec_off` is a multiple of 16, so the slot is 16-aligned.
            let enc = unsafe {
                message::encode_into(
                    value,
                    self.data().add(rec_off as usize + REC_HDR),
                    (room - hdr) as usize,
                )
            }
            .map_err(PutFail::Encode);
            let n = match enc {
                Ok(Encoded::InPlace(n)) => n,
                // Too large for the space left: the batch ends here.
                Ok(Encoded::Spilled(_)) => break,
                Err(e) if count == 0 => return Err(e),
                // Publish what was written; the caller meets the error again alone.
                Err(_) => break,
            };
            if pad > 0 {
                self.write_pad(tail & (cap - 1), pad);
            }
            self.write_rec(rec_off, n as u32, KIND_INLINE);
            tail += pad + hdr + round16(n as u64);
            count += 1;
        }
        if count > 0 {
            self.publish(enq, tail, count);
        }
        drop(guard);
        if count > 0 {
            self.wake_consumers(count);
        }
        Ok(count as usize)
    }

    /// Publishes a record (after an optional padding record at `off` of `pad` bytes).
    fn commit(&self, tail: u64, enq: u64, off: u64, pad: u64, used: u64) {
        if pad > 0 {
            self.write_pad(off, pad);
        }
        self.publish(enq, tail + pad + used, 1);
    }

    /// Publishes the `count` records written between `tail` and `new_tail` (`enq` items were
    /// in the queue's count before them).
    fn publish(&self, enq: u64, new_tail: u64, count: u32) {
        let m = self.meta();
        // The journal first (Release keeps `pending_enq` and `pending_count` before
        // `pending_tail`, and all three before the stores below, also for a process that reads
        // them after we are killed).
        m.pending_enq.store(enq, Ordering::Relaxed);
        m.pending_count.store(count, Ordering::Relaxed);
        m.pending_tail.store(new_tail, Ordering::Release);
        m.enqueued.store(enq + u64::from(count), Ordering::Release);
        // Publishes the records (headers and payloads) to consumers, which load `tail` with
        // Acquire. A SeqCst swap rather than a store: it is also our half of the handshake with
        // sleeping consumers (see `wake_consumers`), without a separate fence.
        m.tail.swap(new_tail, Ordering::SeqCst);
        // Only an oversized message sets the journal's `pending_big`. It sits on the line that
        // consumers read on every get, so it is stored only when set: an unconditional store
        // would move that line between the two cores on every message.
        if m.pending_big.load(Ordering::Relaxed) != 0 {
            m.pending_big.store(0, Ordering::Release);
        }
        m.pending_tail.store(0, Ordering::Release);
    }

    /// Run by a producer that took the lock over from a dead one. If it died inside `commit`,
    /// `enqueued` is set from the journal (whether or not `tail` was published); if it died
    /// after allocating an oversized message's range but before publishing it, the range is
    /// freed and given back.
    fn repair_producer(&self) {
        let m = self.meta();
        let tail = m.tail.load(Ordering::Relaxed);
        let pending = m.pending_tail.load(Ordering::Acquire);
        let published = pending != 0 && tail == pending;
        if pending != 0 {
            let old = m.pending_enq.load(Ordering::Relaxed);
            let count = u64::from(m.pending_count.load(Ordering::Relaxed));
            m.enqueued.store(
                if published {
                    old.saturating_add(count)
                } else {
                    old
                },
                Ordering::Release,
            );
        }
        let big = m.pending_big.load(Ordering::Acquire);
        if big != 0 && !published {
            // Everything from the dead producer's range on is unused (no record names it):
            // free it up to the end of the file (which also covers pages allocated by a
            // `fallocate` it was killed in) and take `big_tail` back, so the budget in use
            // (`big_tail - big_head`) is again that of the published messages.
            let base = m.big_base.load(Ordering::Relaxed);
            if big % PAGE == 0 && big >= base && big <= m.big_tail.load(Ordering::Relaxed) {
                let file_len = nix::sys::stat::fstat(self.region.fd().as_raw_fd())
                    .map(|st| u64::try_from(st.st_size).unwrap_or(0))
                    .unwrap_or(0);
                if file_len > big {
                    self.punch(big, file_len - big);
                }
                m.big_tail.store(big, Ordering::Release);
            }
        }
        m.pending_big.store(0, Ordering::Relaxed);
        m.pending_tail.store(0, Ordering::Release);
    }

    /// Run by a consumer that took the lock over from a dead one: a move of `head` that was
    /// journaled is completed (the dead consumer had the message; it is not delivered again).
    fn repair_consumer(&self) {
        let m = self.meta();
        let jh = m.j_head.load(Ordering::Acquire);
        if jh != 0 {
            m.head.store(jh, Ordering::Release);
            m.dequeued
                .store(m.j_deq.load(Ordering::Relaxed), Ordering::Release);
            m.j_head.store(0, Ordering::Release);
        }
    }

    /// Frees `len` bytes of the file from `start` (page-aligned, in the oversized area).
    fn punch(&self, start: u64, len: u64) {
        // SAFETY: fallocate on our own descriptor; it changes the file, not our memory, and
        // the range lies in the area past the region (checked by the callers), which no live
        // mapping of a message still reads.
        unsafe {
            libc::fallocate(
                self.region.fd().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                len as libc::off_t,
            );
        }
    }

    /// The positions and counters, for diagnostics.
    pub(crate) fn debug_state(&self) -> String {
        let m = self.meta();
        format!(
            "capacity={} tail={} head={} reclaim={} p_cached_reclaim={} c_cached_tail={} enqueued={} dequeued={} p_lock={:#x} c_lock={:#x} p_waiters={} c_waiters={} consumers_woken={} big_tail={} big_head={} max_spill={}",
            self.capacity,
            m.tail.load(Ordering::SeqCst),
            m.head.load(Ordering::SeqCst),
            m.reclaim.load(Ordering::SeqCst),
            m.p_cached_reclaim.load(Ordering::SeqCst),
            m.c_cached_tail.load(Ordering::SeqCst),
            m.enqueued.load(Ordering::SeqCst),
            m.dequeued.load(Ordering::SeqCst),
            m.p_lock.load(Ordering::SeqCst),
            m.c_lock.load(Ordering::SeqCst),
            m.p_waiters.load(Ordering::SeqCst),
            m.c_waiters.load(Ordering::SeqCst),
            m.woken.load(Ordering::SeqCst),
            m.big_tail.load(Ordering::SeqCst),
            m.big_head.load(Ordering::SeqCst),
            m.max_spill.load(Ordering::SeqCst),
        )
    }

    fn write_rec(&self, off: u64, len: u32, kind: u32) {
        self.rec(off).init(READY, kind, len);
    }

    fn write_pad(&self, off: u64, span: u64) {
        self.rec(off)
            .init(DONE, KIND_PAD, (span - REC_HDR as u64) as u32);
    }

    fn copy_in(&self, off: u64, bytes: &[u8]) {
        // SAFETY: the caller checked that `[off, off + 16 + len)` is free ring space, which
        // only this producer (holding the producer lock) may write.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.data().add(off as usize + REC_HDR),
                bytes.len(),
            )
        };
        self.write_rec(off, bytes.len() as u32, KIND_INLINE);
    }

    fn put_big(&self, off: u64, bytes: &[u8]) -> Result<(), mp_core::Error> {
        let m = self.meta();
        let start = m.big_tail.load(Ordering::Relaxed);
        let len = bytes.len().max(1) as u64;
        let span = spill_span(len);
        let end = start
            .checked_add(span)
            .filter(|_| start % PAGE == 0 && start >= m.big_base.load(Ordering::Relaxed));
        let Some(end) = end else {
            return Err(mp_core::Error::BadHeader {
                reason: "the queue's oversized-message area is corrupted".into(),
            });
        };
        // Journal: if we die before publishing, the next producer frees the range.
        m.pending_big.store(start, Ordering::Release);
        let map = self.allocate(start, span).and_then(|()| {
            // The pages are ours now and count against the budget from here on (a producer
            // killed while it copies holds them until the next one repairs: `pending_big`).
            m.big_tail.store(end, Ordering::Release);
            MmapOptions::new()
                .offset(start)
                .len(len as usize)
                .map_raw(self.region.fd().as_raw_fd())
                .map_err(|source| mp_core::Error::Io { op: "mmap", source })
        });
        let map = match map {
            Ok(map) => map,
            Err(e) => {
                // Nothing was published: give back whatever pages were allocated, the range
                // and the journal entry.
                self.punch(start, span);
                m.big_tail.store(start, Ordering::Release);
                m.pending_big.store(0, Ordering::Release);
                return Err(e);
            }
        };
        // SAFETY: the range `[start, start + len)` was just allocated to this message under
        // the producer lock, past every range a published record names, so no consumer maps
        // it and no other producer writes it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_mut_ptr(), bytes.len()) };
        drop(map);
        // The ring record names the range: offset and length.
        // SAFETY: the caller checked that 32 bytes at `off` are free ring space, ours to write
        // under the producer lock.
        unsafe {
            let p = self.data().add(off as usize + REC_HDR).cast::<u64>();
            p.write(start);
            p.add(1).write(bytes.len() as u64);
        }
        self.write_rec(off, 16, KIND_BIG);
        Ok(())
    }

    /// Allocates the pages `[start, start + span)` of the file (growing it), so that writing
    /// them cannot fail later: a page of a shared-memory file that the system cannot provide
    /// at the time it is first written is a `SIGBUS`, where `fallocate` returns `ENOSPC`.
    /// Running out (`ENOSPC`, `ENOMEM`, `EFBIG`) is [`SpillError::SharedMemoryFull`].
    fn allocate(&self, start: u64, span: u64) -> Result<(), mp_core::Error> {
        let fd = self.region.fd().as_raw_fd();
        let full = |errno: i32| SpillError::SharedMemoryFull {
            needed: span,
            errno,
        };
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(span)) else {
            return Err(full(libc::EFBIG).into_core());
        };
        // SAFETY: fallocate on our own descriptor, over a range past the region that no
        // mapping of ours reads or writes: it changes the file, not our memory.
        if unsafe { libc::fallocate(fd, 0, off, len) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(e @ (libc::ENOSPC | libc::ENOMEM | libc::EFBIG)) => Err(full(e).into_core()),
            // A file system without fallocate: grow the file; its pages come on first write.
            Some(libc::EOPNOTSUPP) => {
                self.region
                    .grow_file(start.saturating_add(span))
                    .map_err(|e| match e {
                        mp_core::Error::Io { source, .. }
                            if matches!(
                                source.raw_os_error(),
                                Some(libc::ENOSPC | libc::ENOMEM | libc::EFBIG)
                            ) =>
                        {
                            full(source.raw_os_error().unwrap_or(libc::ENOSPC)).into_core()
                        }
                        other => other,
                    })
            }
            _ => Err(mp_core::Error::Io {
                op: "fallocate",
                source: err,
            }),
        }
    }

    /// Wakes up to `n` sleeping consumers, one per message just published (a batch of `n`
    /// items has work for `n` of them; waking fewer would leave the rest to their next nap).
    fn wake_consumers(&self, n: u32) {
        let m = self.meta();
        // Dekker handshake, all four operations SeqCst: we swapped `tail` (in `commit`), then
        // load `c_waiters`; a consumer going to sleep increments `c_waiters`, then loads
        // `tail`. In the single total order of SeqCst operations, either our swap comes first
        // (the consumer sees the message and does not sleep) or its increment does (we see it
        // and wake it).
        if m.c_waiters.load(Ordering::SeqCst) > 0 {
            m.data_seq.fetch_add(1, Ordering::SeqCst);
            let woken = futex::wake(&m.data_seq, n);
            if woken > 0 {
                m.woken
                    .fetch_add(woken.min(u32::MAX as usize) as u32, Ordering::Relaxed);
            }
        }
    }

    fn wake_producers(&self) {
        let m = self.meta();
        // SeqCst fence: pairs with the producer's SeqCst increment of `p_waiters`.
        fence(Ordering::SeqCst);
        if m.p_waiters.load(Ordering::SeqCst) > 0 && self.worth_waking_producers() {
            m.space_seq.fetch_add(1, Ordering::SeqCst);
            futex::wake_all(&m.space_seq);
        }
    }

    /// Hysteresis: a producer waiting for ring space is woken once the ring is at most half
    /// full (then it can put many messages before it sleeps again, instead of one wake-up
    /// system call per `get`); one waiting for the item limit, as soon as there is room.
    /// A producer that sleeps past this still wakes every `NAP` to look again.
    fn worth_waking_producers(&self) -> bool {
        let m = self.meta();
        // Read without a lock: `reclaim` first, then `tail`. Both only grow and
        // `reclaim <= tail` at every instant, so the `tail` read later is at least the
        // `reclaim` read earlier (read the other way round, consumers could move `reclaim`
        // past the `tail` we read in between). Saturating all the same: it is shared memory.
        let reclaim = m.reclaim.load(Ordering::Acquire);
        let used = m.tail.load(Ordering::Acquire).saturating_sub(reclaim);
        let max = m.maxsize.load(Ordering::Relaxed);
        used <= self.capacity / 2 || (max > 0 && self.len() < max)
    }

    // ---------------------------------------------------------------- consumer side

    /// Takes the next message: `f` gets a private copy of its payload while the consumer lock
    /// is held and the record is still at `head`; the record is consumed only when `f` returns.
    pub(crate) fn get_with<R>(
        &self,
        deadline: Deadline,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, GetFail> {
        let mut f = Some(f);
        self.wait_for_data(deadline, |ring, guard| {
            let (payload, used, _) = ring.peek_locked(guard)?;
            let Some(f) = f.take() else {
                return Err(Error::Corrupted("a get took two messages".into()));
            };
            let mut scratch = Scratch::new();
            let r = f(ring.private_copy(&payload, &mut scratch));
            let simple = matches!(payload, Payload::Inline(..));
            drop(payload);
            ring.consume_locked(guard, used, false, simple);
            Ok(r)
        })
    }

    /// Takes up to `max` messages (at least one, waiting until `deadline`) under one hold of
    /// the consumer lock: `f` gets a private copy of each payload while its record is at
    /// `head`, and the record is consumed when `f` returns. An error of `f` (the record is
    /// consumed all the same) or of the ring ends the batch and is returned; the messages
    /// before it went to `f`.
    pub(crate) fn get_batch(
        &self,
        deadline: Deadline,
        max: usize,
        mut f: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<usize, GetFail> {
        self.wait_for_data(deadline, |ring, guard| {
            let mut scratch = Scratch::new();
            let mut taken = 0;
            while taken < max {
                if taken > 0 && !ring.has_data_locked() {
                    break;
                }
                let (payload, used, _) = ring.peek_locked(guard)?;
                let r = f(ring.private_copy(&payload, &mut scratch));
                let simple = matches!(payload, Payload::Inline(..));
                drop(payload);
                ring.consume_locked(guard, used, false, simple);
                r?;
                taken += 1;
            }
            Ok(taken)
        })
    }

    /// Claims the next message for a zero-copy guard: returns its payload and the ring offset
    /// of its record, marked `READING` by this process (its token: pid and start time).
    pub(crate) fn claim(&self, deadline: Deadline) -> Result<(Payload, u64), GetFail> {
        self.wait_for_data(deadline, |ring, guard| {
            let (payload, used, rec_off) = ring.peek_locked(guard)?;
            let r = ring.rec(rec_off);
            r.extra.store(ident::process_token(), Ordering::Relaxed);
            // Release: the token is in place before the claim is seen (by a process that
            // finds this record after we are killed; it loads the state with Acquire).
            r.set_state(READING, Ordering::Release);
            ring.consume_locked(guard, used, true, false);
            Ok((payload, rec_off))
        })
    }

    /// Releases a record claimed by [`claim`](Self::claim).
    pub(crate) fn release(&self, off: u64) {
        // Release: our reads of the payload happen before a producer reuses the space (it
        // loads `reclaim` with Acquire after we advance it over this record).
        self.rec(off).set_state(DONE, Ordering::Release);
        let m = self.meta();
        if let Some(g) = lock::try_lock(&m.c_lock, &m.c_wake) {
            self.advance_reclaim(&g, false);
        }
        // Even when another consumer holds the lock (it moves `reclaim` on its next get),
        // a producer waiting for space should look again.
        self.wake_producers();
    }

    /// Runs `take` under the consumer lock once a message is there, waiting until `deadline`.
    fn wait_for_data<R>(
        &self,
        deadline: Deadline,
        mut take: impl FnMut(&Ring, &Locked<'_>) -> Result<R, Error>,
    ) -> Result<R, GetFail> {
        let m = self.meta();
        let mut spins = 0u32;
        loop {
            let seq = m.data_seq.load(Ordering::Acquire);
            {
                let Some(guard) = self.lock_consumer(deadline) else {
                    return Err(GetFail::Empty);
                };
                if self.has_data_locked() {
                    let r = take(self, &guard);
                    drop(guard);
                    self.wake_producers();
                    return r.map_err(GetFail::Bad);
                }
            }
            if deadline.expired() {
                return Err(GetFail::Empty);
            }
            if spins < SPINS {
                // Spin on the producer's `tail` without the lock: cheap while a producer is
                // about to publish.
                spins += 64;
                let mut seen = false;
                for _ in 0..64 {
                    std::hint::spin_loop();
                    if m.tail.load(Ordering::Relaxed) != m.head.load(Ordering::Relaxed) {
                        seen = true;
                        break;
                    }
                }
                if !seen {
                    // Let a producer on the same core run.
                    std::thread::yield_now();
                }
                continue;
            }
            m.c_waiters.fetch_add(1, Ordering::SeqCst);
            // Pairs with the SeqCst swap of `tail` in `publish` and the SeqCst load of
            // `c_waiters` in `wake_consumers` (the Dekker handshake described there).
            if m.tail.load(Ordering::SeqCst) == m.head.load(Ordering::SeqCst)
                && m.data_seq.load(Ordering::SeqCst) == seq
            {
                let nap = deadline.remaining().map_or(NAP, |r| r.min(NAP));
                futex::wait(&m.data_seq, seq, Some(nap));
            }
            m.c_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn has_data_locked(&self) -> bool {
        let m = self.meta();
        let head = m.head.load(Ordering::Relaxed);
        let mut tail = m.c_cached_tail.load(Ordering::Relaxed);
        if head == tail {
            // Acquire pairs with the Release store of `tail` in `commit`.
            tail = m.tail.load(Ordering::Acquire);
            m.c_cached_tail.store(tail, Ordering::Relaxed);
        }
        head != tail
    }

    /// The record at `head` (after skipping one padding record): its payload, how many ring
    /// bytes consuming it frees, and its offset. Validates everything read from the ring.
    fn peek_locked(&self, guard: &Locked<'_>) -> Result<(Payload, u64, u64), Error> {
        let m = self.meta();
        let cap = self.capacity;
        let head = m.head.load(Ordering::Relaxed);
        let mut tail = m.c_cached_tail.load(Ordering::Relaxed);
        if !self.span_ok(head, tail) {
            // The cache may hold a value that has been repaired since: look again.
            tail = m.tail.load(Ordering::Acquire);
            m.c_cached_tail.store(tail, Ordering::Relaxed);
        }
        if !self.span_ok(head, tail) || !self.span_ok(m.reclaim.load(Ordering::Relaxed), head) {
            return Err(self.corrupt(guard, head, tail, "positions out of order or misaligned"));
        }
        // `head` is a multiple of 16 and `cap` too, so `off` is a record boundary in the ring.
        let mut off = head & (cap - 1);
        let mut used = 0u64;
        let r = self.rec(off);
        if r.state_kind(Ordering::Relaxed).1 == KIND_PAD {
            let span = REC_HDR as u64 + u64::from(r.len.load(Ordering::Relaxed));
            if span != cap - off || head + span >= tail {
                return Err(self.corrupt(
                    guard,
                    head,
                    tail,
                    "a padding record that does not end the ring",
                ));
            }
            used = span;
            off = 0;
        }
        let r = self.rec(off);
        let len = u64::from(r.len.load(Ordering::Relaxed));
        let span = REC_HDR as u64 + round16(len);
        // Under the consumer lock, a record at `head` is READY, or READING when a consumer was
        // killed between marking its claim and advancing `head`: the claim never completed, so
        // the message is still there to deliver.
        let (state, kind) = r.state_kind(Ordering::Acquire);
        if span > cap - off || span > tail - head - used || (state != READY && state != READING) {
            return Err(self.corrupt(
                guard,
                head,
                tail,
                "a record that overruns the ring or is not ready",
            ));
        }
        used += span;
        // SAFETY: `[off + 16, off + 16 + len)` is inside the ring (checked) and belongs to a
        // published record that no producer writes until `reclaim` passes it, which cannot
        // happen while we hold the consumer lock and have not advanced `head`.
        let p = unsafe { self.data().add(off as usize + REC_HDR) };
        let payload = match kind {
            KIND_INLINE => Payload::Inline(p, len as usize),
            KIND_BIG if len == 16 => match self.map_big(p) {
                Ok(payload) => payload,
                Err(e) => {
                    // Skip the record so that it does not block the queue forever.
                    self.consume_locked(guard, used, false, false);
                    return Err(e);
                }
            },
            _ => return Err(self.corrupt(guard, head, tail, "a record of unknown kind")),
        };
        Ok((payload, used, off))
    }

    /// Reads the range an oversized-message record names (its 16 payload bytes at `p`),
    /// checks it against the area and the real file size, and maps it.
    fn map_big(&self, p: *const u8) -> Result<Payload, Error> {
        // SAFETY: `p` points at the 16 payload bytes of a published record in the ring
        // (checked by the caller), 16-aligned: two u64.
        let (start, blen) = unsafe { (p.cast::<u64>().read(), p.cast::<u64>().add(1).read()) };
        let (start, end) = self
            .big_range(start, blen)
            .ok_or_else(|| Error::Corrupted("an oversized message outside its area".into()))?;
        let file_len = nix::sys::stat::fstat(self.region.fd().as_raw_fd())
            .map(|st| st.st_size as u64)
            .unwrap_or(0);
        if end > file_len {
            return Err(Error::Corrupted(
                "an oversized message beyond the end of the file".into(),
            ));
        }
        let map = MmapOptions::new()
            .offset(start)
            .len(blen.max(1) as usize)
            .map_raw(self.region.fd().as_raw_fd())
            .map_err(|source| Error::Core(mp_core::Error::Io { op: "mmap", source }))?;
        Ok(Payload::Big(map, blen as usize))
    }

    /// The page range `[start, end)` of an oversized message of `len` bytes at `start`, if it
    /// lies inside the area that has been handed out.
    fn big_range(&self, start: u64, len: u64) -> Option<(u64, u64)> {
        let m = self.meta();
        let base = m.big_base.load(Ordering::Relaxed);
        let top = m.big_tail.load(Ordering::Relaxed);
        let span = len.max(1).checked_add(PAGE - 1)? / PAGE * PAGE;
        let end = start.checked_add(span)?;
        (start >= base && start % PAGE == 0 && end <= top).then_some((start, end))
    }

    /// The bytes of a payload, in shared memory: only for the zero-copy view of `get_ref`,
    /// which trusts the queue's other processes (see `Queue::get_ref`). Every owned-value
    /// receive goes through [`private_copy`](Self::private_copy) instead.
    pub(crate) fn payload_bytes<'p>(&self, p: &'p Payload) -> &'p [u8] {
        let (ptr, len) = p.raw();
        // SAFETY: the pointer and length were validated by `peek_locked` (or the mapping made
        // by `map_big` is `len` bytes long), and the record stays ours (consumer lock held, or
        // claimed READING) while `p` lives. A process that breaks the protocol may still write
        // the bytes: the callers say so.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// Copies a payload out of shared memory into `scratch`, private and 16-aligned (no
    /// allocation once the thread's buffer has grown to the messages' size), and returns the
    /// copy. The copy is what the caller checks and decodes, so a process that rewrites the
    /// shared bytes after the copy (between the check and the use, say) changes nothing:
    /// DESIGN decision 9, as mp-pipe does it.
    ///
    /// A small payload is copied in relaxed 8-byte atomic loads (no formal data race even
    /// with a peer that writes it meanwhile), a larger one with one `memcpy`.
    pub(crate) fn private_copy<'s>(&self, p: &Payload, scratch: &'s mut Scratch) -> &'s [u8] {
        let (src, len) = p.raw();
        if len <= SMALL_COPY {
            let dst = scratch.small.as_mut_ptr().cast::<u8>();
            let words = len.div_ceil(8);
            // SAFETY: the payload starts 8-aligned (16 bytes into a record at a multiple of 16,
            // or at the page-aligned start of a mapping) and is valid for reads while `p`
            // lives (see `payload_bytes`); rounded up to 8 bytes it stays inside memory of
            // ours: the record's payload is padded to 16 bytes inside the ring, a mapping to
            // a page. An `AtomicU64` over shared memory is sound to read. `small` is our own
            // 16-aligned buffer (first field of an `align(16)` struct) of SMALL_COPY bytes,
            // at least `8 * words`, and the slice covers the `len` bytes copied.
            return unsafe {
                let s = src.cast::<AtomicU64>();
                let d = dst.cast::<u64>();
                for i in 0..words {
                    d.add(i).write((*s.add(i)).load(Ordering::Relaxed));
                }
                std::slice::from_raw_parts(dst, len)
            };
        }
        let buf = scratch
            .big
            .get_or_insert_with(|| SCRATCH.try_with(Cell::take).unwrap_or_default());
        buf.clear();
        buf.reserve(len);
        // SAFETY: `src..src + len` is the payload, valid for reads while `p` lives (see
        // `payload_bytes`); `reserve` made room for `len` bytes in our own buffer, and
        // `set_len` covers exactly the bytes copied. A process that breaks the protocol by
        // writing the shared bytes meanwhile can only make the copy hold wrong bytes, which
        // the caller checks before use.
        unsafe {
            std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), len);
            buf.set_len(len);
        }
        buf.as_slice()
    }

    /// Advances `head` over `used` bytes (a record and the padding record before it, if
    /// any). When `claimed`, the record stays until its guard releases it.
    ///
    /// `simple` says the record is an inline message (no oversized range to free).
    fn consume_locked(&self, guard: &Locked<'_>, used: u64, claimed: bool, simple: bool) {
        let m = self.meta();
        let head = m.head.load(Ordering::Relaxed);
        let reclaim = m.reclaim.load(Ordering::Relaxed);
        let deq = m.dequeued.load(Ordering::Relaxed);
        let new_head = head + used;
        // Journal first, so that a consumer killed between the two stores below is completed
        // by the next holder (Release keeps `j_deq` before `j_head`, both before `head`).
        m.j_deq.store(deq + 1, Ordering::Relaxed);
        m.j_head.store(new_head, Ordering::Release);
        m.head.store(new_head, Ordering::Release);
        // Release: pairs with the Acquire load of `dequeued` in producers checking maxsize.
        m.dequeued.store(deq + 1, Ordering::Release);
        m.j_head.store(0, Ordering::Release);
        if claimed {
            return;
        }
        if simple && reclaim == head {
            // Nothing outstanding before us and nothing to free: the space is free at once.
            // (A consumer killed before this store leaves consumed records behind `head`,
            // which `advance_reclaim` passes later.) Release pairs with the producers' Acquire
            // load of `reclaim`: our reads of the record happened before.
            m.reclaim.store(head + used, Ordering::Release);
        } else {
            self.advance_reclaim(guard, false);
        }
    }

    /// Moves `reclaim` over consumed records, in order: everything behind `head` except
    /// records claimed by zero-copy guards still alive (`READING`). With `dead_too`, also over
    /// records claimed by processes that have died (their guards will never be dropped).
    /// Oversized messages' ranges are punched out of the file as `reclaim` passes them.
    fn advance_reclaim(&self, _guard: &Locked<'_>, dead_too: bool) {
        let m = self.meta();
        let cap = self.capacity;
        let head = m.head.load(Ordering::Relaxed);
        let start = m.reclaim.load(Ordering::Relaxed);
        if !self.span_ok(start, head) {
            return;
        }
        let mut reclaim = start;
        let mut freed_big = false;
        while reclaim < head {
            let off = reclaim & (cap - 1);
            let r = self.rec(off);
            // Acquire pairs with the Release store of DONE in `release` (the guard's reads of
            // the payload happen before we hand the space back).
            let (st, kind) = r.state_kind(Ordering::Acquire);
            if kind == KIND_SKIP && st == DONE {
                // A damaged span marked by `corrupt`: jump it without reading it (it may wrap
                // around the ring's end). It ends where the next record starts.
                let span = r.extra.load(Ordering::Relaxed);
                if span == 0 || span % 16 != 0 || span > head - reclaim {
                    break;
                }
                reclaim += span;
                continue;
            }
            if st == READING {
                // The whole token, pid and start time: a process that was given the dead
                // holder's pid since is not taken for it.
                let holder = r.extra.load(Ordering::Relaxed);
                if !dead_too || ident::is_alive(holder) {
                    break;
                }
            }
            let len = u64::from(r.len.load(Ordering::Relaxed));
            let span = REC_HDR as u64 + round16(len);
            if span > cap - off || span > head - reclaim {
                break;
            }
            if kind == KIND_BIG && len == 16 {
                freed_big |= self.free_big(off);
            }
            reclaim += span;
        }
        if reclaim != start {
            // Release pairs with the producers' Acquire load of `reclaim`.
            m.reclaim.store(reclaim, Ordering::Release);
        }
        if freed_big {
            // Side-channel budget came free: wake the producers that wait, whatever the ring's
            // fill (the hysteresis of `worth_waking_producers` is about ring space). One wake
            // per oversized message at most, next to its page-sized copy. The SeqCst fence
            // pairs with the one a producer makes between counting itself in `p_waiters` and
            // its last try (see `put`), so either it sees the new `big_head` or we see it.
            fence(Ordering::SeqCst);
            if m.p_waiters.load(Ordering::SeqCst) > 0 {
                m.space_seq.fetch_add(1, Ordering::SeqCst);
                futex::wake_all(&m.space_seq);
            }
        }
    }

    /// Frees the range of the oversized record at `off`, which `reclaim` is passing, and
    /// every page below it not freed yet (ranges are handed out in record order, so those
    /// belong to records already passed, or dropped as damage), then moves `big_head` to its
    /// end. Punching comes first: a consumer killed in between leaves `big_head` behind, and
    /// the record behind `reclaim`, so the next consumer does both again. True when
    /// `big_head` moved.
    fn free_big(&self, off: u64) -> bool {
        let m = self.meta();
        // SAFETY: a KIND_BIG record's 16 payload bytes are two u64 (written by its producer),
        // inside the ring (the caller checked the record's span).
        let (start, len) = unsafe {
            let p = self.data().add(off as usize + REC_HDR).cast::<u64>();
            (p.read(), p.add(1).read())
        };
        let Some((start, end)) = self.big_range(start, len) else {
            return false;
        };
        let base = m.big_base.load(Ordering::Relaxed);
        let head = m.big_head.load(Ordering::Relaxed);
        let from = head.max(base).min(start);
        self.punch(from, end - from);
        if end > head {
            // Release: pairs with the producers' Acquire load (the pages are freed first).
            m.big_head.store(end, Ordering::Release);
            return true;
        }
        false
    }

    /// Moves `reclaim` over released records if the consumer lock is free (producers short of
    /// space call this; consumers may be idle).
    fn help_reclaim(&self) {
        let m = self.meta();
        if m.reclaim.load(Ordering::Relaxed) == m.head.load(Ordering::Relaxed) {
            return;
        }
        if let Some(g) = lock::try_lock(&m.c_lock, &m.c_wake) {
            self.advance_reclaim(&g, false);
        }
    }

    /// Slow path for producers short of space: release the records of dead guard holders
    /// (waiting for the consumer lock until `deadline` at most).
    fn reclaim_dead(&self, deadline: Deadline) {
        let m = self.meta();
        if m.reclaim.load(Ordering::Relaxed) == m.head.load(Ordering::Relaxed) {
            return;
        }
        let Some(g) = self.lock_consumer(deadline) else {
            return;
        };
        self.advance_reclaim(&g, true);
        drop(g);
        self.wake_producers();
    }

    /// Skips damage at `head` so that the queue stays usable: `head` moves to `tail` and the
    /// span `[head, tail)` is marked, by a `KIND_SKIP` record written over the damaged header
    /// at `head`, for `reclaim` to jump without reading it. Records before `head` that
    /// zero-copy guards still read are left alone, and stay in order with every span marked
    /// so (another damaged span later gets a marker of its own), so `reclaim` still stops at
    /// each of them.
    fn corrupt(&self, _guard: &Locked<'_>, head: u64, tail: u64, what: &str) -> Error {
        let m = self.meta();
        if !self.span_ok(head, tail) {
            return Error::Corrupted(format!(
                "{what}; the positions (head {head}, tail {tail}) cannot be repaired"
            ));
        }
        let lost = tail - head;
        if lost > 0 {
            // `[head, tail)` holds published records that only the consumer-lock holder (us)
            // reads and no producer writes before `reclaim` passes them; a consumer killed
            // before the store of `head` leaves a marker that the next one writes again.
            let r = self.rec(head & (self.capacity - 1));
            r.len.store(0, Ordering::Relaxed);
            r.extra.store(lost, Ordering::Relaxed);
            r.word
                .store((KIND_SKIP << KIND_SHIFT) | DONE, Ordering::Relaxed);
        }
        // Release: the marker is in place before `head` passes it (for `advance_reclaim`,
        // which reads records below `head`).
        m.head.store(tail, Ordering::Release);
        // How many messages were dropped is unknown: count the queue as empty.
        m.dequeued
            .store(m.enqueued.load(Ordering::Acquire), Ordering::Release);
        Error::Corrupted(format!(
            "{what} at position {head}; {lost} bytes of queued messages were dropped"
        ))
    }
}

/// Decodes a payload into an owned `T`.
pub(crate) fn decode<T: Message>(bytes: &[u8]) -> Result<T, Error> {
    message::decode::<T>(bytes).map_err(Error::Core)
}
