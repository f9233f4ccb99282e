//! Recovery: what a producer or consumer killed with the lock left (the journal), reclaiming
//! records released by zero-copy guards (dead ones too), and skipping damaged spans.

use super::*;

impl Ring {
    /// Run by a producer that took the lock over from a dead one. If it died inside `commit`,
    /// `enqueued` is set from the journal (whether or not `tail` was published); if it died
    /// after allocating an oversized message's range but before publishing it, the range is
    /// freed and given back.
    pub(super) fn repair_producer(&self) {
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
    pub(super) fn repair_consumer(&self) {
        let m = self.meta();
        let jh = m.j_head.load(Ordering::Acquire);
        if jh != 0 {
            m.head.store(jh, Ordering::Release);
            m.dequeued
                .store(m.j_deq.load(Ordering::Relaxed), Ordering::Release);
            m.j_head.store(0, Ordering::Release);
        }
    }

    /// Moves `reclaim` over consumed records, in order: everything behind `head` except
    /// records claimed by zero-copy guards still alive (`READING`). With `dead_too`, also over
    /// records claimed by processes that have died (their guards will never be dropped).
    /// Oversized messages' ranges are punched out of the file as `reclaim` passes them.
    pub(super) fn advance_reclaim(&self, _guard: &Locked<'_>, dead_too: bool) {
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

    /// Moves `reclaim` over released records if the consumer lock is free (producers short of
    /// space call this; consumers may be idle).
    pub(super) fn help_reclaim(&self) {
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
    pub(super) fn reclaim_dead(&self, deadline: Deadline) {
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
    pub(super) fn corrupt(&self, _guard: &Locked<'_>, head: u64, tail: u64, what: &str) -> Error {
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
        #[cfg(feature = "tracing")]
        tracing::warn!(target: "mp::queue", what, head, lost, "a damaged span of the queue was skipped");
        Error::Corrupted(format!(
            "{what} at position {head}; {lost} bytes of queued messages were dropped"
        ))
    }
}

/// The positions and counters, for diagnosing a stuck queue (a `Queue`'s `{:?}` shows them).
impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.meta();
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .field("tail", &m.tail.load(Ordering::SeqCst))
            .field("head", &m.head.load(Ordering::SeqCst))
            .field("reclaim", &m.reclaim.load(Ordering::SeqCst))
            .field(
                "p_cached_reclaim",
                &m.p_cached_reclaim.load(Ordering::SeqCst),
            )
            .field("c_cached_tail", &m.c_cached_tail.load(Ordering::SeqCst))
            .field("enqueued", &m.enqueued.load(Ordering::SeqCst))
            .field("dequeued", &m.dequeued.load(Ordering::SeqCst))
            .field(
                "p_lock",
                &format_args!("{:#x}", m.p_lock.load(Ordering::SeqCst)),
            )
            .field(
                "c_lock",
                &format_args!("{:#x}", m.c_lock.load(Ordering::SeqCst)),
            )
            .field("p_waiters", &m.p_waiters.load(Ordering::SeqCst))
            .field("c_waiters", &m.c_waiters.load(Ordering::SeqCst))
            .field("woken", &m.woken.load(Ordering::SeqCst))
            .field("big_tail", &m.big_tail.load(Ordering::SeqCst))
            .field("big_head", &m.big_head.load(Ordering::SeqCst))
            .field("max_spill", &m.max_spill.load(Ordering::SeqCst))
            .finish()
    }
}
