//! Fuzzing entry points. **Not API**: hidden from the docs, exempt from semver, and may change
//! or go away in any release.
//!
//! Each function feeds untrusted bytes to a part of mp-pipe that reads what a peer wrote and
//! ignores the outcome: the only failure is a panic, an abort, a hang or undefined behaviour.
//! The `cargo fuzz` targets in `fuzz/fuzz_targets/` call them, and `tests/fuzz_corpus.rs`
//! replays the stored corpus through them on stable. `seeds` makes valid inputs for the
//! corpus. See `docs/reliability.md`, "Fuzzing".

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

use mp_core::rkyv::util::AlignedVec;
use mp_core::Deadline;

use crate::error::Error;
use crate::local::{LocalEnd, Msg, MIN_RING_CAPACITY};
use crate::ring::{RECORD_HEADER, TAG_FIRST, TAG_LAST, TAG_MORE, TAG_PAD, TAG_WHOLE};
use crate::stream::StreamEnd;
use crate::{auth, Connection, ReadOnly, WriteOnly};

/// The largest input a harness looks at (the corpus keeps files below this too).
pub const MAX_INPUT: usize = 64 * 1024;

/// The authkey of the handshake harnesses.
pub const AUTHKEY: &[u8] = b"fuzz-authkey";

/// The random bytes of the harnesses' own challenge (fixed, so that the corpus can hold right
/// answers and the fuzzer can reach the steps after them).
pub const CHALLENGE_RANDOM: [u8; 40] = [0x5a; 40];

/// A socket whose peer has written `wire` and shut its writing side down (it stays open, so
/// what we send back is taken, not refused).
fn socket_fed(wire: &[u8]) -> Option<(OwnedFd, UnixStream)> {
    let (ours, mut theirs) = UnixStream::pair().ok()?;
    theirs.write_all(&wire[..wire.len().min(MAX_INPUT)]).ok()?;
    theirs.shutdown(std::net::Shutdown::Write).ok()?;
    Some((OwnedFd::from(ours), theirs))
}

/// The stream frame decoder (CPython's framing: a 4-byte big-endian length, or `-1` and an
/// 8-byte length, then the bytes): `bytes[1..]` is what a socket peer sent before closing.
/// `bytes[0]` picks the connection's size limit (bits 0-1) and the first of the receive calls
/// that then run in turn (`recv_bytes` with and without a limit, `recv_bytes_into`, typed
/// `recv` and `recv_ref`, `poll`) until end-of-file.
pub fn stream(bytes: &[u8]) {
    let Some((&mode, wire)) = bytes.split_first() else {
        return;
    };
    let Some((ours, _theirs)) = socket_fed(wire) else {
        return;
    };
    let conn = Connection::<(u32, String)>::from_socket(ours);
    conn.set_max_message_size(match mode & 3 {
        0 => crate::DEFAULT_MAX_MESSAGE_SIZE,
        1 => 64,
        2 => 4096,
        _ => 0,
    });
    let mut op = mode >> 2;
    for _ in 0..64 {
        let r = match op % 6 {
            0 => conn.recv_bytes(None).map(drop),
            1 => conn.recv_bytes(Some(16)).map(|v| assert!(v.len() <= 16)),
            2 => {
                let mut buf = [0u8; 40];
                conn.recv_bytes_into(&mut buf, 5).map(|n| assert!(n <= 35))
            }
            3 => conn.recv().map(drop),
            4 => conn.recv_ref().map(|r| drop(r.deserialize())),
            _ => conn.poll(Some(Duration::ZERO)).map(drop),
        };
        op = op.wrapping_add(1);
        if let Err(Error::Eof | Error::Truncated { .. } | Error::FrameTooLarge { .. }) = r {
            break;
        }
    }
}

