//! The local transport behind [`Pipe`](crate::Pipe): a shared-memory ring per direction and a
//! Unix socket pair for wake-ups and end-of-file.
//!
//! * Messages go through the rings (see `ring.rs`): the sender serializes straight into the
//!   ring with [`mp_core::message::encode_into`]; messages larger than half a ring are streamed
//!   as fragments.
//! * A side with nothing to do spins for a short, adaptive while (the other side usually
//!   answers within microseconds while both are busy), then *arms* its word in the ring and
//!   sleeps in `ppoll` on its socket. The other side writes one wake-up byte to the socket
//!   only when it finds the word armed, so a busy pipe makes no system call at all.
//! * The socket pair is what makes the pipe robust: when every descriptor of one end is closed
//!   (its process exited or was killed), the other end's socket reads end-of-file, which wakes
//!   a sleeper at once. A receiver then gets the messages still in the ring, then
//!   [`Error::Eof`] (or [`Error::Truncated`] in the middle of a fragmented message); a sender
//!   gets [`Error::BrokenPipe`].
//! * The receiving socket is also the end's [`fileno`](crate::Connection::fileno): it becomes
//!   readable when a message arrives *while the end is armed*, which [`wait`](crate::wait) and
//!   [`poll`](crate::Connection::poll) do (see [`Waitable`](crate::Waitable)).

use mp_core::sync::atomic::{AtomicU32, Ordering};
use std::cell::{Cell, RefCell, RefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use mp_core::message::{self, Encoded};
use mp_core::rkyv::util::AlignedVec;
use mp_core::wait::Spin;
use mp_core::{Deadline, Message, Region};

use crate::error::{Error, Result};
use crate::ring::{self, Record, Ring, Slot, CTL_SIZE, TAG_FIRST, TAG_LAST, TAG_MORE, TAG_WHOLE};
use crate::sys::{self, Token};

/// Content kind of a pipe's region ("mp-pipe ring", layout version 1).
pub(crate) const REGION_KIND: u32 = 0x7069_7031;

/// Default size of each direction's ring.
pub const DEFAULT_RING_CAPACITY: usize = 128 * 1024;
/// Smallest ring accepted.
pub const MIN_RING_CAPACITY: usize = 4096;
/// Largest ring accepted.
pub const MAX_RING_CAPACITY: usize = 1 << 30;

/// No ring in that direction (a one-way end).
pub(crate) const NO_RING: u8 = u8::MAX;

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Ready,
    PeerGone,
    TimedOut,
}

/// A message found by the receiver: still in the ring (copy it out, then `finish`), or
/// reassembled from fragments.
pub(crate) enum Msg {
    Ring(Record),
    Owned(AlignedVec<16>),
}

impl Msg {
    pub(crate) fn len(&self) -> usize {
        match self {
            Msg::Ring(r) => r.len,
            Msg::Owned(v) => v.len(),
        }
    }
}

/// A received message's bytes, 16-aligned and private to this process.
pub(crate) enum RecvBytes<'a> {
    Scratch(RefMut<'a, AlignedVec<16>>),
    Owned(AlignedVec<16>),
}

impl RecvBytes<'_> {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            RecvBytes::Scratch(s) => s.as_slice(),
            RecvBytes::Owned(v) => v.as_slice(),
        }
    }
}

struct Partial {
    buf: AlignedVec<16>,
    total: u64,
}

/// One end of a local pipe.
pub(crate) struct LocalEnd {
    sock: OwnedFd,
    region: Region,
    tx: Option<Ring>,
    rx: Option<Ring>,
    tx_index: u8,
    rx_index: u8,
    cap: usize,
    partial: RefCell<Option<Partial>>,
    scratch: RefCell<AlignedVec<16>>,
    peer_gone: Cell<bool>,
    /// How long a send waits for room in the ring (`None`: for ever).
    send_timeout: Cell<Option<Duration>>,
}

// SAFETY: the raw pointers of the rings point into the shared mapping that `region` keeps
// alive; nothing about them is tied to the creating thread. (`LocalEnd` stays `!Sync` through
// its `Cell`s: one thread at a time uses an end.)
unsafe impl Send for LocalEnd {}

