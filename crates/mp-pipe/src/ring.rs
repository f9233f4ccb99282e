//! One direction of a local pipe: a single-producer single-consumer byte ring in shared memory.
//!
//! The algorithm is the classic SPSC ring with monotonic byte positions (Lamport's queue, as in
//! the Linux `kfifo` and LMAX's sequence counters): the producer owns `tail`, the consumer owns
//! `head`, and `tail - head` bytes are in flight. Positions only grow (64-bit, so they never
//! wrap in practice); a position maps to offset `pos & (cap - 1)` of the data area.
//!
//! The data area holds *records*, each a 16-byte header (`len: u32`, `tag: u32`, `total: u64`,
//! little-endian) followed by `len` payload bytes padded to 16. Records never wrap around the
//! end of the data area: when one does not fit before the end, the producer writes a `PAD`
//! record that fills the rest and starts again at offset 0. Every record starts at a multiple
//! of 16, so every payload is aligned for rkyv's checked access ([`mp_core::message::ALIGN`]).
//! A message larger than half the ring travels as a `FIRST`, `MORE`..., `LAST` sequence of
//! fragments, streamed while the consumer drains them.
//!
//! Ordering: the producer writes a record's bytes, then stores `tail` (Release, for the
//! bytes) and issues a SeqCst fence (the first half of the Dekker handshake below); the
//! consumer loads `tail` with Acquire (pairs with that store) before reading the record. The
//! consumer stores `head` after copying a record out (SeqCst, a Release store for the bytes it
//! no longer reads); the producer loads `head` with Acquire (pairs with it) before reusing
//! that space.
//!
//! Sleeping: a side about to block stores its `*_armed` word (SeqCst) and then re-checks the
//! positions (SeqCst); the other side stores its position (SeqCst, or Release then a SeqCst
//! fence) and then loads the armed word. In the single total order of these SeqCst operations
//! and fences one of the two sees the other's store, so either the sleeper sees the new
//! position and does not sleep, or the other side sees `armed` and sends a wake-up token
//! through the socket (see `local/mod.rs`). This is the store-buffering (Dekker) pattern; SeqCst
//! on both sides forbids the outcome where both miss.
//!
//! A peer that breaks the protocol (a buggy or hostile process mapping the same region) can
//! only make us read wrong bytes: positions and headers are checked against the ring's bounds
//! before use, payloads are copied out (never borrowed) and then validated by the caller.

use std::cell::Cell;
use std::ptr::NonNull;

// The loom shim: std's atomics in the normal build, loom's under `cfg(loom)` (the ring model
// at the end of this file).
use mp_core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use static_assertions::assert_eq_size;

use crate::error::{Error, Result};

/// Size of a record header.
pub(crate) const RECORD_HEADER: usize = 16;

/// A whole message in one record.
pub(crate) const TAG_WHOLE: u32 = 0x6d70_0001;
/// The first fragment of a large message; `total` is the message's size.
pub(crate) const TAG_FIRST: u32 = 0x6d70_0002;
/// A middle fragment.
pub(crate) const TAG_MORE: u32 = 0x6d70_0003;
/// The last fragment.
pub(crate) const TAG_LAST: u32 = 0x6d70_0004;
/// Filler up to the end of the data area.
pub(crate) const TAG_PAD: u32 = 0x6d70_0005;

