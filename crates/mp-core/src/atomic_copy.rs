//! Copying bytes between private and shared memory without data races: relaxed atomic loads
//! and stores, a word at a time where the address allows. [`crate::region`] and
//! [`crate::shared`] (and the queues and pipes above them) read and write peer-visible bytes
//! only through these.

/// Copies `dst.len()` bytes from shared memory at `src` into private memory, through relaxed
/// atomic loads (whole 8-byte words where `src` is aligned, single bytes at the edges), so that
/// another process writing the bytes at the same time is no data race: the copy then holds
/// some mix of old and new words, never undefined behaviour. The copy is a snapshot: validate
/// it, and never read the shared bytes again after the check.
///
/// # Safety
/// - `src..src + dst.len()` is inside one live mapping, readable for the whole call;
/// - every access to those bytes by anyone, in any process, is atomic or happens through these
///   functions (plain writes by a peer are its own race, not ours, but the same rule).
pub unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    let n = dst.len();
    let head = src.align_offset(8).min(n);
    let words = (n - head) / 8;
    let mut i = 0;
    while i < head {
        // SAFETY: in bounds (caller); an AtomicU8 has no alignment needs.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
    for w in 0..words {
        let off = head + w * 8;
        // SAFETY: `src + off` is 8-aligned (past the head) and the word is in bounds.
        let v =
            unsafe { AtomicU64::from_ptr(src.add(off).cast_mut().cast()) }.load(Ordering::Relaxed);
        dst[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    i = head + words * 8;
    while i < n {
        // SAFETY: in bounds (caller); an AtomicU8 has no alignment needs.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
}

/// Copies `src` from private memory into shared memory at `dst`, through relaxed atomic stores
/// (the counterpart of [`copy_from_shared`]).
///
/// # Safety
/// - `dst..dst + src.len()` is inside one live, writable mapping for the whole call;
/// - every access to those bytes is atomic or goes through these functions (as for
///   [`copy_from_shared`]).
pub unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    let n = src.len();
    let head = dst.align_offset(8).min(n);
    let words = (n - head) / 8;
    for (i, &b) in src[..head].iter().enumerate() {
        // SAFETY: in bounds (caller); an AtomicU8 has no alignment needs.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(b, Ordering::Relaxed);
    }
    for w in 0..words {
        let off = head + w * 8;
        let mut word = [0u8; 8];
        word.copy_from_slice(&src[off..off + 8]);
        // SAFETY: `dst + off` is 8-aligned (past the head) and the word is in bounds.
        unsafe { AtomicU64::from_ptr(dst.add(off).cast()) }
            .store(u64::from_ne_bytes(word), Ordering::Relaxed);
    }
    let tail = head + words * 8;
    for (i, &b) in src[tail..].iter().enumerate() {
        // SAFETY: in bounds (caller); an AtomicU8 has no alignment needs.
        unsafe { AtomicU8::from_ptr(dst.add(tail + i)) }.store(b, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod copy_tests {
    use super::{copy_from_shared, copy_to_shared};

    /// Every offset and length around the word edges copies exactly.
    #[test]
    fn copies_match_memcpy_at_every_alignment() {
        let src: Vec<u8> = (0..100u8).collect();
        for off in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 40, 90] {
                let mut out = vec![0u8; len];
                // SAFETY: in bounds of `src`; nobody else touches it.
                unsafe { copy_from_shared(src.as_ptr().add(off), &mut out) };
                assert_eq!(out, &src[off..off + len]);
                let mut shared = vec![0xffu8; 110];
                // SAFETY: in bounds of `shared`; nobody else touches it.
                unsafe { copy_to_shared(&src[..len], shared.as_mut_ptr().add(off)) };
                assert_eq!(&shared[off..off + len], &src[..len]);
                assert!(shared[..off].iter().all(|&b| b == 0xff));
                assert!(shared[off + len..].iter().all(|&b| b == 0xff));
            }
        }
    }
}
