//! The consumer side: waiting for a record, checking and decoding it under the consumer lock,
//! zero-copy claims and their release, and the private copy a receive decodes.

use super::*;

/// The largest private receive buffer a thread keeps between messages (see
/// [`Ring::private_copy`]); a larger message gets a buffer of its own, freed after it.
pub(super) const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    /// The calling thread's private receive buffer: every owned-value receive of a message
    /// larger than [`SMALL_COPY`] copies it here (one `memcpy`) and checks and decodes this
    /// copy, never the shared bytes.
    static SCRATCH: Cell<AlignedVec<ALIGN>> = Cell::new(AlignedVec::new());
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
pub(super) const SMALL_COPY: usize = 256;

/// Where a receive copies its message (see [`Ring::private_copy`]): a 16-aligned buffer on
/// the stack for small messages, else the calling thread's receive buffer, taken out of its
/// thread-local on first use (once for a whole batch) and put back when this is dropped,
/// unless it grew past [`SCRATCH_KEEP`]. Taken out rather than borrowed, so that a
/// deserializer that itself receives from a queue finds an empty buffer and uses its own.
#[repr(C, align(16))]
pub(crate) struct Scratch {
    pub(super) small: [std::mem::MaybeUninit<u8>; SMALL_COPY],
    pub(super) big: Option<AlignedVec<ALIGN>>,
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
    pub(super) fn raw(&self) -> (*const u8, usize) {
        match self {
            Payload::Inline(ptr, len) => (*ptr, *len),
            Payload::Big(map, len) => (map.as_ptr(), *len),
        }
    }
}

/// What `get` could not do.
pub(crate) enum GetFail {
    Empty,
    Bad(Error),
}

impl Ring {
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
    pub(super) fn wait_for_data<R>(
        &self,
        deadline: Deadline,
        mut take: impl FnMut(&Ring, &Locked<'_>) -> Result<R, Error>,
    ) -> Result<R, GetFail> {
        let m = self.meta();
        // Made on the first wait only: a get that finds a message reads no clock.
        let mut spin: Option<Spin> = None;
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
            let spin = spin.get_or_insert_with(|| Spin::new(&m.data_seq, deadline));
            if spin.spin() {
                // Spin on the producer's `tail` without the lock, as the wait policy allows:
                // cheap while a producer is about to publish.
                while m.tail.load(Ordering::Relaxed) == m.head.load(Ordering::Relaxed)
                    && spin.spin()
                {}
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

    pub(super) fn has_data_locked(&self) -> bool {
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
    pub(super) fn peek_locked(&self, guard: &Locked<'_>) -> Result<(Payload, u64, u64), Error> {
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
    pub(super) fn consume_locked(
        &self,
        guard: &Locked<'_>,
        used: u64,
        claimed: bool,
        simple: bool,
    ) {
        let m = self.meta();
        let head = m.head.load(Ordering::Relaxed);
        let reclaim = m.reclaim.load(Ordering::Relaxed);
        let deq = m.dequeued.load(Ordering::Relaxed);
        let new_head = head + used;
        // `dequeued` is a count that only a hostile peer brings near `u64::MAX`: it wraps
        // (`len` saturates), it never panics.
        let deq_next = deq.wrapping_add(1);
        // Journal first, so that a consumer killed between the two stores below is completed
        // by the next holder (Release keeps `j_deq` before `j_head`, both before `head`).
        m.j_deq.store(deq_next, Ordering::Relaxed);
        m.j_head.store(new_head, Ordering::Release);
        m.head.store(new_head, Ordering::Release);
        // Release: pairs with the Acquire load of `dequeued` in producers checking maxsize.
        m.dequeued.store(deq_next, Ordering::Release);
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
}

/// Decodes a payload into an owned `T`.
pub(crate) fn decode<T: Message>(bytes: &[u8]) -> Result<T, Error> {
    message::decode::<T>(bytes).map_err(Error::Core)
}
