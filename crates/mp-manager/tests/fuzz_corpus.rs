//! Replays the fuzzing corpus of this crate's target on stable: every file of
//! `fuzz/corpus/manager_wire/` (the seeds and what `cargo xtask fuzz` found) goes through the
//! same entry point the `cargo fuzz` target calls (`mp_manager::__fuzz::manager_wire`), each
//! under `catch_unwind`, and the test names every file that panicked. The seeds are also run
//! as made now, so a change of format cannot leave the stored ones stale unnoticed.
//!
//! `MP_WRITE_FUZZ_SEEDS=1 cargo test -p mp-manager --test fuzz_corpus -- --ignored`
//! (re)writes the seed files (`seed-NN`) of the corpus.

use mp_core::__fuzz::Harness;

const TARGETS: &[(&str, Harness)] = &[("manager_wire", |b| {
    let _ = mp_manager::__fuzz::manager_wire(b);
})];

#[test]
fn corpus_replays_without_panics() {
    mp_core::__fuzz::replay_corpus(env!("CARGO_MANIFEST_DIR"), TARGETS);
}

#[test]
fn seeds_run_without_panics() {
    mp_core::__fuzz::replay_seeds(&mp_manager::__fuzz::seeds(), TARGETS);
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus; run with MP_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    mp_core::__fuzz::write_seeds(env!("CARGO_MANIFEST_DIR"), mp_manager::__fuzz::seeds());
}

#[test]
fn seeds_reach_the_dispatch_and_the_reply_decoder() {
    // The session seed's requests all decode and most are served (some are refused on
    // purpose: a second holder, an index out of range, a missing object); the reply seed's
    // frames all decode; the lock seed's second holder gets the lock its first holder's
    // connection left.
    let seeds: Vec<Vec<u8>> = mp_manager::__fuzz::seeds()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let session = mp_manager::__fuzz::manager_wire(&seeds[0]);
    assert_eq!(session.requests, 33);
    assert!(session.served >= 25, "{session:?}");
    let replies = mp_manager::__fuzz::manager_wire(&seeds[1]);
    assert_eq!((replies.requests, replies.replies), (0, 13));
    let lock = mp_manager::__fuzz::manager_wire(&seeds[2]);
    assert_eq!((lock.requests, lock.served), (3, 3));
    // The lifetime requests (tickets, redeem, release, count, unname) decode and reach the
    // reference table; the one-way release has no reply.
    let life = mp_manager::__fuzz::manager_wire(&seeds[3]);
    assert_eq!(life.requests, 8, "{life:?}");
    assert!(life.served >= 6, "{life:?}");
}
