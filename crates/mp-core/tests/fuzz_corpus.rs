//! Replays the fuzzing corpus of this crate's targets on stable: every file of
//! `fuzz/corpus/<target>/` (the seeds and what `cargo xtask fuzz` found) goes through the
//! same entry point the `cargo fuzz` target calls (`mp_core::__fuzz`), each under
//! `catch_unwind`, and the test names every file that panicked. The seeds are also run as
//! made now, so a change of format cannot leave the stored ones stale unnoticed.
//!
//! `MP_WRITE_FUZZ_SEEDS=1 cargo test -p mp-core --test fuzz_corpus -- --ignored` (re)writes the
//! seed files (`seed-NN`) of the corpus.

use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

use mp_core::message::{access, encode};
use mp_core::rkyv::rancor::{Fallible, Source};
use mp_core::rkyv::{Archive, Deserialize, Serialize};

use mp_core::__fuzz::Harness;

const TARGETS: &[(&str, Harness)] = &[
    ("region_header", |b| {
        let _ = mp_core::__fuzz::region_header(b);
    }),
    ("message", mp_core::__fuzz::message),
];

#[test]
fn corpus_replays_without_panics() {
    mp_core::__fuzz::replay_corpus(env!("CARGO_MANIFEST_DIR"), TARGETS);
}

#[test]
fn seeds_run_without_panics() {
    mp_core::__fuzz::replay_seeds(&mp_core::__fuzz::seeds(), TARGETS);
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus; run with MP_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    mp_core::__fuzz::write_seeds(env!("CARGO_MANIFEST_DIR"), mp_core::__fuzz::seeds());
}

#[test]
fn region_seeds_are_accepted() {
    // Real headers, read back from real regions: the harness accepts them, with and without
    // its repairs.
    let seeds: Vec<Vec<u8>> = mp_core::__fuzz::seeds()
        .into_iter()
        .filter(|(t, _)| *t == "region_header")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(seeds.len(), 6);
    for s in &seeds {
        assert!(mp_core::__fuzz::region_header(s), "{:?}", &s[..8]);
    }
    let mut corrupt = seeds[0].clone();
    corrupt[20] ^= 1; // a bit of the size: the check catches it
    assert!(!mp_core::__fuzz::region_header(&corrupt));
    corrupt[0] = 8; // ... unless the check is recomputed (then the size is out of the file)
    assert!(!mp_core::__fuzz::region_header(&corrupt));
}

/// Counts its live values; refuses to deserialize 13 (as a handle whose descriptor is gone, or
/// a `Serde` value whose postcard bytes are bad, fails after the archive was checked).
#[derive(Archive, Serialize)]
#[rkyv(crate = mp_core::rkyv)]
struct Picky(u32);

static LIVE: AtomicI32 = AtomicI32::new(0);

impl Drop for Picky {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, SeqCst);
    }
}

impl<D: Fallible + ?Sized> Deserialize<Picky, D> for ArchivedPicky
where
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Picky, D::Error> {
        if self.0 == 13 {
            return Err(D::Error::new(std::io::Error::other("13")));
        }
        LIVE.fetch_add(1, SeqCst);
        Ok(Picky(self.0.to_native()))
    }
}

#[test]
fn upstream_vec_deserialize_leaks_the_elements_made_before_a_failure() {
    // The fuzzer's finding in rkyv 0.8 (docs/reliability.md, "Fuzzing"): `Vec<T>`'s
    // deserializer writes the elements into a raw allocation and returns on the first error
    // without dropping the ones already written, nor freeing the allocation. When this test
    // fails, rkyv drops them: remove the note and this test, and put `Vec<Region>` back in the
    // message harness.
    let bytes = encode(&vec![Picky(1), Picky(2), Picky(13)]).expect("encode");
    LIVE.store(0, SeqCst); // the values encoded were dropped without having been counted
    let archived = access::<Vec<Picky>>(&bytes).expect("a valid archive");
    assert!(mp_core::message::deserialize::<Vec<Picky>>(archived).is_err());
    assert_eq!(
        LIVE.load(SeqCst),
        2,
        "the two made before 13 were never dropped"
    );
    // A tuple and an option drop what they made (the harness uses those for handles).
    let bytes = encode(&(Picky(1), Some(Picky(13)))).expect("encode");
    LIVE.store(0, SeqCst);
    let archived = access::<(Picky, Option<Picky>)>(&bytes).expect("a valid archive");
    assert!(mp_core::message::deserialize::<(Picky, Option<Picky>)>(archived).is_err());
    assert_eq!(LIVE.load(SeqCst), 0);
}