impl std::fmt::Debug for LocalEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEnd")
            .field("sock", &self.sock)
            .field("tx_ring", &self.tx.as_ref().map(|_| self.tx_index))
            .field("rx_ring", &self.rx.as_ref().map(|_| self.rx_index))
            .field("ring_capacity", &self.cap)
            .finish()
    }
}

/// The fields that describe an end, for handing it to another process.
pub(crate) struct LocalParts {
    pub(crate) sock: OwnedFd,
    pub(crate) region: Region,
    pub(crate) tx_index: u8,
    pub(crate) rx_index: u8,
    pub(crate) cap: usize,
}

impl LocalEnd {
    /// Both ends of a new pipe. Duplex: ring 0 carries first -> second, ring 1 second -> first.
    /// One-way: the first end reads ring 0, the second writes it.
    pub(crate) fn pair(duplex: bool, cap: usize) -> Result<(LocalEnd, LocalEnd)> {
        if !cap.is_power_of_two() || !(MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&cap) {
            return Err(Error::InvalidArgument(
                "ring capacity must be a power of two between 4 KiB and 1 GiB",
            ));
        }
        let rings = if duplex { 2 } else { 1 };
        let region = Region::anonymous(REGION_KIND, (rings * (CTL_SIZE + cap)) as u64, 64)?;
        let (a, b) = sys::socketpair()?;
        let (a_tx, a_rx, b_tx, b_rx) = if duplex {
            (0, 1, 1, 0)
        } else {
            (NO_RING, 0, 0, NO_RING)
        };
        let first = LocalEnd::from_parts(LocalParts {
            sock: a,
            region: region.clone(),
            tx_index: a_tx,
            rx_index: a_rx,
            cap,
        })?;
        let second = LocalEnd::from_parts(LocalParts {
            sock: b,
            region,
            tx_index: b_tx,
            rx_index: b_rx,
            cap,
        })?;
        Ok((first, second))
    }

