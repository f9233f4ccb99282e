//! Fuzzing entry points. **Not API**: hidden from the docs, exempt from semver, and may change
//! or go away in any release.
//!
//! `queue_ring` feeds untrusted bytes to the queue's ring as a hostile peer would write them
//! (the `Meta` lines, record headers, payload bytes) while the queue's calls run on it and
//! ignores their outcome: the only failure is a panic, an abort, a hang or undefined
//! behaviour. The `cargo fuzz` target `fuzz/fuzz_targets/queue_ring.rs` calls it, and
//! `tests/fuzz_corpus.rs` replays the stored corpus through it on stable. `seeds` makes
//! valid inputs for the corpus. See `docs/reliability.md`, "Fuzzing".

use std::time::Duration;

use crate::ring::META_SIZE;
use crate::{Queue, Received};

/// The largest input the harness looks at.
pub const MAX_INPUT: usize = 64 * 1024;

/// The ring's capacity in the harness: small, so that offsets from the input land on records.
pub const CAPACITY: u64 = 1024;

/// The side channel's budget in the harness: a few oversized messages at once.
pub const MAX_SPILL: u64 = 4 * 4096;

/// At most this many steps per input, and at most [`MAX_CALLS`] queue calls among them (a
/// call that finds a lock word naming some process waits up to the lock's grace of 50 ms).
pub const MAX_STEPS: usize = 512;

/// At most this many queue calls per input.
pub const MAX_CALLS: usize = 64;

/// At most this many calls per input that find a lock word set by the peer (the others are
/// skipped): such a call waits for the lock's liveness check (20 ms) before it takes a dead
/// holder's lock over, or its grace (50 ms) for a word naming a live process or pid 0, which
/// it never takes over. Without a bound, inputs that set a lock word would cost seconds.
pub const MAX_LOCKED_CALLS: usize = 4;

/// The byte offsets of the producer and the consumer lock words in the `Meta` lines.
const LOCK_WORDS: [usize; 2] = [72, 136];

/// The `Meta` words that [`queue_ring`]'s step 1 moves by a small amount, as byte offsets:
/// `tail`, `enqueued`, `p_cached_reclaim`, `big_tail`, `pending_tail`, `pending_enq`, `head`,
/// `reclaim`, `dequeued`, `c_cached_tail`, `j_head`, `j_deq`, `big_head`, `pending_big`.
const POSITIONS: [usize; 14] = [
    80, 88, 96, 104, 112, 120, 144, 152, 160, 168, 176, 184, 264, 280,
];

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

/// The hostile peer's view of one queue's region: its payload (the `Meta` lines, then the
/// ring's data area), written with plain copies as another process would.
struct Peer {
    base: *mut u8,
    len: usize,
}

impl Peer {
    /// Copies `src` to `off` of the payload, cut at its end.
    fn write(&self, off: usize, src: &[u8]) {
        let off = off % self.len;
        let n = src.len().min(self.len - off);
        // SAFETY: `off + n <= len`, the payload's length: inside the region's mapping, which
        // the queue (alive for the whole harness) keeps. This thread is the only one touching
        // it, and no reference into these bytes is used across a write: the queue reads them
        // through atomics and copies, and a zero-copy guard's view is read only right after
        // it was checked, before any later write (see `take`).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off), n) };
    }

    /// Reads the u64 at `off` of the payload (`off + 8 <= META_SIZE`).
    fn read_u64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: `off + 8` lies inside the Meta lines, inside the mapping (see `write`).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), b.as_mut_ptr(), 8) };
        u64::from_le_bytes(b)
    }
}

