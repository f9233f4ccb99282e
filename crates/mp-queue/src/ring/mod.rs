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
use mp_core::wait::Spin;
use mp_core::{ident, Encode, Message, Region};
use static_assertions::const_assert_eq;

use crate::error::{Error, SpillError};
use crate::lock::{self, Locked};

mod big;
mod get;
mod layout;
mod put;
mod repair;
#[cfg(feature = "async")]
mod wait_async;

pub(crate) use get::{decode, GetFail, Payload, Scratch};
use layout::*;
pub(crate) use layout::{spill_span, Meta, META_SIZE};
pub(crate) use put::PutFail;

/// How long a sleeper waits before it re-checks the world (dead peers, deadlines).
const NAP: Duration = Duration::from_millis(50);

/// The ring, mapped in this process.
#[derive(Clone)]
pub(crate) struct Ring {
    region: Region,
    capacity: u64,
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

    /// True when `lo..hi` can be a span of the ring: ordered, at most the capacity apart, on
    /// record boundaries (multiples of 16), and more than a capacity below `u64::MAX` (so that
    /// a position plus the span of records after it, at most a capacity, never overflows: no
    /// real queue moves 2^64 bytes). Every position read back from shared memory is checked
    /// with this before it is used to form a pointer or a new position: another process may
    /// have written anything there.
    fn span_ok(&self, lo: u64, hi: u64) -> bool {
        lo <= hi
            && hi - lo <= self.capacity
            && hi <= u64::MAX - self.capacity
            && lo % 16 == 0
            && hi % 16 == 0
    }

    /// Takes the producer lock (waiting until `deadline`: then `None`), repairing what a
    /// producer killed while holding it left.
    fn lock_producer(&self, deadline: Deadline) -> Option<Locked<'_>> {
        let m = self.meta();
        let guard = lock::lock_until(&m.p_lock, &m.p_wake, deadline)?;
        if guard.recovered {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "mp::queue",
                "a dead producer's lock was taken over; its journal was repaired"
            );
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
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "mp::queue",
                "a dead consumer's lock was taken over; its journal was repaired"
            );
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
}
