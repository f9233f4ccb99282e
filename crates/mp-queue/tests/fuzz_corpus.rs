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