/// The queue's ring read from hostile bytes: a program, in `bytes`, that a hostile peer runs
/// against a queue of `Vec<u8>` (a ring of [`CAPACITY`] bytes, a side channel of
/// [`MAX_SPILL`]) while this process puts and gets on it. Every call uses a timeout of zero.
///
/// Each step is an opcode byte (taken modulo 7) and its operands: 0 writes a `Meta` word
/// (index u8 of the 40 words, the u64), 1 moves a position word of the `Meta` lines (selector
/// u8 of 14, a signed step i8 times 16), 2 writes a record header (offset u16 in 16-byte
/// units, state u8, kind u8, len u32, extra u64), 3 writes raw bytes into the ring (offset
/// u16, count u8, the bytes), 4 puts (selector u8: bit 7 a message of `(sel & 63) * 16 + 520`
/// bytes, which goes beside the ring; else `sel & 63` bytes from the input; bit 6 puts three
/// copies with `put_many`), 5 gets (selector u8: `get`, `get_many` of up to `sel >> 2 & 7`,
/// or `get_ref`, whose guard is kept when bit 7 is set, up to four), 6 drops the oldest kept
/// guard and reads the counts. A put or get that finds a lock word set is skipped after the
/// first [`MAX_LOCKED_CALLS`]. Returns how many messages the gets received.
pub fn queue_ring(bytes: &[u8]) -> usize {
    let Ok(q) = Queue::<Vec<u8>>::builder()
        .capacity_bytes(CAPACITY)
        .max_spill_bytes(MAX_SPILL)
        .build()
    else {
        return 0;
    };
    let region = q.ring().region();
    let peer = Peer {
        base: region.as_ptr(),
        len: region.len(),
    };
    let mut held: Vec<Received<'_, Vec<u8>>> = Vec::new();
    let mut input = Input(&bytes[..bytes.len().min(MAX_INPUT)]);
    let (mut steps, mut calls, mut received, mut locked) = (0, 0, 0, 0);
    while !input.0.is_empty() && steps < MAX_STEPS && calls < MAX_CALLS {
        steps += 1;
        match input.u8() % 7 {
            0 => {
                let off = usize::from(input.u8() % 40) * 8;
                peer.write(off, &input.u64().to_le_bytes());
            }
            1 => {
                let off = POSITIONS[usize::from(input.u8()) % POSITIONS.len()];
                let step = i64::from(input.u8() as i8) * 16;
                let v = peer.read_u64(off).wrapping_add(step as u64);
                peer.write(off, &v.to_le_bytes());
            }
            2 => {
                let off = META_SIZE + (usize::from(input.u16()) * 16) % CAPACITY as usize;
                let (state, kind) = (u32::from(input.u8() % 5), u32::from(input.u8() % 5));
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&((kind << 16) | state).to_le_bytes());
                h[4..8].copy_from_slice(&input.u32().to_le_bytes());
                h[8..16].copy_from_slice(&input.u64().to_le_bytes());
                peer.write(off, &h);
            }
            3 => {
                let off = META_SIZE + usize::from(input.u16()) % CAPACITY as usize;
                let n = usize::from(input.u8());
                peer.write(off, input.take(n));
            }
            op @ (4 | 5) => {
                calls += 1;
                let sel = input.u8();
                if LOCK_WORDS.iter().any(|&w| peer.read_u64(w) != 0) {
                    locked += 1;
                    if locked > MAX_LOCKED_CALLS {
                        continue;
                    }
                }
                if op == 4 {
                    put(&q, sel, &mut input);
                } else {
                    received += take(&q, sel, &mut held);
                }
            }
            _ => {
                calls += 1;
                if !held.is_empty() {
                    drop(held.remove(0));
                }
                let _ = (q.qsize(), q.empty(), q.full(), q.spill_bytes());
            }
        }
    }
    // The guards go first (they borrow the queue), in the order they were taken.
    drop(held);
    received
}

/// Step 4 of [`queue_ring`]: one put, or a batch of three.
fn put(q: &Queue<Vec<u8>>, sel: u8, input: &mut Input<'_>) {
    let item = if sel & 0x80 != 0 {
        vec![sel; usize::from(sel & 63) * 16 + 520]
    } else {
        input.take(usize::from(sel & 63)).to_vec()
    };
    if sel & 0x40 != 0 {
        let batch = [item.clone(), item.clone(), item];
        let _ = q.put_many(&batch, Some(Duration::ZERO));
    } else {
        let _ = q.put_timeout(item, Duration::ZERO);
    }
}