/// The control block of one ring, in shared memory. Every field is an atomic; the pads keep
/// the producer's word, the consumer's word and each armed word on cache lines of their own.
#[repr(C, align(64))]
pub(crate) struct RingCtl {
    /// Bytes ever published by the producer. Written only by the producer.
    tail: AtomicU64,
    /// The CPU the producer last published from, plus one (0: not known). Written only by
    /// the producer; for the consumer's wait policy, a hint that no correctness rests on.
    tx_cpu: AtomicU32,
    _pad0: [u8; 52],
    /// Bytes ever consumed by the consumer. Written only by the consumer.
    head: AtomicU64,
    /// The CPU the consumer last consumed on, plus one (0: not known); as `tx_cpu`.
    rx_cpu: AtomicU32,
    _pad1: [u8; 52],
    /// 1 while the consumer is (about to be) asleep in `ppoll` waiting for data.
    rx_armed: AtomicU32,
    _pad2: [u8; 60],
    /// 1 while the producer is (about to be) asleep waiting for space.
    tx_armed: AtomicU32,
    _pad3: [u8; 60],
}
// Loom's atomics are larger: the layout is pinned for the real ones.
#[cfg(not(loom))]
assert_eq_size!(RingCtl, [u8; 256]);
const _: () = assert!(std::mem::align_of::<RingCtl>() == 64);

#[cfg(loom)]
impl RingCtl {
    /// A control block in ordinary memory, for the loom model (the real ones are zeroed
    /// shared memory).
    pub(crate) fn new() -> RingCtl {
        RingCtl {
            tail: AtomicU64::new(0),
            tx_cpu: AtomicU32::new(0),
            _pad0: [0; 52],
            head: AtomicU64::new(0),
            rx_cpu: AtomicU32::new(0),
            _pad1: [0; 52],
            rx_armed: AtomicU32::new(0),
            _pad2: [0; 60],
            tx_armed: AtomicU32::new(0),
            _pad3: [0; 60],
        }
    }
}

/// Size of a control block.
pub(crate) const CTL_SIZE: usize = std::mem::size_of::<RingCtl>();

/// A record the consumer found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// One of the `TAG_*` constants (never `PAD`).
    pub(crate) tag: u32,
    /// Payload bytes in this record.
    pub(crate) len: usize,
    /// For `FIRST` (and `WHOLE`), the size of the whole message.
    pub(crate) total: u64,
    /// The payload's first byte (16-aligned, inside the data area).
    pub(crate) ptr: *const u8,
    /// The position just after this record: store it as `head` to consume the record (and
    /// any padding before it).
    pub(crate) next: u64,
}

/// A place the producer may write one record into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// Where the record (its header) starts.
    start: u64,
    /// Position of a `PAD` record to write first, if the record starts at offset 0 after one.
    pad_at: Option<u64>,
    /// The payload's first byte (16-aligned).
    pub(crate) ptr: *mut u8,
    /// The most payload bytes that fit.
    pub(crate) cap: usize,
}

/// A process-local view of one ring. It does not own the mapping: the `LocalEnd` that holds
/// it keeps the region alive.
pub(crate) struct Ring {
    ctl: NonNull<RingCtl>,
    data: *mut u8,
    cap: usize,
    /// The producer's last reading of `head`. `head` only grows, so this is a lower bound:
    /// room it shows is really there, and only when it shows too little is `head` read again
    /// (one cache miss fewer per message while the ring has room).
    seen_head: Cell<u64>,
    /// The consumer's last reading of `tail`, a lower bound likewise: records below it are
    /// published (it was read with an acquiring load), so `tail` is read again only when the
    /// consumer has caught up with it.
    seen_tail: Cell<u64>,
}

const fn round16(n: usize) -> usize {
    (n + 15) & !15
}

impl Ring {
    /// A view of the ring whose control block is at `ctl` and data area at `data`.
    ///
    /// # Safety
    /// - `ctl` points to a `RingCtl` (zeroed or in use by a peer following this protocol) in a
    ///   shared mapping, 64-aligned, and `data` to `cap` bytes of the same mapping, 64-aligned;
    /// - `cap` is a power of two of at least 256;
    /// - the mapping outlives the `Ring` (its owner keeps the region alive);
    /// - at most one process at a time produces into the ring, and at most one consumes.
    pub(crate) unsafe fn new(ctl: *mut RingCtl, data: *mut u8, cap: usize) -> Ring {
        debug_assert!(cap.is_power_of_two() && cap >= 256);
        debug_assert_eq!(ctl as usize % 64, 0);
        debug_assert_eq!(data as usize % 64, 0);
        Ring {
            // SAFETY: the caller passes a pointer into a mapping, never null.
            ctl: unsafe { NonNull::new_unchecked(ctl) },
            data,
            cap,
            seen_head: Cell::new(0),
            seen_tail: Cell::new(0),
        }
    }