/// A little-endian reader over the fuzz input that yields zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// The pipe ring read from hostile bytes: a program, in `bytes`, that a hostile producer runs
/// against ring 0 of a pipe (of the smallest capacity) while the receiving end reads it.
///
/// Each step is an opcode byte (taken modulo 8) and its operands: 0 sets `tail` (u64), 1
/// advances `tail` by 16 * (n + 1) bytes (u8), 2 sets `head` (u64), 3 writes a record header
/// (offset u16, len u16, tag selector u8, total u32; a selector with bit 7 set shifts the total
/// up by 32), 4 writes raw bytes (offset u16, count u8, the bytes), 5 makes the receiver run one
/// call (selector u8: `recv_buf` and a decode, a size-checked `next_message` and a copy, or
/// `poll`), 6 closes the producer's end (the peer dies), 7 appends a whole, well-formed record
/// (count u8, the payload). Every receive uses a deadline of zero.
pub fn pipe_ring(bytes: &[u8]) {
    let Ok((producer, receiver)) = LocalEnd::pair(true, MIN_RING_CAPACITY) else {
        return;
    };
    let cap = MIN_RING_CAPACITY;
    let (region, ..) = receiver.describe();
    let region = region.clone();
    let base = region.as_ptr();
    // Ring 0 (producer -> receiver): its control block at 0, its data after both blocks.
    let ctl = base;
    // SAFETY: a duplex region holds two control blocks, then two data areas of `cap` bytes.
    let data = unsafe { base.add(2 * crate::ring::CTL_SIZE) };
    let word = |off: usize| {
        // SAFETY: `tail` is at offset 0 and `head` at 64 of the 64-aligned control block, which
        // the region (alive for this whole function) maps; both are `AtomicU64`s.
        unsafe { &*(ctl.add(off) as *const AtomicU64) }
    };
    let write = |off: usize, src: &[u8]| {
        let off = off % cap;
        let n = src.len().min(cap - off);
        // SAFETY: `off + n <= cap`: inside ring 0's data area, which the region maps; this
        // thread is the only one touching it, and the receiver holds no reference into it
        // between calls (it copies records out).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(off), n) };
    };
    let header = |len: u32, tag: u32, total: u64| {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&tag.to_le_bytes());
        h[8..16].copy_from_slice(&total.to_le_bytes());
        h
    };
    let mut producer = Some(producer);
    let mut input = Input(&bytes[..bytes.len().min(MAX_INPUT)]);
    let mut steps = 0;
    while !input.0.is_empty() && steps < 4096 {
        steps += 1;
        match input.u8() % 8 {
            0 => word(0).store(input.u64(), Ordering::SeqCst),
            1 => {
                let n = 16 * (u64::from(input.u8()) + 1);
                let t = word(0).load(Ordering::SeqCst);
                word(0).store(t.wrapping_add(n), Ordering::SeqCst);
            }
            2 => word(64).store(input.u64(), Ordering::SeqCst),
            3 => {
                let off = usize::from(input.u16()) % (cap - RECORD_HEADER);
                let len = u32::from(input.u16());
                let sel = input.u8();
                let tag = [
                    TAG_WHOLE,
                    TAG_FIRST,
                    TAG_MORE,
                    TAG_LAST,
                    TAG_PAD,
                    0x6d70_0006,
                ][usize::from(sel & 7) % 6];
                let mut total = u64::from(input.u32());
                if sel & 0x80 != 0 {
                    total <<= 32;
                }
                write(off, &header(len, tag, total));
            }
            4 => {
                let off = usize::from(input.u16());
                let n = usize::from(input.u8());
                write(off, input.take(n));
            }
            5 => receive_one(&receiver, input.u8(), data as usize, cap),
            6 => producer = None,
            _ => {
                let n = usize::from(input.u8());
                let payload = input.take(n).to_vec();
                let t = word(0).load(Ordering::SeqCst);
                let off = (t as usize) & (cap - 1) & !15;
                if off + RECORD_HEADER + payload.len() <= cap {
                    write(off, &header(n as u32, TAG_WHOLE, n as u64));
                    write(off + RECORD_HEADER, &payload);
                    let footprint = (RECORD_HEADER + payload.len() + 15) & !15;
                    word(0).store(t.wrapping_add(footprint as u64), Ordering::SeqCst);
                }
            }
        }
    }
    drop(producer);
}

/// One receive of [`pipe_ring`]'s receiver, chosen by `sel`: a whole buffer, a message under a
/// size limit (whose ring record must lie inside ring 0's data area at `start`), or a poll.
fn receive_one(receiver: &LocalEnd, sel: u8, start: usize, cap: usize) {
    let zero = || Deadline::after(Some(Duration::ZERO));
    match sel % 3 {
        0 => {
            if let Ok(b) = receiver.recv_buf(zero()) {
                let _ = mp_core::message::decode::<(u32, String)>(b.as_slice());
            }
        }
        1 => {
            let limit = u64::from(sel) * 64;
            let check = |size: u64| {
                if size > limit {
                    Err(Error::MessageTooLong {
                        size,
                        max: limit as usize,
                    })
                } else {
                    Ok(())
                }
            };
            if let Ok(msg) = receiver.next_message(zero(), &check) {
                if let Msg::Ring(rec) = &msg {
                    let p = rec.ptr as usize;
                    assert!(p >= start && p + rec.len <= start + cap);
                }
                let mut out = vec![0u8; msg.len()];
                receiver.deliver_into(msg, &mut out);
            }
        }
        _ => {
            let _ = receiver.poll(zero());
        }
    }
}

