//! A peer that breaks the ring protocol (a buggy or hostile process that maps the same
//! region) gets typed errors, never a crash or an out-of-bounds read.

use super::*;
use crate::ring::RECORD_HEADER;
use std::time::Duration;

fn pair() -> (LocalEnd, LocalEnd) {
    LocalEnd::pair(true, MIN_RING_CAPACITY).unwrap()
}

/// Ring 0 (first -> second): control block at 0, data at 2 * CTL_SIZE.
fn ring0(e: &LocalEnd) -> (*mut u8, *mut u8) {
    let base = e.region.as_ptr();
    // SAFETY: a duplex region holds two control blocks, then the data areas.
    (base, unsafe { base.add(2 * CTL_SIZE) })
}

fn poke_u64(p: *mut u8, off: usize, v: u64) {
    // SAFETY: test-only writes inside our own region (offsets chosen by the tests).
    unsafe { (p.add(off) as *mut u64).write_volatile(v) }
}

fn poke_header(data: *mut u8, off: usize, len: u32, tag: u32, total: u64) {
    let mut h = [0u8; RECORD_HEADER];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&tag.to_le_bytes());
    h[8..16].copy_from_slice(&total.to_le_bytes());
    // SAFETY: test-only write inside the data area of our own region.
    unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), data.add(off), RECORD_HEADER) };
}

fn now() -> Deadline {
    Deadline::after(Some(Duration::ZERO))
}

/// What `b` makes of the ring as it stands: the next message, without waiting.
fn next(b: &LocalEnd) -> Result<Msg> {
    b.next_message(now(), &|_| Ok(()))
}

#[test]
fn unknown_tag_is_a_protocol_error() {
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    poke_header(data, 0, 4, 0xdead_beef, 4);
    poke_u64(ctl, 0, 32); // tail
    assert!(matches!(
        next(&b),
        Err(Error::Protocol(m)) if m.contains("tag")
    ));
}

#[test]
fn a_padding_record_alone_is_refused_instead_of_spinning() {
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    // A hostile peer publishes only a padding record that fills the ring: an honest one
    // always publishes the record after it too. The receiver must not take it for data
    // that is about to come (it would spin forever, even after that peer died).
    poke_header(
        data,
        0,
        (MIN_RING_CAPACITY - RECORD_HEADER) as u32,
        crate::ring::TAG_PAD,
        0,
    );
    poke_u64(ctl, 0, MIN_RING_CAPACITY as u64);
    assert!(matches!(
        next(&b),
        Err(Error::Protocol(m)) if m.contains("corrupted")
    ));
}

#[test]
fn a_record_longer_than_what_was_published_is_refused() {
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    poke_header(data, 0, 1000, TAG_WHOLE, 1000);
    poke_u64(ctl, 0, 32);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
    // A record that would run past the end of the data area.
    poke_header(data, 0, u32::MAX, TAG_WHOLE, 0);
    poke_u64(ctl, 0, MIN_RING_CAPACITY as u64);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
}

#[test]
fn positions_out_of_range_are_refused_on_both_sides() {
    let (a, b) = pair();
    let (ctl, _) = ring0(&a);
    // More published than the ring holds.
    poke_u64(ctl, 0, 10 * MIN_RING_CAPACITY as u64);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
    assert!(matches!(a.send_raw(b"x"), Err(Error::Protocol(_))));
    // A misaligned position.
    poke_u64(ctl, 0, 8);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
}

#[test]
fn fragments_out_of_sequence_are_refused() {
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    // A MORE with no FIRST.
    poke_header(data, 0, 16, TAG_MORE, 64);
    poke_u64(ctl, 0, 32);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
    // A FIRST whose fragments overrun its announced total.
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    poke_header(data, 0, 16, TAG_FIRST, 20);
    poke_header(data, 32, 16, TAG_LAST, 20);
    poke_u64(ctl, 0, 64);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
    // A FIRST that announces less than it carries.
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    poke_header(data, 0, 16, TAG_FIRST, 8);
    poke_u64(ctl, 0, 32);
    assert!(matches!(next(&b), Err(Error::Protocol(_))));
}