    fn ctl(&self) -> &RingCtl {
        // SAFETY: `new`'s contract: the control block lives in the mapping for as long as the
        // ring, and it is made of atomics only, so a shared reference is sound while the peer
        // changes it (through atomics only).
        unsafe { self.ctl.as_ref() }
    }

    /// The largest payload sent as one `WHOLE` record; larger messages are fragmented.
    pub(crate) fn max_whole(&self) -> usize {
        self.cap / 2 - RECORD_HEADER
    }

    /// Size of the data area.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// The consumer's word to arm before sleeping.
    pub(crate) fn rx_armed(&self) -> &AtomicU32 {
        &self.ctl().rx_armed
    }

    /// The producer's word to arm before sleeping.
    pub(crate) fn tx_armed(&self) -> &AtomicU32 {
        &self.ctl().tx_armed
    }

    /// The CPU the producer last published from, plus one (0: not known): the peer a
    /// consumer waits for ([`mp_core::wait::Spin::with_peer`]). Any value is harmless.
    pub(crate) fn producer_cpu(&self) -> u32 {
        self.ctl().tx_cpu.load(Ordering::Relaxed)
    }

    /// The CPU the consumer last consumed on, plus one (0: not known): the peer a producer
    /// waiting for room waits for.
    pub(crate) fn consumer_cpu(&self) -> u32 {
        self.ctl().rx_cpu.load(Ordering::Relaxed)
    }