/// The server side of the authkey handshake (what a [`Listener`](crate::Listener)'s handshake
/// thread runs): `bytes` is everything the connecting peer sends before it shuts down. The
/// challenge is [`CHALLENGE_RANDOM`]'s, the key [`AUTHKEY`]. True when the peer passed.
pub fn handshake_server(bytes: &[u8]) -> bool {
    let Some((ours, _theirs)) = socket_fed(bytes) else {
        return false;
    };
    crate::listener::fuzz_server_handshake(ours, AUTHKEY, auth::challenge_from(&CHALLENGE_RANDOM))
        .is_ok()
}

/// The client side of the authkey handshake (what [`Client::connect`](crate::Client::connect)
/// runs: answer the listener's challenge, then challenge it with [`CHALLENGE_RANDOM`]):
/// `bytes` is everything the listener sends before it shuts down. True when both steps passed.
pub fn handshake_client(bytes: &[u8]) -> bool {
    let Some((ours, _theirs)) = socket_fed(bytes) else {
        return false;
    };
    let s = StreamEnd::new(ours);
    let deadline = Deadline::after(Some(Duration::from_secs(1)));
    auth::answer_challenge(&s, AUTHKEY, deadline).is_ok()
        && auth::deliver_challenge_with(
            &s,
            AUTHKEY,
            auth::challenge_from(&CHALLENGE_RANDOM),
            deadline,
        )
        .is_ok()
}

/// Connection handles, as a child decodes its arguments: `bytes` is an archive decoded as a
/// `Connection<u32>` of each direction, against a descriptor table installed once per process
/// (slot 0 the socket of a real pipe end, slot 1 that pipe's region, slot 2 a region of another
/// kind, slot 3 a memfd of garbage). A connection that decodes is polled once. True when one
/// decoded.
pub fn connection_handle(bytes: &[u8]) -> bool {
    install_handle_table();
    let bytes = &bytes[..bytes.len().min(MAX_INPUT)];
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let mut any = false;
    if let Ok(c) = mp_core::message::decode::<Connection<u32>>(&aligned) {
        let _ = c.poll(Some(Duration::ZERO));
        any = true;
    }
    if let Ok(c) = mp_core::message::decode::<Connection<u32, ReadOnly>>(&aligned) {
        let _ = c.poll(Some(Duration::ZERO));
        any = true;
    }
    any |= mp_core::message::decode::<Connection<u32, WriteOnly>>(&aligned).is_ok();
    any
}

/// Installs (once per process) the slots [`connection_handle`] decodes against.
fn install_handle_table() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok((a, b)) = crate::Pipe::<u32>::new(crate::Duplex) else {
            return;
        };
        let (_, fds) = mp_core::handle::collect(|| mp_core::message::encode(&a).map(drop));
        let mut fds = fds;
        if let Ok(r) = mp_core::Region::anonymous(0x0bad_c0de, 2 * (256 + 4096) as u64, 64) {
            fds.extend(r.dup_fd());
        }
        if let Ok(f) =
            nix::sys::memfd::memfd_create(c"mp-fuzz", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        {
            let _ = nix::unistd::write(&f, &[0xa5u8; 4096]);
            fds.push(f);
        }
        mp_core::handle::install(fds);
        // The table holds duplicates: the ends may go (their peer socket then reads
        // end-of-file, one more path for the poll).
        drop((a, b));
    });
}

