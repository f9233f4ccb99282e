//! The producer side: placing a record (in place, as a copy of spilled bytes, or as a
//! record naming an oversized message's range) and publishing it through the journal.

use super::*;

/// What `put` could not do.
pub(crate) enum PutFail {
    Full,
    Encode(mp_core::Error),
    Io(mp_core::Error),
}

pub(super) fn corrupted(what: &str) -> PutFail {
    PutFail::Io(mp_core::Error::BadHeader {
        reason: format!("the queue's shared ring is corrupted: {what}"),
    })
}

/// The ring's free space for a record at `tail`: contiguous at `tail`, or after a padding
/// record at the ring's start. One placement rule for a single put and for a batch.
#[derive(Clone, Copy)]
pub(super) struct Space {
    /// `tail`'s offset in the ring.
    pub(super) off: u64,
    /// Bytes from `off` to the ring's end (a padding record there takes this much).
    pub(super) contig: u64,
    /// Free bytes usable at `off`.
    pub(super) at_tail: u64,
    /// Free bytes usable at the ring's start, after the padding record.
    pub(super) at_start: u64,
}

impl Space {
    /// The space of a ring of `cap` bytes whose records between `reclaim` and `tail` are in
    /// use (a span already checked with `span_ok`).
    pub(super) fn new(cap: u64, tail: u64, reclaim: u64) -> Space {
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
    pub(super) fn place(&self, need: u64) -> Option<(u64, u64)> {
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
    pub(super) fn place_any(&self) -> Option<(u64, u64, u64)> {
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
    // ---------------------------------------------------------------- producer side

    /// Puts `value`, waiting for room until `deadline`.
    pub(crate) fn put<T: Encode>(&self, value: &T, deadline: Deadline) -> Result<(), PutFail> {
        let m = self.meta();
        let mut spilled: Option<AlignedVec<ALIGN>> = None;
        // Made on the first wait only: a put that finds room reads no clock.
        let mut spin: Option<Spin> = None;
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
            let spin = spin.get_or_insert_with(|| Spin::new(&m.space_seq, deadline));
            if spin.spin() {
                // Wait for a consumer to move `head`, as the wait policy allows.
                let head = m.head.load(Ordering::Relaxed);
                while m.head.load(Ordering::Relaxed) == head && spin.spin() {}
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
    pub(super) fn try_put_locked<T: Encode>(
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
    pub(super) fn fresh_reclaim(&self) -> u64 {
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
    pub(super) fn place_one<T: Encode>(
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
    pub(super) fn commit(&self, tail: u64, enq: u64, off: u64, pad: u64, used: u64) {
        if pad > 0 {
            self.write_pad(off, pad);
        }
        self.publish(enq, tail + pad + used, 1);
    }

    /// Publishes the `count` records written between `tail` and `new_tail` (`enq` items were
    /// in the queue's count before them).
    pub(super) fn publish(&self, enq: u64, new_tail: u64, count: u32) {
        let m = self.meta();
        // The journal first (Release keeps `pending_enq` and `pending_count` before
        // `pending_tail`, and all three before the stores below, also for a process that reads
        // them after we are killed).
        m.pending_enq.store(enq, Ordering::Relaxed);
        m.pending_count.store(count, Ordering::Relaxed);
        m.pending_tail.store(new_tail, Ordering::Release);
        // A count that only a hostile peer brings near `u64::MAX`: it wraps, never panics.
        m.enqueued
            .store(enq.wrapping_add(u64::from(count)), Ordering::Release);
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

    pub(super) fn write_rec(&self, off: u64, len: u32, kind: u32) {
        self.rec(off).init(READY, kind, len);
    }

    pub(super) fn write_pad(&self, off: u64, span: u64) {
        self.rec(off)
            .init(DONE, KIND_PAD, (span - REC_HDR as u64) as u32);
    }

    pub(super) fn copy_in(&self, off: u64, bytes: &[u8]) {
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
}