    /// True when a record is waiting (consumer side; cheap enough for spinning).
    pub(crate) fn has_data(&self) -> bool {
        let c = self.ctl();
        // Relaxed: the consumer is the only writer of `head`.
        let head = c.head.load(Ordering::Relaxed);
        if self.seen_tail.get() > head {
            return true;
        }
        // Ask for the line of the next record's header at the same time as `tail`: while the
        // consumer waits, both lines are the producer's, and fetching them one after the
        // other (first `tail`, then, in `peek`, the header) would double the wait once data
        // comes. A prefetch is a hint, not a read: it races with nothing.
        #[cfg(target_arch = "x86_64")]
        {
            let off = (head as usize) & (self.cap - 1);
            // SAFETY: `off` is below `cap`, so the address is inside the data area; prefetch
            // never faults and reads nothing into the program.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.data.add(off).cast::<i8>(),
                )
            };
        }
        // SeqCst: the second half of the consumer's Dekker handshake (see the module doc);
        // it also acquires the producer's store of `tail`.
        let tail = c.tail.load(Ordering::SeqCst);
        self.seen_tail.set(tail);
        tail != head
    }

    // ---- producer side ------------------------------------------------------------------

    /// A slot for a record of at least `min_payload` bytes, or `None` when the ring has no
    /// such room now. When several places fit, the one at the tail is preferred unless the
    /// room after wrapping is larger and the tail's is small.
    #[inline]
    pub(crate) fn slot(&self, min_payload: usize) -> Result<Option<Slot>> {
        let c = self.ctl();
        // Relaxed: the producer is the only writer of `tail`.
        let tail = c.tail.load(Ordering::Relaxed);
        let need = round16(min_payload) + RECORD_HEADER;
        let seen = self.seen_head.get();
        // A stale reading (another process produced into this ring since) is simply re-read.
        if tail.wrapping_sub(seen) <= self.cap as u64 {
            if let Ok(Some(slot)) = self.slot_with(tail, seen, need) {
                return Ok(Some(slot));
            }
        }
        // SeqCst (an Acquire load and more): pairs with the consumer's SeqCst store of `head`
        // in `consume`, so the consumer has finished copying out the bytes we are about to
        // overwrite; SeqCst because a producer about to sleep re-checks for room here after
        // arming `tx_armed` (the second half of its Dekker handshake).
        let head = c.head.load(Ordering::SeqCst);
        self.seen_head.set(head);
        self.slot_with(tail, head, need)
    }

    /// [`slot`](Self::slot) for given positions.
    #[inline]
    fn slot_with(&self, tail: u64, head: u64, need: usize) -> Result<Option<Slot>> {
        let used = tail.wrapping_sub(head);
        if used > self.cap as u64 || tail % 16 != 0 {
            return Err(Error::Protocol(format!(
                "pipe ring corrupted (tail {tail}, head {head}, capacity {})",
                self.cap
            )));
        }
        let free = self.cap - used as usize;
        let off = (tail as usize) & (self.cap - 1);
        let to_end = self.cap - off;
        let at_tail = free.min(to_end);
        let after_wrap = free.saturating_sub(to_end);
        let use_tail = at_tail >= need && (at_tail >= after_wrap || at_tail >= 4096);
        if use_tail {
            return Ok(Some(Slot {
                start: tail,
                pad_at: None,
                // SAFETY: off + RECORD_HEADER <= off + at_tail <= cap: inside the data area.
                ptr: unsafe { self.data.add(off + RECORD_HEADER) },
                cap: at_tail - RECORD_HEADER,
            }));
        }
        if after_wrap >= need {
            return Ok(Some(Slot {
                start: tail + to_end as u64,
                pad_at: Some(tail),
                // SAFETY: RECORD_HEADER < after_wrap <= cap: inside the data area.
                ptr: unsafe { self.data.add(RECORD_HEADER) },
                cap: after_wrap - RECORD_HEADER,
            }));
        }
        Ok(None)
    }

    /// Publishes a record of `len` payload bytes (already written at `slot.ptr`) and returns
    /// true when the consumer is asleep and needs a wake-up token.
    ///
    /// # Safety
    /// `slot` came from [`slot`](Self::slot) on this ring with no publish in between, and
    /// `len <= slot.cap`.
    pub(crate) unsafe fn publish(&self, slot: &Slot, tag: u32, len: usize, total: u64) -> bool {
        debug_assert!(len <= slot.cap);
        if let Some(pad) = slot.pad_at {
            let off = (pad as usize) & (self.cap - 1);
            // SAFETY: the slot was computed with the pad's bytes free (between tail and the end
            // of the data area), so the producer owns them until it publishes.
            unsafe { self.write_header(off, TAG_PAD, (self.cap - off - RECORD_HEADER) as u32, 0) };
        }
        let off = (slot.start as usize) & (self.cap - 1);
        // SAFETY: the slot's header bytes are free space owned by the producer (see `slot`).
        unsafe { self.write_header(off, tag, len as u32, total) };
        let next = slot.start + (RECORD_HEADER + round16(len)) as u64;
        let c = self.ctl();
        note_cpu(&c.tx_cpu);
        // Release: releases the record's bytes to the consumer (pairs with the SeqCst load of
        // `tail` in `peek`/`has_data`). The SeqCst fence makes it the first half of the
        // producer's Dekker handshake with `rx_armed`: the consumer stores 1 (SeqCst) before
        // it loads `tail` (SeqCst), so either that load follows our fence in the total order
        // and sees `next`, or the store of 1 precedes the fence and our load below sees it.
        // A store and a fence rather than one SeqCst swap: the swap would wait for the
        // record's cache line to arrive before even asking for `tail`'s; behind a fence both
        // are fetched at once (a round trip across cores: ~510 -> ~425 ns).
        c.tail.store(next, Ordering::Release);
        fence(Ordering::SeqCst);
        // Second half of the handshake: after the fence, sees the consumer's store of 1.
        c.rx_armed.load(Ordering::SeqCst) != 0 && c.rx_armed.swap(0, Ordering::SeqCst) != 0
    }

    /// # Safety
    /// The 16 bytes at `off` are owned by the producer (free space).
    unsafe fn write_header(&self, off: usize, tag: u32, len: u32, total: u64) {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&tag.to_le_bytes());
        h[8..16].copy_from_slice(&total.to_le_bytes());
        // SAFETY: off is 16-aligned and below cap, so off + 16 <= cap; the caller owns them.
        unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), self.data.add(off), RECORD_HEADER) };
    }

    /// True when a record of `min_payload` bytes fits now (producer side, for spinning).
    pub(crate) fn has_room(&self, min_payload: usize) -> bool {
        matches!(self.slot(min_payload), Ok(Some(_)) | Err(_))
    }

    // ---- consumer side ------------------------------------------------------------------

    /// The first record waiting, skipping padding, or `None` when the ring is empty.
    #[inline]
    pub(crate) fn peek(&self) -> Result<Option<Record>> {
        let c = self.ctl();
        // Relaxed: the consumer is the only writer of `head`.
        let mut head = c.head.load(Ordering::Relaxed);
        let mut tail = self.seen_tail.get();
        if tail <= head || tail.wrapping_sub(head) > self.cap as u64 {
            // SeqCst (an Acquire load and more): pairs with the producer's SeqCst store in
            // `publish`, so the records below `tail` are visible.
            tail = c.tail.load(Ordering::SeqCst);
            self.seen_tail.set(tail);
        }
        loop {
            if head == tail {
                // Caught up with the last reading: read `tail` again (SeqCst, as above).
                tail = c.tail.load(Ordering::SeqCst);
                self.seen_tail.set(tail);
                if head == tail {
                    return Ok(None);
                }
            }
            let avail = tail.wrapping_sub(head);
            if avail > self.cap as u64 || head % 16 != 0 || avail < RECORD_HEADER as u64 {
                return Err(self.corrupt(head, tail));
            }
            let off = (head as usize) & (self.cap - 1);
            let to_end = self.cap - off;
            let mut h = [0u8; RECORD_HEADER];
            // SAFETY: off is 16-aligned and below cap, so the 16 bytes are inside the data
            // area; they are published (below `tail`) and not yet consumed, so the producer
            // does not write them. A misbehaving peer could, and then we copy wrong bytes,
            // which the checks below and the caller's validation reject.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data.add(off), h.as_mut_ptr(), RECORD_HEADER)
            };
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let tag = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let total = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
            if tag == TAG_PAD {
                // A producer publishes a padding record together with the record after it, so
                // a padding record that ends the published bytes is corruption (left alone, it
                // would make the receiver spin: data that is never a message).
                if (to_end as u64) >= avail {
                    return Err(self.corrupt(head, tail));
                }
                head += to_end as u64;
                continue;
            }
            if !matches!(tag, TAG_WHOLE | TAG_FIRST | TAG_MORE | TAG_LAST) {
                return Err(Error::Protocol(format!(
                    "pipe ring holds an unknown record tag {tag:#x}"
                )));
            }
            // Checked: `len` comes from shared memory, and on a 32-bit target rounding a length
            // near `usize::MAX` up would wrap to a small footprint.
            let Some(footprint) = len.checked_add(RECORD_HEADER + 15).map(|n| n & !15) else {
                return Err(self.corrupt(head, tail));
            };
            if footprint > to_end || footprint as u64 > avail {
                return Err(self.corrupt(head, tail));
            }
            return Ok(Some(Record {
                tag,
                len,
                total,
                // SAFETY: off + 16 <= off + footprint <= cap: inside the data area.
                ptr: unsafe { self.data.add(off + RECORD_HEADER) },
                next: head + footprint as u64,
            }));
        }
    }

    fn corrupt(&self, head: u64, tail: u64) -> Error {
        Error::Protocol(format!(
            "pipe ring corrupted (head {head}, tail {tail}, capacity {})",
            self.cap
        ))
    }

    /// Consumes every record before `next` and returns true when the producer is asleep
    /// waiting for room and needs a wake-up token.
    pub(crate) fn consume(&self, next: u64) -> bool {
        let c = self.ctl();
        note_cpu(&c.rx_cpu);
        // SeqCst: releases the consumed bytes to the producer (pairs with the SeqCst load of
        // `head` in `slot`) and is the first half of the consumer's Dekker handshake with
        // `tx_armed`.
        c.head.store(next, Ordering::SeqCst);
        // Loom treats SeqCst loads and stores as AcqRel (its README, "Limitations") and only
        // SeqCst fences as SeqCst; in the C++ model a SeqCst store then a SeqCst load forbid
        // the outcome this fence forbids, so the model checks the same handshake.
        #[cfg(loom)]
        fence(Ordering::SeqCst);
        // SeqCst: pairs with the producer's SeqCst store of 1 before it re-checks for room.
        c.tx_armed.load(Ordering::SeqCst) != 0 && c.tx_armed.swap(0, Ordering::SeqCst) != 0
    }
}

