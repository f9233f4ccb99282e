//! Replays the fuzzing corpus of this crate's target on stable: every file of
//! `fuzz/corpus/queue_ring/` (the seeds and what `cargo xtask fuzz` found) goes through the
//! same entry point the `cargo fuzz` target calls (`mp_queue::__fuzz::queue_ring`), each under
//! `catch_unwind`, and the test names every file that panicked. The seeds are also run as
//! made now, so a change of format cannot leave the stored ones stale unnoticed.
//!
//! `MP_WRITE_FUZZ_SEEDS=1 cargo test -p mp-queue --test fuzz_corpus -- --ignored` (re)writes
//! the seed files (`seed-NN`) of the corpus.

use mp_core::__fuzz::Harness;

const TARGETS: &[(&str, Harness)] = &[("queue_ring", |b| {
    let _ = mp_queue::__fuzz::queue_ring(b);
})];

#[test]
fn corpus_replays_without_panics() {
    mp_core::__fuzz::replay_corpus(env!("CARGO_MANIFEST_DIR"), TARGETS);
}

#[test]
fn seeds_run_without_panics() {
    mp_core::__fuzz::replay_seeds(&mp_queue::__fuzz::seeds(), TARGETS);
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus; run with MP_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    mp_core::__fuzz::write_seeds(env!("CARGO_MANIFEST_DIR"), mp_queue::__fuzz::seeds());
}

#[test]
fn seeds_reach_real_records() {
    // Each seed puts real messages and gets some of them back (before or after its hostile
    // writes), so the fuzzer starts from inputs that reach the record-reading paths.
    for (i, (_, seed)) in mp_queue::__fuzz::seeds().iter().enumerate() {
        assert!(
            mp_queue::__fuzz::queue_ring(seed) > 0,
            "seed {i} received nothing"
        );
    }
}

/// A `queue_ring` step that writes the `Meta` word at `index` (8-byte words).
fn meta_word(index: u8, value: u64) -> Vec<u8> {
    let mut v = vec![0, index];
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// A `queue_ring` step that puts a small message.
fn put(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![4, payload.len() as u8];
    v.extend_from_slice(payload);
    v
}

#[test]
fn counts_and_positions_near_u64_max_give_no_overflow_panic() {
    // The `queue_ring` fuzzer's finding: a peer that set `dequeued` to u64::MAX made the next
    // get overflow it (a panic wherever overflow checks are on, debug builds among them). The
    // same held for `enqueued` on a put, and for a `tail` within a record of u64::MAX. Now the
    // counts wrap and such positions are refused as damage (typed errors).
    let input = std::fs::read(
        mp_core::__fuzz::corpus_dir(env!("CARGO_MANIFEST_DIR"), "queue_ring")
            .join("regression-dequeued-at-u64-max"),
    )
    .expect("the regression input is in the corpus");
    let (dequeued, enqueued) = (20, 11);
    let mut counts = put(b"abc");
    counts.extend(meta_word(dequeued, u64::MAX));
    counts.extend_from_slice(&[5, 0]);
    counts.extend(put(b"def"));
    counts.extend(meta_word(enqueued, u64::MAX));
    counts.extend(put(b"ghi"));
    counts.extend_from_slice(&[5, 1 | (7 << 2)]);
    // tail, p_cached_reclaim, head, reclaim, c_cached_tail: 32 bytes below 2^64.
    let mut positions = Vec::new();
    for word in [10, 12, 18, 19, 21] {
        positions.extend(meta_word(word, u64::MAX - 31));
    }
    positions.extend(put(b"abc"));
    positions.extend_from_slice(&[5, 0, 5, 2]);
    positions.extend(put(b"after"));
    positions.extend_from_slice(&[5, 0]);
    for (name, bytes) in [
        ("the regression input", &input),
        ("counts", &counts),
        ("positions", &positions),
    ] {
        let r = std::panic::catch_unwind(|| mp_queue::__fuzz::queue_ring(bytes));
        assert!(r.is_ok(), "{name} panicked");
    }
    // The counts case still moves messages: the first get takes "abc".
    assert!(mp_queue::__fuzz::queue_ring(&counts) >= 1);
}