/// Step 5 of [`queue_ring`]: one get of the kind `sel` picks. A zero-copy view is read at
/// once (its record must lie inside the ring's data area), before any later hostile write.
/// Returns how many messages it received.
fn take<'q>(q: &'q Queue<Vec<u8>>, sel: u8, held: &mut Vec<Received<'q, Vec<u8>>>) -> usize {
    match sel % 3 {
        0 => usize::from(q.get_timeout(Duration::ZERO).is_ok()),
        1 => {
            let mut out = Vec::new();
            let _ = q.get_many(&mut out, usize::from((sel >> 2) & 7), Some(Duration::ZERO));
            out.len()
        }
        _ => {
            let Ok(r) = q.get_ref_timeout(Duration::ZERO) else {
                return 0;
            };
            if let Some((p, len)) = r.inline_span() {
                let start = q.ring().region().as_ptr() as usize + META_SIZE;
                assert!(p >= start && p + len <= start + CAPACITY as usize);
            }
            let sum: u64 = r.iter().map(|&b| u64::from(b)).sum();
            std::hint::black_box(sum);
            let _ = r.deserialize();
            if sel & 0x80 != 0 && held.len() < 4 {
                held.push(r);
            }
            1
        }
    }
}

/// Valid inputs for the corpus, as `("queue_ring", bytes)`: real puts and gets of every kind
/// (inline, batched, oversized, zero-copy and held), and hostile writes on top of real
/// records (a header turned `READING` by a dead token, a `tail` moved past a record, a
/// damaged length).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let put_small = |v: &mut Vec<u8>, payload: &[u8]| {
        v.extend_from_slice(&[4, payload.len() as u8 & 63]);
        v.extend_from_slice(&payload[..payload.len() & 63]);
    };
    let mut out = Vec::new();
    // Puts and every kind of get, a batch, an oversized message, held guards released.
    let mut a = Vec::new();
    put_small(&mut a, b"first");
    put_small(&mut a, b"second, a little longer");
    a.extend_from_slice(&[5, 0, 5, 2]);
    a.extend_from_slice(&[4, 0x40 | 5]);
    a.extend_from_slice(b"batch");
    a.extend_from_slice(&[5, 1 | (7 << 2)]);
    a.extend_from_slice(&[4, 0x80 | 3, 5, 0x80 | 2, 4, 9]);
    a.extend_from_slice(b"after big");
    a.extend_from_slice(&[5, 0x80 | 2, 6, 6, 5, 0]);
    out.push(("queue_ring", a));
    // Fill the ring until it wraps (padding records), draining as it goes.
    let mut w = Vec::new();
    for i in 0..24u8 {
        put_small(&mut w, &[i; 40]);
        if i % 3 == 2 {
            w.extend_from_slice(&[5, 1 | (3 << 2)]);
        }
    }
    w.extend_from_slice(&[5, 1 | (7 << 2), 5, 1 | (7 << 2)]);
    out.push(("queue_ring", w));
    // A real record, then its header claimed by a (dead) token, then gets.
    let mut d = Vec::new();
    put_small(&mut d, b"claimed by the dead");
    put_small(&mut d, b"next");
    d.extend_from_slice(&[2, 0, 0, 2, 0]);
    d.extend_from_slice(&(19u32).to_le_bytes());
    d.extend_from_slice(&0x0000_7fff_0000_0001u64.to_le_bytes());
    d.extend_from_slice(&[5, 2, 5, 0, 4, 0x80, 5, 0]);
    out.push(("queue_ring", d));
    // `tail` moved one record on, `head` moved back, a length damaged, the lock words named.
    let mut t = Vec::new();
    put_small(&mut t, b"one");
    t.extend_from_slice(&[1, 0, 2, 5, 0, 1, 6, 0xfe, 5, 0]);
    put_small(&mut t, b"two");
    t.extend_from_slice(&[3, 4, 0, 4]);
    t.extend_from_slice(&0xffffu32.to_le_bytes());
    t.extend_from_slice(&[5, 2, 0, 9]);
    t.extend_from_slice(&0x0000_7ffe_0000_0002u64.to_le_bytes());
    t.extend_from_slice(&[4, 3]);
    t.extend_from_slice(b"abc");
    t.extend_from_slice(&[0, 17]);
    t.extend_from_slice(&0x0000_7ffd_0000_0003u64.to_le_bytes());
    t.extend_from_slice(&[5, 0, 6]);
    out.push(("queue_ring", t));
    out
}