#[test]
fn a_bogus_total_does_not_allocate_it() {
    // A FIRST announcing 2^60 bytes: refused by the caller's size check before anything
    // is allocated, and kept (the check is the caller's to make).
    let (a, b) = pair();
    let (ctl, data) = ring0(&a);
    poke_header(data, 0, 16, TAG_FIRST, 1 << 60);
    poke_u64(ctl, 0, 32);
    let r = b.next_message(now(), &|size| {
        Err(Error::MessageTooLong { size, max: 1 << 20 })
    });
    assert!(matches!(r, Err(Error::MessageTooLong { size, .. }) if size == 1 << 60));
    // Accepted, it is read as fragments arrive; the peer then vanishes: truncated.
    drop(a);
    let r = next(&b);
    assert!(matches!(r, Err(Error::Truncated { received: 16, expected }) if expected == 1 << 60));
}

/// A second view of the same end, as another process holding a copy would have.
fn twin(e: &LocalEnd) -> LocalEnd {
    LocalEnd::from_parts(LocalParts {
        sock: e.sock.try_clone().unwrap(),
        region: e.region.clone(),
        tx_index: e.tx_index,
        rx_index: e.rx_index,
        cap: e.cap,
    })
    .unwrap()
}

#[test]
fn copies_of_an_end_used_in_turn_stay_in_step() {
    // Each view caches the other side's position; a copy that was idle while another
    // produced or consumed must not mistake its stale reading for corruption or data.
    let (a, b) = pair();
    let (a2, b2) = (twin(&a), twin(&b));
    let mut next = 0u32;
    let mut expect = 0u32;
    for round in 0..3000u32 {
        let sender = if round % 3 == 0 { &a2 } else { &a };
        let n = 1 + (round % 5);
        for _ in 0..n {
            sender
                .send_value(&(next, vec![0u8; (next % 300) as usize]))
                .unwrap();
            next += 1;
        }
        let receiver = if round % 2 == 0 { &b } else { &b2 };
        for _ in 0..n {
            let (v, pad): (u32, Vec<u8>) = receiver.recv_value(now()).unwrap();
            assert_eq!((v, pad.len()), (expect, (expect % 300) as usize));
            expect += 1;
        }
    }
    assert!(matches!(b.recv_value::<u32>(now()), Err(Error::Timeout)));
}

#[test]
fn handles_with_bad_parts_are_refused() {
    let (a, _b) = pair();
    let parts = |tx: u8, rx: u8, cap: usize| LocalParts {
        sock: a.sock.try_clone().unwrap(),
        region: a.region.clone(),
        tx_index: tx,
        rx_index: rx,
        cap,
    };
    assert!(LocalEnd::from_parts(parts(0, 1, MIN_RING_CAPACITY)).is_ok());
    assert!(LocalEnd::from_parts(parts(0, 0, MIN_RING_CAPACITY)).is_err());
    assert!(LocalEnd::from_parts(parts(0, 7, MIN_RING_CAPACITY)).is_err());
    assert!(LocalEnd::from_parts(parts(NO_RING, NO_RING, MIN_RING_CAPACITY)).is_err());
    assert!(LocalEnd::from_parts(parts(0, 1, 3000)).is_err());
    assert!(
        LocalEnd::from_parts(parts(0, 1, 1 << 20)).is_err(),
        "larger than the region"
    );
    let other = Region::anonymous(1, 4 * 4096, 64).unwrap();
    let p = LocalParts {
        sock: a.sock.try_clone().unwrap(),
        region: other,
        tx_index: 0,
        rx_index: 1,
        cap: MIN_RING_CAPACITY,
    };
    assert!(LocalEnd::from_parts(p).is_err(), "not a pipe's region");
}