    /// Rebuilds an end from its parts (checked: they may come from another process).
    pub(crate) fn from_parts(p: LocalParts) -> Result<LocalEnd> {
        let bad = |why: &str| Error::Protocol(format!("invalid pipe handle: {why}"));
        if !p.cap.is_power_of_two() || !(MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&p.cap) {
            return Err(bad("ring capacity out of range"));
        }
        if p.region.layout().kind != REGION_KIND {
            return Err(bad("the region is not a pipe's"));
        }
        let valid = |i: u8| i == NO_RING || i < 2;
        if !valid(p.tx_index) || !valid(p.rx_index) || p.tx_index == p.rx_index {
            return Err(bad("ring indices out of range"));
        }
        let rings = [p.tx_index, p.rx_index]
            .iter()
            .filter(|&&i| i != NO_RING)
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0);
        if rings == 0 || p.region.len() < rings * (CTL_SIZE + p.cap) {
            return Err(bad("the region is smaller than its rings"));
        }
        let base = p.region.as_ptr();
        if base as usize % 64 != 0 {
            return Err(bad("the region is not 64-byte aligned"));
        }
        let view = |i: u8| -> Option<Ring> {
            if i == NO_RING {
                return None;
            }
            let i = i as usize;
            // SAFETY: the region holds `rings` control blocks followed by `rings` data areas of
            // `cap` bytes (checked above); offsets are multiples of 64 from a 64-aligned base;
            // `cap` is a power of two >= 4096; the region outlives the ring (both live in this
            // `LocalEnd`); one end produces into a ring and the other consumes it.
            Some(unsafe {
                Ring::new(
                    base.add(i * CTL_SIZE).cast(),
                    base.add(rings * CTL_SIZE + i * p.cap),
                    p.cap,
                )
            })
        };
        Ok(LocalEnd {
            tx: view(p.tx_index),
            rx: view(p.rx_index),
            sock: p.sock,
            region: p.region,
            tx_index: p.tx_index,
            rx_index: p.rx_index,
            cap: p.cap,
            partial: RefCell::new(None),
            scratch: RefCell::new(AlignedVec::new()),
            peer_gone: Cell::new(false),
            send_timeout: Cell::new(None),
        })
    }

    /// The region and indices, for serializing this end.
    pub(crate) fn describe(&self) -> (&Region, u8, u8, usize) {
        (&self.region, self.tx_index, self.rx_index, self.cap)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn tx(&self) -> Result<&Ring> {
        // A match, not `ok_or`: that builds the error on every call and drops it through
        // `Error`'s out-of-line drop glue, 9% of a round trip's time.
        match &self.tx {
            Some(ring) => Ok(ring),
            None => Err(Error::InvalidArgument("connection is read-only")),
        }
    }

    fn rx(&self) -> Result<&Ring> {
        match &self.rx {
            Some(ring) => Ok(ring),
            None => Err(Error::InvalidArgument("connection is write-only")),
        }
    }

    // ---- waiting --------------------------------------------------------------------------

    /// Waits until `cond` holds, the peer is gone, or the deadline passes: spins, then arms
    /// `armed` and sleeps on the socket.
    fn block(
        &self,
        armed: &AtomicU32,
        peer_cpu: u32,
        cond: &dyn Fn() -> bool,
        deadline: Deadline,
    ) -> Result<Woke> {
        // The wait policy's spin (mp_core::wait), adapted per ring, told where the peer last
        // ran; it learns from this wait when it is dropped at the end.
        let mut spin = Spin::with_peer(armed, deadline, peer_cpu);
        while !cond() {
            if !spin.spin() {
                break;
            }
        }
        if !spin.is_spent() {
            return Ok(Woke::Ready);
        }
        let woke = loop {
            if sys::drain_tokens(self.fd()) {
                self.peer_gone.set(true);
            }
            if self.peer_gone.get() {
                armed.swap(0, Ordering::SeqCst);
                break if cond() { Woke::Ready } else { Woke::PeerGone };
            }
            // SeqCst: first half of the sleeper's Dekker handshake (see ring.rs); `cond`
            // re-reads the other side's position with a SeqCst load.
            armed.store(1, Ordering::SeqCst);
            if cond() {
                armed.swap(0, Ordering::SeqCst);
                break Woke::Ready;
            }
            match sys::wait_readable(self.fd(), deadline) {
                Ok(true) => continue,
                Ok(false) => {
                    armed.swap(0, Ordering::SeqCst);
                    break if cond() { Woke::Ready } else { Woke::TimedOut };
                }
                Err(e) => {
                    armed.swap(0, Ordering::SeqCst);
                    return Err(e);
                }
            }
        };
        Ok(woke)
    }

    /// Sends a wake-up token to the peer.
    fn wake_peer(&self) -> Result<()> {
        match sys::send_token(self.fd()) {
            Token::Sent => Ok(()),
            Token::PeerGone => {
                self.peer_gone.set(true);
                Err(Error::BrokenPipe)
            }
        }
    }

    // ---- sending --------------------------------------------------------------------------

    /// Serializes `value` straight into the ring (or through a heap buffer when it does not
    /// fit) and publishes it.
    pub(crate) fn send_value<T: Message>(&self, value: &T) -> Result<()> {
        match self.send_in_place(value)? {
            Ok(()) => Ok(()),
            Err(buf) => self.send_raw(&buf),
        }
    }

    /// Serializes `value` straight into the ring's free space and publishes it, without
    /// waiting: `Ok(Err(bytes))` when it did not fit there, with `value` encoded in `bytes`
    /// for [`send_raw`](Self::send_raw) (which waits for room).
    pub(crate) fn send_in_place<T: Message>(
        &self,
        value: &T,
    ) -> Result<std::result::Result<(), AlignedVec<16>>> {
        let ring = self.tx()?;
        if self.peer_gone.get() {
            return Err(Error::BrokenPipe);
        }
        if let Some(slot) = ring.slot(0)? {
            let cap = slot.cap.min(ring.max_whole());
            if cap >= 256 {
                // SAFETY: the slot is free space of the ring, owned by this (the only)
                // producer until it publishes; `slot.ptr` is 16-aligned and valid for
                // `slot.cap >= cap` bytes.
                match unsafe { message::encode_into(value, slot.ptr, cap) }? {
                    Encoded::InPlace(n) => {
                        // SAFETY: `slot` came from `ring.slot` just above and n <= cap.
                        let wake = unsafe { ring.publish(&slot, TAG_WHOLE, n, n as u64) };
                        return if wake {
                            self.wake_peer().map(Ok)
                        } else {
                            Ok(Ok(()))
                        };
                    }
                    Encoded::Spilled(buf) => return Ok(Err(buf)),
                }
            }
        }
        Ok(Err(message::encode(value)?))
    }

    /// Sends `bytes` as one message: one record, or fragments when larger than half a ring.
    pub(crate) fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let ring = self.tx()?;
        if self.peer_gone.get() {
            return Err(Error::BrokenPipe);
        }
        let max = ring.max_whole();
        let deadline = Deadline::after(self.send_timeout.get());
        if bytes.len() <= max {
            let slot = self.wait_slot(ring, bytes.len(), deadline)?;
            // SAFETY: the slot is ours (see `send_value`) and holds at least `bytes.len()`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.ptr, bytes.len()) };
            // SAFETY: `slot` came from `wait_slot` on this ring just above.
            let wake = unsafe { ring.publish(&slot, TAG_WHOLE, bytes.len(), bytes.len() as u64) };
            return if wake { self.wake_peer() } else { Ok(()) };
        }
        let total = bytes.len();
        let chunk_min = ring.capacity() / 8;
        let mut pos = 0;
        while pos < total {
            let rem = total - pos;
            let slot = match self.wait_slot(ring, rem.min(chunk_min), deadline) {
                Ok(s) => s,
                Err(e) => {
                    if pos > 0 {
                        // Half a message is in the ring: the stream of messages cannot go on.
                        self.peer_gone.set(true);
                    }
                    return Err(e);
                }
            };
            let n = slot.cap.min(rem).min(max);
            // SAFETY: the slot is ours and holds at least `n` bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes[pos..].as_ptr(), slot.ptr, n) };
            let tag = if pos == 0 {
                TAG_FIRST
            } else if pos + n == total {
                TAG_LAST
            } else {
                TAG_MORE
            };
            // SAFETY: `slot` came from `wait_slot` on this ring just above, n <= slot.cap.
            let wake = unsafe { ring.publish(&slot, tag, n, total as u64) };
            if wake {
                self.wake_peer()?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Sets how long a send waits for room in the ring (`None`: for ever).
    pub(crate) fn set_send_timeout(&self, timeout: Option<Duration>) {
        self.send_timeout.set(timeout);
    }

    fn wait_slot(&self, ring: &Ring, need: usize, deadline: Deadline) -> Result<Slot> {
        loop {
            if let Some(s) = ring.slot(need)? {
                return Ok(s);
            }
            match self.block(
                ring.tx_armed(),
                ring.consumer_cpu(),
                &|| ring.has_room(need),
                deadline,
            )? {
                Woke::TimedOut if deadline.expired() => return Err(Error::Timeout),
                Woke::Ready | Woke::TimedOut => continue,
                Woke::PeerGone => return Err(Error::BrokenPipe),
            }
        }
    }

    // ---- receiving ------------------------------------------------------------------------

    /// Consumes up to `next` in the receive ring and wakes a sender waiting for room.
    pub(crate) fn finish(&self, next: u64) {
        if let Some(ring) = &self.rx {
            if ring.consume(next) {
                // A sender that is gone needs no wake-up; its absence is reported on its own.
                let _ = self.wake_peer();
            }
        }
    }

    /// The next message, once `check(size)` accepts its size (a refused message stays first
    /// in line). A `Msg::Ring` must be copied out, then passed to [`finish`](Self::finish).
    pub(crate) fn next_message(
        &self,
        deadline: Deadline,
        check: &dyn Fn(u64) -> Result<()>,
    ) -> Result<Msg> {
        let ring = self.rx()?;
        let mut partial = self.partial.borrow_mut();
        if let Some(p) = partial.as_ref() {
            check(p.total)?;
        }
        loop {
            let Some(rec) = ring.peek()? else {
                match self.block(
                    ring.rx_armed(),
                    ring.producer_cpu(),
                    &|| ring.has_data(),
                    deadline,
                )? {
                    Woke::Ready => continue,
                    Woke::TimedOut => return Err(Error::Timeout),
                    Woke::PeerGone => {
                        return Err(match partial.take() {
                            Some(p) => Error::Truncated {
                                received: p.buf.len() as u64,
                                expected: p.total,
                            },
                            None => Error::Eof,
                        })
                    }
                }
            };
            match (partial.as_mut(), rec.tag) {
                (None, TAG_WHOLE) => {
                    check(rec.len as u64)?;
                    return Ok(Msg::Ring(rec));
                }
                (None, TAG_FIRST) => {
                    if rec.total <= rec.len as u64 {
                        return Err(Error::Protocol(format!(
                            "pipe fragment of {} bytes announces a message of {}",
                            rec.len, rec.total
                        )));
                    }
                    check(rec.total)?;
                    // Grow with what arrives (from at most 16 MiB), so a bogus total cannot
                    // make us allocate it.
                    let first_cap = usize::try_from(rec.total)
                        .unwrap_or(usize::MAX)
                        .min(16 << 20);
                    let mut buf = AlignedVec::<16>::with_capacity(first_cap);
                    append(&mut buf, &rec);
                    self.finish(rec.next);
                    *partial = Some(Partial {
                        buf,
                        total: rec.total,
                    });
                }
                (Some(p), TAG_MORE | TAG_LAST) => {
                    let new_len = p.buf.len() as u64 + rec.len as u64;
                    let total = p.total;
                    if new_len > total || (rec.tag == TAG_LAST) != (new_len == total) {
                        *partial = None;
                        return Err(Error::Protocol(format!(
                            "pipe fragments do not add up to the announced {total} bytes"
                        )));
                    }
                    append(&mut p.buf, &rec);
                    self.finish(rec.next);
                    if new_len == p.total {
                        let done = partial.take().map(|p| p.buf).unwrap_or_default();
                        return Ok(Msg::Owned(done));
                    }
                }
                (_, tag) => {
                    *partial = None;
                    return Err(Error::Protocol(format!(
                        "pipe record {tag:#x} out of sequence"
                    )));
                }
            }
        }
    }

    /// Receives one message into a private, aligned buffer: the connection's scratch buffer
    /// when it is free (it is not while a [`Received`](crate::Received) guard holds it), else a
    /// new one.
    pub(crate) fn recv_buf(&self, deadline: Deadline) -> Result<RecvBytes<'_>> {
        match self.next_message(deadline, &|_| Ok(()))? {
            Msg::Ring(rec) => match self.scratch.try_borrow_mut() {
                Ok(mut scratch) => {
                    if scratch.capacity() > 1 << 20 {
                        *scratch = AlignedVec::new();
                    }
                    scratch.clear();
                    append(&mut scratch, &rec);
                    self.finish(rec.next);
                    Ok(RecvBytes::Scratch(scratch))
                }
                Err(_) => {
                    let mut buf = AlignedVec::with_capacity(rec.len);
                    append(&mut buf, &rec);
                    self.finish(rec.next);
                    Ok(RecvBytes::Owned(buf))
                }
            },
            Msg::Owned(buf) => Ok(RecvBytes::Owned(buf)),
        }
    }

    /// Receives and decodes a value.
    pub(crate) fn recv_value<T: Message>(&self, deadline: Deadline) -> Result<T> {
        let bytes = self.recv_buf(deadline)?;
        Ok(message::decode::<T>(bytes.as_slice())?)
    }

    /// Copies a message out into `dst` (`dst.len()` == the message's length).
    pub(crate) fn deliver_into(&self, msg: Msg, dst: &mut [u8]) {
        match msg {
            Msg::Ring(rec) => {
                debug_assert_eq!(dst.len(), rec.len);
                // SAFETY: `rec` was just peeked and not consumed; `dst` holds `rec.len` bytes.
                unsafe { ring::copy_out(&rec, dst.as_mut_ptr()) };
                self.finish(rec.next);
            }
            Msg::Owned(buf) => dst.copy_from_slice(&buf),
        }
    }

    /// True when a message (or end-of-file) is waiting, after waiting up to the deadline.
    pub(crate) fn poll(&self, deadline: Deadline) -> Result<bool> {
        let ring = self.rx()?;
        if ring.has_data() {
            return Ok(true);
        }
        Ok(
            match self.block(
                ring.rx_armed(),
                ring.producer_cpu(),
                &|| ring.has_data(),
                deadline,
            )? {
                Woke::Ready | Woke::PeerGone => true,
                Woke::TimedOut => false,
            },
        )
    }

    // ---- wait() support -------------------------------------------------------------------

    /// Ready now (a message or end-of-file)? If not, arms the receive side so that the socket
    /// becomes readable when a message arrives.
    pub(crate) fn prepare_wait(&self) -> bool {
        if self.rx.as_ref().is_some_and(|r| r.has_data()) {
            return true;
        }
        if sys::drain_tokens(self.fd()) {
            self.peer_gone.set(true);
        }
        if self.peer_gone.get() {
            return true;
        }
        if let Some(r) = &self.rx {
            // SeqCst: first half of the sleeper's handshake (see ring.rs).
            r.rx_armed().store(1, Ordering::SeqCst);
            if r.has_data() {
                r.rx_armed().swap(0, Ordering::SeqCst);
                return true;
            }
        }
        false
    }

    /// After the socket was reported readable: really ready?
    pub(crate) fn confirm_wait(&self) -> bool {
        if sys::drain_tokens(self.fd()) {
            self.peer_gone.set(true);
        }
        self.peer_gone.get() || self.rx.as_ref().is_some_and(|r| r.has_data())
    }

    /// Undoes `prepare_wait`'s arming.
    pub(crate) fn finish_wait(&self) {
        if let Some(r) = &self.rx {
            r.rx_armed().swap(0, Ordering::SeqCst);
        }
    }

    /// Can a message of `len` bytes be sent now without waiting for room (or is the peer gone,
    /// which the send then reports)? If not, arms the send side so that the socket becomes
    /// readable when the peer makes room. A message larger than half the ring (sent in
    /// fragments) is ready when its first fragment fits.
    #[cfg(feature = "async")]
    pub(crate) fn prepare_send(&self, len: usize) -> Result<bool> {
        let ring = self.tx()?;
        let need = if len <= ring.max_whole() {
            len
        } else {
            ring.capacity() / 8
        };
        if self.peer_gone.get() || ring.has_room(need) {
            return Ok(true);
        }
        if sys::drain_tokens(self.fd()) {
            self.peer_gone.set(true);
            return Ok(true);
        }
        // SeqCst: first half of the sleeper's handshake (see ring.rs), as in `wait_slot`.
        ring.tx_armed().store(1, Ordering::SeqCst);
        if ring.has_room(need) {
            ring.tx_armed().swap(0, Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }

    /// Undoes `prepare_send`'s arming.
    #[cfg(feature = "async")]
    pub(crate) fn finish_send(&self) {
        if let Some(r) = &self.tx {
            r.tx_armed().swap(0, Ordering::SeqCst);
        }
    }
}

/// Appends a record's payload to `buf`.
fn append(buf: &mut AlignedVec<16>, rec: &Record) {
    let at = buf.len();
    buf.reserve(rec.len);
    // SAFETY: `reserve` made room for `rec.len` more bytes after `at`; `rec` was just peeked
    // and is not consumed yet. `set_len` covers exactly the bytes copied.
    unsafe {
        ring::copy_out(rec, buf.as_mut_ptr().add(at));
        buf.set_len(at + rec.len);
    }
}

#[cfg(test)]
mod tests;
