//! The side channel for oversized messages: page-aligned ranges of the file past the region,
//! allocated before they are written, mapped to be read, punched out when reclaimed.

use super::*;

impl Ring {
    pub(super) fn put_big(&self, off: u64, bytes: &[u8]) -> Result<(), mp_core::Error> {
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
    pub(super) fn allocate(&self, start: u64, span: u64) -> Result<(), mp_core::Error> {
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

    /// Reads the range an oversized-message record names (its 16 payload bytes at `p`),
    /// checks it against the area and the real file size, and maps it.
    pub(super) fn map_big(&self, p: *const u8) -> Result<Payload, Error> {
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
    pub(super) fn big_range(&self, start: u64, len: u64) -> Option<(u64, u64)> {
        let m = self.meta();
        let base = m.big_base.load(Ordering::Relaxed);
        let top = m.big_tail.load(Ordering::Relaxed);
        let span = len.max(1).checked_add(PAGE - 1)? / PAGE * PAGE;
        let end = start.checked_add(span)?;
        (start >= base && start % PAGE == 0 && end <= top).then_some((start, end))
    }

    /// Frees the range of the oversized record at `off`, which `reclaim` is passing, and
    /// every page below it not freed yet (ranges are handed out in record order, so those
    /// belong to records already passed, or dropped as damage), then moves `big_head` to its
    /// end. Punching comes first: a consumer killed in between leaves `big_head` behind, and
    /// the record behind `reclaim`, so the next consumer does both again. True when
    /// `big_head` moved.
    pub(super) fn free_big(&self, off: u64) -> bool {
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

    /// Frees `len` bytes of the file from `start` (page-aligned, in the oversized area).
    pub(super) fn punch(&self, start: u64, len: u64) {
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
}