/// Records this thread's CPU in `word` (a side's own word, on its own cache line: a store only
/// when the thread moved).
#[inline]
fn note_cpu(word: &AtomicU32) {
    #[cfg(not(loom))]
    {
        let cpu = mp_core::wait::cpu_hint();
        if word.load(Ordering::Relaxed) != cpu {
            word.store(cpu, Ordering::Relaxed);
        }
    }
    #[cfg(loom)]
    let _ = word;
}

/// Copies `len` bytes of a record's payload out of the ring.
///
/// # Safety
/// `rec` was returned by [`Ring::peek`] on a ring that is still mapped and not yet consumed
/// past it, and `dst` is valid for `rec.len` bytes of writes.
pub(crate) unsafe fn copy_out(rec: &Record, dst: *mut u8) {
    // SAFETY: `peek` checked that the payload lies inside the data area and below `tail`; the
    // producer does not write published, unconsumed bytes (a misbehaving one can only make us
    // copy wrong bytes, which the caller validates).
    unsafe { std::ptr::copy_nonoverlapping(rec.ptr, dst, rec.len) }
}

/// The loom model of the ring's publish and wake-up (docs/reliability.md, "Model checking").
/// Run with `RUSTFLAGS="--cfg loom" cargo test -p mp-pipe --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;
    use mp_core::sync::futex;

    const CAP: usize = 256;
    /// Payload size: a record takes 96 bytes, so the third message waits for room and then
    /// wraps behind a `PAD` record.
    const LEN: usize = 80;
    const MESSAGES: u8 = 3;

    /// The socket of one end, as far as wake-ups go: tokens written by the peer.
    struct Socket {
        tokens: AtomicU32,
    }

    impl Socket {
        /// `sys::send_token`.
        fn send_token(&self) {
            self.tokens.fetch_add(1, Ordering::Release);
            futex::wake(&self.tokens, 1);
        }

        /// `sys::drain_tokens`.
        fn drain(&self) {
            self.tokens.swap(0, Ordering::AcqRel);
        }

        /// `sys::wait_readable` without a deadline: sleeps until a token is there.
        fn wait_readable(&self) {
            while self.tokens.load(Ordering::Acquire) == 0 {
                futex::wait(&self.tokens, 0, None);
            }
        }
    }

    #[repr(C, align(64))]
    struct Data(std::cell::UnsafeCell<[u8; CAP]>);

    /// The shared region: a control block, a data area, and each end's socket.
    struct Shm {
        ctl: RingCtl,
        data: Data,
        /// The consumer's socket (the producer writes tokens to it).
        rx_sock: Socket,
        /// The producer's socket.
        tx_sock: Socket,
    }

    // SAFETY: the data area is written by the producer only in free space and read by the
    // consumer only below `tail`, the ring protocol under model.
    unsafe impl Sync for Shm {}

    impl Shm {
        fn ring(&self) -> Ring {
            // SAFETY: both parts are 64-aligned and live as long as the `Arc` the caller holds;
            // CAP is a power of two of at least 256; one producer and one consumer.
            unsafe {
                Ring::new(
                    &self.ctl as *const RingCtl as *mut RingCtl,
                    self.data.0.get().cast(),
                    CAP,
                )
            }
        }
    }

    /// `LocalEnd::block` without the spin and the peer-gone checks: arm, re-check, sleep on
    /// the socket, as many times as it takes.
    fn block(sock: &Socket, armed: &AtomicU32, cond: &dyn Fn() -> bool) {
        loop {
            sock.drain();
            armed.store(1, Ordering::SeqCst);
            // As in `consume`: loom models the SeqCst store-then-load only through a fence.
            fence(Ordering::SeqCst);
            if cond() {
                armed.swap(0, Ordering::SeqCst);
                return;
            }
            sock.wait_readable();
        }
    }

    /// A producer sends three messages through a ring with room for two (the third waits for
    /// room and wraps behind a padding record) and a consumer takes them, both sleeping when
    /// they cannot go on, as `LocalEnd` does. The sleeps end only by a token, so a lost
    /// wake-up on either side is a deadlock. Proves: every message is received once, whole
    /// and in order; neither side sleeps through the other's progress (the Dekker handshake
    /// of `publish`/`has_data` and `consume`/`has_room`); the ring ends empty.
    #[test]
    fn loom_ring_publish_and_wakeup() {
        loom::model(|| {
            let shm = Arc::new(Shm {
                ctl: RingCtl::new(),
                data: Data(std::cell::UnsafeCell::new([0; CAP])),
                rx_sock: Socket {
                    tokens: AtomicU32::new(0),
                },
                tx_sock: Socket {
                    tokens: AtomicU32::new(0),
                },
            });
            let producer = {
                let shm = shm.clone();
                loom::thread::spawn(move || {
                    let ring = shm.ring();
                    for i in 0..MESSAGES {
                        let slot = loop {
                            if let Some(s) = ring.slot(LEN).unwrap() {
                                break s;
                            }
                            block(&shm.tx_sock, ring.tx_armed(), &|| ring.has_room(LEN));
                        };
                        assert!(slot.cap >= LEN);
                        // SAFETY: the slot is free space of the ring, ours until published.
                        unsafe { std::ptr::write_bytes(slot.ptr, b'a' + i, LEN) };
                        // SAFETY: `slot` came from `ring.slot` just above, LEN <= slot.cap.
                        if unsafe { ring.publish(&slot, TAG_WHOLE, LEN, LEN as u64) } {
                            shm.rx_sock.send_token();
                        }
                    }
                })
            };
            let ring = shm.ring();
            for i in 0..MESSAGES {
                let rec = loop {
                    if let Some(r) = ring.peek().unwrap() {
                        break r;
                    }
                    block(&shm.rx_sock, ring.rx_armed(), &|| ring.has_data());
                };
                assert_eq!((rec.tag, rec.len, rec.total), (TAG_WHOLE, LEN, LEN as u64));
                let mut buf = [0u8; LEN];
                // SAFETY: `rec` came from `peek` and is not consumed yet; `buf` holds LEN.
                unsafe { copy_out(&rec, buf.as_mut_ptr()) };
                assert!(buf.iter().all(|&b| b == b'a' + i), "message {i}: {buf:?}");
                if ring.consume(rec.next) {
                    shm.tx_sock.send_token();
                }
            }
            producer.join().unwrap();
            assert!(ring.peek().unwrap().is_none());
            assert_eq!(
                shm.ctl.tail.load(Ordering::Relaxed),
                shm.ctl.head.load(Ordering::Relaxed)
            );
        });
    }
}