/// One frame of CPython's wire format.
fn frame(payload: &[u8]) -> Vec<u8> {
    let (h, n) = crate::stream::frame_header(payload.len() as u64);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

/// Valid inputs for the corpus, as `(target, bytes)`: real frames, rings and handshakes.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Frames: bytes, typed archives, the 8-byte extended header, a size over the limit.
    let typed = mp_core::message::encode(&(7u32, String::from("seven, typed")))
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let mut wire = frame(b"hello from CPython");
    wire.extend(frame(&typed));
    wire.extend(frame(b""));
    wire.extend(frame(&[0xab; 300]));
    for mode in [0u8, 1, 2, 4 * 3, 4 * 4 + 2] {
        let mut s = vec![mode];
        s.extend_from_slice(&wire);
        out.push(("stream", s));
    }
    let mut ext = vec![0u8];
    ext.extend_from_slice(&(-1i32).to_be_bytes());
    ext.extend_from_slice(&5u64.to_be_bytes());
    ext.extend_from_slice(b"12345");
    ext.extend(frame(&typed));
    out.push(("stream", ext));
    let mut huge = vec![0u8];
    huge.extend_from_slice(&(-1i32).to_be_bytes());
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    out.push(("stream", huge));
    let mut short = vec![2u8];
    short.extend_from_slice(&100i32.to_be_bytes());
    short.extend_from_slice(b"only a part");
    out.push(("stream", short));

    // Rings: whole records and receives, a fragmented message, padding then wrap, a death.
    let mut ring = Vec::new();
    for msg in [&b"first"[..], &typed, &[7u8; 200]] {
        ring.push(7);
        ring.push(msg.len() as u8);
        ring.extend_from_slice(msg);
        ring.extend_from_slice(&[5, 0]);
    }
    ring.extend_from_slice(&[5, 1, 5, 2, 6, 5, 0]);
    out.push(("pipe_ring", ring));
    let mut frag = Vec::new();
    // FIRST (16 of 40 bytes) at 0, MORE (16) at 32, LAST (8) at 64; tail 96 (as 3 x 32).
    for (off, len, sel) in [(0u16, 16u16, 1u8), (32, 16, 2), (64, 8, 3)] {
        frag.push(3);
        frag.extend_from_slice(&off.to_le_bytes());
        frag.extend_from_slice(&len.to_le_bytes());
        frag.push(sel);
        frag.extend_from_slice(&40u32.to_le_bytes());
    }
    frag.extend_from_slice(&[1, 1, 1, 1, 1, 1, 5, 1, 5, 0]);
    out.push(("pipe_ring", frag));
    let mut wrap = vec![0];
    wrap.extend_from_slice(&(4096u64 - 32).to_le_bytes());
    wrap.push(2);
    wrap.extend_from_slice(&(4096u64 - 32).to_le_bytes());
    // A PAD at 4064 filling the end, a WHOLE of 8 bytes at 0, tail past both.
    wrap.push(3);
    wrap.extend_from_slice(&(4096u16 - 32).to_le_bytes());
    wrap.extend_from_slice(&16u16.to_le_bytes());
    wrap.push(4);
    wrap.extend_from_slice(&0u32.to_le_bytes());
    wrap.push(3);
    wrap.extend_from_slice(&0u16.to_le_bytes());
    wrap.extend_from_slice(&8u16.to_le_bytes());
    wrap.push(0);
    wrap.extend_from_slice(&8u32.to_le_bytes());
    wrap.extend_from_slice(&[1, 0, 1, 0, 5, 0, 5, 1]);
    out.push(("pipe_ring", wrap));

    // Handshakes: right answers to the fixed challenge, modern and legacy challenges.
    let (message, _) = auth::challenge_from(&CHALLENGE_RANDOM);
    let answer = auth::create_response(AUTHKEY, &message).unwrap_or_default();
    let mut modern = b"#CHALLENGE#{sha256}".to_vec();
    modern.extend_from_slice(&[0x33; 40]);
    let mut legacy = b"#CHALLENGE#".to_vec();
    legacy.extend_from_slice(&[0x44; 20]);
    for challenge in [&modern, &legacy] {
        let mut server = frame(&answer);
        server.extend(frame(challenge));
        server.extend(frame(b"#WELCOME#"));
        out.push(("handshake_server", server));
        let mut client = frame(challenge);
        client.extend(frame(b"#WELCOME#"));
        client.extend(frame(&answer));
        out.push(("handshake_client", client));
    }
    out.push(("handshake_server", frame(b"{md5}0123456789abcdef")));

    // Connection handles, as a parent archives them for a child: a pipe end (slots 0 and 1), a
    // one-way reader (its region has one ring: the table's slot 1 is refused for its size), a
    // socket connection (slot 0 only).
    let archive = |c: &dyn Fn() -> mp_core::Result<AlignedVec<16>>| {
        mp_core::handle::collect(c).0.map(|b| b.to_vec()).ok()
    };
    if let Ok((a, _b)) = crate::Pipe::<u32>::new(crate::Duplex) {
        out.extend(archive(&|| mp_core::message::encode(&a)).map(|b| ("connection_handle", b)));
    }
    if let Ok((r, _w)) = crate::Pipe::<u32>::new(crate::OneWay) {
        out.extend(archive(&|| mp_core::message::encode(&r)).map(|b| ("connection_handle", b)));
    }
    if let Ok((s, _t)) = UnixStream::pair() {
        let c = Connection::<u32>::from_socket(OwnedFd::from(s));
        out.extend(archive(&|| mp_core::message::encode(&c)).map(|b| ("connection_handle", b)));
    }
    out.push(("handshake_client", frame(b"#CHALLENGE#{sha3_384}short")));
    out
}
